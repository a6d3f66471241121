"""Benchmarks, run by hand or by `make bench`; never timed in tests."""
