"""The named choices of fastalign's options (loss types, KL estimators, ...), kept free of torch.

The losses and the trainers check values against these tuples, and the CLI lists them in its
help: both read them from here, so ``fastalign train dpo --help`` can name every loss type
without importing torch (which costs seconds).
"""

from __future__ import annotations

# DPO-family losses of ``fastalign.losses.dpo_loss`` (TRL 1.16's loss types).
LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
# Preference losses without a reference model (``DPOConfig.loss_type`` with ``reference='none'``).
REFERENCE_FREE_LOSSES = ("simpo", "cpo", "orpo")
KL_ESTIMATORS = ("k1", "k2", "k3")
ADVANTAGE_SCALING = ("std", "none")
AGGREGATIONS = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean", "seq_mean_token_sum_norm")
ON_NONFINITE = ("stop", "skip")
# Where a text prompt ends when rows are tokenized (``fastalign.data.encoding``): "joint" is
# TRL 1.16's rule (the common prefix of prompt + answer tokenizations), "separate" tokenizes
# prompt and answers on their own.
PROMPT_BOUNDARIES = ("joint", "separate")
