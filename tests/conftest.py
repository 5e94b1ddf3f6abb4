"""Shared test setup: the small network configs the unit tests run on, and the compilation-cache switch.

Small widths keep each file's XLA compiles short; equal configs hash alike, so files that share one also share its
compiled functions within an xdist worker. Test modules import them (``from tests.conftest import NET_3_SLOTS``).

The trainer's CLI turns on JAX's persistent compilation cache in the user's cache directory
(esper_jax/compile_cache.py); tests must not write there, so it is off unless a test points it elsewhere.
"""

import os

from esper_jax.compile_cache import ENV_VAR
from esper_jax.network import NetworkConfig

os.environ[ENV_VAR] = "off"

# One slot, the cheapest PPO update that still has every head (test_ppo's learning checks).
NET_1_SLOT = NetworkConfig(num_slots=1, feature_dim=32, hidden_dim=32)
# Two slots: rollouts over a toy environment.
NET_2_SLOTS = NetworkConfig(num_slots=2, feature_dim=32, hidden_dim=32)
# Two slots with a feature width different from the hidden width, so a transposed or swapped layer cannot pass.
NET_2_SLOTS_NARROW = NetworkConfig(num_slots=2, feature_dim=32, hidden_dim=16)
# The default three slots at a small width: network and policy behaviour.
NET_3_SLOTS = NetworkConfig(num_slots=3, feature_dim=64, hidden_dim=64)
# Three slots wide enough that bfloat16 matmul rounding is measurable against float32.
NET_3_SLOTS_WIDE = NetworkConfig(num_slots=3, feature_dim=128, hidden_dim=128)
