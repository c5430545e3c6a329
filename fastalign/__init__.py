"""fastalign: fast, memory-lean preference training (DPO, RLHF) for language models.

The public names are imported on first use (PEP 562): ``import fastalign`` alone, and the
``fastalign`` command's ``--help``, stay free of torch, which takes seconds to import.

How the package is laid out, what may import what, and the path of one DPO step through the
code: docs/architecture.md in the repository.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "FusedLinearCPOLoss": "fastalign.losses",
    "FusedLinearDPOLoss": "fastalign.losses",
    "FusedLinearGRPOLoss": "fastalign.losses",
    "FusedLinearKTOLoss": "fastalign.losses",
    "FusedLinearORPOLoss": "fastalign.losses",
    "FusedLinearPPOLoss": "fastalign.losses",
    "FusedLinearSimPOLoss": "fastalign.losses",
    "LogprobsAndEntropy": "fastalign.ops",
    "linear_cross_entropy": "fastalign.ops",
    "linear_logprobs": "fastalign.ops",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastalign' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
