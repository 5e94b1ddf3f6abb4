"""Inputs shared by the benchmarks: the same network weights and the same synthetic data on both sides.

The full upstream policy (feature 512, LSTM 512, 3 slots: ~3.6M parameters) is built by the torch reference and
converted with ``interop`` when torch is present, so both implementations run identical weights; without torch the
JAX side initialises its own (timings do not depend on the values).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import JAX
from esper_jax import policy
from esper_jax.network import NetworkConfig, param_count
from esper_jax.testing import UpdateBuffer, random_policy_batch
from reference_torch.leyline import SlotConfig as RefSlotConfig

NUM_SLOTS = 3
SEQ_LEN = 150  # upstream's episode length and rollout length
COMPAT = "fixed"


BF16 = "bfloat16"
# The esper_jax rows run twice: float32 (parity) and bf16 matmuls with float32 accumulation (NetworkConfig.matmul_dtype).
JAX_BF16 = "esper_jax_bf16"
BF16_DTYPE_LABEL = "bfloat16 matmuls, float32 accumulate"


def jax_variant(matmul_dtype: str | None) -> dict[str, str]:
    """The ``impl`` and ``dtype`` fields of an esper_jax row run with ``matmul_dtype`` (None: the float32 row)."""
    if matmul_dtype == BF16:
        return {"impl": JAX_BF16, "dtype": BF16_DTYPE_LABEL}
    return {"impl": JAX, "dtype": "float32"}


def network_config(num_slots: int = NUM_SLOTS, matmul_dtype: str | None = None) -> NetworkConfig:
    return NetworkConfig(num_slots=num_slots, matmul_dtype=matmul_dtype)


def torch_network(torch: Any, config: NetworkConfig, seed: int = 0) -> Any:
    from reference_torch.network import FactoredRecurrentActorCritic

    torch.manual_seed(seed)
    net = FactoredRecurrentActorCritic(
        state_dim=config.state_dim,
        feature_dim=config.feature_dim,
        lstm_hidden_dim=config.hidden_dim,
        lstm_layers=config.lstm_layers,
        slot_config=RefSlotConfig.for_grid(1, config.num_slots),
    )
    if torch.cuda.is_available():
        net = net.cuda()
    return net


def jax_params(config: NetworkConfig, torch_net: Any | None, seed: int = 0) -> Any:
    if torch_net is None:
        return policy.init(jax.random.PRNGKey(seed), config)
    from esper_jax.interop import params_from_torch_state_dict

    state = {k: v.detach().cpu() for k, v in torch_net.state_dict().items()}
    return jax.tree.map(jnp.asarray, params_from_torch_state_dict(state, config))


def describe(config: NetworkConfig, params: Any) -> str:
    return f"{param_count(params) / 1e6:.2f}M params"


def step_inputs(num_envs: int, num_steps: int, num_slots: int = NUM_SLOTS, seed: int = 0):
    """Per-step policy inputs ``[T, E, ...]`` from random (valid) observations: features, blueprint indices and
    env masks (PerHead), as jax arrays. Every slot is enabled so no slot mask row is empty (upstream's validation
    would raise on one)."""
    batch = random_policy_batch(np.random.default_rng(seed), num_slots, (num_steps, num_envs), compat=COMPAT)
    return jnp.asarray(batch.features), jnp.asarray(batch.blueprint_indices), batch.masks.map(jnp.asarray)


def update_buffer(config: NetworkConfig, num_envs: int, num_steps: int = SEQ_LEN, seed: int = 0) -> UpdateBuffer:
    """An env-major ``[E, T, ...]`` buffer as a rollout would fill it: valid actions under the masks, old
    log-probs near the current policy's, every env truncated at its last step (bootstrap on). Values are random:
    the update's cost does not depend on them."""
    rng = np.random.default_rng(seed)
    batch = random_policy_batch(rng, config.num_slots, (num_envs, num_steps), compat=COMPAT)
    shape = (num_envs, num_steps)
    last = np.broadcast_to(np.arange(num_steps) == num_steps - 1, shape)
    hidden = np.zeros((config.lstm_layers, num_envs, config.hidden_dim), np.float32)
    return UpdateBuffer(
        states=batch.features,
        blueprint_indices=batch.blueprint_indices,
        actions=batch.actions,
        old_log_probs=batch.actions.map(lambda _: (-1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)),
        masks=batch.masks,
        values=rng.normal(0.0, 1.0, shape).astype(np.float32),
        rewards=rng.normal(0.3, 1.0, shape).astype(np.float32),
        dones=last.copy(),
        truncated=last.copy(),
        bootstrap_values=np.where(last, rng.normal(0.0, 1.0, shape), 0.0).astype(np.float32),
        valid=np.ones(shape, bool),
        hidden=(hidden, hidden),
    )
