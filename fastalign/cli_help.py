"""The help text of ``fastalign train KIND --help``, generated from the config dataclasses.

Each config field carries its group and one line of help (``fastalign.train.options.option``);
this module lays them out, grouped, with the type and the default written the way an
override or a YAML file spells them (``beta=0.1``, ``rpo_alpha=null``, ``adam_betas=[0.9,
0.999]``). Only torch-free modules are imported: ``--help`` must answer in well under a second.
"""

from __future__ import annotations

import textwrap
from typing import Any

from fastalign.train.config import DPOConfig, GRPOConfig, PPOConfig, RewardConfig, SFTConfig, TrainConfig
from fastalign.train.options import GROUPS, option_docs

# `fastalign train KIND` -> (its config class, one line saying what it trains).
KINDS: dict[str, tuple[type[TrainConfig], str]] = {
    "sft": (SFTConfig, "supervised fine-tuning on prompt/completion data (token-mean NLL of the answers)"),
    "rm": (RewardConfig, "a Bradley-Terry reward model on preference pairs"),
    "dpo": (DPOConfig, "DPO and its relatives (IPO, RPO, SimPO, CPO, ORPO, ...) on preference pairs"),
    "ppo": (PPOConfig, "PPO with a critic on the prompts of preference data (rewards: verifier or --reward-model)"),
    "grpo": (GRPOConfig, "GRPO (group-normalized advantages, no critic) on the prompts of preference data"),
}

_GROUP_TITLES = {
    "model": "model (how the model is placed and run)",
    "data": "data (rows and batches)",
    "optimization": "optimization",
    "method": "method",
    "run": "run (outputs, logging, checkpoints, distribution)",
}


def format_value(value: Any) -> str:
    """``value`` as an override / YAML value: ``null``, ``true``, ``[a, b]``, ``1e-05``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    return str(value)


def options_help(config_class: type[TrainConfig], *, width: int = 100) -> str:
    """Every option of ``config_class``, grouped as ``GROUPS``: ``name=default (type)`` then
    its help line, indented."""
    docs = option_docs(config_class)
    lines = ["options (key=value after the flags, or keys of a --config YAML file; "
             "examples/configs/ has one per kind):"]
    for group in GROUPS:
        names = [name for name, doc in docs.items() if doc["group"] == group]
        if not names:
            continue
        lines.append("")
        lines.append(f"{_GROUP_TITLES[group]}:")
        for name in names:
            doc = docs[name]
            lines.append(f"  {name}={format_value(doc['default'])}  ({doc['type']})")
            lines.extend(textwrap.wrap(doc["help"], width=width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)
