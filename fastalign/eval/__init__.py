"""Evaluation: held-out preference accuracy and verifier-judged win rates."""

from fastalign.eval.preference import preference_accuracy
from fastalign.eval.win_rate import reward_win_rate, win_rate

__all__ = ["preference_accuracy", "reward_win_rate", "win_rate"]
