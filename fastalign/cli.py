"""The ``fastalign`` command line (also ``python -m fastalign``). Argument parsing and exit
statuses only: the work happens in ``fastalign.train.recipes`` and ``fastalign.train.demo``.

    fastalign demo [--output-dir ./fastalign-demo]
    fastalign train sft|rm|dpo|ppo|grpo --model tiny|PATH --data synthetic|PATH [--config file.yaml]
                    [--output-dir DIR] [--max-steps N] [--seed S] [--resume | --overwrite] [key=value ...]
    fastalign eval --model PATH [--baseline PATH] [--reference PATH] --data synthetic|PATH
    fastalign bench pipeline [--preset cpu-tiny|gpu-1b] [--out bench/results] [...]

Exit statuses: 0 done; 2 bad input (an option, a file, a used output directory; nothing is
written); 1 the run failed (training diverged, disk full); 130 / 143 interrupted by SIGINT /
SIGTERM (after a checkpoint when training). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any

EXIT_FAILED, EXIT_USAGE = 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (which checkpoints on it first)."""


def _config(args: argparse.Namespace) -> dict[str, Any]:
    from fastalign.train.config_file import load_config_file, parse_override

    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(load_config_file(args.config))
    for override in args.overrides:
        key, value = parse_override(override)
        values[key] = value
    for name in ("output_dir", "max_steps", "seed", "strategy", "sequence_parallel"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values.setdefault("output_dir", f"fastalign-{args.kind}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastalign", description="Fast, memory-lean preference training.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser("demo", help="SFT then DPO of a tiny model on the embedded task (CPU, minutes)")
    demo.add_argument("--output-dir", default="fastalign-demo", help="replaced by each run of the demo")
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
    start = train.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    start.add_argument("--overwrite", action="store_true",
                       help="delete the checkpoints, metrics and final model of an earlier run in --output-dir first")
    train.add_argument("--strategy", choices=["auto", "none", "ddp", "fsdp2"], default=None,
                       help="under torchrun: ddp or fsdp2 (auto: ddp when several processes); see README")
    train.add_argument("--sequence-parallel", type=int, default=None, metavar="N",
                       help="dpo under torchrun: split each packed row over N processes (Ulysses; the rest are DDP "
                            "replicas)")
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
    try:  # argparse exits on --help and on bad arguments: return its status instead
        # Overrides may follow options (`--max-steps 5 beta=0.2`): argparse leaves them unparsed.
        args, extra = parser.parse_known_args(argv)
        if extra and (args.command != "train" or any("=" not in item or item.startswith("-") for item in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command == "train":
        args.overrides = list(args.overrides) + extra
    if args.command == "bench":
        from fastalign.bench.pipeline import main as bench_pipeline

        return bench_pipeline(args.bench_args)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _run(args)
    except _Terminated:
        return _fail(128 + signal.SIGTERM, "terminated (SIGTERM)")
    except KeyboardInterrupt as interrupt:  # TrainingInterrupted says where the checkpoint is
        return _fail(getattr(interrupt, "exit_code", 128 + signal.SIGINT), str(interrupt) or "interrupted (SIGINT)")
    except (ValueError, TypeError) as error:
        return _fail(EXIT_USAGE, f"error: {error}")
    except (RuntimeError, OSError) as error:
        from fastalign.train.checkpoint_io import CheckpointWriteError
        from fastalign.train.nonfinite import NonFiniteError

        if isinstance(error, (NonFiniteError, CheckpointWriteError)):
            return _fail(EXIT_FAILED, f"error: {error}")
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame) -> None:
    raise _Terminated()


def _fail(code: int, message: str) -> int:
    """One line on stderr (under torchrun, from rank 0 only); returns the exit status."""
    if os.environ.get("RANK", "0") == "0":
        print(" ".join(message.split()), file=sys.stderr, flush=True)
    return code


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from fastalign.train.demo import DemoSettings, run_demo

        settings = DemoSettings(output_dir=args.output_dir, seed=args.seed, progress=not args.no_progress)
        if args.sft_steps is not None:
            settings.sft_steps = args.sft_steps
        if args.dpo_steps is not None:
            settings.dpo_steps = args.dpo_steps
        summary = run_demo(settings)
        print(f"outputs in {args.output_dir}/ (summary.json, training_curves.png, sft/final, dpo/final)")
        return 0 if summary["table"] else EXIT_FAILED
    if args.command == "train":
        from fastalign.train.recipes import run_training

        path = run_training(args.kind, model=args.model, data=args.data, config=_config(args),
                            eval_data=args.eval_data, resume=args.resume, overwrite=args.overwrite,
                            reward_model=args.reward_model)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
            print(f"saved {path}")
        return 0
    from fastalign.train.recipes import run_eval

    result = run_eval(model=args.model, baseline=args.baseline, data=args.data, reference=args.reference,
                      beta=args.beta, max_new_tokens=args.max_new_tokens, seed=args.seed,
                      reward_model=args.reward_model)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
