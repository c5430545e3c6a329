"""One full DPO step of one long pair vs its length: TRL 1.16's DPOTrainer at its most frugal
settings against fastalign with each memory feature on and off.

    python bench/bench_long_context.py --preset cpu      # H=576 Llama, V=49152, L in 1k..8k
    python bench/bench_long_context.py --preset gpu-1b   # Llama-3.2-1B shape, L in 4k..64k

Writes bench/results/<device>/long_context_<preset>.{json,csv,md,png}. Logic:
``fastalign/bench/long_context.py``.
"""

from __future__ import annotations

import sys

from fastalign.bench.long_context import main

if __name__ == "__main__":
    sys.exit(main())
