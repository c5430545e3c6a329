"""GRPO and PPO after SFT: greedy reward on held-out prompts before and after RL.

    python bench/bench_rl_heldout.py --preset cpu-tiny    # tiny model, 2-core CPU, ~6 minutes

Writes bench/results/<device>/rl_heldout_<preset>.{json,csv,png}. Logic: ``fastalign/bench/rl_heldout.py``.
"""

from __future__ import annotations

import sys

from fastalign.bench.rl_heldout import main

if __name__ == "__main__":
    sys.exit(main())
