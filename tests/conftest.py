"""Test configuration. Must run before any Triton kernel module is imported."""

import os

import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through the interpreter (slow: tests keep sizes small).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def kernel_device() -> torch.device:
    """Where Triton kernels run in this session: the GPU if any, else the CPU interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


SEED = 0  # of the shared SFT run below and the tests built on it


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory):
    """A tiny model after 300 SFT steps (about 20 s on 2 cores), saved with save_pretrained.

    One run serves the DPO, CLI and RL tests (tests/train) and the evaluation tests (tests/eval).
    """
    from fastalign.app.recipes import load_model
    from fastalign.data import make_sft_task
    from fastalign.train import SFTConfig, SFTTrainer

    out = tmp_path_factory.mktemp("sft")
    model, tokenizer = load_model("tiny", seed=SEED)
    data = make_sft_task(4000, 200, seed=SEED)
    config = SFTConfig(output_dir=str(out), max_steps=300, learning_rate=3e-3, warmup_steps=20,
                       token_budget=1536, seed=SEED, progress=False)
    trainer = SFTTrainer(model, tokenizer, data["train"], config, eval_data=data["test"])
    history = trainer.train()
    return {"model": trainer.policy.model, "tokenizer": tokenizer, "path": trainer.save_model(),
            "history": history, "eval": trainer.evaluate()}
