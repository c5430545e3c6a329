"""A kernel that reads a plain (non-constexpr) module global: the interpreter runs it, no GPU
compiler accepts it. The compile gate's mutation twin."""

import triton
import triton.language as tl

from fastalign.kernels.plans import Launch

_SCALE = 2.0  # a plain float: what linear_logprob_fwd.py once did with its "minus infinity"


@triton.jit
def scale_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * _SCALE, mask=mask)


LAUNCH = Launch(
    kernel=scale_kernel,
    table=None,
    grid=lambda meta: (1,),
    pointers={"x_ptr": "*fp32", "y_ptr": "*fp32"},
    scalars={"n": 4096},
    constexprs={"BLOCK": 1024},
)
