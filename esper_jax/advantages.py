"""Advantages for the PPO update (docs/policy-and-ppo.md#ppo-update) and the env-major ``Batch`` built from a
``Trajectory``: per-env GAE as a backwards ``lax.scan``, advantage normalisation and explained variance, all masked by
the valid (real-transition) steps.

A truncation bootstraps from the stored ``Q(s', argmax op)``, a true terminal (done ∧ ¬truncated) does not.
Returns = A + V (un-normalised A); advantages are normalised once over all valid steps (population std, +1e-8).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import struct

from esper_jax.ppo_loss import Batch
from esper_jax.rollout import Trajectory

if TYPE_CHECKING:  # PPOConfig lives with the update; only gamma and gae_lambda are read here
    from esper_jax.ppo import PPOConfig

__all__ = ["ADVANTAGE_EPS", "EXPLAINED_VARIANCE_FLOOR", "gae", "normalize_advantages", "explained_variance", "prepare_batch"]

ADVANTAGE_EPS = 1e-8
EXPLAINED_VARIANCE_FLOOR = 1e-8


@struct.dataclass
class _GaeStep:
    reward: jax.Array
    value: jax.Array
    next_value: jax.Array
    next_non_terminal: jax.Array
    terminal: jax.Array
    in_range: jax.Array


def _gae_one_env(
    rewards: jax.Array,
    values: jax.Array,
    dones: jax.Array,
    truncated: jax.Array,
    bootstrap_values: jax.Array,
    length: jax.Array,
    gamma: float,
    gae_lambda: float,
) -> tuple[jax.Array, jax.Array]:
    num_steps = rewards.shape[0]
    t = jnp.arange(num_steps)
    is_last = t == length - 1
    terminal = dones & ~truncated
    shifted_values = jnp.concatenate([values[1:], jnp.zeros((1,), values.dtype)])
    next_value = jnp.where(is_last, jnp.where(truncated, bootstrap_values, 0.0), shifted_values)
    # Last valid step: a truncation always bootstraps (nnt 1); otherwise a done ends the return.
    next_non_terminal = jnp.where(
        is_last,
        jnp.where(truncated, 1.0, 1.0 - dones.astype(jnp.float32)),
        1.0 - terminal.astype(jnp.float32),
    )
    gamma_lambda = gamma * gae_lambda  # folded in Python double, then float32 — as torch does with two floats

    def step(last_gae: jax.Array, x: _GaeStep) -> tuple[jax.Array, jax.Array]:
        last_gae = jnp.where(x.terminal, 0.0, last_gae)
        delta = x.reward + gamma * x.next_value * x.next_non_terminal - x.value
        advantage = delta + gamma_lambda * x.next_non_terminal * last_gae
        advantage = jnp.where(x.in_range, advantage, 0.0)
        return advantage, advantage

    xs = _GaeStep(
        reward=rewards,
        value=values,
        next_value=next_value,
        next_non_terminal=next_non_terminal,
        terminal=terminal,
        in_range=t < length,
    )
    _, advantages = jax.lax.scan(step, jnp.zeros((), jnp.float32), xs, reverse=True)
    returns = jnp.where(t < length, advantages + values, 0.0)
    return advantages, returns


def gae(
    rewards: jax.Array,
    values: jax.Array,
    dones: jax.Array,
    truncated: jax.Array,
    bootstrap_values: jax.Array,
    *,
    gamma: float,
    gae_lambda: float,
    lengths: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Per-env GAE exactly as upstream (docs/policy-and-ppo.md#ppo-update). Inputs ``[E, T]`` (env-major),
    ``lengths [E]`` valid steps per env (default T). Returns (advantages, returns) ``[E, T]`` float32, 0 beyond each
    env's length. No mixing across envs: each row is its own backwards scan."""
    rewards = jnp.asarray(rewards, jnp.float32)
    values = jnp.asarray(values, jnp.float32)
    bootstrap_values = jnp.asarray(bootstrap_values, jnp.float32)
    dones = jnp.asarray(dones, jnp.bool_)
    truncated = jnp.asarray(truncated, jnp.bool_)
    if lengths is None:
        lengths = jnp.full(rewards.shape[:1], rewards.shape[1], jnp.int32)
    fn = functools.partial(_gae_one_env, gamma=gamma, gae_lambda=gae_lambda)
    return jax.vmap(fn)(rewards, values, dones, truncated, bootstrap_values, jnp.asarray(lengths, jnp.int32))


def normalize_advantages(advantages: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """(A − mean)/(std + 1e-8) with the mean and *population* std over valid entries; invalid entries → 0."""
    advantages = jnp.asarray(advantages, jnp.float32)
    valid = jnp.ones(advantages.shape, jnp.bool_) if valid is None else jnp.asarray(valid, jnp.bool_)
    n = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, advantages, 0.0)) / n
    var = jnp.sum(jnp.where(valid, jnp.square(advantages - mean), 0.0)) / n
    return jnp.where(valid, (advantages - mean) / (jnp.sqrt(var) + ADVANTAGE_EPS), 0.0)


def explained_variance(values: jax.Array, returns: jax.Array, valid: jax.Array) -> jax.Array:
    """1 − Var(R − V)/Var(R) over valid entries with unbiased variances; 0 when Var(R) ≤ 1e-8 (upstream)."""
    n = jnp.sum(valid).astype(jnp.float32)

    def unbiased_var(x: jax.Array) -> jax.Array:
        mean = jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(n, 1.0)
        return jnp.sum(jnp.where(valid, jnp.square(x - mean), 0.0)) / jnp.maximum(n - 1.0, 1.0)

    var_returns = unbiased_var(returns)
    ev = 1.0 - unbiased_var(returns - values) / jnp.maximum(var_returns, EXPLAINED_VARIANCE_FLOOR)
    return jnp.where(var_returns > EXPLAINED_VARIANCE_FLOOR, ev, 0.0)


def prepare_batch(trajectory: Trajectory, config: PPOConfig) -> tuple[Batch, jax.Array]:
    """Trajectory ``[T, E]`` → env-major ``Batch [E, T]`` with GAE and normalised advantages; also returns the
    raw advantages (for metrics)."""
    env_major = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    valid = env_major(trajectory.valid)
    lengths = jnp.sum(valid, axis=1, dtype=jnp.int32)
    values = env_major(trajectory.value)
    advantages, returns = gae(
        env_major(trajectory.reward),
        values,
        env_major(trajectory.done),
        env_major(trajectory.truncated),
        env_major(trajectory.bootstrap_value),
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        lengths=lengths,
    )
    batch = Batch(
        features=env_major(trajectory.features),
        blueprint_indices=env_major(trajectory.blueprint_indices),
        actions=jax.tree.map(env_major, trajectory.actions),
        log_probs=jax.tree.map(env_major, trajectory.log_probs),
        masks=jax.tree.map(env_major, trajectory.masks),
        values=values,
        returns=returns,
        advantages=normalize_advantages(advantages, valid),
        valid=valid,
        initial_carry=trajectory.initial_carry,
    )
    return batch, advantages
