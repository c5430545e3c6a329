"""One benchmark case: time and peak memory of a step, recorded as a row (OOM is a result)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from fastalign.bench.measure import is_out_of_memory, time_callable
from fastalign.bench.memory import peak_memory_bytes


@dataclass
class Row:
    provider: str
    mode: str
    n: int  # tokens
    h: int
    v: int
    dtype: str
    status: str  # ok | oom | skipped | failed_check | error
    note: str = ""
    median_ms: float | None = None
    cpu_median_ms: float | None = None  # process CPU time (CPU runs only)
    p20_ms: float | None = None
    p80_ms: float | None = None
    peak_mem_mb: float | None = None
    tflops: float | None = None
    gemm_ms: float | None = None
    roofline_fraction: float | None = None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def measure_case(row: Row, build_step: Callable[[], Callable[[], object]], device: torch.device, *,
                 repeats: int, useful_flops: float, gemm_ms: float | None = None, gemm_count: int = 1) -> Row:
    """Fill ``row`` with timing/memory of the step that ``build_step`` returns (inputs built inside)."""
    try:
        step = build_step()
        timing = time_callable(step, device, repeats=repeats)
        row.median_ms, row.p20_ms, row.p80_ms = timing.median_ms, timing.p20_ms, timing.p80_ms
        row.cpu_median_ms = timing.cpu_median_ms
        row.peak_mem_mb = peak_memory_bytes(step, device) / 2**20
        row.tflops = useful_flops / (timing.median_ms * 1e-3) / 1e12
        if gemm_ms is not None:
            row.gemm_ms = gemm_ms
            row.roofline_fraction = gemm_count * gemm_ms / timing.median_ms
    except Exception as error:  # noqa: BLE001 - an OOM or a peer's failure is a result, not a crash
        row.status = "oom" if is_out_of_memory(error) else "error"
        row.note = f"{type(error).__name__}: {str(error)[:200]}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def gemm_ms(n: int, h: int, v: int, dtype: torch.dtype, device: torch.device) -> float | None:
    """Median time of one ``[n, h] @ [h, v]`` cuBLAS GEMM (CUDA only): the roofline unit."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, h, device=device, dtype=dtype)
    b = torch.randn(v, h, device=device, dtype=dtype)
    return time_callable(lambda: a @ b.T, device).median_ms


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
