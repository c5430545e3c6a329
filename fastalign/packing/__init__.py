"""Packing of token sequences into fixed-budget rows (C++ extension with a Python twin)."""

from fastalign.packing.bin_packing import first_fit_decreasing

__all__ = ["first_fit_decreasing"]
