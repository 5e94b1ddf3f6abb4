"""Benchmarks of esper_jax against the torch reference (see bench/README.md and docs/benchmarks.md)."""
