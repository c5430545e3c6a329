"""TRL's DPOTrainer vs fastalign's subclass (``from fastalign.integrations.trl import DPOTrainer``).

    python bench/bench_trl_dpo.py --preset cpu-smoke   # tiny model, any machine, seconds
    python bench/bench_trl_dpo.py --preset gpu-1b      # Llama-3.2-1B shape, bf16: tokens/s and peak memory

Writes bench/results/<device>/trl_dpo_<preset>.{json,csv,png}. Logic: ``fastalign/bench/trl_dpo.py``.
"""

from __future__ import annotations

import sys

from fastalign.bench.trl_dpo import main

if __name__ == "__main__":
    sys.exit(main())
