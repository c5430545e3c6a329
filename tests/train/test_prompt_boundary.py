"""``prompt_boundary``: the SFT, DPO and reward trainers tokenize text data with the configured
rule of ``fastalign.data.encoding`` (the CLI sets it as ``prompt_boundary=separate``), and a
value that is not a rule is refused naming the option."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from fastalign.data import tokenize_preference_data, tokenize_sft_data
from fastalign.train import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer
from tests.data.chat_tokenizers import chat_tokenizer

# The prompt ends in `?` and the answers start with `"`: llama3's BPE merges `?"` when prompt and
# answer are tokenized together, so "joint" and "separate" give different token lists.
PAIR = {"prompt": "What did the sign say?", "chosen": '"Closed on Sundays."', "rejected": '"Open all night."'}


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer("llama3")


def _model(tokenizer) -> torch.nn.Module:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                        pad_token_id=0))


def _options(tmp_path, boundary: str) -> dict:
    return dict(output_dir=str(tmp_path / boundary), device="cpu", max_steps=1, save_every=0, progress=False,
                prompt_boundary=boundary)


@pytest.mark.parametrize("boundary", ["joint", "separate"])
def test_preference_trainers_use_the_configured_boundary(tokenizer, tmp_path, boundary):
    data = Dataset.from_list([PAIR])
    expected = tokenize_preference_data(data, tokenizer, boundary=boundary)[0]
    for trainer_class, config_class in [(DPOTrainer, DPOConfig), (RewardTrainer, RewardConfig)]:
        trainer = trainer_class(_model(tokenizer), tokenizer, data, config_class(**_options(tmp_path, boundary)))
        prompts, chosen, rejected = trainer.train_lists[:3]
        assert (list(prompts[0]), list(chosen[0]), list(rejected[0])) == (
            expected["prompt_ids"], expected["chosen_ids"], expected["rejected_ids"]), trainer_class.__name__
    merged = tokenizer.convert_tokens_to_ids('?"')
    assert (expected["chosen_ids"][0] == merged) == (boundary == "joint")


@pytest.mark.parametrize("boundary", ["joint", "separate"])
def test_sft_trainer_uses_the_configured_boundary(tokenizer, tmp_path, boundary):
    data = Dataset.from_list([{"prompt": PAIR["prompt"], "completion": PAIR["chosen"]}])
    expected = tokenize_sft_data(data, tokenizer, boundary=boundary)[0]
    trainer = SFTTrainer(_model(tokenizer), tokenizer, data, SFTConfig(**_options(tmp_path, boundary)))
    prompts, completions = trainer.train_lists
    assert (list(prompts[0]), list(completions[0])) == (expected["prompt_ids"], expected["completion_ids"])


def test_an_unknown_boundary_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"prompt_boundary must be one of \('joint', 'separate'\), got 'trl'"):
        DPOConfig(output_dir=str(tmp_path), prompt_boundary="trl").validate()
