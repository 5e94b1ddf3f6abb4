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

from esper_jax import features as features_mod
from esper_jax import masks as masks_mod
from esper_jax import policy
from esper_jax.contracts import CANONICAL_STYLE, HEAD_NAMES, LifecycleOp, PerHead, SlotConfig
from esper_jax.network import LSTMCarry, NetworkConfig, param_count
from esper_jax.synthetic import random_observation

NUM_SLOTS = 3
SEQ_LEN = 150  # upstream's episode length and rollout length
COMPAT = "fixed"


def network_config(num_slots: int = NUM_SLOTS) -> NetworkConfig:
    return NetworkConfig(num_slots=num_slots)


def torch_network(torch: Any, config: NetworkConfig, seed: int = 0) -> Any:
    from reference_torch.network import FactoredRecurrentActorCritic

    torch.manual_seed(seed)
    net = FactoredRecurrentActorCritic(
        state_dim=config.state_dim,
        feature_dim=config.feature_dim,
        lstm_hidden_dim=config.hidden_dim,
        lstm_layers=config.lstm_layers,
        slot_config=SlotConfig.with_num_slots(config.num_slots),
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
    env masks, computed once by esper_jax. Every slot is enabled so no slot mask row is empty (upstream's
    validation would raise on one)."""
    obs = random_observation(seed, num_slots, (num_steps, num_envs), p_enabled=1.0)
    feats = features_mod.extract(obs, compat=COMPAT)
    masks = masks_mod.compute(obs, masks_mod.MaskConfig())
    return feats.features, feats.blueprint_indices, masks


def _sample_valid(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    scores = rng.random(mask.shape) + mask  # valid entries score in [1, 2), invalid in [0, 1)
    return np.argmax(scores, axis=-1).astype(np.int32)


def update_buffer(config: NetworkConfig, num_envs: int, num_steps: int = SEQ_LEN, seed: int = 0) -> dict:
    """An env-major ``[E, T, ...]`` numpy buffer as a rollout would fill it: valid actions under the masks, old
    log-probs near the current policy's, every env truncated at its last step (bootstrap on). Values are random:
    the update's cost does not depend on them."""
    rng = np.random.default_rng(seed)
    features, bp, masks = step_inputs(num_envs, num_steps, config.num_slots, seed)
    env_major = lambda x: np.swapaxes(np.asarray(x), 0, 1)  # noqa: E731
    masks_np = {h: env_major(getattr(masks, h)) for h in HEAD_NAMES}
    actions = {h: _sample_valid(rng, masks_np[h]) for h in HEAD_NAMES}
    op = actions["op"]
    style_relevant = (op == LifecycleOp.GERMINATE) | (op == LifecycleOp.SET_ALPHA_TARGET)
    actions["style"] = np.where(style_relevant, actions["style"], int(CANONICAL_STYLE)).astype(np.int32)
    shape = (num_envs, num_steps)
    last = np.arange(num_steps)[None, :] == num_steps - 1
    return dict(
        states=env_major(features).astype(np.float32),
        blueprint_indices=env_major(bp).astype(np.int32),
        actions=actions,
        old_log_probs={h: (-1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32) for h in HEAD_NAMES},
        masks=masks_np,
        values=rng.normal(0.0, 1.0, shape).astype(np.float32),
        rewards=rng.normal(0.3, 1.0, shape).astype(np.float32),
        dones=np.broadcast_to(last, shape).copy(),
        truncated=np.broadcast_to(last, shape).copy(),
        bootstrap_values=np.where(last, rng.normal(0.0, 1.0, shape), 0.0).astype(np.float32),
        hidden=np.zeros((config.lstm_layers, num_envs, config.hidden_dim), np.float32),
    )


def buffer_to_trajectory(buf: dict):
    from esper_jax.rollout import Trajectory

    tm = lambda x: jnp.asarray(np.swapaxes(x, 0, 1))  # noqa: E731 - env-major → time-major
    per_head = lambda d: PerHead(**{h: tm(d[h]) for h in HEAD_NAMES})  # noqa: E731
    hidden = jnp.asarray(np.moveaxis(buf["hidden"], 1, 0))  # [L, E, H] → [E, L, H]
    return Trajectory(
        features=tm(buf["states"]),
        raw_features=tm(buf["states"]),
        blueprint_indices=tm(buf["blueprint_indices"]),
        actions=per_head(buf["actions"]),
        log_probs=per_head(buf["old_log_probs"]),
        masks=per_head(buf["masks"]),
        value=tm(buf["values"]),
        reward=tm(buf["rewards"]),
        raw_reward=tm(buf["rewards"]),
        done=tm(buf["dones"]),
        truncated=tm(buf["truncated"]),
        bootstrap_value=tm(buf["bootstrap_values"]),
        valid=jnp.ones(np.swapaxes(buf["rewards"], 0, 1).shape, bool),
        initial_carry=LSTMCarry(h=hidden, c=hidden),
    )


def buffer_to_torch(torch: Any, buf: dict) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t = lambda x: torch.as_tensor(np.ascontiguousarray(x), device=device)  # noqa: E731
    return dict(
        states=t(buf["states"]),
        blueprint_indices=t(buf["blueprint_indices"]).long(),
        actions={h: t(buf["actions"][h]).long() for h in HEAD_NAMES},
        old_log_probs={h: t(buf["old_log_probs"][h]) for h in HEAD_NAMES},
        masks={h: t(buf["masks"][h]) for h in HEAD_NAMES},
        values=t(buf["values"]),
        rewards=t(buf["rewards"]),
        dones=t(buf["dones"]),
        truncated=t(buf["truncated"]),
        bootstrap_values=t(buf["bootstrap_values"]),
        initial_hidden=(t(buf["hidden"]), t(buf["hidden"])),
    )
