"""Cost model of the fused linear log-prob op: work, bytes and predicted time per phase.

For a shape (N rows, H, V), an operand dtype, a mode (``train``: gradients of hidden and
weight; ``frozen``: the weight is frozen, no dW; ``forward``: the reference model's no-grad
pass), a design and a GPU, it counts per phase

- tensor-core FLOPs (``2NHV`` per GEMM-equivalent),
- the elementwise epilogue (exponentials on the SFU, other fp32 operations),
- the HBM bytes the design moves, with the L2 reuse its tile order allows,
- L2 read-modify-write traffic (atomics and in-place fp32 accumulation),

and predicts ``time = max(FLOPs / peak, HBM bytes / bandwidth, L2 bytes / L2 bandwidth) +
epilogue`` (wave quantization included). The roofline is four GEMM-equivalents at peak
(forward, recompute, dH, dW; three without dW; one for the forward): ``fraction = roofline /
predicted``. The model counts work and traffic, not instruction-level efficiency: a kernel
that issues its MMAs at 70% of peak measures about 0.7x its prediction, which the GPU
benchmark reports as ``measured / predicted``.

Designs:

- ``fastalign``: today's default. Forward on a 1-D grid in grouped order (16 row blocks share
  each vocab chunk in L2); backward per chunk of rows: a Triton kernel writes the logits
  gradient, cuBLAS computes dH and dW (fp32 accumulation of dW across chunks).
- ``fastalign-fused``: the minimum-memory backward (one kernel, in-place fp32 dH and relaxed
  atomic dW), same forward.
- ``before``: the design this replaced (fastalign 0.1 before the rebuild): forward on a
  ``(row blocks, splits)`` grid where every row block streams the whole weight from HBM, and
  a fused backward with acquire/release fp32 atomics on dW (and on dH when V is split).

Assumed hardware numbers (datasheet peaks; L2 bandwidth and SFU rate are estimates, stated
here because they are not on datasheets): see ``GPUS``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field

# Tile shapes of the default sm_90 configurations (kernels/autotune.py) and the launch plans.
BLOCK_N, BLOCK_V, GROUP_N = 128, 128, 16
FORWARD_CHUNK_VOCAB = 1024
BACKWARD_BUDGET = 1 << 30
CHUNK_ROW_MULTIPLE = 128
# Elementwise work per logit (counted from the kernels' epilogues): exponentials and other
# fp32 operations. Forward: max, subtract, exp, two sums, target select, mask (+2 entropy).
FORWARD_OPS_PER_LOGIT = 10
BACKWARD_OPS_PER_LOGIT = 8


@dataclass(frozen=True)
class GPU:
    """Peak rates of one GPU (dense, no sparsity)."""

    name: str
    tensor_flops: float  # bf16/fp16 dense tensor-core FLOP/s
    fp32_flops: float  # non-tensor fp32 FLOP/s
    hbm_bandwidth: float  # bytes/s
    l2_bandwidth: float  # bytes/s (estimate)
    l2_bytes: int
    sms: int
    clock_hz: float
    sfu_per_sm_clock: int = 16  # exp2 per SM per clock

    @property
    def exp_rate(self) -> float:
        return self.sms * self.sfu_per_sm_clock * self.clock_hz


GPUS = {
    "H100": GPU("H100 SXM", 989e12, 67e12, 3.35e12, 7.0e12, 50 * 2**20, 132, 1.83e9),
    "H200": GPU("H200", 989e12, 67e12, 4.8e12, 7.0e12, 50 * 2**20, 132, 1.83e9),
    "A100": GPU("A100 SXM 80GB", 312e12, 19.5e12, 2.04e12, 4.0e12, 40 * 2**20, 108, 1.41e9),
}
DESIGNS = ("fastalign", "fastalign-fused", "before")
MODES = ("train", "frozen", "forward")


@dataclass
class Phase:
    """One phase of a call: what it computes and moves, and its predicted time."""

    name: str
    flops: float = 0.0
    exps: float = 0.0
    fp32_ops: float = 0.0
    hbm_bytes: float = 0.0
    l2_rmw_bytes: float = 0.0
    tiles: int = 0  # CTAs of the phase's grid (0: cuBLAS, not modeled)
    ctas_per_sm: int = 1
    ms: float = 0.0

    def predict(self, gpu: GPU) -> float:
        waves = 1.0
        if self.tiles:
            slots = gpu.sms * self.ctas_per_sm
            waves = math.ceil(self.tiles / slots) * slots / self.tiles
        mma = self.flops / gpu.tensor_flops * waves
        memory = self.hbm_bytes / gpu.hbm_bandwidth
        l2 = self.l2_rmw_bytes / gpu.l2_bandwidth
        epilogue = self.exps / gpu.exp_rate + self.fp32_ops / gpu.fp32_flops
        self.ms = 1e3 * (max(mma, memory, l2) + epilogue)
        return self.ms


@dataclass
class Prediction:
    """Phases, totals and the roofline fraction of one (shape, dtype, mode, design, GPU)."""

    n: int
    h: int
    v: int
    dtype_bytes: int
    mode: str
    design: str
    gpu: str
    phases: list[Phase] = field(default_factory=list)
    min_hbm_bytes: float = 0.0
    roofline_ms: float = 0.0
    predicted_ms: float = 0.0
    extra_memory_bytes: float = 0.0  # temporary buffers beyond inputs, outputs and gradients

    @property
    def fraction(self) -> float:
        return self.roofline_ms / self.predicted_ms if self.predicted_ms else 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["fraction"] = self.fraction
        out["hbm_bytes"] = sum(p.hbm_bytes for p in self.phases)
        out["l2_rmw_bytes"] = sum(p.l2_rmw_bytes for p in self.phases)
        return out


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _splits(row_blocks: int, v: int, gpu: GPU) -> int:
    """Vocab splits per row block of the split-grid kernels: about two waves of programs."""
    return max(1, min(_cdiv(2 * gpu.sms, row_blocks), v // 2048))


def _forward_phase(n, h, v, e, design: str, entropy: bool, gpu: GPU) -> Phase:
    logits = n * v
    row_blocks = _cdiv(n, BLOCK_N)
    if design == "before":
        # Every row block sweeps its vocab range tile by tile, streaming the weight from HBM
        # (programs drift apart; no grouping keeps a weight tile in L2 for the next block).
        weight_reads = row_blocks
        chunks = _splits(row_blocks, v, gpu)
    else:
        weight_reads = _cdiv(row_blocks, GROUP_N)
        chunks = _cdiv(v, FORWARD_CHUNK_VOCAB)
    stats = 3 if entropy else 2
    partials = chunks * n * 4 * stats * 2  # written by the forward, read by the combine
    return Phase(
        "forward", flops=2.0 * n * h * v, exps=logits,
        fp32_ops=logits * (FORWARD_OPS_PER_LOGIT + (2 if entropy else 0)),
        hbm_bytes=weight_reads * v * h * e + n * h * e + partials + n * 4 * 4,
        tiles=row_blocks * (_cdiv(v, BLOCK_V) if design != "before" else chunks), ctas_per_sm=1,
    )


def chunk_rows(n: int, v: int, e: int, budget: int = BACKWARD_BUDGET) -> int:
    rows = (budget // (v * e)) // CHUNK_ROW_MULTIPLE * CHUNK_ROW_MULTIPLE
    return max(CHUNK_ROW_MULTIPLE, min(rows, _cdiv(n, CHUNK_ROW_MULTIPLE) * CHUNK_ROW_MULTIPLE))


def _chunked_backward(n, h, v, e, with_dw: bool) -> tuple[list[Phase], float]:
    rows = chunk_rows(n, v, e)
    chunks = _cdiv(n, rows)
    logits = n * v
    row_blocks = _cdiv(n, BLOCK_N)
    phases = [Phase(
        "dlogits", flops=2.0 * n * h * v, exps=logits, fp32_ops=logits * BACKWARD_OPS_PER_LOGIT,
        # grouped recompute (as the forward) + the gradient written once
        hbm_bytes=_cdiv(row_blocks, GROUP_N) * v * h * e + n * h * e + logits * e,
        tiles=row_blocks * _cdiv(v, BLOCK_V),
    )]
    # dH = G @ W per chunk: G read, W read per chunk, fp32 result written, converted to e.
    phases.append(Phase("dH (cuBLAS)", flops=2.0 * n * h * v,
                        hbm_bytes=logits * e + chunks * v * h * e + n * h * (4 + 4 + e)))
    extra = rows * v * e + rows * h * 4
    if with_dw:
        # dW += G^T @ h per chunk into an fp32 accumulator (read and written per chunk).
        phases.append(Phase("dW (cuBLAS)", flops=2.0 * n * h * v,
                            hbm_bytes=logits * e + n * h * e + chunks * v * h * 4 * 2))
        phases.append(Phase("dW cast", hbm_bytes=v * h * (4 + e)))
        extra += v * h * 4
    return phases, extra


def _fused_backward(n, h, v, e, with_dw: bool, design: str, gpu: GPU) -> tuple[list[Phase], float]:
    logits = n * v
    row_blocks = _cdiv(n, BLOCK_N)
    vocab_tiles = _cdiv(v, BLOCK_V)
    gemms = 3 if with_dw else 2
    # Each row block recomputes its logits and reads W again for dH: W streamed per row block.
    weight_reads = row_blocks * (2 if design == "before" else 1)
    # dH rows are read-modify-written in fp32 once per vocab tile (in L2), dW once per row block.
    dh_rmw = vocab_tiles * n * h * 4 * 2
    dw_rmw = row_blocks * v * h * 4 * 2 if with_dw else 0
    phase = Phase(
        "fused backward", flops=gemms * 2.0 * n * h * v, exps=logits,
        fp32_ops=logits * BACKWARD_OPS_PER_LOGIT,
        hbm_bytes=weight_reads * v * h * e + n * h * e + n * h * 4 + (v * h * 4 * 2 if with_dw else 0),
        l2_rmw_bytes=dh_rmw + dw_rmw, tiles=row_blocks * _splits(row_blocks, v, gpu),
    )
    casts = Phase("casts", hbm_bytes=n * h * (4 + e) + (v * h * (4 + e) if with_dw else 0))
    return [phase, casts], n * h * 4 + (v * h * 4 if with_dw else 0)


def predict(n: int, h: int, v: int, *, dtype_bytes: int = 2, mode: str = "train",
            design: str = "fastalign", gpu: str = "H100", entropy: bool = False) -> Prediction:
    """Predicted phases and time of one call; see the module docstring."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
    if gpu not in GPUS:
        raise ValueError(f"gpu must be one of {sorted(GPUS)}, got {gpu!r}")
    if min(n, h, v, dtype_bytes) <= 0:
        raise ValueError(f"sizes must be positive, got N={n} H={h} V={v} dtype_bytes={dtype_bytes}")
    spec = GPUS[gpu]
    e = dtype_bytes
    out = Prediction(n, h, v, e, mode, design, spec.name)
    out.phases.append(_forward_phase(n, h, v, e, design, entropy, spec))
    gemms = {"forward": 1, "frozen": 3, "train": 4}[mode]
    if mode != "forward":
        with_dw = mode == "train"
        if design == "fastalign":
            phases, extra = _chunked_backward(n, h, v, e, with_dw)
        else:
            phases, extra = _fused_backward(n, h, v, e, with_dw, design, spec)
        out.phases += phases
        out.extra_memory_bytes = extra
    for phase in out.phases:
        phase.predict(spec)
    out.predicted_ms = sum(p.ms for p in out.phases)
    out.roofline_ms = 1e3 * gemms * 2.0 * n * h * v / spec.tensor_flops
    # Compulsory traffic: read h and W once; write dH (and dW) once.
    out.min_hbm_bytes = (n * h + v * h) * e + (0 if mode == "forward" else n * h * e) + (
        v * h * e if mode == "train" else 0)
    return out


GRID = [(n, 4096, 128256) for n in (4096, 16384, 32768)]


def table(grid=GRID, gpus=("H100", "H200"), designs=DESIGNS, modes=("train", "forward")) -> list[Prediction]:
    return [predict(n, h, v, mode=mode, design=design, gpu=gpu)
            for gpu in gpus for (n, h, v) in grid for mode in modes for design in designs
            if not (mode == "forward" and design == "fastalign-fused")]


def format_markdown(rows: list[Prediction]) -> str:
    lines = [
        "| GPU | N x H x V | mode | design | phases: ms (HBM GB / L2 RMW GB) | predicted ms | 4-GEMM roofline ms | fraction |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        phases = "; ".join(
            f"{p.name} {p.ms:.1f} ({p.hbm_bytes / 1e9:.1f}" + (f" / {p.l2_rmw_bytes / 1e9:.0f})" if p.l2_rmw_bytes else ")")
            for p in r.phases
        )
        lines.append(f"| {r.gpu} | {r.n}x{r.h}x{r.v} | {r.mode} | {r.design} | {phases} | "
                     f"{r.predicted_ms:.1f} | {r.roofline_ms:.1f} | {r.fraction:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastalign.kernels.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--markdown", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    rows = table()
    text = format_markdown(rows)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpus": {k: asdict(g) for k, g in GPUS.items()},
                       "rows": [r.as_dict() for r in rows]}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
