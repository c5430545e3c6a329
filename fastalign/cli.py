"""The ``fastalign`` command line (also ``python -m fastalign``). Argument parsing and exit
statuses only: the work happens in ``fastalign.app.recipes`` and ``fastalign.app.demo``.

    fastalign demo [--output-dir ./fastalign-demo] [--seed S] [--sft-steps N] [--dpo-steps N] [--threads N]
    fastalign train sft|rm|dpo|ppo|grpo --model tiny|PATH --data synthetic|PATH [--config file.yaml]
                    [--output-dir DIR] [--max-steps N] [--seed S] [--resume | --overwrite] [key=value ...]
    fastalign eval --model PATH [--baseline PATH] [--reference PATH] --data synthetic|PATH

Benchmarks are scripts in the repository, not commands: ``python bench/bench_pipeline.py ...``
(see bench/README.md); the installed package holds only their harness, ``fastalign.bench``.

``fastalign train KIND --help`` lists every option of that kind (from its config dataclass).
Nothing heavy is imported at module level: torch, transformers and the trainers load only when
a command runs, so ``--help`` answers at once.

Exit statuses: 0 done; 2 bad input (an option, a file, a used output directory; nothing is
written); 1 the run failed (training diverged, disk full); 130 / 143 interrupted by SIGINT /
SIGTERM (after a checkpoint when training). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import signal
import sys
import threading
from typing import Any

from fastalign.app.demo_settings import DemoSettings
from fastalign.cli_help import KINDS, options_help
from fastalign.train.options import option_docs

EXIT_FAILED, EXIT_USAGE = 1, 2
MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) that names close matches of a
    misspelled flag."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_with_close_flags(self, message)} (see {self.prog} --help)\n")


def _all_flags(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--flag`` of ``parser`` and of its subcommands (argparse reports flags it does not
    know to the top-level parser)."""
    flags = []
    for action in parser._actions:
        flags.extend(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                flags.extend(_all_flags(child))
    return sorted(set(flags))


def _with_close_flags(parser: argparse.ArgumentParser, message: str) -> str:
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return message
    flags = _all_flags(parser)
    hints = [f"did you mean {close[0]}?" for word in message[len(prefix):].split() if word.startswith("--")
             for close in [difflib.get_close_matches(word.split("=")[0], flags, n=1, cutoff=0.6)] if close]
    return f"{message} ({'; '.join(hints)})" if hints else message


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


def _add_loading(parser: argparse.ArgumentParser) -> None:
    """How ``--model`` (and the other models a command loads) are read."""
    parser.add_argument("--dtype", dest="model_dtype", choices=MODEL_DTYPES, default="float32",
                        help="dtype the model weights are loaded in (auto: the checkpoint's own; default: %(default)s, "
                             "full-precision training; the `dtype` option sets the compute dtype)")
    parser.add_argument("--revision", default=None,
                        help="hub model: the branch, tag or commit of --model to load (default: main)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a hub model's own Python code to run when it is loaded (off: such models are "
                             "refused)")


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train a model: sft, rm, dpo, ppo or grpo",
                                description="Train a model. `fastalign train KIND --help` lists KIND's options.")
    kinds = train.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=_Parser)
    for kind, (config_class, summary) in KINDS.items():
        parser = kinds.add_parser(kind, help=summary, description=f"Train: {summary}.", epilog=options_help(config_class),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--model", required=True, help="'tiny' (random-init preset, byte tokenizer, offline) or a "
                                                           "model path / hub name")
        parser.add_argument("--data", required=True, help="'synthetic' (the embedded verifiable task) or a dataset "
                                                          "path (JSONL/Parquet/JSON) / hub name")
        parser.add_argument("--eval-data", default=None, help="held-out data evaluated at the end (synthetic: its test "
                                                              "split, by default)")
        parser.add_argument("--reward-model", default=None,
                            help="ppo/grpo: a trained reward model (default on synthetic data: its verifier)")
        parser.add_argument("--config", default=None, help="YAML file of options (see below; key=value overrides it)")
        parser.add_argument("--output-dir", default=None, help=f"sets output_dir (default: fastalign-{kind})")
        defaults = {name: doc["default"] for name, doc in option_docs(config_class).items()}
        parser.add_argument("--max-steps", type=int, default=None,
                            help=f"sets max_steps, the optimizer steps (default: {defaults['max_steps']})")
        parser.add_argument("--seed", type=int, default=None,
                            help=f"sets seed: model init (tiny), data order, sampling (default: {defaults['seed']})")
        start = parser.add_mutually_exclusive_group()
        start.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
        start.add_argument("--overwrite", action="store_true", help="delete the checkpoints, metrics and final model "
                                                                    "of an earlier run in --output-dir first")
        parser.add_argument("--strategy", choices=["auto", "none", "ddp", "fsdp2"], default=None,
                            help="sets strategy: under torchrun, ddp or fsdp2 (auto: ddp when several processes)")
        parser.add_argument("--sequence-parallel", type=int, default=None, metavar="N",
                            help="dpo under torchrun: split each packed row over N processes (Ulysses; the rest are "
                                 "DDP replicas)")
        _add_loading(parser)
        parser.add_argument("overrides", nargs="*", metavar="key=value",
                            help="options (listed below), e.g. beta=0.2 loss_type=ipo")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastalign", description="Fast, memory-lean preference training.",
                     epilog="`fastalign COMMAND --help` describes a command; `fastalign train KIND --help` lists "
                            "every option of a trainer.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    defaults = DemoSettings()
    demo = commands.add_parser("demo", help="SFT then DPO of a tiny model on the embedded task (CPU, minutes)",
                               description="SFT then DPO of the tiny preset on the embedded verifiable task, on CPU; "
                                           "prints a before/after table and writes metrics, a plot and the models.")
    demo.add_argument("--output-dir", default=defaults.output_dir,
                      help="where outputs go; replaced by each run of the demo (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=defaults.seed,
                      help="seeds the model init, the task's words and the data order (default: %(default)s)")
    demo.add_argument("--sft-steps", type=int, default=None,
                      help=f"SFT optimizer steps (default: {defaults.sft_steps})")
    demo.add_argument("--dpo-steps", type=int, default=None,
                      help=f"DPO optimizer steps (default: {defaults.dpo_steps})")
    demo.add_argument("--threads", type=int, default=defaults.threads,
                      help="torch CPU threads; 1 is fastest for this tiny model on a shared machine "
                           "(default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars or lines")

    _add_train(commands)

    evaluate = commands.add_parser("eval", help="preference accuracy and win rate of a trained model",
                                   description="Held-out preference accuracy of --model (implicit-reward accuracy "
                                               "with --reference) and its win rate against --baseline; prints JSON.")
    evaluate.add_argument("--model", required=True, help="the model evaluated: a path or hub name (or 'tiny')")
    evaluate.add_argument("--data", required=True, help="'synthetic' (its held-out split) or preference data with a "
                                                        "test split")
    evaluate.add_argument("--baseline", default=None, help="model whose greedy answers --model's are compared with "
                                                           "(win rate)")
    evaluate.add_argument("--reference", default=None, help="reference model: adds the implicit-reward accuracy")
    evaluate.add_argument("--reward-model", default=None, help="judge the win rate with this reward model (needed "
                                                               "beyond synthetic data)")
    evaluate.add_argument("--beta", type=float, default=0.1,
                          help="beta of the implicit reward beta*log(pi/pi_ref) (default: %(default)s)")
    evaluate.add_argument("--max-new-tokens", type=int, default=16,
                          help="longest greedy answer for the win rate (default: %(default)s)")
    evaluate.add_argument("--seed", type=int, default=0,
                          help="seed of the synthetic task's split (the demo's --seed; default: %(default)s)")
    _add_loading(evaluate)
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


def _loading(args: argparse.Namespace) -> dict[str, Any]:
    return {"dtype": args.model_dtype, "revision": args.revision, "trust_remote_code": args.trust_remote_code}


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from fastalign.app.demo import run_demo

        settings = DemoSettings(output_dir=args.output_dir, seed=args.seed, threads=args.threads,
                                progress=not args.no_progress)
        if args.sft_steps is not None:
            settings.sft_steps = args.sft_steps
        if args.dpo_steps is not None:
            settings.dpo_steps = args.dpo_steps
        summary = run_demo(settings)
        print(f"outputs in {args.output_dir}/ (summary.json, training_curves.png, sft/final, dpo/final)")
        return 0 if summary["table"] else EXIT_FAILED
    if args.command == "train":
        from fastalign.app.recipes import run_training

        run_training(args.kind, model=args.model, data=args.data, config=_config(args), eval_data=args.eval_data,
                     resume=args.resume, overwrite=args.overwrite, reward_model=args.reward_model,
                     loading=_loading(args))
        return 0
    from fastalign.app.recipes import run_eval
    from fastalign.train.progress import library_bars, show_bars

    with library_bars(show_bars(True)):  # loading bars on a terminal only (no \r in a log file)
        result = run_eval(model=args.model, baseline=args.baseline, data=args.data, reference=args.reference,
                          beta=args.beta, max_new_tokens=args.max_new_tokens, seed=args.seed,
                          reward_model=args.reward_model, loading=_loading(args))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
