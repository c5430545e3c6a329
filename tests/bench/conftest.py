"""The benchmark scripts in bench/ import their helper modules as siblings (``python
bench/bench_pipeline.py`` puts bench/ first on sys.path); the tests see them the same way."""

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
