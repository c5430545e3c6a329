"""Benchmark harness: providers, timing, memory, environment record, reports and plots.

Not imported by the library proper; ``bench/`` holds thin scripts over this package and
``bench/results/`` the committed outputs.
"""
