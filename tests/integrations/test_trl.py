"""fastalign's TRL ``DPOTrainer`` subclass reproduces TRL's own loss and metrics on the same
batch (tiny random Llama, fp32, CPU), shares prompts where the batch allows, and trains."""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from fastalign.data.tokenizer import byte_tokenizer  # noqa: E402
from fastalign.integrations.trl import DPOTrainer as FastDPOTrainer  # noqa: E402

PROMPTS = ["Reverse abc:", "Upper cat:", "Reverse hello:", "Upper dog:", "Sort dcba:", "Reverse xy:"]
CHOSEN = [" cba", " CAT", " olleh", " DOG", " abcd", " yx"]
REJECTED = [" abc", " cat!", " hello", " dgo", " dcab", " xyy"]


def _dataset() -> Dataset:
    return Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED})


def _model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).float()
    with torch.no_grad():  # larger weights: log-probs far from uniform, differences visible
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.mul_(3.0)
    return model


def _config(tmp_path, **overrides):
    options = dict(output_dir=str(tmp_path), per_device_train_batch_size=3, max_steps=3, learning_rate=1e-3,
                   logging_steps=1, report_to=[], use_cpu=True, bf16=False, save_strategy="no", seed=0,
                   disable_tqdm=True, beta=0.2)
    options.update(overrides)
    return trl.DPOConfig(**options)


def _trainers(tmp_path, trainer_kwargs=None, **config):
    tokenizer = byte_tokenizer()
    policy, reference = _model(0), _model(1)
    kwargs = dict(trainer_kwargs or {})
    with_ref = kwargs.pop("with_ref", True)
    theirs = trl.DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference) if with_ref else None,
                            args=_config(tmp_path / "trl", **config), train_dataset=_dataset(),
                            processing_class=tokenizer, **kwargs)
    ours = FastDPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference) if with_ref else None,
                          args=_config(tmp_path / "ours", **config), train_dataset=_dataset(),
                          processing_class=tokenizer, **kwargs)
    return theirs, ours


def _loss_and_metrics(trainer, batch):
    trainer._metrics["train"].clear()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    return loss.detach(), metrics, grads


def _first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


@pytest.mark.parametrize("loss_type", [["sigmoid"], ["ipo"], ["hinge"], ["robust"], ["sigmoid", "sft"]])
def test_same_loss_metrics_and_gradients_as_trl(tmp_path, loss_type):
    config = dict(loss_type=loss_type)
    if loss_type == ["robust"]:
        config["label_smoothing"] = 0.1
    if len(loss_type) == 2:
        config["loss_weights"] = [1.0, 0.5]
    theirs, ours = _trainers(tmp_path, **config)
    batch = _first_batch(theirs)
    assert torch.equal(batch["input_ids"], _first_batch(ours)["input_ids"])
    loss, metrics, grads = _loss_and_metrics(theirs, batch)
    our_loss, our_metrics, our_grads = _loss_and_metrics(ours, batch)
    torch.testing.assert_close(our_loss, loss, atol=1e-5, rtol=1e-5)
    assert our_metrics.pop("fastalign/shared_prompts") == 1.0  # prompts were encoded once
    assert our_metrics.keys() == metrics.keys()
    assert {"rewards/chosen", "rewards/margins", "logps/chosen", "logits/chosen", "entropy",
            "mean_token_accuracy"} <= metrics.keys()
    for name, value in metrics.items():
        assert our_metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
    assert len(grads) == len(our_grads) > 0
    for theirs_grad, ours_grad in zip(grads, our_grads):
        torch.testing.assert_close(ours_grad, theirs_grad, atol=1e-5, rtol=1e-3)


def test_precomputed_reference_and_weighting(tmp_path):
    theirs, ours = _trainers(tmp_path, precompute_ref_log_probs=True, use_weighting=True)
    batch = _first_batch(theirs)
    assert "ref_chosen_logps" in batch
    torch.testing.assert_close(_first_batch(ours)["ref_chosen_logps"], batch["ref_chosen_logps"], atol=1e-5, rtol=1e-5)
    loss, metrics, _ = _loss_and_metrics(theirs, batch)
    our_loss, our_metrics, _ = _loss_and_metrics(ours, batch)
    torch.testing.assert_close(our_loss, loss, atol=1e-5, rtol=1e-5)
    for name, value in metrics.items():
        assert our_metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-4), name


def test_peft_policy_with_adapter_reference(tmp_path):
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    theirs, ours = _trainers(tmp_path, trainer_kwargs=dict(peft_config=lora, with_ref=False))
    for trainer in (theirs, ours):  # non-zero B: the adapter moves the policy away from its reference
        torch.manual_seed(0)
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_(0, 0.3)
    batch = _first_batch(theirs)
    loss, metrics, grads = _loss_and_metrics(theirs, batch)
    our_loss, our_metrics, our_grads = _loss_and_metrics(ours, batch)
    torch.testing.assert_close(our_loss, loss, atol=1e-5, rtol=1e-5)
    assert metrics["rewards/margins"] != 0.0
    assert our_metrics["rewards/margins"] == pytest.approx(metrics["rewards/margins"], rel=1e-4, abs=1e-5)
    for theirs_grad, ours_grad in zip(grads, our_grads):
        torch.testing.assert_close(ours_grad, theirs_grad, atol=1e-5, rtol=1e-3)


def test_trains_a_few_steps(tmp_path):
    _, ours = _trainers(tmp_path, max_steps=4, learning_rate=5e-3)
    before = [p.detach().clone() for p in ours.model.parameters()]
    ours.train()
    logs = [log for log in ours.state.log_history if "loss" in log]
    assert len(logs) == 4
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in logs)
    assert all(log["fastalign/shared_prompts"] == 1.0 for log in logs)
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]
    assert any(not torch.equal(a, b) for a, b in zip(before, ours.model.parameters()))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="share_prompts"):
        FastDPOTrainer(model=_model(), args=_config(tmp_path), train_dataset=_dataset(),
                       processing_class=byte_tokenizer(), share_prompts="yes")
