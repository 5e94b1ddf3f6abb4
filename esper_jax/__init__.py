"""esper-jax: the Esper seed-slot controller (Tamiyo policy, Simic PPO) in JAX/Flax, compiled end to end."""

__version__ = "0.1.0"
