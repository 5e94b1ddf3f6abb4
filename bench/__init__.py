"""Benchmarks of esper_jax against the torch reference (see bench/README.md and shared/spec/bench.md)."""
