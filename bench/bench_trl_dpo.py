"""Benchmark: TRL's ``DPOTrainer`` vs ``fastalign.integrations.trl.DPOTrainer`` (one-line swap).

Both trainers get the same random-init Llama (policy + a separate reference copy), the same
``DPOConfig`` and the same collated batches of synthetic HH-like pairs (long prompts, short
answers; ``fastalign.bench.workloads.synthetic_preference_data``). The measured unit is TRL's
own training step on a batch — ``trainer.training_step(model, batch)``: policy forward +
reference forward (no grad) + the DPO loss + backward (the optimizer step is the same for
both and left out). Before timing, the loss of both trainers on the first batch is compared.

Columns per trainer: median/p20/p80 time of a pass over all batches, pairs/s, useful tokens/s
(useful = Σ P + C + R), peak CUDA memory of a pass (``None`` on CPU), the fraction of steps
that shared prompts, and the speedup over TRL.

    python bench/bench_trl_dpo.py --preset cpu-smoke   # tiny model, any machine, seconds
    python bench/bench_trl_dpo.py --preset gpu-1b      # Llama-3.2-1B shape, bf16: tokens/s and peak memory

Writes bench/results/<device>/trl_dpo_<preset>.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fastalign.bench.environment import environment
from fastalign.bench.measure import is_out_of_memory, time_callable
from fastalign.bench.memory import CudaPeak
from fastalign.bench.report import headless_pyplot, results_dir, save_figure, write_results
from fastalign.bench.workloads import (
    DTYPES,
    HH_LIKE_LENGTHS,
    LLAMA_1B_SHAPE,
    LengthDistribution,
    PreferenceData,
    synthetic_preference_data,
)

TRAINERS = ("trl", "fastalign")


@dataclass(frozen=True)
class TRLPreset:
    model: dict  # LlamaConfig keyword arguments
    dtype: str
    lengths: LengthDistribution
    examples: int
    pairs_per_batch: int
    warmup: int = 1
    repeats: int = 3
    seed: int = 0
    check_atol: float = 1e-4  # |loss_trl - loss_fastalign| on the first batch


PRESETS: dict[str, TRLPreset] = {
    "cpu-smoke": TRLPreset(
        model=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=256, vocab_size=512, max_position_embeddings=1024),
        dtype="float32",
        lengths=LengthDistribution(prompt_mean=96, answer_mean=16, prompt_min=8, prompt_max=256,
                                   answer_min=2, answer_max=48),
        examples=16, pairs_per_batch=4, warmup=1, repeats=2,
    ),
    # Llama-3.2-1B shape (1.24B parameters, tied embeddings), bf16 autocast.
    "gpu-1b": TRLPreset(
        model=LLAMA_1B_SHAPE,
        dtype="bfloat16",
        lengths=HH_LIKE_LENGTHS,
        examples=64, pairs_per_batch=4, warmup=1, repeats=3, check_atol=5e-2,
    ),
}


def _model(preset: TRLPreset, device: torch.device, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**preset.model, pad_token_id=0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(DTYPES[preset.dtype])


def _trainer(name: str, policy, reference, preset: TRLPreset, out_dir: str, device: torch.device):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import trl
    from datasets import Dataset

    from fastalign.data.tokenizer import byte_tokenizer

    if name == "trl":
        cls = trl.DPOTrainer
    else:
        from fastalign.integrations.trl import DPOTrainer as cls
    bf16 = preset.dtype == "bfloat16"
    args = trl.DPOConfig(output_dir=out_dir, report_to=[], use_cpu=device.type == "cpu", bf16=bf16,
                         per_device_train_batch_size=preset.pairs_per_batch, save_strategy="no",
                         disable_tqdm=True, seed=preset.seed)
    # The trainer needs a data set to construct; the benchmark feeds its own collated batches.
    placeholder = Dataset.from_dict({"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]})
    return cls(model=policy, ref_model=reference, args=args, train_dataset=placeholder,
               processing_class=byte_tokenizer())


def _batches(trainer, data: PreferenceData, pairs: int) -> list[dict]:
    examples = [dict(prompt_ids=p, chosen_ids=c, rejected_ids=r) for p, c, r in zip(*dataclasses.astuple(data))]
    return [trainer._prepare_inputs(trainer.data_collator(examples[i:i + pairs]))
            for i in range(0, len(examples), pairs)]


def run_benchmark(preset: TRLPreset, device: torch.device) -> dict:
    data = synthetic_preference_data(preset.examples, preset.lengths, preset.model["vocab_size"], seed=preset.seed)
    useful = data.useful_tokens
    rows, losses = [], {}
    with tempfile.TemporaryDirectory() as out_dir:
        for name in TRAINERS:
            # A reference other than the policy, so the first-batch loss check is not log(2) on both.
            policy = _model(preset, device, preset.seed).train()
            reference = _model(preset, device, preset.seed + 1).eval()
            row = dict(trainer=name, examples=preset.examples, useful_tokens=useful, status="ok")
            try:
                trainer = _trainer(name, policy, reference, preset, out_dir, device)
                batches = _batches(trainer, data, preset.pairs_per_batch)
                trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop, not called here
                with torch.no_grad():
                    losses[name] = float(trainer.compute_loss(trainer.model, batches[0]))

                def one_pass():
                    for batch in batches:
                        trainer.training_step(trainer.model, batch)
                    trainer.model.zero_grad(set_to_none=True)

                meter = CudaPeak(device) if device.type == "cuda" else None  # CPU: no peak reported
                with meter or contextlib.nullcontext():
                    timing = time_callable(one_pass, device, warmup=preset.warmup, repeats=preset.repeats)
                shared = trainer._metrics["train"].get("fastalign/shared_prompts", [])
                row.update(
                    median_ms=timing.median_ms, p20_ms=timing.p20_ms, p80_ms=timing.p80_ms,
                    pairs_per_s=preset.examples / timing.median_ms * 1e3,
                    useful_tokens_per_s=useful / timing.median_ms * 1e3,
                    peak_memory_gib=meter.peak_bytes / 2**30 if meter is not None else None,
                    shared_prompt_fraction=(sum(shared) / len(shared)) if shared else 0.0,
                )
            except Exception as error:  # an OOM is a result, anything else a failure
                if not is_out_of_memory(error):
                    raise
                row["status"] = "oom"
            rows.append(row)
            del policy, reference
            if device.type == "cuda":
                torch.cuda.empty_cache()
    baseline = rows[0].get("median_ms")
    for row in rows:
        row["speedup_vs_trl"] = baseline / row["median_ms"] if baseline and row.get("median_ms") else None
    difference = abs(losses["trl"] - losses["fastalign"]) if len(losses) == 2 else None
    return dict(rows=rows, first_batch_loss=losses, loss_difference=difference,
                check_passed=difference is not None and difference <= preset.check_atol)


def plot(rows: list[dict], env: dict, path: Path, *, title: str) -> Path | None:
    plt = headless_pyplot()
    if plt is None:
        return None
    ok = [row for row in rows if row["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [row["trainer"] for row in ok]
    axes[0].bar(names, [row["useful_tokens_per_s"] for row in ok], color=["#888", "#2a7"][: len(ok)])
    axes[0].set_ylabel("useful tokens / s")
    memory = [row["peak_memory_gib"] or 0.0 for row in ok]
    axes[1].bar(names, memory, color=["#888", "#2a7"][: len(ok)])
    axes[1].set_ylabel("peak memory (GiB)" if any(memory) else "peak memory (CUDA only)")
    fig.suptitle(f"{title}\n{env.get('device', '')}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--examples", type=int, help="override the preset's number of pairs")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.examples is not None:
        if args.examples < preset.pairs_per_batch:
            parser.error(f"--examples must be at least {preset.pairs_per_batch}")
        preset = dataclasses.replace(preset, examples=args.examples)
    device = torch.device(args.device)
    result = run_benchmark(preset, device)
    env = {**environment(device), "benchmark": {"name": "trl_dpo", "preset_name": args.preset,
                                                **dataclasses.asdict(preset)},
           "first_batch_loss": result["first_batch_loss"], "loss_difference": result["loss_difference"],
           "check_passed": result["check_passed"]}
    out_dir = results_dir(args.out, env, device)
    stem = f"trl_dpo_{args.preset}"
    paths = write_results(result["rows"], env, out_dir, stem)
    plot(result["rows"], env, out_dir / f"{stem}.png", title=f"TRL DPOTrainer vs fastalign subclass ({args.preset})")
    for row in result["rows"]:
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
    print(f"first-batch loss {result['first_batch_loss']}, difference {result['loss_difference']} -> {paths['json']}")
    return 0 if result["check_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
