"""Benchmarks (``python -m bench.broker_bench``)."""
