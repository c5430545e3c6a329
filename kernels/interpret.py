"""Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``).

The one definition of that check: the autotune tables (``autotune``) and the compile report
read it here, and ``fastalign.ops.dispatch`` delegates to it. This module imports neither
``triton`` nor ``fastalign``, so dispatch can ask it on machines without Triton.
"""

from __future__ import annotations

import os


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1``, where Triton kernels run on CPU tensors.

    Read per call (not cached): tests and users set the variable after import.
    """
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
