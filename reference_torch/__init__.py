"""PyTorch reference of the esper-lite 0872525b Tamiyo policy, used only by parity tests and benchmarks."""
