"""Benchmarks: baselines (numpy, PyTorch, naive TVM) and the static-schedule table."""
