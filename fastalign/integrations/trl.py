"""``fastalign.integrations.trl.DPOTrainer``: TRL's DPO trainer with fastalign's head.

A one-line swap for TRL users::

    from fastalign.integrations.trl import DPOTrainer   # was: from trl import DPOTrainer

Same constructor, ``DPOConfig``, loss types and metric names: TRL's own ``_compute_loss`` still
computes every loss and metric. What changes is what the model returns when TRL calls it with
``fused_lm_head=True``: fastalign serves that contract (see ``integrations/hf.py``) with its
fused op, and, where the batch allows (right-padded ``[chosen; rejected]`` rows with identical
prompts, no extra model inputs), runs the decoder once over a prefix-shared packed row, so each
prompt is encoded once instead of twice for the policy and for the reference. Batches that do not
allow it take the padded path. One extra metric, ``fastalign/shared_prompts``, is the fraction of
forwards that shared prompts.

Tokenization is TRL's own (the drop-in leaves it alone), which is the rule of
``fastalign.data.encoding`` with its default ``boundary="joint"``, so this drop-in, fastalign's
trainers and ``fastalign eval`` give the same token lists (tested with BPE chat tokenizers). TRL
differs only where fastalign's rules are stricter: it adds no EOS to chat answers of a template
that never ends a turn, appends a second end token to explicit answers that already end with
the template's end-of-turn text, and doubles BOS on explicit prompts that already start with it.

Supported TRL versions: ``SUPPORTED_TRL`` (the ``[trl]`` extra pins the same range).
"""

from __future__ import annotations

from typing import Any

from packaging.version import Version

try:
    import trl
    from trl import DPOTrainer as _TRLDPOTrainer
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("fastalign.integrations.trl needs TRL: pip install 'fastalign[trl]'") from error

from fastalign.integrations.hf import fused_forward_counts, has_fused_head, paired_rows, with_fused_head

SUPPORTED_TRL = (Version("1.16.0"), Version("2.0.0"))
if not SUPPORTED_TRL[0] <= Version(trl.__version__) < SUPPORTED_TRL[1]:
    raise ImportError(
        f"fastalign.integrations.trl supports trl>={SUPPORTED_TRL[0]},<{SUPPORTED_TRL[1]} (its fused-head "
        f"contract); found trl {trl.__version__}"
    )

_POLICY_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


class DPOTrainer(_TRLDPOTrainer):
    """TRL's ``DPOTrainer`` whose log-probs come from fastalign (same arguments as TRL's).

    Extra keyword arguments (both optional):
        share_prompts: encode each prompt once for its two answers when the batch allows it
            (default True).
        attention: packed attention backend for shared prompts (``"auto"`` or a name in
            ``fastalign.attention.BACKENDS``).
    """

    def __init__(self, *args: Any, share_prompts: bool = True, attention: str = "auto", **kwargs: Any) -> None:
        if not isinstance(share_prompts, bool):
            raise ValueError(f"share_prompts must be a bool, got {share_prompts!r}")
        if not isinstance(attention, str):
            raise ValueError(f"attention must be a backend name, got {attention!r}")
        self._fastalign_options = dict(share_prompts=share_prompts, attention=attention)
        super().__init__(*args, **kwargs)
        self._install_fastalign_heads()

    def _install_fastalign_heads(self) -> None:
        # TRL puts its own head on the models in __init__ (before precomputing reference
        # log-probs, which already goes through here); ours replaces it, keeping its contract.
        if has_fused_head(self.model):
            return
        outputs = _POLICY_OUTPUTS + (("log_sum_sq_probs",) if self.use_weighting else ())
        with_fused_head(self.model, outputs=outputs, **self._fastalign_options)
        if self.ref_model is not None:
            with_fused_head(self.ref_model, **self._fastalign_options)

    def compute_ref_log_probs(self, model, inputs):  # noqa: D102 - TRL's, with fastalign's head
        self._install_fastalign_heads()  # `model` is self.model or self.ref_model (or an engine around them)
        with paired_rows():
            return super().compute_ref_log_probs(model, inputs)

    def _compute_loss(self, model, inputs, return_outputs):  # noqa: D102 - TRL's, with fastalign's head
        shared_before, _ = fused_forward_counts(self.model)
        with paired_rows():
            result = super()._compute_loss(model, inputs, return_outputs)
        shared = fused_forward_counts(self.model)[0] > shared_before
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["fastalign/shared_prompts"].append(float(shared))
        return result
