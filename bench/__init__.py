"""Benchmarks: programs that measure what the bridge itself costs. `python -m bench --help`."""
