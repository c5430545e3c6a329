"""Launch plans: the grid, scalar and constexpr arguments of every kernel for a problem shape.

Pure Python (no torch, no tensors): ``fastalign.ops`` allocates the buffers and launches with
a plan; the ahead-of-time compile gate and ``python -m fastalign.kernels.report`` compile
from the very same plan, so what is checked is what runs. Pointer arguments are declared by
name with their Triton element type (``"*bf16"``); the launcher supplies tensors for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from triton.runtime.jit import JITFunction

from .autotune import MAX_BLOCK_K, MAX_BLOCK_V
from .linear_logprob_bwd import linear_logprob_dlogits_kernel
from .linear_logprob_bwd_fused import linear_logprob_bwd_fused_kernel
from .linear_logprob_fwd import linear_logprob_combine_kernel, linear_logprob_fwd_kernel

# Vocab columns one forward program sweeps when rows alone fill the GPU: with 16 row blocks
# per group, the weight of the chunks in flight and the group's hidden blocks fit in L2.
FORWARD_CHUNK_VOCAB = 1024
# Nominal row block used to size grids before the autotuner picks BLOCK_N.
NOMINAL_BLOCK_N = 128
# Rows of a backward chunk are a multiple of every BLOCK_N.
CHUNK_ROW_MULTIPLE = 128
COMBINE_BLOCK = 1024
# The largest autotune bucket of N: beyond it one tuning serves every size.
MAX_N_BUCKET = 1 << 16
# The gradient-of-logits buffer's row stride is padded to 16-byte multiples for cuBLAS.
OUT_STRIDE_MULTIPLE = 64

_TRITON_TYPES = {"bf16", "fp16", "fp32", "fp64"}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def n_bucket(n: int) -> int:
    """N rounded up to a power of two (at most ``MAX_N_BUCKET``): the autotune key."""
    return min(MAX_N_BUCKET, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@dataclass(frozen=True)
class RowLayout:
    """How flat row ``n`` of hidden is addressed: ``(n // inner) * outer + (n % inner) * inner_stride``.

    ``row_align`` is the number of elements every row start is a multiple of (16 bytes worth
    when the data pointer and both strides allow it, else 1).
    """

    rows_inner: int
    stride_outer: int
    stride_inner: int
    row_align: int


@dataclass(frozen=True)
class Features:
    """Which optional inputs and outputs a call has (each one a constexpr of the kernels)."""

    has_bias: bool = False
    has_softcap: bool = False
    with_entropy: bool = False
    with_logit_sum: bool = False
    with_max_logit: bool = False
    # Upstream gradients present in the backward.
    has_dlogp: bool = True
    has_dlse: bool = False
    has_dentropy: bool = False
    has_dzsum: bool = False


@dataclass
class Launch:
    """One kernel launch: ``kernel[grid](**pointers, **scalars, **constexprs)``."""

    kernel: object  # triton Autotuner or JITFunction
    table: str | None  # autotune table name in ``autotune.configs_for``; None: not autotuned
    grid: Callable[[dict], tuple]
    pointers: dict[str, str]  # name -> Triton pointer type, e.g. "*bf16"
    scalars: dict[str, int | float]
    constexprs: dict[str, object] = field(default_factory=dict)
    # Launch options of a kernel that is not autotuned.
    num_warps: int = 4
    num_stages: int = 1

    @property
    def function(self):
        """The underlying ``JITFunction`` (unwrapping the autotuner)."""
        fn = self.kernel
        while not isinstance(fn, JITFunction) and hasattr(fn, "fn"):
            fn = fn.fn
        return fn


def _dot_precision(dtype: str) -> str:
    # Triton's default for fp32 dots is TF32, which is not fp32; half types ignore this.
    return "ieee" if dtype == "fp32" else "tf32"


@dataclass(frozen=True)
class HeadCall:
    """One call of the fused head as the kernels see it: shapes, operand dtype (a Triton type
    name, e.g. ``"bf16"``), how hidden rows are addressed, which features are on, and the
    scalars shared by every kernel."""

    n_rows: int
    vocab: int
    hidden_size: int
    dtype: str
    layout: RowLayout
    features: Features
    targets_dtype: str = "i64"
    ignore_index: int = -100
    softcap: float = 1.0
    inv_temperature: float = 1.0
    stride_wv: int | None = None  # row stride of the weight (default: hidden_size)

    def __post_init__(self):
        if self.dtype not in _TRITON_TYPES:
            raise ValueError(f"dtype must be one of {sorted(_TRITON_TYPES)}, got {self.dtype!r}")

    def input_pointers(self) -> dict[str, str]:
        return {"h_ptr": f"*{self.dtype}", "w_ptr": f"*{self.dtype}", "b_ptr": f"*{self.dtype}",
                "targets_ptr": f"*{self.targets_dtype}"}

    def row_scalars(self) -> dict:
        """Hidden-row addressing, weight stride and the per-logit scalars."""
        return dict(
            rows_inner=self.layout.rows_inner, stride_outer=self.layout.stride_outer,
            stride_inner=self.layout.stride_inner, stride_wv=self.stride_wv or self.hidden_size,
            ignore_index=self.ignore_index, softcap=float(self.softcap),
            inv_temperature=float(self.inv_temperature),
        )

    def tile_constexprs(self) -> dict:
        """What every logits tile is compiled for."""
        return dict(
            HAS_BIAS=self.features.has_bias, HAS_SOFTCAP=self.features.has_softcap,
            ROW_ALIGN=self.layout.row_align, EVEN_K=self.hidden_size % MAX_BLOCK_K == 0,
            DOT_PRECISION=_dot_precision(self.dtype),
        )

    def upstream_constexprs(self) -> dict:
        f = self.features
        return dict(HAS_DLOGP=f.has_dlogp, HAS_DLSE=f.has_dlse, HAS_DENTROPY=f.has_dentropy, HAS_DZSUM=f.has_dzsum)


def forward_chunks(n_rows: int, vocab: int, num_sms: int, num_chunks: int | None = None) -> tuple[int, int]:
    """``(num_chunks, v_per_chunk)``: vocab chunks of the forward grid.

    Wide chunks when the rows fill the GPU (fewer partials to combine); narrower ones, down to
    one tile, when N is small so that about two waves of programs exist.
    """
    if num_chunks is None:
        row_blocks = cdiv(max(n_rows, 1), NOMINAL_BLOCK_N)
        for_occupancy = cdiv(2 * num_sms, row_blocks)
        num_chunks = max(cdiv(vocab, FORWARD_CHUNK_VOCAB), min(for_occupancy, cdiv(vocab, MAX_BLOCK_V)))
    v_per_chunk = cdiv(cdiv(vocab, max(num_chunks, 1)), MAX_BLOCK_V) * MAX_BLOCK_V
    return cdiv(vocab, v_per_chunk), v_per_chunk


_PARTIALS = ("part_max_ptr", "part_sum_ptr", "part_moment_ptr", "part_zsum_ptr", "target_logit_ptr")


def forward_plan(call: HeadCall, *, num_sms: int, num_chunks: int | None = None) -> tuple[Launch, Launch, int]:
    """The forward kernel's and the combine kernel's launches, and the number of chunks."""
    n, f = call.n_rows, call.features
    chunks, v_per_chunk = forward_chunks(n, call.vocab, num_sms, num_chunks)
    partials = {name: "*fp32" for name in _PARTIALS}
    forward = Launch(
        kernel=linear_logprob_fwd_kernel,
        table="forward",
        grid=lambda meta: (cdiv(n, meta["BLOCK_N"]) * chunks,),
        pointers={**call.input_pointers(), **partials},
        scalars=dict(N=n, V=call.vocab, H=call.hidden_size, n_bucket=n_bucket(n), num_chunks=chunks,
                     v_per_chunk=v_per_chunk, **call.row_scalars()),
        constexprs=dict(WITH_ENTROPY=f.with_entropy, WITH_ZSUM=f.with_logit_sum, **call.tile_constexprs()),
    )
    outputs = ("logprob_ptr", "entropy_ptr", "lse_ptr", "zsum_ptr", "max_ptr")
    combine = Launch(
        kernel=linear_logprob_combine_kernel,
        table=None,
        grid=lambda meta: (cdiv(n, COMBINE_BLOCK),),
        pointers={"targets_ptr": f"*{call.targets_dtype}", **partials, **{name: "*fp32" for name in outputs}},
        scalars=dict(N=n, num_chunks=chunks, ignore_index=call.ignore_index),
        constexprs=dict(WITH_ENTROPY=f.with_entropy, WITH_ZSUM=f.with_logit_sum, SAVE_LSE=True,
                        WITH_MAX=f.with_max_logit, BLOCK=COMBINE_BLOCK),
        num_warps=4,
    )
    return forward, combine, chunks


def _backward_pointers(call: HeadCall) -> dict[str, str]:
    statistics = ("lse_ptr", "entropy_ptr", "dlogp_ptr", "dlse_ptr", "dentropy_ptr", "dzsum_ptr")
    return {**call.input_pointers(), **{name: "*fp32" for name in statistics}}


def dlogits_out_stride(vocab: int) -> int:
    return cdiv(vocab, OUT_STRIDE_MULTIPLE) * OUT_STRIDE_MULTIPLE


def backward_chunk_rows(n_rows: int, vocab: int, elem_bytes: int, budget_bytes: int) -> int:
    """Rows per backward chunk whose ``[rows, V]`` gradient fits ``budget_bytes`` (0: none fits)."""
    per_row = dlogits_out_stride(vocab) * elem_bytes
    rows = (budget_bytes // per_row) // CHUNK_ROW_MULTIPLE * CHUNK_ROW_MULTIPLE
    if rows <= 0:
        return 0
    return min(rows, cdiv(n_rows, CHUNK_ROW_MULTIPLE) * CHUNK_ROW_MULTIPLE)


def dlogits_plan(call: HeadCall, row_start: int, chunk_rows: int) -> Launch:
    """The gradient-of-logits kernel for rows ``[row_start, row_start + chunk_rows)``."""
    vocab = call.vocab
    return Launch(
        kernel=linear_logprob_dlogits_kernel,
        table="dlogits",
        grid=lambda meta: (cdiv(chunk_rows, meta["BLOCK_N"]) * cdiv(vocab, meta["BLOCK_V"]),),
        pointers={**_backward_pointers(call), "out_ptr": f"*{call.dtype}"},
        scalars=dict(row_start=row_start, chunk_rows=chunk_rows, V=vocab, H=call.hidden_size,
                     n_bucket=n_bucket(call.n_rows), stride_out=dlogits_out_stride(vocab),
                     **call.row_scalars()),
        constexprs=dict(**call.upstream_constexprs(), **call.tile_constexprs()),
    )


@dataclass(frozen=True)
class FusedSchedule:
    """One launch of the minimum-memory backward: who owns what, and which sums are atomic."""

    own_rows: bool
    splits: int
    compute_dh: bool
    compute_dw: bool
    compute_db: bool
    dh_atomic: bool
    dw_atomic: bool
    filter_eps: float | None = None


def fused_backward_plan(call: HeadCall, schedule: FusedSchedule) -> Launch:
    """One launch of the minimum-memory backward (see ``linear_logprob_bwd_fused``)."""
    n, vocab = call.n_rows, call.vocab

    def grid(meta):
        owned = cdiv(n, meta["BLOCK_N"]) if schedule.own_rows else cdiv(vocab, meta["BLOCK_V"])
        return (owned, schedule.splits)

    return Launch(
        kernel=linear_logprob_bwd_fused_kernel,
        table="fused_backward",
        grid=grid,
        pointers={**_backward_pointers(call), "dh_ptr": "*fp32", "dw_ptr": "*fp32", "db_ptr": "*fp32"},
        scalars=dict(
            N=n, V=vocab, H=call.hidden_size, n_bucket=n_bucket(n), **call.row_scalars(),
            filter_eps=float(schedule.filter_eps) if schedule.filter_eps is not None else 0.0,
        ),
        constexprs=dict(
            **call.upstream_constexprs(),
            COMPUTE_DH=schedule.compute_dh, COMPUTE_DW=schedule.compute_dw, COMPUTE_DB=schedule.compute_db,
            DH_ATOMIC=schedule.dh_atomic, DW_ATOMIC=schedule.dw_atomic, OWN_ROWS=schedule.own_rows,
            # The logit-sum gradient is uniform over the vocabulary: nothing may be filtered.
            FILTER=schedule.filter_eps is not None and not call.features.has_dzsum,
            **call.tile_constexprs(),
        ),
    )
