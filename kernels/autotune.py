"""Autotune configurations of the kernels, per GPU architecture.

Every configuration listed for an architecture compiles for it without register spills,
and on sm_90 issues wgmma with 16-byte asynchronous loads of both operands: the compile
gate (``tests/kernels/test_compile_gate.py``) checks exactly these lists, ahead of time and
without a GPU. ``prune_for_device`` keeps, at run time, the list of the GPU the kernel runs
on, so the autotuner never times a configuration the gate has not checked. Under
``TRITON_INTERPRET=1`` one small configuration is used: the autotuner's benchmarking needs
a GPU, and interpreted kernels are slow enough that small blocks with few loop trips matter.
"""

from __future__ import annotations

import triton

# One definition of the TRITON_INTERPRET test for kernels and ops (kernels/interpret.py).
from .interpret import interpreting

# Largest BLOCK_V of any configuration: vocab chunks are cut at multiples of it so that every
# configuration tiles a chunk exactly.
MAX_BLOCK_V = 256
# Largest BLOCK_K of any configuration: H a multiple of it needs no mask along K.
MAX_BLOCK_K = 64
# Architectures the lists are written (and gated) for; newer GPUs use the sm_90 lists, the
# rest the sm_80 lists.
ARCHS = (80, 90)


def _config(bn, bv, bk, warps, stages, group=None):
    meta = {"BLOCK_N": bn, "BLOCK_V": bv, "BLOCK_K": bk}
    if group is not None:
        meta["GROUP_N"] = group
    return triton.Config(meta, num_warps=warps, num_stages=stages)


# (BLOCK_N, BLOCK_V, BLOCK_K, warps, stages[, GROUP_N]) per kernel, architecture and operand
# kind ("half": bf16/fp16 on tensor cores; "fp32": exact fp32 dots, which need twice the
# shared memory per stage). 256-wide vocab tiles are absent on purpose: with the online
# softmax epilogue they spill on sm_90 (the report command shows it).
_TABLE = {
    "forward": {
        (90, "half"): [(128, 128, 64, 8, 4, 16), (64, 128, 64, 4, 4, 16)],
        (80, "half"): [(128, 128, 32, 8, 4, 16), (64, 128, 64, 4, 4, 16)],
        (90, "fp32"): [(64, 64, 32, 4, 3, 16)],
        (80, "fp32"): [(64, 64, 32, 4, 3, 16)],
    },
    "dlogits": {
        (90, "half"): [(128, 128, 64, 8, 4, 16), (64, 128, 64, 4, 4, 16)],
        (80, "half"): [(128, 128, 32, 8, 4, 16), (64, 128, 64, 4, 4, 16)],
        (90, "fp32"): [(64, 64, 32, 4, 3, 16)],
        (80, "fp32"): [(64, 64, 32, 4, 3, 16)],
    },
    # The minimum-memory backward holds the logits tile, its gradient and two partial
    # products at once: only 64-wide vocab tiles fit in registers without spilling.
    "fused_backward": {
        (90, "half"): [(128, 64, 32, 8, 3)],
        (80, "half"): [(128, 64, 32, 8, 3)],
        (90, "fp32"): [(64, 32, 32, 4, 2)],
        (80, "fp32"): [(64, 32, 32, 4, 2)],
    },
}
_INTERPRETER = {
    "forward": [(32, 256, 32, 4, 1, 2)],
    "dlogits": [(32, 256, 32, 4, 1, 2)],
    "fused_backward": [(32, 256, 32, 4, 1)],
}
KERNEL_TABLES = tuple(_TABLE)


def operand_kind(dtype: str) -> str:
    """``"fp32"`` for fp32 operands, ``"half"`` for bf16/fp16."""
    return "fp32" if dtype in ("fp32", "float32") else "half"


def configs_for(kernel: str, arch: int | None, dtype: str = "bf16") -> list:
    """The configurations of ``kernel`` on compute capability ``arch`` (e.g. 90) for operands
    of ``dtype``, or the interpreter's single one when ``arch`` is None."""
    if arch is None:
        return [_config(*row) for row in _INTERPRETER[kernel]]
    table = _TABLE[kernel][(90 if arch >= 90 else 80, operand_kind(dtype))]
    return [_config(*row) for row in table]


def _all_configs(kernel: str) -> list:
    if interpreting():
        return configs_for(kernel, None)
    seen, out = set(), []
    for arch in ARCHS:
        for kind in ("half", "fp32"):
            for cfg in configs_for(kernel, arch, kind):
                key = _key(cfg)
                if key not in seen:
                    seen.add(key)
                    out.append(cfg)
    return out


def _key(cfg) -> tuple:
    return tuple(sorted(cfg.kwargs.items())), cfg.num_warps, cfg.num_stages


def forward_configs() -> list:
    return _all_configs("forward")


def dlogits_configs() -> list:
    return _all_configs("dlogits")


def fused_backward_configs() -> list:
    return _all_configs("fused_backward")


def _current_arch() -> int | None:
    if interpreting():
        return None
    from triton.runtime import driver

    target = driver.active.get_current_target()
    return target.arch if isinstance(target.arch, int) else None


def _pruner(kernel: str):
    def prune(configs, named_args, **kwargs):
        arch = _current_arch()
        if arch is None:
            return configs
        dtype = str(getattr(named_args.get("h_ptr"), "dtype", "bf16")).replace("torch.", "")
        allowed = {_key(c) for c in configs_for(kernel, arch, dtype)}
        kept = [c for c in configs if _key(c) in allowed]
        return kept or configs

    return prune


prune_forward_for_device = _pruner("forward")
prune_dlogits_for_device = _pruner("dlogits")
prune_fused_backward_for_device = _pruner("fused_backward")
