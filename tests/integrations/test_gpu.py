"""GPU checks of the integrations: the fused head in bf16 on the Triton kernels equals the
model's own loss within bf16 tolerance, and the prefix-shared path equals the padded one."""

from __future__ import annotations

import pytest
import torch

from fastalign.integrations import paired_rows, with_fused_head
from tests.integrations.test_hf import _pair_batch
from tests.models.tiny_models import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# bf16 logits carry ~3 significant digits; a mean NLL over ~30 tokens agrees to ~1e-2 relative.
BF16_RTOL = 2e-2


def test_bf16_fused_loss_equals_own_loss_and_shared_path():
    model = tiny_model("llama").cuda().to(torch.bfloat16).train()
    input_ids, attention_mask, labels, _ = (t.cuda() if torch.is_tensor(t) else t for t in _pair_batch())
    own = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.float()
    with_fused_head(model, outputs=("entropy",))
    padded = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(padded.loss, own, rtol=BF16_RTOL, atol=1e-2)
    with paired_rows():
        shared = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert shared.shared_prompts
    torch.testing.assert_close(shared.log_probs, padded.log_probs, rtol=BF16_RTOL, atol=5e-2)
    shared.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
