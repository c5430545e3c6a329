"""Test configuration. Must run before any Triton kernel module is imported."""

import os

import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through the interpreter (slow: tests keep sizes small).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def kernel_device() -> torch.device:
    """Where Triton kernels run in this session: the GPU if any, else the CPU interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
