"""Shared fixtures of the trainer tests: one SFT run serves the DPO, CLI and RL tests."""

from __future__ import annotations

import pytest

from fastalign.data import make_sft_task
from fastalign.train import SFTConfig, SFTTrainer
from fastalign.train.recipes import load_model

SEED = 0


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory):
    """A tiny model after 300 SFT steps (about 20 s on 2 cores), saved with save_pretrained."""
    out = tmp_path_factory.mktemp("sft")
    model, tokenizer = load_model("tiny", seed=SEED)
    data = make_sft_task(4000, 200, seed=SEED)
    config = SFTConfig(output_dir=str(out), max_steps=300, learning_rate=3e-3, warmup_steps=20,
                       token_budget=1536, seed=SEED, progress=False)
    trainer = SFTTrainer(model, tokenizer, data["train"], config, eval_data=data["test"])
    history = trainer.train()
    return {"model": trainer.policy.model, "tokenizer": tokenizer, "path": trainer.save_model(),
            "history": history, "eval": trainer.evaluate()}


