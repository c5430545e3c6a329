"""PolicyModel: guards against built-in attention, HF state-dict keys, PEFT, checkpointing."""

from __future__ import annotations

import pytest
import torch

import fastalign.models.backbone as backbone_module
from fastalign.models import PolicyModel, enable_activation_checkpointing, packed_logprobs
from fastalign.packing import pack_preference_examples
from tests.models.tiny_models import example_lists, reference_answer_logp, tiny_model


def _row():
    prompts, chosen, rejected = example_lists()
    (row,) = pack_preference_examples(prompts, chosen, rejected, token_budget=128)
    return row


def test_builtin_attention_on_packed_batch_raises():
    model = tiny_model("llama")
    policy = PolicyModel(model)
    policy(_row())  # selects a fastalign backend
    model.set_attn_implementation("sdpa")  # someone switches it back behind our back
    with pytest.raises(ValueError, match="built-in attention would let rejected tokens attend"):
        policy(_row())


def test_attention_layers_bypassing_the_packed_backend_raise(monkeypatch):
    """Second guard: layers that never reached a packed backend are counted and refused."""
    model = tiny_model("llama")
    policy = PolicyModel(model)
    policy(_row())
    model.set_attn_implementation("sdpa")
    monkeypatch.setattr(backbone_module, "is_packed_backend", lambda name: True)
    monkeypatch.setattr(policy, "_select_backend", lambda device: None)
    with pytest.raises(RuntimeError, match="2 of 2 attention layers did not go through"):
        policy(_row())


def test_requesting_a_builtin_attention_is_refused():
    with pytest.raises(ValueError, match="would let R attend to C"):
        packed_logprobs(tiny_model("llama"), _row(), attention="flash_attention_2")
    with pytest.raises(ValueError, match="cannot apply the attention logit softcap"):
        packed_logprobs(tiny_model("gemma2"), _row(), attention="sdpa")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        packed_logprobs(tiny_model("llama"), _row(), attention="torch_varlen")


def test_plain_model_keeps_its_attention_and_still_generates():
    model = tiny_model("llama")
    before = model.config._attn_implementation
    packed_logprobs(model, _row())
    assert model.config._attn_implementation == before
    policy = PolicyModel(model)
    policy(_row())
    # Outside a packed forward the fastalign backend behaves like the built-in one.
    ids = torch.tensor([[5, 9, 2, 17]])
    with torch.no_grad():
        fresh = tiny_model("llama")
        expected, got = fresh(input_ids=ids).logits, model(input_ids=ids).logits
        generate = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
        expected_tokens, generated = fresh.generate(ids, **generate), model.generate(ids, **generate)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert generated.shape == (1, 8) and torch.equal(generated, expected_tokens)


def test_state_dict_keys_are_the_hf_keys():
    model = tiny_model("qwen2")
    policy = PolicyModel(model)
    assert list(policy.state_dict()) == list(model.state_dict())
    other = PolicyModel(tiny_model("qwen2", seed=1))
    other.load_state_dict(policy.state_dict())
    for a, b in zip(model.parameters(), other.model.parameters()):
        assert torch.equal(a, b)


def test_input_validation():
    with pytest.raises(ValueError, match="model must be a transformers causal LM"):
        PolicyModel(torch.nn.Linear(2, 2))
    policy = PolicyModel(tiny_model("llama"))
    with pytest.raises(ValueError, match="batch must be a PackedBatch"):
        policy({"input_ids": torch.zeros(1, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match="batch is on meta"):
        policy(_row().to("meta"))


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads(checkpointing):
        model = tiny_model("llama").train()
        if checkpointing:
            enable_activation_checkpointing(model)
        out = packed_logprobs(PolicyModel(model), _row())
        (out.chosen - out.rejected).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for plain, checkpointed in zip(grads(False), grads(True)):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-5)


def test_peft_lora_model():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_model("llama"), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    prompts, chosen, rejected = example_lists()
    row = _row()
    out = packed_logprobs(PolicyModel(model), row)
    with torch.no_grad():
        expected = torch.stack([reference_answer_logp(model, p, c) for p, c in zip(prompts, chosen)])
    torch.testing.assert_close(out.chosen.detach(), expected[out.example_index], atol=1e-4, rtol=0)
    (out.chosen - out.rejected).sum().backward()
    lora = [p for name, p in model.named_parameters() if "lora_" in name]
    frozen = [p for name, p in model.named_parameters() if "lora_" not in name]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert all(p.grad is None for p in frozen)


def test_lora_on_the_lm_head_is_refused():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match="adapters on the LM head are not supported"):
        PolicyModel(model)
