"""The factored PPO loss (docs/policy-and-ppo.md#ppo-update): per-head clipped surrogates with causal masks on the
advantages, the (clipped) value loss and the per-head weighted entropy bonus, plus the diagnostics of one forward pass.

Loss = Σ_heads clipped surrogate (per-head ratios, causal masks on the advantages, masked means over max(ΣM, 1))
+ value_coef·value loss (clipped: 0.5·mean(max(...)); unclipped: mean(...) without the 0.5)
− entropy_coef(train_steps)·Σ_h c_h·masked-mean normalised entropy. The per-head **sum** (not mean) and the missing
0.5 of the unclipped value loss are the algorithm upstream (docs/compat.md#policy-side), kept in both compat modes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import struct

from esper_jax import policy
from esper_jax.contracts import HEAD_NAMES, PerHead
from esper_jax.masks import causal_relevance
from esper_jax.network import LSTMCarry, NetworkConfig

if TYPE_CHECKING:  # PPOConfig lives with the update; the loss only reads its fields
    from esper_jax.ppo import PPOConfig

__all__ = ["LOG_RATIO_CLAMP", "Batch", "LossInfo", "entropy_coefficient", "factored_loss", "compute_loss"]

LOG_RATIO_CLAMP = 20.0  # exp(±20) keeps a ratio finite for any log-prob gap


def entropy_coefficient(config: PPOConfig, train_steps: jax.Array | int) -> jax.Array:
    """The scalar entropy coefficient for the update with this ``train_steps`` (docs/policy-and-ppo.md#ppo-update)."""
    floor = config.entropy_coef_min
    if config.entropy_anneal_steps == 0:
        return jnp.asarray(max(config.entropy_coef, floor), jnp.float32)
    start = config.entropy_coef if config.entropy_coef_start is None else config.entropy_coef_start
    end = config.entropy_coef if config.entropy_coef_end is None else config.entropy_coef_end
    progress = jnp.minimum(1.0, jnp.asarray(train_steps, jnp.float32) / config.entropy_anneal_steps)
    return jnp.maximum(start + progress * (end - start), floor).astype(jnp.float32)


@struct.dataclass
class Batch:
    """Env-major update data ``[B, T, ...]`` (B envs of this minibatch); ``initial_carry [B, L, H]``."""

    features: jax.Array
    blueprint_indices: jax.Array
    actions: PerHead
    log_probs: PerHead  # old (rollout) log-probs
    masks: PerHead
    values: jax.Array  # old values Q(s, op) at rollout
    returns: jax.Array
    advantages: jax.Array  # normalised
    valid: jax.Array
    initial_carry: LSTMCarry


@struct.dataclass
class LossInfo:
    """Loss terms and diagnostics of one forward pass (scalars unless noted)."""

    loss: jax.Array
    policy_loss: jax.Array  # Σ over heads
    policy_loss_per_head: PerHead
    value_loss: jax.Array
    entropy: jax.Array  # −L_H: Σ_h c_h · masked-mean normalised entropy (upstream's "entropy" metric)
    entropy_per_head: PerHead  # masked-mean normalised entropy, unweighted
    approx_kl: jax.Array
    clip_fraction: jax.Array
    clip_fraction_positive: jax.Array
    clip_fraction_negative: jax.Array
    ratio_mean: jax.Array  # op head
    ratio_max: jax.Array
    ratio_min: jax.Array
    mask_error: jax.Array  # bool: an empty mask row was evaluated (upstream would raise)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask.astype(x.dtype)
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def factored_loss(
    new_log_probs: PerHead,
    entropies: PerHead,
    new_values: jax.Array,
    batch: Batch,
    entropy_coef: jax.Array,
    config: PPOConfig,
) -> LossInfo:
    """The factored PPO loss of docs/policy-and-ppo.md#ppo-update from the current policy's per-head log-probs,
    normalised entropies and Q(s, stored op) (all ``[B, T]``). Pure; invalid (padded) steps are excluded everywhere."""
    # Heads are stacked on a leading axis [8, B, T] and handled by one set of array ops: the same maths as a loop
    # over heads, but a fraction of the compiled program (and of its compile time).
    valid = batch.valid
    masks = causal_relevance(batch.actions.op).stack() & valid  # [8, B, T]
    m = masks.astype(jnp.float32)
    reduce_axes = tuple(range(1, m.ndim))
    denominators = jnp.maximum(jnp.sum(m, axis=reduce_axes), 1.0)  # [8]: max(ΣM_h, 1)
    masked_mean = lambda x: jnp.sum(x * m, axis=reduce_axes) / denominators  # noqa: E731
    n_valid = jnp.sum(valid).astype(jnp.float32)
    eps = config.clip_ratio

    new_lp, old_lp = new_log_probs.stack(), batch.log_probs.stack()
    advantages = batch.advantages[None] * m
    ratio = jnp.exp(jnp.clip(new_lp - old_lp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - eps, 1.0 + eps) * advantages)
    head_policy = -masked_mean(surrogate)  # [8]
    policy_loss = jnp.sum(head_policy)

    if config.clip_value:
        clipped = batch.values + jnp.clip(new_values - batch.values, -config.value_clip, config.value_clip)
        per_step = jnp.maximum(jnp.square(new_values - batch.returns), jnp.square(clipped - batch.returns))
        value_loss = 0.5 * _masked_mean(per_step, valid)
    else:
        value_loss = _masked_mean(jnp.square(new_values - batch.returns), valid)

    head_entropy = masked_mean(entropies.stack())  # [8]
    coefs = jnp.asarray([config.head_entropy_coefs[h] for h in HEAD_NAMES], jnp.float32)
    weighted_entropy = jnp.sum(coefs * head_entropy)
    loss = policy_loss + config.value_coef * value_loss - entropy_coef * weighted_entropy

    # KL3 per head on unclamped log-ratios, weighted by each head's share of relevant steps; no gradient.
    d = jax.lax.stop_gradient(new_lp) - old_lp
    head_kl = masked_mean(jnp.exp(d) - 1.0 - d)
    weights = denominators / jnp.maximum(n_valid, 1.0)
    approx_kl = jnp.sum(weights * head_kl) / jnp.sum(weights)
    per_head_policy = PerHead.unstack(head_policy)
    entropy_per_head = PerHead.unstack(head_entropy)

    op_ratio = jnp.exp(
        jnp.clip(jax.lax.stop_gradient(new_log_probs.op) - batch.log_probs.op, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    )
    big = jnp.finfo(jnp.float32).max
    return LossInfo(
        loss=loss,
        policy_loss=policy_loss,
        policy_loss_per_head=per_head_policy,
        value_loss=value_loss,
        entropy=weighted_entropy,
        entropy_per_head=entropy_per_head,
        approx_kl=approx_kl,
        clip_fraction=_masked_mean((jnp.abs(op_ratio - 1.0) > eps).astype(jnp.float32), valid),
        clip_fraction_positive=_masked_mean((op_ratio > 1.0 + eps).astype(jnp.float32), valid),
        clip_fraction_negative=_masked_mean((op_ratio < 1.0 - eps).astype(jnp.float32), valid),
        ratio_mean=_masked_mean(op_ratio, valid),
        ratio_max=jnp.max(jnp.where(valid, op_ratio, -big)),
        ratio_min=jnp.min(jnp.where(valid, op_ratio, big)),
        mask_error=jnp.asarray(False),
    )


def compute_loss(
    params: Any,
    batch: Batch,
    entropy_coef: jax.Array,
    *,
    config: PPOConfig,
    network_config: NetworkConfig,
) -> tuple[jax.Array, LossInfo]:
    """Evaluate the stored actions with ``params`` and return (loss, LossInfo); differentiable in ``params``."""
    evaluation = policy.evaluate_actions(
        params,
        network_config,
        batch.initial_carry,
        batch.features,
        batch.blueprint_indices,
        batch.actions,
        batch.masks,
        validate=False,
    )
    info = factored_loss(
        evaluation.log_probs, evaluation.entropies, evaluation.value, batch, entropy_coef, config
    )
    info = info.replace(mask_error=jnp.any(evaluation.mask_error & batch.valid))
    return info.loss, info
