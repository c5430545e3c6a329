"""The ``fastalign`` command line (also ``python -m fastalign``). Argument parsing only: the
work happens in ``fastalign.train.recipes`` and ``fastalign.train.demo``.

    fastalign demo [--output-dir ./fastalign-demo]
    fastalign train sft|rm|dpo|ppo|grpo --model tiny|PATH --data synthetic|PATH [--config file.yaml]
                    [--output-dir DIR] [--max-steps N] [--seed S] [--resume] [key=value ...]
    fastalign eval --model PATH [--baseline PATH] [--reference PATH] --data synthetic|PATH
    fastalign bench pipeline [--preset cpu-tiny|gpu-1b] [--out bench/results] [...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _parse_value(text: str) -> Any:
    """``key=value`` overrides: YAML scalars/lists (``3``, ``1e-4``, ``true``, ``[a, b]``)."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str) and _SCIENTIFIC.match(value):
        return float(value)  # YAML 1.1 reads ``1e-4`` (no dot) as a string
    return value


def _config(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise SystemExit(f"error: --config {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(f"error: --config {path} must hold a mapping of options")
        values.update(loaded)
    for override in args.overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: override {override!r} must look like key=value")
        values[key.replace("-", "_")] = _parse_value(value)
    for name in ("output_dir", "max_steps", "seed", "strategy"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values.setdefault("output_dir", f"fastalign-{args.kind}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastalign", description="Fast, memory-lean preference training.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="SFT then DPO of a tiny model on the embedded task (CPU, minutes)")
    demo.add_argument("--output-dir", default="fastalign-demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--sft-steps", type=int, default=None)
    demo.add_argument("--dpo-steps", type=int, default=None)
    demo.add_argument("--no-progress", action="store_true")

    train = commands.add_parser("train", help="train a model")
    train.add_argument("kind", choices=["sft", "rm", "dpo", "ppo", "grpo"])
    train.add_argument("--model", required=True, help="'tiny' (random-init preset) or a model path / hub name")
    train.add_argument("--data", required=True, help="'synthetic' (embedded task) or a dataset path / hub name")
    train.add_argument("--eval-data", default=None)
    train.add_argument("--reward-model", default=None, help="ppo/grpo: a trained reward model (default: the verifier)")
    train.add_argument("--config", default=None, help="YAML file of config options")
    train.add_argument("--output-dir", default=None)
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    train.add_argument("--strategy", choices=["auto", "none", "ddp", "fsdp2"], default=None,
                       help="under torchrun: ddp or fsdp2 (auto: ddp when several processes); see README")
    train.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. beta=0.2 loss_type=ipo)")

    evaluate = commands.add_parser("eval", help="preference accuracy and win rate of a trained model")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--baseline", default=None, help="model to compare generations with (win rate)")
    evaluate.add_argument("--reference", default=None, help="reference model for implicit-reward accuracy")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--reward-model", default=None, help="judge the win rate with this reward model too")
    evaluate.add_argument("--beta", type=float, default=0.1)
    evaluate.add_argument("--max-new-tokens", type=int, default=16)
    evaluate.add_argument("--seed", type=int, default=0)

    bench = commands.add_parser("bench", help="benchmarks (pipeline: SFT→RM→PPO vs SFT→DPO vs SFT→GRPO)")
    bench.add_argument("name", choices=["pipeline"])
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of the benchmark (--help for them)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options (`--max-steps 5 beta=0.2`): argparse leaves them unparsed.
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "train" or any("=" not in item or item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "train":
        args.overrides = list(args.overrides) + extra
    if args.command == "demo":
        from fastalign.train.demo import DemoSettings, run_demo

        settings = DemoSettings(output_dir=args.output_dir, seed=args.seed, progress=not args.no_progress)
        if args.sft_steps is not None:
            settings.sft_steps = args.sft_steps
        if args.dpo_steps is not None:
            settings.dpo_steps = args.dpo_steps
        summary = run_demo(settings)
        print(f"outputs in {args.output_dir}/ (summary.json, training_curves.png, sft/final, dpo/final)")
        return 0 if summary["table"] else 1
    if args.command == "bench":
        from fastalign.bench.pipeline import main as bench_pipeline

        return bench_pipeline(args.bench_args)
    if args.command == "train":
        from fastalign.train.recipes import run_training

        try:
            path = run_training(args.kind, model=args.model, data=args.data, config=_config(args),
                                eval_data=args.eval_data, resume=args.resume, reward_model=args.reward_model)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
            print(f"saved {path}")
        return 0
    from fastalign.train.recipes import run_eval

    try:
        result = run_eval(model=args.model, baseline=args.baseline, data=args.data, reference=args.reference,
                          beta=args.beta, max_new_tokens=args.max_new_tokens, seed=args.seed,
                          reward_model=args.reward_model)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
