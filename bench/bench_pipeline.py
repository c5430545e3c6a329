"""The comparison: SFT → RM → PPO vs SFT → DPO vs SFT → GRPO (one shared SFT run).

    python bench/bench_pipeline.py --preset cpu-tiny    # tiny model, 2-core CPU, ~3-5 minutes
    python bench/bench_pipeline.py --preset gpu-1b      # ~1.2B random Llama, bf16: time and memory only

Writes bench/results/<device>/pipeline_<preset>.{json,csv,png} and prints a table
(also ``fastalign bench pipeline ...``). Logic: ``fastalign/bench/pipeline.py``.
"""

from __future__ import annotations

import sys

from fastalign.bench.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
