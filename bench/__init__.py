"""Benchmarks: each figure measured beside its floor in the same run (`make bench`)."""
