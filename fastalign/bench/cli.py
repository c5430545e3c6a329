"""Command-line options every benchmark script shares: where it runs and on how many threads."""

from __future__ import annotations

import argparse

import torch


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default: CUDA when available) and ``--threads`` (torch CPU threads)."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def device_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """The device asked for (a parser error for CUDA without CUDA or a bad name); sets
    ``--threads`` when given (a parser error below 1)."""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            parser.error(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return device
