"""Helpers for tests and benchmarks, never shipped: a simulated evaluation that drives the real
Engine without processes (simulated.py), and synthetic archives built with it (synthetic.py).
Benchmarks import it as `tests.support` (bench/_common.py puts the repository root on sys.path)."""
