"""A DPO run of the tiny preset, launched by torchrun (or plainly) from the distributed tests.

    python -m torch.distributed.run --standalone --nproc-per-node 2 dpo_run.py OUT STRATEGY STEPS
        [--resume] [--export] [--stop-after STEP] [--nan-at STEP --on-nonfinite MODE]

Rank 0 writes OUT/history.json (per-step metrics). The configuration is the one the tests
compare against a single-process run: ``run_config(...)``. ``--nan-at``: rank 1's policy
log-probs turn NaN in that step (rank 0's stay finite), with ``on_nonfinite=MODE`` and a
checkpoint every step; each rank then writes OUT/weights-rank<R>.json (a sum per parameter).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fastalign.app.recipes import load_model
from fastalign.data import make_preference_task
from fastalign.train import DPOConfig, DPOTrainer


def run_config(output_dir: str, strategy: str, max_steps: int, **overrides) -> DPOConfig:
    options = dict(output_dir=output_dir, strategy=strategy, max_steps=max_steps, rows_per_step=4, token_budget=160,
                   learning_rate=5e-4, warmup_steps=1, beta=0.1, loss_type="sigmoid", reference="separate",
                   device="cpu", progress=False, seed=0, save_every=2, keep_last=3)
    options.update(overrides)
    return DPOConfig(**options)


def make_trainer(output_dir: str, strategy: str, max_steps: int, **overrides) -> DPOTrainer:
    model, tokenizer = load_model("tiny", seed=0)
    data = make_preference_task(num_train=96, num_test=8, seed=0)["train"]
    return DPOTrainer(model, tokenizer, data, run_config(output_dir, strategy, max_steps, **overrides))


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    out, strategy, steps = argv[0], argv[1], int(argv[2])
    if "--nan-at" in argv:
        nan_step = int(argv[argv.index("--nan-at") + 1])
        mode = argv[argv.index("--on-nonfinite") + 1]
        trainer = make_trainer(out, strategy, steps, on_nonfinite=mode, save_every=1, keep_last=10)
        if trainer.dist.rank == 1:
            _poison_policy_logprobs(trainer, nan_step)
    else:
        trainer = make_trainer(out, strategy, steps)
    if "--stop-after" in argv:  # an interrupted run: stop right after the checkpoint of that step
        stop_after, save = int(argv[argv.index("--stop-after") + 1]), trainer.save_checkpoint

        def save_then_stop():
            path = save()
            if trainer.step >= stop_after:
                trainer.close()
                raise SystemExit(0)
            return path

        trainer.save_checkpoint = save_then_stop
    history = trainer.train(resume="--resume" in argv)
    if "--export" in argv:
        trainer.save_model(Path(out) / "final")
    if "--nan-at" in argv:
        sums = [float(p.detach().double().sum()) for p in trainer.policy.parameters()]
        (Path(out) / f"weights-rank{trainer.dist.rank}.json").write_text(json.dumps(sums))
    finish(trainer, history, out)


def _poison_policy_logprobs(trainer: DPOTrainer, step: int) -> None:
    forward = trainer.forward

    def poisoned(row, **kwargs):
        out = forward(row, **kwargs)
        return out._replace(logprobs=out.logprobs * float("nan")) if trainer.step + 1 == step else out

    trainer.forward = poisoned


def finish(trainer, history: list[dict], out: str) -> None:
    """Rank 0 writes OUT/history.json; every rank leaves the process group."""
    if trainer.dist.is_main:
        (Path(out) / "history.json").write_text(json.dumps(history))
    trainer.close()


if __name__ == "__main__":
    main(sys.argv[1:])
