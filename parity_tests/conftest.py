"""Parity-test setup only (never a library side effect): exact f32 matmuls in JAX, a fixed torch thread count."""

import jax
import torch

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(2)
