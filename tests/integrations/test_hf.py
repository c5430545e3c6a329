"""``with_fused_head``: the fused loss / per-token fields equal the model's own full-logits
computation (fp32, tiny random models on CPU), with PEFT, gradient checkpointing,
``num_items_in_batch`` and the prefix-shared path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fastalign.integrations import (
    fused_forward_counts,
    has_fused_head,
    paired_rows,
    remove_fused_head,
    with_fused_head,
)
from fastalign.integrations.pairs import split_pairs
from fastalign.models.checkpointing import enable_activation_checkpointing
from tests.models.tiny_models import VOCAB, tiny_model

ATOL = 1e-5  # fp32 sums over <= 40 tokens: the op and F.cross_entropy differ by rounding only


def _batch(seed: int = 0, rows: int = 4, length: int = 12):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (rows, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -3:] = 0  # right padding on one row
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :4] = -100  # a prompt that is not scored
    return input_ids, attention_mask, labels


def _full_logits_fields(model, input_ids, attention_mask, labels):
    """The oracle: the model's own logits, fp32 log-softmax."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].double()
    targets = labels[:, 1:]
    mask = targets != -100
    logp = logits.log_softmax(-1)
    gathered = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * mask
    entropy = -(logp.exp() * logp).sum(-1) * mask
    mean_logits = logits.mean(-1) * mask
    is_top1 = (logits.argmax(-1) == targets) & mask
    log_sum_sq = torch.logsumexp(2 * logp, -1) * mask
    return dict(log_probs=gathered, entropy=entropy, mean_logits=mean_logits, is_top1=is_top1,
                log_sum_sq_probs=log_sum_sq)


ALL_FIELDS = ("entropy", "mean_logits", "is_top1", "log_sum_sq_probs")


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2"])
def test_fused_fields_match_full_logits(family):
    model = tiny_model(family)
    input_ids, attention_mask, labels = _batch()
    expected = _full_logits_fields(model, input_ids, attention_mask, labels)
    with_fused_head(model, outputs=ALL_FIELDS)
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert out.logits is None
    for name in ("log_probs", "entropy", "mean_logits", "log_sum_sq_probs"):
        torch.testing.assert_close(getattr(out, name).double(), expected[name], atol=ATOL, rtol=1e-5, msg=name)
    assert torch.equal(out.is_top1, expected["is_top1"])
    # Mutation twin: targets shifted by one position give different log-probs.
    shifted = labels.roll(1, dims=1)
    other = model(input_ids=input_ids, attention_mask=attention_mask, labels=shifted).log_probs
    assert (other.double() - expected["log_probs"]).abs().max() > 100 * ATOL


@pytest.mark.parametrize("num_items", [None, 17, "tensor"])
def test_loss_equals_models_own_labels_loss(num_items):
    model = tiny_model("llama").train()
    input_ids, attention_mask, labels = _batch(1)
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(17) if num_items == "tensor" else 17}
    own = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs).loss
    own.backward()
    own_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with_fused_head(model)
    fused = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs).loss
    fused.backward()
    torch.testing.assert_close(fused, own, atol=ATOL, rtol=1e-5)
    for parameter, expected in zip(model.parameters(), own_grads):
        torch.testing.assert_close(parameter.grad, expected, atol=1e-6, rtol=1e-4)
    # Mutation twin: the mean over scored tokens is not the sum over num_items.
    if num_items is not None:
        assert abs(fused.item() - model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.item()) > 1e-3


def test_positional_input_ids_generation_and_removal():
    model = tiny_model("llama")
    input_ids, attention_mask, labels = _batch(2)
    own = model(input_ids, attention_mask=attention_mask, labels=labels).loss
    own_generation = model.generate(input_ids[:1, :5], max_new_tokens=3, do_sample=False)
    with_fused_head(model)
    assert has_fused_head(model)
    torch.testing.assert_close(model(input_ids, attention_mask=attention_mask, labels=labels).loss, own, atol=ATOL, rtol=0)
    # No labels: the original forward (logits), so generate works unchanged.
    assert model(input_ids).logits.shape == (*input_ids.shape, VOCAB)
    generated = model.generate(input_ids[:1, :5], max_new_tokens=3, do_sample=False)
    assert torch.equal(generated, own_generation)
    # fused_lm_head=False forces the original forward even with labels.
    assert model(input_ids, labels=labels, fused_lm_head=False).logits is not None
    remove_fused_head(model)
    assert not has_fused_head(model)
    assert model(input_ids, labels=labels).logits is not None


def test_peft_model_and_gradient_checkpointing():
    peft = pytest.importorskip("peft")
    input_ids, attention_mask, labels = _batch(3)

    def lora_model():
        base = tiny_model("llama").train()
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        wrapped = peft.get_peft_model(base, config)
        torch.manual_seed(0)
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:  # non-zero B so the adapter changes the output
                parameter.data.normal_(0, 0.5)
        return wrapped

    own_model = lora_model()
    own = own_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    own.backward()
    fused_model = lora_model()
    enable_activation_checkpointing(fused_model)
    with_fused_head(fused_model)
    fused = fused_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    fused.backward()
    torch.testing.assert_close(fused, own, atol=ATOL, rtol=1e-5)
    own_grads = {n: p.grad for n, p in own_model.named_parameters() if p.requires_grad}
    fused_grads = {n: p.grad for n, p in fused_model.named_parameters() if p.requires_grad}
    assert own_grads.keys() == fused_grads.keys() and len(own_grads) == 8
    for name in own_grads:
        torch.testing.assert_close(fused_grads[name], own_grads[name], atol=1e-6, rtol=1e-4, msg=name)
    # Disabling the adapter (TRL's reference for a PEFT policy) goes through the head too.
    with torch.no_grad(), fused_model.disable_adapter():
        reference = fused_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    assert abs(reference.item() - fused.item()) > 1e-3


def _pair_batch():
    """A padded [chosen; rejected] batch of 3 pairs sharing prompts, TRL's collator layout."""
    generator = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in (3, 5, 1)]
    chosen = [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in (4, 1, 6)]
    rejected = [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in (2, 5, 3)]
    rows = [p + c for p, c in zip(prompts, chosen)] + [p + r for p, r in zip(prompts, rejected)]
    completion = [[0] * len(p) + [1] * len(c) for p, c in zip(prompts, chosen)]
    completion += [[0] * len(p) + [1] * len(r) for p, r in zip(prompts, rejected)]
    length = max(map(len, rows))
    input_ids = torch.tensor([row + [0] * (length - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in rows])
    completion_mask = torch.tensor([m + [0] * (length - len(m)) for m in completion])
    labels = input_ids.masked_fill(completion_mask == 0, -100)
    return input_ids, attention_mask, labels, (prompts, chosen, rejected)


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2"])
def test_shared_prompt_path_equals_padded_path(family):
    input_ids, attention_mask, labels, tokens = _pair_batch()
    assert split_pairs(input_ids, attention_mask, labels) == tokens
    model = tiny_model(family).train()
    padded_model = copy.deepcopy(model)
    with_fused_head(padded_model, outputs=ALL_FIELDS)
    expected = padded_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    expected.loss.backward()
    with_fused_head(model, outputs=ALL_FIELDS)
    with paired_rows():
        shared = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    shared.loss.backward()
    assert shared.shared_prompts and not expected.shared_prompts
    assert fused_forward_counts(model) == (1, 0)
    for name in ("log_probs", "entropy", "mean_logits", "log_sum_sq_probs"):
        torch.testing.assert_close(getattr(shared, name), getattr(expected, name), atol=1e-4, rtol=1e-4, msg=name)
    assert torch.equal(shared.is_top1, expected.is_top1)
    for (name, parameter), reference in zip(model.named_parameters(), padded_model.parameters()):
        torch.testing.assert_close(parameter.grad, reference.grad, atol=1e-5, rtol=1e-3, msg=name)


def test_batches_that_cannot_share_prompts_take_the_padded_path():
    input_ids, attention_mask, labels, _ = _pair_batch()
    different = input_ids.clone()
    different[3, 0] = (different[3, 0] + 1) % VOCAB  # rejected row of pair 0 gets another prompt
    assert split_pairs(different, attention_mask, labels.masked_fill(labels == -100, -100)) == (
        "a chosen row and its rejected row have different prompts")
    assert "right padding" in split_pairs(input_ids, attention_mask.flip(1), labels)
    assert "rows" in split_pairs(input_ids[:5], attention_mask[:5], labels[:5])
    model = tiny_model("llama")
    with_fused_head(model)
    with paired_rows():
        out = model(input_ids=different, attention_mask=attention_mask, labels=labels)
    assert not out.shared_prompts and fused_forward_counts(model) == (0, 1)


def test_hf_trainer_num_items_in_batch(tmp_path):
    """transformers.Trainer with gradient accumulation: identical losses with and without the head."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    input_ids, attention_mask, labels = _batch(5, rows=8)
    labels[::2, 4:8] = -100  # uneven token counts per micro-batch: mean-of-means would differ
    data = Dataset.from_dict({"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist(),
                              "labels": labels.tolist()})

    def run(model):
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                 max_steps=2, learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True,
                                 save_strategy="no", seed=0, data_seed=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=data)
        trainer.train()
        return [log["loss"] for log in trainer.state.log_history if "loss" in log], model

    own_losses, own_model = run(tiny_model("llama").train())
    fused_losses, fused_model = run(with_fused_head(tiny_model("llama").train()))
    assert len(own_losses) == 2
    assert fused_losses == pytest.approx(own_losses, rel=1e-4)
    for a, b in zip(own_model.parameters(), fused_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_validation():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="temperature"):
        with_fused_head(model, temperature=0)
    with pytest.raises(ValueError, match="outputs"):
        with_fused_head(model, outputs=("logits",))
    with pytest.raises(ValueError, match="outputs"):
        with_fused_head(model, outputs="entropy")
    with pytest.raises(ValueError, match="model"):
        with_fused_head(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="share_prompts"):
        with_fused_head(model, share_prompts="yes")
    assert not has_fused_head(model)  # a refused call leaves the model as it was


def test_temperature_scales_logits():
    model = tiny_model("llama")
    input_ids, attention_mask, labels = _batch(6)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1] / 0.7
    expected = F.log_softmax(logits.double(), -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)
    expected = expected * (labels[:, 1:] != -100)
    with_fused_head(model, temperature=0.7)
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).log_probs
    torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=1e-5)


def test_policy_and_reference_share_one_packed_batch(monkeypatch):
    """Inside one paired_rows() block, forwards on the same input tensors pack them once
    (TRL calls the policy and the reference with the same tensors)."""
    import fastalign.integrations.hf as hf

    calls = []
    original = hf.pack_pairs
    monkeypatch.setattr(hf, "pack_pairs", lambda *args: calls.append(1) or original(*args))
    input_ids, attention_mask, labels, _ = _pair_batch()
    policy, reference = with_fused_head(tiny_model("llama")), with_fused_head(tiny_model("llama", seed=1))
    with paired_rows():
        first = policy(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        second = reference(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        assert len(calls) == 1 and first.shared_prompts and second.shared_prompts
        policy(input_ids=input_ids.clone(), attention_mask=attention_mask, labels=labels)  # new tensors: packed again
        assert len(calls) == 2
    with paired_rows():  # a new block starts empty
        policy(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert len(calls) == 3
