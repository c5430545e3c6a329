"""What ``fastalign demo`` runs (``DemoSettings``), apart from the demo itself: torch-free, so
that ``fastalign demo --help`` shows the defaults without importing the trainers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The CLI's `--data synthetic` uses the demo's sizes: the synthetic task's held-out near misses
# depend on num_train, so `fastalign eval --data synthetic` scores the very pairs the demo's
# table was computed on.
SYNTHETIC_SIZES = {"num_train": 5000, "num_test": 200}


@dataclass
class DemoSettings:
    """What the demo runs. ``num_train`` / ``num_test`` default to the CLI's synthetic sizes, so
    ``fastalign eval --data synthetic`` evaluates the same held-out pairs."""

    output_dir: str = "fastalign-demo"
    seed: int = 0
    num_train: int = SYNTHETIC_SIZES["num_train"]
    num_test: int = SYNTHETIC_SIZES["num_test"]
    sft_steps: int = 600
    dpo_steps: int = 150
    dpo_learning_rate: float = 2e-4
    rpo_alpha: float | None = 1.0
    token_budget: int = 1536
    progress: bool = True

    def validate(self) -> None:
        """``ValueError`` naming the first bad setting (``--sft-steps`` for ``sft_steps``)."""
        minimum = {"seed": 0, "num_train": 1, "num_test": 1, "sft_steps": 1, "dpo_steps": 1, "token_budget": 1}
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                flag = f"--{name.replace('_', '-')}" if name in ("seed", "sft_steps", "dpo_steps") else name
                raise ValueError(f"{flag} must be an int >= {low}, got {value!r}")
        rate = self.dpo_learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
            raise ValueError(f"dpo_learning_rate must be a finite number > 0, got {rate!r}")
        alpha = self.rpo_alpha
        if alpha is not None and not (isinstance(alpha, (int, float)) and 0 <= alpha < math.inf):
            raise ValueError(f"rpo_alpha must be None or a finite number >= 0, got {self.rpo_alpha!r}")
        if not isinstance(self.output_dir, str) or not self.output_dir.strip() or "\x00" in self.output_dir:
            raise ValueError(f"--output-dir must be a non-empty path, got {self.output_dir!r}")
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress must be a bool, got {self.progress!r}")
