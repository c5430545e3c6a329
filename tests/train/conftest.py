"""Shared values of the trainer tests. The SFT run that serves the DPO, CLI and RL tests
(``sft_run``) is a session fixture of tests/conftest.py: the evaluation tests use it too."""

from __future__ import annotations

from tests.conftest import SEED

__all__ = ["SEED"]
