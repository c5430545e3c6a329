"""What every kernel compiles to on a GPU target, without a GPU; and the compile gate.

    python -m fastalign.kernels.report --target sm_90 --shape 16384x4096x128256 [--dtype bf16]
        [--dump DIR] [--json FILE] [--check]

prints one row per kernel x variant x autotune configuration: whether it compiles, registers
per thread, spill instructions, shared memory, CTAs per SM, wgmma shape, 16-byte asynchronous
and TMA loads, narrow (<= 2-byte) global loads, atomics and memory fences. ``--dump`` writes
each configuration's ``.ttgir``, ``.ptx`` and ``.cubin``; ``--check`` exits 1 when a row
breaks a rule of the compile gate (see ``violations``). The launches come from the same
plans (``plans.py``) the launchers use, at the given ``N x H x V``.

Run it without ``TRITON_INTERPRET`` (the interpreter replaces ``@triton.jit`` functions with
Python ones that cannot be compiled).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import aot, autotune, plans
from .interpret import interpreting

# Variants compiled for every configuration: the plainest call and the one with every
# optional feature on (the most registers).
PLAIN = plans.Features()
FULL = plans.Features(
    has_bias=True, has_softcap=True, with_entropy=True, with_logit_sum=True,
    with_max_logit=True, has_dlogp=True, has_dlse=True, has_dentropy=True, has_dzsum=True,
)
VARIANTS = {"plain": PLAIN, "full": FULL}
# The default backward's chunk budget (bytes of the logits gradient), as in the launcher.
DEFAULT_BACKWARD_BUDGET = 1 << 30
GPU_SMS = {80: 108, 90: 132}
_DTYPES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass
class Row:
    """One compiled kernel x variant x configuration."""

    kernel: str
    variant: str
    config: str
    arch: int
    dtype: str
    compiled: bool = False
    error: str = ""
    registers: int = 0
    spill_instructions: int = 0
    shared_kib: float = 0.0
    ctas_per_sm: int = 0
    wgmma: str = ""
    async_16b: int = 0
    async_narrow: int = 0
    tma_loads: int = 0
    narrow_global_loads: int = 0
    gemm_loop_async: int = 0  # asynchronous copies in the logits GEMM loop (2: both operands)
    loop_sync_loads: int = 0  # synchronous global loads inside any dot loop
    atomics: int = 0
    atomic_fences: int = 0
    has_dot: bool = True
    problems: list[str] = field(default_factory=list)


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        n, h, v = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--shape must look like 16384x4096x128256 (N x H x V), got {text!r}") from None
    if min(n, h, v) <= 0:
        raise ValueError(f"--shape sizes must be positive, got {text!r}")
    return n, h, v


def parse_target(text: str) -> int:
    digits = text.lower().removeprefix("sm_").removeprefix("sm")
    if not digits.isdigit():
        raise ValueError(f"--target must look like sm_90 or sm_80, got {text!r}")
    return int(digits)


def config_label(config) -> str:
    if config is None:
        return "-"
    meta = config.kwargs
    group = f"g{meta['GROUP_N']}" if "GROUP_N" in meta else ""
    return (f"{meta['BLOCK_N']}x{meta['BLOCK_V']}x{meta['BLOCK_K']}"
            f"w{config.num_warps}s{config.num_stages}{group}")


def launches(n: int, h: int, v: int, dtype: str, arch: int, variant: str) -> dict[str, plans.Launch]:
    """Every kernel launch the op makes at ``N x H x V`` (forward, combine, both backwards)."""
    features = VARIANTS[variant]
    align = 16 // _DTYPES[dtype] if h % (16 // _DTYPES[dtype]) == 0 else 1
    layout = plans.RowLayout(rows_inner=n, stride_outer=0, stride_inner=h, row_align=align)
    call = plans.HeadCall(
        n_rows=n, vocab=v, hidden_size=h, dtype=dtype, layout=layout, features=features,
        softcap=30.0 if features.has_softcap else 1.0,
        inv_temperature=1.0 / 0.7 if variant == "full" else 1.0,
    )
    forward, combine, _ = plans.forward_plan(call, num_sms=GPU_SMS.get(arch, 132))
    chunk = plans.backward_chunk_rows(n, v, _DTYPES[dtype], DEFAULT_BACKWARD_BUDGET) or plans.CHUNK_ROW_MULTIPLE
    out = {
        "forward": forward,
        "combine": combine,
        "dlogits": plans.dlogits_plan(call, 0, min(chunk, n)),
        # Minimum-memory backward: rows owned (dW by relaxed atomics) and, in deterministic
        # mode, vocab owned (no atomics at all).
        "fused_backward_rows": plans.fused_backward_plan(call, plans.FusedSchedule(
            own_rows=True, splits=1, compute_dh=True, compute_dw=True, compute_db=features.has_bias,
            dh_atomic=False, dw_atomic=True)),
        "fused_backward_vocab": plans.fused_backward_plan(call, plans.FusedSchedule(
            own_rows=False, splits=1, compute_dh=False, compute_dw=True, compute_db=features.has_bias,
            dh_atomic=False, dw_atomic=False)),
    }
    return out


def cases(n, h, v, dtype, arch, variants=("plain", "full"), configs: list | None = None):
    """``(kernel name, variant, launch, config)`` for every autotune configuration."""
    out = []
    for variant in variants:
        for name, launch in launches(n, h, v, dtype, arch, variant).items():
            if launch.table is None:
                if variant == variants[-1]:
                    out.append((name, variant, launch, None))
                continue
            for config in configs if configs is not None else autotune.configs_for(launch.table, arch, dtype):
                out.append((name, variant, launch, config))
    return out


def violations(row: Row) -> list[str]:
    """Rules of the compile gate for one row (empty: the row passes).

    Every kernel compiles and spills nothing; no atomic carries acquire/release fences; every
    kernel with a dot loads both operands of its logits GEMM loop asynchronously, only with
    16-byte copies (or TMA), and no dot loop waits on a synchronous global load; on sm_90 with
    half operands the dot is a wgmma. (Narrow loads outside the loops, e.g. of the bias
    vector once per tile, are reported but allowed.)
    """
    if not row.compiled:
        return [f"does not compile: {row.error}"]
    problems = []
    if row.spill_instructions:
        problems.append(f"{row.spill_instructions} spill instructions")
    if row.atomic_fences:
        problems.append(f"{row.atomic_fences} GPU-scope memory fences (acquire/release atomics)")
    if row.has_dot and row.dtype != "fp32":
        if row.gemm_loop_async < 2 and not row.tma_loads:
            problems.append(f"GEMM loop copies {row.gemm_loop_async} operand(s) asynchronously, not both")
        if row.async_narrow:
            problems.append(f"{row.async_narrow} asynchronous copies narrower than 16 bytes")
        if row.loop_sync_loads:
            problems.append(f"{row.loop_sync_loads} synchronous global loads inside dot loops")
        if row.arch >= 90 and not row.wgmma:
            problems.append("no wgmma on sm_90")
    return problems


def compile_case(case, arch: int, dtype: str, dump: str | None = None) -> Row:
    name, variant, launch, config = case
    row = Row(kernel=name, variant=variant, config=config_label(config), arch=arch, dtype=dtype,
              has_dot=name != "combine")
    try:
        compiled = aot.compile_launch(launch, config, arch)
    except Exception as error:  # noqa: BLE001 - any compiler failure is what the row reports
        row.error = f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"
        row.problems = violations(row)
        return row
    warps = config.num_warps if config is not None else launch.num_warps
    report = aot.inspect_kernel(compiled, arch, warps * 32)
    row.compiled = True
    row.registers = report.registers
    row.spill_instructions = report.spill_instructions
    row.shared_kib = round(report.shared_bytes / 1024, 1)
    row.ctas_per_sm = report.ctas_per_sm
    row.wgmma = ",".join(shape.removeprefix("HGMMA.") for shape in report.wgmma_shapes)
    row.async_16b = report.async_copy_bytes.get(16, 0)
    row.async_narrow = sum(c for width, c in report.async_copy_bytes.items() if width != 16)
    row.tma_loads = report.tma_loads
    row.narrow_global_loads = report.narrow_global_loads
    if report.dot_loops:
        row.gemm_loop_async = report.dot_loops[0][0]
        row.loop_sync_loads = sum(loads for _, loads in report.dot_loops)
    row.atomics = report.atomics
    row.atomic_fences = report.atomic_fences
    row.problems = violations(row)
    if dump:
        stem = Path(dump) / f"sm{arch}-{dtype}-{name}-{variant}-{row.config}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        for ext in ("ttgir", "ptx"):
            stem.with_suffix(f".{ext}").write_text(compiled.asm[ext])
        stem.with_suffix(".cubin").write_bytes(compiled.asm["cubin"])
    return row


# The work list of ``run``: forked workers inherit it and receive indices (launch plans hold
# lambdas, which do not pickle).
_WORK: list = []


def _compile_index(index: int) -> Row:
    return compile_case(*_WORK[index])


def run(n, h, v, dtype, arch, *, variants=("plain", "full"), configs=None, dump=None, workers=None) -> list[Row]:
    """Compile every case (in parallel processes) and return the rows in a stable order."""
    work = [(case, arch, dtype, dump) for case in cases(n, h, v, dtype, arch, variants, configs)]
    workers = workers or min(len(work), os.cpu_count() or 1)
    if workers <= 1:
        return [compile_case(*item) for item in work]
    _WORK[:] = work
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_compile_index, range(len(work))))


_COLUMNS = [
    ("kernel", 20), ("variant", 7), ("config", 16), ("registers", 4), ("spill_instructions", 6),
    ("shared_kib", 7), ("ctas_per_sm", 4), ("wgmma", 24), ("async_16b", 5), ("tma_loads", 3),
    ("gemm_loop_async", 4), ("loop_sync_loads", 4), ("narrow_global_loads", 6), ("atomics", 5),
    ("atomic_fences", 6),
]
_HEADERS = {
    "registers": "regs", "spill_instructions": "spills", "shared_kib": "smemKiB",
    "ctas_per_sm": "CTA", "async_16b": "cp16", "tma_loads": "TMA",
    "narrow_global_loads": "ld<=2B", "atomic_fences": "fences", "gemm_loop_async": "loopA",
    "loop_sync_loads": "loopS",
}


def format_table(rows: list[Row]) -> str:
    header = "  ".join(_HEADERS.get(name, name).ljust(width) for name, width in _COLUMNS) + "  verdict"
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = []
        for name, width in _COLUMNS:
            value = getattr(row, name)
            cells.append(str(value if row.compiled or name in ("kernel", "variant", "config") else "").ljust(width))
        verdict = "ok" if not row.problems else "FAIL: " + "; ".join(row.problems)
        lines.append("  ".join(cells) + "  " + verdict)
    return "\n".join(lines)


# The compile gate of CI: every architecture the lists are written for, both half dtypes with
# every configuration, fp32 too; the plainest variant on the main target as well.
GATE_MATRIX = (
    (90, "bf16", ("plain", "full")),
    (90, "fp16", ("full",)),
    (80, "bf16", ("full",)),
    (80, "fp16", ("full",)),
    (90, "fp32", ("full",)),
    (80, "fp32", ("full",)),
)


def run_matrix(n, h, v, matrix=GATE_MATRIX, *, workers=None) -> list[Row]:
    """``run`` over several (arch, dtype, variants) combinations in one process pool."""
    work = [
        (case, arch, dtype, None)
        for arch, dtype, variants in matrix
        for case in cases(n, h, v, dtype, arch, variants)
    ]
    _WORK[:] = work
    workers = workers or os.cpu_count() or 1
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_compile_index, range(len(work))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastalign.kernels.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="sm_90", help="GPU architecture: sm_90 (H100/H200) or sm_80 (A100)")
    parser.add_argument("--shape", default="16384x4096x128256", help="N x H x V of the problem")
    parser.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES), help="operand dtype")
    parser.add_argument("--variants", default="plain,full", help="comma list of: plain, full")
    parser.add_argument("--dump", default=None, help="write each configuration's .ttgir/.ptx/.cubin here")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a row breaks a gate rule")
    parser.add_argument("--gate", action="store_true",
                        help="run CI's compile gate: sm_90 and sm_80, bf16/fp16/fp32 (ignores --target/--dtype); implies --check")
    parser.add_argument("--workers", type=int, default=None, help="parallel compiler processes")
    args = parser.parse_args(argv)
    if interpreting():
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled for a GPU")
    try:
        n, h, v = parse_shape(args.shape)
        arch = parse_target(args.target)
        variants = tuple(x.strip() for x in args.variants.split(",") if x.strip())
        unknown = [x for x in variants if x not in VARIANTS]
        if unknown or not variants:
            raise ValueError(f"--variants must be a comma list of {sorted(VARIANTS)}, got {args.variants!r}")
    except ValueError as error:
        parser.error(str(error))
    if args.gate:
        rows = run_matrix(n, h, v, workers=args.workers)
        args.check = True
        for arch, dtype, _ in GATE_MATRIX:
            print(f"# sm_{arch}, {dtype}, N x H x V = {n} x {h} x {v}")
            print(format_table([r for r in rows if r.arch == arch and r.dtype == dtype]))
    else:
        rows = run(n, h, v, args.dtype, arch, variants=variants, dump=args.dump, workers=args.workers)
        print(f"# sm_{arch}, {args.dtype}, N x H x V = {n} x {h} x {v}")
        print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    failed = [r for r in rows if r.problems]
    if failed:
        print(f"# {len(failed)} of {len(rows)} rows break a gate rule", file=sys.stderr)
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
