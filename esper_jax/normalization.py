"""Observation and reward normalisers as pytrees + pure functions (docs/environment.md#reward-normalisation,
docs/policy-and-ppo.md#features).

Both mirror ``esper.simic.control.normalization`` upstream:

* ``RunningMeanStd`` — observation normaliser. Starts at mean 0, var 1, count 1e-4; ``normalize`` is
  ``clip((x − mean)/sqrt(var + 1e-4), ±10)``. With ``momentum`` set (always, in the training loop, at 0.99) an
  update is an EMA towards the batch mean and *population* variance, including the cross term
  ``m·(1−m)·(μ_b − mean_old)²``; with ``momentum=None`` it is the full parallel-Welford merge. Stats are frozen
  during a rollout and updated once per PPO batch from all raw states of the batch.
* ``RewardNormalizer`` — scalar Welford over every reward in env order; the output divides by the running
  *sample* std (no mean subtraction) and clips to ±10; before two samples it only clips.

Everything is float32 and jit/vmap/scan-safe; nothing here mutates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

OBS_EPSILON = 1e-4  # inside the sqrt, and the initial count
OBS_CLIP = 10.0
OBS_MOMENTUM = 0.99
REWARD_CLIP = 10.0
REWARD_EPSILON = 1e-8


# ----------------------------------------------------------------------------------------------------------------
# Observation normaliser
# ----------------------------------------------------------------------------------------------------------------


@struct.dataclass
class RunningMeanStd:
    mean: jnp.ndarray  # float32 [D]
    var: jnp.ndarray  # float32 [D]
    count: jnp.ndarray  # float32 scalar; only read by the Welford path (the EMA path just accumulates it)
    momentum: float | None = struct.field(pytree_node=False, default=OBS_MOMENTUM)
    epsilon: float = struct.field(pytree_node=False, default=OBS_EPSILON)
    clip: float = struct.field(pytree_node=False, default=OBS_CLIP)


def init(
    shape: int | tuple[int, ...],
    *,
    momentum: float | None = OBS_MOMENTUM,
    epsilon: float = OBS_EPSILON,
    clip: float = OBS_CLIP,
) -> RunningMeanStd:
    """Fresh stats (mean 0, var 1, count = epsilon), i.e. ``normalize`` ≈ x/√1.0001 at first."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be None or in [0, 1), got {momentum}")
    return RunningMeanStd(
        mean=jnp.zeros(shape, jnp.float32),
        var=jnp.ones(shape, jnp.float32),
        count=jnp.asarray(epsilon, jnp.float32),
        momentum=momentum,
        epsilon=epsilon,
        clip=clip,
    )


def normalize(stats: RunningMeanStd, x: jnp.ndarray) -> jnp.ndarray:
    """``clip((x − mean)/sqrt(var + eps), ±clip)``, broadcasting over any leading axes of ``x``."""
    x = jnp.asarray(x, jnp.float32)
    return jnp.clip((x - stats.mean) / jnp.sqrt(stats.var + stats.epsilon), -stats.clip, stats.clip)


def update(stats: RunningMeanStd, x: jnp.ndarray, valid: jnp.ndarray | None = None) -> RunningMeanStd:
    """Fold a batch into the stats. ``x`` is ``[..., D]`` (all leading axes are samples); ``valid`` (bool, the
    leading shape of ``x``) drops padded rows — upstream only ever feeds the states that really happened.
    An empty batch (no valid row) leaves the stats unchanged."""
    x = jnp.asarray(x, jnp.float32)
    feature_shape = stats.mean.shape
    # Sums over the leading axes, never a reshape to [N, D]: flattening [T, E, D] with E split over devices would
    # gather every device's rows onto every device; summing leaves one all-reduce of [D] partial sums.
    samples = tuple(range(x.ndim - len(feature_shape)))
    if valid is None:
        weights = jnp.ones(x.shape[: len(samples)], jnp.float32)
    else:
        weights = jnp.asarray(valid, jnp.float32)
        if weights.shape != x.shape[: len(samples)]:
            raise ValueError(f"normalization.update: valid must have the leading shape of x {x.shape[: len(samples)]}, "
                             f"got {weights.shape}")
    n = jnp.sum(weights)
    w = weights.reshape(weights.shape + (1,) * len(feature_shape))
    safe_n = jnp.maximum(n, 1.0)
    batch_mean = jnp.sum(x * w, axis=samples) / safe_n
    batch_var = jnp.sum(jnp.square(x - batch_mean) * w, axis=samples) / safe_n  # population variance, as torch var(unbiased=False)

    if stats.momentum is not None:
        m = stats.momentum
        delta = batch_mean - stats.mean
        new_mean = m * stats.mean + (1.0 - m) * batch_mean
        new_var = m * stats.var + (1.0 - m) * batch_var + m * (1.0 - m) * jnp.square(delta)
    else:
        delta = batch_mean - stats.mean
        total = stats.count + n
        new_mean = stats.mean + delta * n / total
        m2 = stats.var * stats.count + batch_var * n + jnp.square(delta) * stats.count * n / total
        new_var = m2 / total
    has_data = n > 0
    return stats.replace(
        mean=jnp.where(has_data, new_mean, stats.mean),
        var=jnp.where(has_data, new_var, stats.var),
        count=stats.count + n,
    )


# ----------------------------------------------------------------------------------------------------------------
# Reward normaliser
# ----------------------------------------------------------------------------------------------------------------


@struct.dataclass
class RewardNormalizer:
    mean: jnp.ndarray  # float32 scalar
    m2: jnp.ndarray  # float32 scalar, sum of squared deviations
    count: jnp.ndarray  # int32 scalar
    clip: float = struct.field(pytree_node=False, default=REWARD_CLIP)
    epsilon: float = struct.field(pytree_node=False, default=REWARD_EPSILON)


def reward_init(*, clip: float = REWARD_CLIP, epsilon: float = REWARD_EPSILON) -> RewardNormalizer:
    return RewardNormalizer(
        mean=jnp.zeros((), jnp.float32),
        m2=jnp.zeros((), jnp.float32),
        count=jnp.zeros((), jnp.int32),
        clip=clip,
        epsilon=epsilon,
    )


def reward_normalize_only(stats: RewardNormalizer, reward: jnp.ndarray) -> jnp.ndarray:
    """Scale by the running sample std without updating (upstream ``normalize_only``, used for the governor
    penalty). Before two samples the reward is only clipped. Broadcasts over any shape."""
    reward = jnp.asarray(reward, jnp.float32)
    sample_var = stats.m2 / jnp.maximum(stats.count - 1, 1).astype(jnp.float32)
    std = jnp.maximum(stats.epsilon, jnp.sqrt(sample_var))
    scaled = jnp.where(stats.count < 2, reward, reward / std)
    return jnp.clip(scaled, -stats.clip, stats.clip)


def reward_update(stats: RewardNormalizer, reward: jnp.ndarray) -> RewardNormalizer:
    """One Welford step with a scalar reward."""
    reward = jnp.asarray(reward, jnp.float32)
    count = stats.count + 1
    delta = reward - stats.mean
    mean = stats.mean + delta / count.astype(jnp.float32)
    m2 = stats.m2 + delta * (reward - mean)
    return stats.replace(mean=mean, m2=m2, count=count)


def reward_update_and_normalize(stats: RewardNormalizer, reward: jnp.ndarray) -> tuple[RewardNormalizer, jnp.ndarray]:
    """Upstream ``normalize(r)``: update with ``r`` first, then scale it with the updated stats."""
    stats = reward_update(stats, reward)
    return stats, reward_normalize_only(stats, reward)


def reward_update_and_normalize_sequence(
    stats: RewardNormalizer, rewards: jnp.ndarray, valid: jnp.ndarray | None = None
) -> tuple[RewardNormalizer, jnp.ndarray]:
    """Normalise a vector of rewards one after the other (upstream's env order within a step), each seeing the
    stats updated by the ones before it. ``valid=False`` entries are passed through as 0 without an update."""
    rewards = jnp.asarray(rewards, jnp.float32)
    valid = jnp.ones(rewards.shape, jnp.bool_) if valid is None else jnp.asarray(valid, jnp.bool_)

    def step(carry: RewardNormalizer, inputs: tuple[jnp.ndarray, jnp.ndarray]):
        r, ok = inputs
        updated, out = reward_update_and_normalize(carry, r)
        carry = jax.tree.map(lambda new, old: jnp.where(ok, new, old), updated, carry)
        return carry, jnp.where(ok, out, 0.0)

    flat_r = rewards.reshape(-1)
    stats, out = jax.lax.scan(step, stats, (flat_r, valid.reshape(-1)))
    return stats, out.reshape(rewards.shape)
