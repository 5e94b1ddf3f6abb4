"""Recurrent factored PPO (simic ``PPOAgent.update`` at esper-lite 0872525b, ppo.md §4–§6), as one jit-compiled
``update`` over a ``Trajectory``.

Algorithm (defaults reduce exactly to upstream's single full-batch step):

1. Observation normaliser: EMA-updated once from the batch's raw states (upstream does this in
   ``_run_ppo_updates`` just before ``update()``). It only affects the next rollout: the update evaluates the
   states stored in the trajectory.
2. Per-env GAE (γ 0.995, λ 0.98), backwards ``lax.scan``; truncation bootstraps from the stored
   ``Q(s', argmax op)``, a true terminal (done ∧ ¬truncated) does not. Returns = A + V (un-normalised A).
   Advantages are then normalised once over all valid steps (population std, +1e-8).
3. ``config.epochs`` × ``config.minibatches`` steps inside ``lax.scan``; a minibatch is a set of whole env
   sequences, each unrolled from its stored initial LSTM carry (full-sequence BPTT, no burn-in). The env order is
   shuffled per epoch from the update key when ``minibatches > 1`` (one minibatch = all envs in order).
4. Before every step the causally weighted KL3 of that minibatch is checked: if it exceeds
   ``kl_stop_multiplier × target_kl`` the step is not applied and no later step of this update runs (upstream
   ``break``; with the default one step, an early stop means no parameter update at all). Implemented with
   ``lax.cond``/``jnp.where`` on params and optimiser state, never Python branching.
5. Loss = Σ_heads clipped surrogate (per-head ratios, causal masks on the advantages, masked means over
   max(ΣM, 1)) + value_coef·value loss (clipped: 0.5·mean(max(...)); unclipped: mean(...) without the 0.5)
   − entropy_coef(train_steps)·Σ_h c_h·masked-mean normalised entropy. Optimiser: clip_by_global_norm → Adam.
6. ``train_steps += 1`` (also when early-stopped), which drives the entropy anneal.

Quirks reproduced under ``compat="upstream"`` and corrected under ``compat="fixed"`` (the README copies this list):

| quirk | ``upstream`` (esper-lite 0872525b) | ``fixed`` (default) |
|---|---|---|
| states stored for the update (ppo.md §3.3) | raw states; the update evaluates raw states while the rollout's old log-probs/values came from normalised ones | the normalised states the rollout acted on are stored and evaluated |
| truncation bootstrap LSTM state (ppo.md §3.1) | zeros (the done env's carry is reset before the bootstrap pass) | the post-step carry of the truncated step |

Behaviour kept in both modes because it *is* the algorithm at this commit (ppo.md §13): per-head loss **sum**
(not mean); the unclipped value loss has no 0.5 factor; the KL check precedes the step; the adaptive entropy floor
is a dead knob (accepted, no effect); one gradient step per batch by default.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from esper_jax import normalization
from esper_jax import policy
from esper_jax.contracts import CAUSAL_RELEVANCE, DEFAULT_COMPAT, HEAD_NAMES, Compat, PerHead, check_compat
from esper_jax.network import LSTMCarry, NetworkConfig
from esper_jax.rollout import Trajectory

__all__ = [
    "ENTROPY_COEF_PER_HEAD",
    "PPOConfig",
    "TrainState",
    "Batch",
    "LossInfo",
    "UpdateMetrics",
    "gae",
    "normalize_advantages",
    "explained_variance",
    "entropy_coefficient",
    "causal_masks",
    "factored_loss",
    "compute_loss",
    "prepare_batch",
    "minibatch_order",
    "make_optimizer",
    "create_train_state",
    "update",
]

LOG_RATIO_CLAMP = 20.0  # exp(±20) keeps a ratio finite for any log-prob gap
ADVANTAGE_EPS = 1e-8
EXPLAINED_VARIANCE_FLOOR = 1e-8

ENTROPY_COEF_PER_HEAD: dict[str, float] = {
    "op": 1.0,
    "slot": 1.0,
    "blueprint": 1.3,
    "style": 1.2,
    "tempo": 1.3,
    "alpha_target": 1.2,
    "alpha_speed": 1.2,
    "alpha_curve": 1.2,
}


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"PPOConfig.{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"PPOConfig.{name} must be finite, got {value}")
    return value


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"PPOConfig.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"PPOConfig.{name} must be >= {minimum}, got {value}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Every loss/optimiser knob of the PPO update (ppo.md §5, §6, §12). Frozen and hashable (jit static).

    ``entropy_coef_per_head`` accepts a mapping head → multiplier (a missing head gets 1.0, as upstream); it is
    stored as a tuple of (head, value) pairs in HEAD_NAMES order so the config stays hashable.
    ``adaptive_entropy_floor`` is accepted for config compatibility but has no effect (dead at 0872525b).
    """

    gamma: float = 0.995
    gae_lambda: float = 0.98
    clip_ratio: float = 0.2
    value_coef: float = 0.5
    clip_value: bool = True
    value_clip: float = 10.0
    entropy_coef: float = 0.05
    entropy_coef_start: float | None = None
    entropy_coef_end: float | None = None
    entropy_coef_min: float = 0.01
    entropy_anneal_steps: int = 0
    adaptive_entropy_floor: bool = False
    entropy_coef_per_head: Any = tuple(ENTROPY_COEF_PER_HEAD.items())
    learning_rate: float = 3e-4
    adam_eps: float = 1e-5
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    max_grad_norm: float = 1.0
    target_kl: float | None = 0.015
    kl_stop_multiplier: float = 1.5
    epochs: int = 1
    minibatches: int = 1
    compat: Compat = DEFAULT_COMPAT

    def __post_init__(self) -> None:
        def unit_interval(name: str) -> None:
            v = _number(name, getattr(self, name))
            if not (0.0 < v <= 1.0):
                raise ValueError(f"PPOConfig.{name} must be in (0, 1], got {v}")

        unit_interval("gamma")
        unit_interval("gae_lambda")
        unit_interval("clip_ratio")
        for name in ("learning_rate", "adam_eps", "max_grad_norm", "value_clip", "kl_stop_multiplier"):
            if _number(name, getattr(self, name)) <= 0:
                raise ValueError(f"PPOConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("value_coef", "entropy_coef", "entropy_coef_min"):
            if _number(name, getattr(self, name)) < 0:
                raise ValueError(f"PPOConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("entropy_coef_start", "entropy_coef_end"):
            value = getattr(self, name)
            if value is not None and _number(name, value) < 0:
                raise ValueError(f"PPOConfig.{name} must be None or >= 0, got {value}")
        for name in ("adam_b1", "adam_b2"):
            v = _number(name, getattr(self, name))
            if not (0.0 <= v < 1.0):
                raise ValueError(f"PPOConfig.{name} must be in [0, 1), got {v}")
        if self.target_kl is not None and _number("target_kl", self.target_kl) <= 0:
            raise ValueError(f"PPOConfig.target_kl must be None or > 0, got {self.target_kl}")
        for name in ("clip_value", "adaptive_entropy_floor"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"PPOConfig.{name} must be a bool, got {getattr(self, name)!r}")
        _integer("entropy_anneal_steps", self.entropy_anneal_steps, 0)
        _integer("epochs", self.epochs, 1)
        _integer("minibatches", self.minibatches, 1)
        check_compat(self.compat)

        per_head = self.entropy_coef_per_head
        if isinstance(per_head, PerHead):
            per_head = per_head.as_dict()
        per_head = dict(per_head)
        unknown = sorted(set(per_head) - set(HEAD_NAMES))
        if unknown:
            raise ValueError(f"PPOConfig.entropy_coef_per_head has unknown heads {unknown}; valid: {HEAD_NAMES}")
        pairs = tuple((h, _number(f"entropy_coef_per_head[{h}]", per_head.get(h, 1.0))) for h in HEAD_NAMES)
        object.__setattr__(self, "entropy_coef_per_head", pairs)

    @property
    def head_entropy_coefs(self) -> dict[str, float]:
        return dict(self.entropy_coef_per_head)

    @property
    def kl_threshold(self) -> float | None:
        return None if self.target_kl is None else self.kl_stop_multiplier * self.target_kl


# ----------------------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------------------


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
    """Per-env GAE exactly as ppo.md §4. Inputs ``[E, T]`` (env-major), ``lengths [E]`` valid steps per env
    (default T). Returns (advantages, returns) ``[E, T]`` float32, 0 beyond each env's length. No mixing
    across envs: each row is its own backwards scan."""
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


def entropy_coefficient(config: PPOConfig, train_steps: jax.Array | int) -> jax.Array:
    """The scalar entropy coefficient for the update with this ``train_steps`` (ppo.md §6)."""
    floor = config.entropy_coef_min
    if config.entropy_anneal_steps == 0:
        return jnp.asarray(max(config.entropy_coef, floor), jnp.float32)
    start = config.entropy_coef if config.entropy_coef_start is None else config.entropy_coef_start
    end = config.entropy_coef if config.entropy_coef_end is None else config.entropy_coef_end
    progress = jnp.minimum(1.0, jnp.asarray(train_steps, jnp.float32) / config.entropy_anneal_steps)
    return jnp.maximum(start + progress * (end - start), floor).astype(jnp.float32)


def causal_masks(op: jax.Array) -> PerHead:
    """Which heads mattered for each stored op: CAUSAL_RELEVANCE rows (op head always True)."""
    table = jnp.asarray(CAUSAL_RELEVANCE)  # [op, head]
    rows = table[jnp.asarray(op, jnp.int32)]  # [..., head]
    return PerHead(**{h: rows[..., i] for i, h in enumerate(HEAD_NAMES)})


# ----------------------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------------------


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
    """The factored PPO loss of ppo.md §5 from the current policy's per-head log-probs, normalised entropies and
    Q(s, stored op) (all ``[B, T]``). Pure; invalid (padded) steps are excluded everywhere."""
    # Heads are stacked on a leading axis [8, B, T] and handled by one set of array ops: the same maths as a loop
    # over heads, but a fraction of the compiled program (and of its compile time).
    stack = lambda tree: jnp.stack([getattr(tree, h) for h in HEAD_NAMES])  # noqa: E731
    unstack = lambda x: PerHead(**{h: x[i] for i, h in enumerate(HEAD_NAMES)})  # noqa: E731
    valid = batch.valid
    masks = stack(causal_masks(batch.actions.op)) & valid  # [8, B, T]
    m = masks.astype(jnp.float32)
    reduce_axes = tuple(range(1, m.ndim))
    denominators = jnp.maximum(jnp.sum(m, axis=reduce_axes), 1.0)  # [8]: max(ΣM_h, 1)
    masked_mean = lambda x: jnp.sum(x * m, axis=reduce_axes) / denominators  # noqa: E731
    n_valid = jnp.sum(valid).astype(jnp.float32)
    eps = config.clip_ratio

    new_lp, old_lp = stack(new_log_probs), stack(batch.log_probs)
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

    head_entropy = masked_mean(stack(entropies))  # [8]
    coefs = jnp.asarray([config.head_entropy_coefs[h] for h in HEAD_NAMES], jnp.float32)
    weighted_entropy = jnp.sum(coefs * head_entropy)
    loss = policy_loss + config.value_coef * value_loss - entropy_coef * weighted_entropy

    # KL3 per head on unclamped log-ratios, weighted by each head's share of relevant steps; no gradient.
    d = jax.lax.stop_gradient(new_lp) - old_lp
    head_kl = masked_mean(jnp.exp(d) - 1.0 - d)
    weights = denominators / jnp.maximum(n_valid, 1.0)
    approx_kl = jnp.sum(weights * head_kl) / jnp.sum(weights)
    per_head_policy = unstack(head_policy)
    entropy_per_head = unstack(head_entropy)

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


# ----------------------------------------------------------------------------------------------------------------
# Train state and update
# ----------------------------------------------------------------------------------------------------------------


@struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    obs_stats: normalization.RunningMeanStd
    train_steps: jax.Array  # int32: completed update() calls (early-stopped ones included)


@struct.dataclass
class UpdateMetrics:
    """Per-update metrics. Loss terms and grad norm average over the steps actually applied and are NaN when
    early stopping applied none (upstream then reports no loss keys); KL, clip fractions and ratios average over
    every evaluated minibatch, including the one that triggered the stop."""

    policy_loss: jax.Array
    policy_loss_per_head: PerHead
    value_loss: jax.Array
    entropy: jax.Array
    entropy_per_head: PerHead
    loss: jax.Array
    approx_kl: jax.Array
    clip_fraction: jax.Array
    clip_fraction_positive: jax.Array
    clip_fraction_negative: jax.Array
    ratio_mean: jax.Array
    ratio_max: jax.Array
    ratio_min: jax.Array
    explained_variance: jax.Array
    grad_norm: jax.Array  # global norm before clipping
    early_stopped: jax.Array  # bool
    steps_applied: jax.Array  # int32
    entropy_coef: jax.Array
    advantage_mean: jax.Array  # raw (pre-normalisation) advantages
    advantage_std: jax.Array
    mask_error: jax.Array  # bool
    # Non-finite guards from the values the update already has (no second gradient pass): loss of any evaluated
    # minibatch; per leaf (flatten order of params), any NaN/Inf in that leaf's gradient of any evaluated minibatch,
    # and in the updated parameters. The trainer stops on them and names the leaf.
    loss_nonfinite: jax.Array  # bool
    grad_nonfinite: jax.Array  # bool [num param leaves]
    param_nonfinite: jax.Array  # bool [num param leaves]


def make_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    """clip_grad_norm_(max_grad_norm) then torch-style Adam (eps added outside the sqrt, bias-corrected)."""
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adam(config.learning_rate, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps),
    )


# Compiled once per network config: op-by-op orthogonal init (QR per layer) costs seconds eagerly.
_init_params = jax.jit(policy.init, static_argnums=1)


def create_train_state(key: jax.Array, config: PPOConfig, network_config: NetworkConfig) -> TrainState:
    """Fresh params (upstream init scheme), optimiser state, identity-ish obs normaliser, train_steps 0."""
    params = _init_params(key, network_config)
    return TrainState(
        params=params,
        opt_state=make_optimizer(config).init(params),
        obs_stats=normalization.init(network_config.state_dim),
        train_steps=jnp.zeros((), jnp.int32),
    )


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


def minibatch_order(key: jax.Array, num_envs: int, config: PPOConfig) -> jax.Array:
    """Env indices of every step, ``int32 [epochs · minibatches, num_envs // minibatches]``.

    One minibatch: every epoch takes all envs in order (upstream's full batch). Several: each epoch is a fresh
    permutation of the envs from ``key``, cut into equal minibatches of whole sequences.
    """
    if num_envs % config.minibatches:
        raise ValueError(
            f"PPOConfig.minibatches={config.minibatches} must divide the number of envs ({num_envs}): "
            "minibatches are made of whole env sequences"
        )
    per = num_envs // config.minibatches
    if config.minibatches == 1:
        order = jnp.tile(jnp.arange(num_envs, dtype=jnp.int32), (config.epochs, 1))
    else:
        keys = jax.random.split(key, config.epochs)
        order = jax.vmap(lambda k: jax.random.permutation(k, num_envs))(keys).astype(jnp.int32)
    return order.reshape(config.epochs * config.minibatches, per)


@struct.dataclass
class _StepCarry:
    params: Any
    opt_state: Any
    stopped: jax.Array


@struct.dataclass
class _StepRecord:
    info: LossInfo
    grad_norm: jax.Array
    grad_nonfinite: jax.Array  # bool [num param leaves]
    evaluated: jax.Array
    applied: jax.Array


def nonfinite_leaves(tree: Any) -> jax.Array:
    """bool [num leaves]: whether each leaf (flatten order) holds a NaN or Inf."""
    return jnp.stack([~jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])


def _where_tree(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


@functools.partial(jax.jit, static_argnames=("config", "network_config"))
def update(
    train_state: TrainState,
    trajectory: Trajectory,
    key: jax.Array,
    *,
    config: PPOConfig,
    network_config: NetworkConfig,
) -> tuple[TrainState, UpdateMetrics]:
    """One PPO update on a trajectory (see the module docstring for the algorithm)."""
    obs_stats = normalization.update(train_state.obs_stats, trajectory.raw_features, trajectory.valid)
    batch, raw_advantages = prepare_batch(trajectory, config)
    ev = explained_variance(batch.values, batch.returns, batch.valid)
    coef = entropy_coefficient(config, train_state.train_steps)
    order = minibatch_order(key, trajectory.num_envs, config)
    optimizer = make_optimizer(config)
    threshold = config.kl_threshold
    loss_and_grad = jax.value_and_grad(
        functools.partial(compute_loss, config=config, network_config=network_config), has_aux=True
    )

    def run(carry: _StepCarry, indices: jax.Array) -> tuple[_StepCarry, _StepRecord]:
        # One minibatch is the whole batch: skipping the gather keeps the env axis sharded under SPMD (a gather by a
        # permutation makes XLA replicate the batch on every device); the loss is a mean, so order is immaterial.
        minibatch = batch if config.minibatches == 1 else jax.tree.map(lambda x: x[indices], batch)
        (_, info), grads = loss_and_grad(carry.params, minibatch, coef)
        stop = jnp.asarray(False) if threshold is None else info.approx_kl > threshold
        updates, new_opt_state = optimizer.update(grads, carry.opt_state, carry.params)
        new_params = optax.apply_updates(carry.params, updates)
        next_carry = _StepCarry(
            params=_where_tree(stop, carry.params, new_params),
            opt_state=_where_tree(stop, carry.opt_state, new_opt_state),
            stopped=stop,
        )
        record = _StepRecord(info=info, grad_norm=optax.tree.norm(grads), grad_nonfinite=nonfinite_leaves(grads),
                             evaluated=jnp.asarray(True), applied=~stop)
        return next_carry, record

    def skip(carry: _StepCarry, indices: jax.Array) -> tuple[_StepCarry, _StepRecord]:
        shapes = jax.eval_shape(run, carry, indices)[1]
        return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(carry: _StepCarry, indices: jax.Array) -> tuple[_StepCarry, _StepRecord]:
        # Once stopped nothing more runs, not even the forward pass (upstream breaks out of the epoch loop).
        return jax.lax.cond(carry.stopped, skip, run, carry, indices)

    start = _StepCarry(params=train_state.params, opt_state=train_state.opt_state, stopped=jnp.asarray(False))
    final, records = jax.lax.scan(body, start, order)

    evaluated = records.evaluated.astype(jnp.float32)
    applied = records.applied.astype(jnp.float32)
    n_applied = jnp.sum(applied)

    def mean_over(weights: jax.Array, empty: float) -> Any:
        total = jnp.sum(weights)
        return lambda x: jnp.where(total > 0, jnp.sum(x * weights) / jnp.maximum(total, 1.0), empty)

    over_applied = mean_over(applied, jnp.nan)
    over_evaluated = mean_over(evaluated, jnp.nan)
    info = records.info
    valid = batch.valid
    n_valid = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    adv_mean = jnp.sum(jnp.where(valid, raw_advantages, 0.0)) / n_valid
    adv_std = jnp.sqrt(
        jnp.sum(jnp.where(valid, jnp.square(raw_advantages - adv_mean), 0.0)) / jnp.maximum(n_valid - 1.0, 1.0)
    )
    big = jnp.finfo(jnp.float32).max
    metrics = UpdateMetrics(
        policy_loss=over_applied(info.policy_loss),
        policy_loss_per_head=info.policy_loss_per_head.map(over_applied),
        value_loss=over_applied(info.value_loss),
        entropy=over_applied(info.entropy),
        entropy_per_head=info.entropy_per_head.map(over_applied),
        loss=over_applied(info.loss),
        approx_kl=over_evaluated(info.approx_kl),
        clip_fraction=over_evaluated(info.clip_fraction),
        clip_fraction_positive=over_evaluated(info.clip_fraction_positive),
        clip_fraction_negative=over_evaluated(info.clip_fraction_negative),
        ratio_mean=over_evaluated(info.ratio_mean),
        ratio_max=jnp.max(jnp.where(records.evaluated, info.ratio_max, -big)),
        ratio_min=jnp.min(jnp.where(records.evaluated, info.ratio_min, big)),
        explained_variance=ev,
        grad_norm=over_applied(records.grad_norm),
        early_stopped=final.stopped,
        steps_applied=n_applied.astype(jnp.int32),
        entropy_coef=coef,
        advantage_mean=adv_mean,
        advantage_std=adv_std,
        mask_error=jnp.any(info.mask_error & records.evaluated),
        loss_nonfinite=jnp.any(~jnp.isfinite(info.loss) & records.evaluated),
        grad_nonfinite=jnp.any(records.grad_nonfinite & records.evaluated[:, None], axis=0),
        param_nonfinite=nonfinite_leaves(final.params),
    )
    new_state = TrainState(
        params=final.params,
        opt_state=final.opt_state,
        obs_stats=obs_stats,
        train_steps=train_state.train_steps + 1,
    )
    return new_state, metrics
