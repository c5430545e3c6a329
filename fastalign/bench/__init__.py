"""Benchmark harness: what every benchmark measures with, importable by users.

``memory`` (the one memory meter: CPU RSS sampling, CUDA peak, tensor allocations),
``measure`` (timing), ``environment`` (the record stored beside every result), ``report``
(JSON/CSV files and plots), ``runner`` (one measured case as a row), ``providers`` (the
implementations compared), ``workloads`` (shared model shapes, dtypes and synthetic data),
``micro`` (pytest-benchmark helpers). The benchmarks themselves are scripts in the
repository's ``bench/`` (not installed) and ``bench/results/`` holds their committed outputs.
"""
