"""The measured step of ``bench/bench_long_context.py``: one full DPO step of one long pair,
by TRL's ``DPOTrainer`` or by fastalign's with its memory features on or off (``PROVIDERS``),
after a warm-up step at a short length (``run_case``).

Memory: the peak above the trainer's own after the warm-up, from the harness's meter
(``fastalign.bench.memory``): on CPU the sampled resident set (``rss``), on CUDA
``torch.cuda.max_memory_allocated``; and the peak of each phase of the step (``PHASES``),
marked by hooks on the policy's modules (``mark_phases``), the same for every provider.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from fastalign.bench.environment import load_average
from fastalign.bench.measure import is_out_of_memory
from fastalign.bench.memory import memory_meter, rss_bytes
from fastalign.bench.workloads import baseline_attention


@dataclass(frozen=True)
class LongContextPreset:
    """Model, lengths and memory budget of one run."""

    model: dict  # LlamaConfig keyword arguments
    dtype: str  # float32: plain fp32; bfloat16: fp32 weights with bf16 autocast (both providers)
    lengths: tuple[int, ...]  # context lengths L (P + C = P + R)
    budget_gib: float  # for the projected longest L
    mlp_tile_tokens: int
    warmup_length: int = 256
    seed: int = 0


@dataclass(frozen=True)
class Provider:
    """One trainer setting. ``features``: fastalign's memory options (``None`` for TRL)."""

    name: str
    features: dict[str, bool] | None
    cuda_only: bool = False


_ALL = {"tiled_mlp": True, "reference_first": True, "offload": True}
PROVIDERS: dict[str, Provider] = {
    provider.name: provider
    for provider in (
        Provider("trl", None),
        Provider("fastalign", _ALL),
        Provider("fastalign-no-tiled-mlp", {**_ALL, "tiled_mlp": False}),
        Provider("fastalign-no-reference-first", {**_ALL, "reference_first": False}),
        Provider("fastalign-no-offload", {**_ALL, "offload": False}, cuda_only=True),
        Provider("fastalign-none", {name: False for name in _ALL}),
    )
}


def pair(length: int, vocab_size: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    """``P = 3L/4``, ``C = R = L/4`` random token ids (seeded)."""
    if length < 8 or length % 4:
        raise ValueError(f"length must be a multiple of 4 and >= 8, got {length}")
    generator = torch.Generator().manual_seed(seed + length)
    answer = length // 4

    def draw(count: int) -> list[int]:
        return torch.randint(0, vocab_size, (count,), generator=generator).tolist()

    return draw(length - answer), draw(answer), draw(answer)


def _model(preset: LongContextPreset, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(preset.seed)
    config = LlamaConfig(**preset.model, pad_token_id=0)
    config._attn_implementation = baseline_attention(device)
    with torch.device(device):
        return LlamaForCausalLM(config).train()


def _warmup_vocab(preset: LongContextPreset) -> int:
    return min(1000, preset.model["vocab_size"])  # any ids: the warm-up only allocates gradients and AdamW state


# -- one step per provider ---------------------------------------------------------------------
class _FastalignStep:
    def __init__(self, preset: LongContextPreset, provider: Provider, length: int, device: torch.device,
                 out_dir: str) -> None:
        from datasets import Dataset

        from fastalign.train import DPOConfig, DPOTrainer

        features = provider.features
        prompt, chosen, rejected = pair(length, preset.model["vocab_size"], preset.seed)
        data = Dataset.from_dict({"prompt_ids": [prompt], "chosen_ids": [chosen], "rejected_ids": [rejected]})
        config = DPOConfig(
            output_dir=out_dir, max_steps=1, rows_per_step=1, token_budget=len(prompt) + len(chosen) + len(rejected),
            learning_rate=1e-6, max_grad_norm=None, device=str(device), dtype=preset.dtype, progress=False,
            save_every=0, gradient_checkpointing=True, reference="separate", loss_type="sigmoid",
            mlp_tile_tokens=preset.mlp_tile_tokens if features["tiled_mlp"] else 0,
            reference_first=features["reference_first"],
            offload_checkpoints=features["offload"] and device.type == "cuda",
        )
        self.trainer = DPOTrainer(_model(preset, device), None, data, config)
        self.policy = self.trainer.policy.model
        self.row = self.trainer.rows_for_epoch(0)[0].to(device)

    def warmup(self, preset: LongContextPreset) -> None:
        from fastalign.packing import pack_preference_examples

        (row,) = pack_preference_examples(*[[part] for part in pair(preset.warmup_length, _warmup_vocab(preset), preset.seed)],
                                          token_budget=2 * preset.warmup_length)
        self._step(row.to(self.row.device))

    def run(self) -> None:
        self._step(self.row)

    def _step(self, row) -> None:
        self.trainer.accumulate([row])
        self.trainer.optimizer.step()
        self.trainer.optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: the model's own


class _TRLStep:
    def __init__(self, preset: LongContextPreset, provider: Provider, length: int, device: torch.device,
                 out_dir: str) -> None:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        import trl
        from datasets import Dataset

        from fastalign.data.tokenizer import byte_tokenizer

        policy = _model(preset, device)
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        offload = device.type == "cuda"
        args = trl.DPOConfig(output_dir=out_dir, report_to=[], use_cpu=device.type == "cpu",
                             bf16=preset.dtype == "bfloat16", per_device_train_batch_size=1, save_strategy="no",
                             disable_tqdm=True, seed=preset.seed, max_length=None, learning_rate=1e-6,
                             gradient_checkpointing=True,
                             gradient_checkpointing_kwargs={"use_reentrant": False})
        placeholder = Dataset.from_dict({"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]})
        self.trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=placeholder,
                                      processing_class=byte_tokenizer())
        # What Trainer.train() would do first: checkpointing (with transformers' offload on CUDA)
        # and the optimizer; then TRL's own training_step (fused head, reference under no_grad).
        self.trainer.model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}, offload=offload)
        self.trainer.create_optimizer()
        self.trainer.current_gradient_accumulation_steps = 1
        self.policy = self.trainer.model
        self.batch = self._batch(*pair(length, preset.model["vocab_size"], preset.seed))

    def _batch(self, prompt, chosen, rejected) -> dict:
        example = dict(prompt_ids=prompt, chosen_ids=chosen, rejected_ids=rejected)
        return self.trainer._prepare_inputs(self.trainer.data_collator([example]))

    def warmup(self, preset: LongContextPreset) -> None:
        self._step(self._batch(*pair(preset.warmup_length, _warmup_vocab(preset), preset.seed)))

    def run(self) -> None:
        self._step(self.batch)

    def _step(self, batch) -> None:
        self.trainer.training_step(self.trainer.model, batch)
        self.trainer.optimizer.step()
        self.trainer.optimizer.zero_grad(set_to_none=False)


PHASES = ("forward, loss and LM head", "decoder backward", "embedding backward and optimizer")


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (``embed_tokens`` ... ``norm``) of a transformers causal LM."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def mark_phases(policy: torch.nn.Module, meter) -> list:
    """Hooks that tell ``meter`` which phase of the step runs: ``PHASES[0]`` until the
    gradient reaches the final norm's input (the reference forward, the policy's forward, the
    loss and the LM head's backward are done), ``PHASES[1]`` until it reaches the embeddings'
    output (every decoder layer, recomputed and differentiated), then ``PHASES[2]``. Returns
    the hook handles."""
    decoder = _decoder(policy)

    def embedded(module, inputs, output):
        if output.requires_grad:
            output.register_hook(lambda grad: meter.mark(PHASES[2]))

    return [decoder.norm.register_full_backward_hook(lambda module, grad_in, grad_out: meter.mark(PHASES[1])),
            decoder.embed_tokens.register_forward_hook(embedded)]


def _allocated(device: torch.device) -> int:
    """What is live now: CUDA's allocated bytes, on CPU the resident set."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    return rss_bytes()


def run_case(preset: LongContextPreset, provider: Provider, length: int, device: torch.device) -> dict[str, Any]:
    """One provider at one length in this process: warm-up step, then the measured step."""
    row: dict[str, Any] = dict(provider=provider.name, length=length, row_tokens=length + length // 4
                               if provider.features is not None else 2 * length, status="ok", note="",
                               load_1m_before=load_average())
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            step = (_TRLStep if provider.features is None else _FastalignStep)(preset, provider, length, device,
                                                                              out_dir)
            step.warmup(preset)
            row["model_own_mb"] = _allocated(device) / 2**20
            own = row["model_own_mb"] * 2**20 if device.type == "cuda" else 0  # the CUDA meter reads totals
            meter = memory_meter(device, "cuda" if device.type == "cuda" else "rss", first_phase=PHASES[0])
            hooks = mark_phases(step.policy, meter)
            with meter:
                start = time.perf_counter()
                step.run()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                row["seconds"] = time.perf_counter() - start
            for hook in hooks:
                hook.remove()
            row["peak_above_mb"] = (meter.peak_bytes - own) / 2**20
            row["phase_peaks_above_mb"] = {phase: (meter.phase_peaks[phase] - own) / 2**20
                                           for phase in PHASES if phase in meter.phase_peaks}
        except Exception as error:  # noqa: BLE001 - an OOM is a result; other failures are recorded
            row["status"] = "oom" if is_out_of_memory(error) else "error"
            row["note"] = f"{type(error).__name__}: {str(error)[:300]}"
    row["load_1m_after"] = load_average()
    return row
