"""Loads the optional C++ extension ``fastalign._C`` once, with a logged fallback.

Set ``FASTALIGN_REQUIRE_EXT=1`` (CI does) to make a missing extension an error, so tests
that compare the extension with its Python twin can never silently compare the twin with
itself.
"""

from __future__ import annotations

import functools
import logging
import os
from types import ModuleType

logger = logging.getLogger("fastalign")


@functools.cache
def native_extension() -> ModuleType | None:
    """The compiled ``fastalign._C`` module, or ``None`` when it was not built."""
    try:
        from fastalign import _C
    except ImportError as error:
        if os.environ.get("FASTALIGN_REQUIRE_EXT", "0") == "1":
            raise ImportError(
                "FASTALIGN_REQUIRE_EXT=1 but the C++ extension fastalign._C is not built; "
                "reinstall with a C++ compiler and pybind11 available"
            ) from error
        logger.info("fastalign C++ extension not built (%s); using the pure-Python twins", error)
        return None
    return _C
