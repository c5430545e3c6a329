"""Microbenchmarks on pytest-benchmark (not part of the test run: ``testpaths`` is ``tests``).

    pytest bench/micro --benchmark-only                       # this machine's CPU/GPU
    pytest bench/micro --benchmark-only --benchmark-autosave  # keep a run in .benchmarks/
    pytest bench/micro --benchmark-only --benchmark-compare   # compare with the last saved run

Shapes are small on CPU (the whole set runs in about a minute) and the core shapes on CUDA.
Triton, Liger and Cut Cross-Entropy run only on CUDA (the interpreter's timings mean
nothing); what is missing is skipped with the reason. Each benchmark's ``extra_info`` holds
the shape, dtype, tokens/s and peak memory above the inputs.
"""

from __future__ import annotations

import os

# The kernel tests set TRITON_INTERPRET for CPU runs; benchmarks must never interpret.
os.environ.pop("TRITON_INTERPRET", None)

import pytest  # noqa: E402
import torch  # noqa: E402



@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

