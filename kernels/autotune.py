"""Autotune configurations of the fused linear log-prob kernels.

On a GPU the lists below are searched once per (H, V, dtype). Under ``TRITON_INTERPRET=1``
a single small configuration is used: the autotuner's benchmarking needs a GPU, and
interpreted kernels are slow enough that small blocks with few loop trips matter.
"""

import os

import triton


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _configs(shapes, warps_stages):
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_V": bv, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn, bv, bk in shapes
        for w, s in warps_stages
    ]


def forward_configs() -> list:
    if interpreting():
        return _configs([(32, 128, 32)], [(4, 1)])
    # Hopper-sized tiles first: 128x256 logits tiles keep wgmma busy; smaller ones for small N.
    return _configs(
        [(128, 256, 64), (128, 128, 64), (64, 256, 64), (64, 128, 64)],
        [(8, 3), (8, 4), (4, 4)],
    )


def backward_configs() -> list:
    if interpreting():
        return _configs([(32, 128, 32)], [(4, 1)])
    return _configs(
        [(128, 128, 64), (64, 128, 64), (128, 64, 64), (64, 64, 64)],
        [(8, 3), (4, 3), (8, 2)],
    )


# Largest BLOCK_V of any configuration: vocab splits are cut at multiples of it so that every
# configuration tiles a split exactly.
MAX_BLOCK_V = 256
