"""Evaluation: held-out preference accuracy and verifier-judged win rates."""

from fastalign.eval.preference import preference_accuracy
from fastalign.eval.win_rate import win_rate

__all__ = ["preference_accuracy", "win_rate"]
