"""Evaluation: held-out preference accuracy and verifier-judged win rates."""

from fastalign.eval.preference import preference_accuracy

__all__ = ["preference_accuracy"]
