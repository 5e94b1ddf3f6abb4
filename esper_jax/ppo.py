"""Recurrent factored PPO (upstream simic's ``PPOAgent.update``; docs/policy-and-ppo.md#ppo-update), as one jit-compiled
``update`` over a ``Trajectory``.

The update's parts live in role-named modules, all re-exported here: ``advantages`` (GAE, advantage
normalisation, explained variance, Trajectory → Batch) and ``ppo_loss`` (Batch, LossInfo, the factored loss and the
entropy schedule); this module holds the config, the train state and the update loop.

Algorithm (defaults reduce exactly to upstream's single full-batch step):

1. Observation normaliser: EMA-updated once from the batch's raw states (upstream does this in
   ``_run_ppo_updates`` just before ``update()``). It only affects the next rollout: the update evaluates the
   states stored in the trajectory.
2. Per-env GAE (γ 0.995, λ 0.98), backwards ``lax.scan``; truncation bootstraps from the stored
   ``Q(s', argmax op)``, a true terminal (done ∧ ¬truncated) does not. Returns = A + V (un-normalised A).
   Advantages are then normalised once over all valid steps (population std, +1e-8).
3. ``config.epochs`` × ``config.minibatches`` steps inside ``lax.scan``; a minibatch is a set of whole env
   sequences, each unrolled from its stored initial LSTM carry (full-sequence BPTT, no burn-in). When
   ``minibatches > 1`` each epoch deals the envs to the minibatches afresh from the update key, one env of every
   group of ``minibatches`` neighbours to each (``minibatch_order``), so under SPMD each device picks its share of
   a minibatch from its own envs; one minibatch = all envs in order.
4. Before every step the causally weighted KL3 of that minibatch is checked: if it exceeds
   ``kl_stop_multiplier × target_kl`` the step is not applied and no later step of this update runs (upstream
   ``break``; with the default one step, an early stop means no parameter update at all). Implemented with
   ``lax.cond``/``jnp.where`` on params and optimiser state, never Python branching.
5. Loss = Σ_heads clipped surrogate (per-head ratios, causal masks on the advantages, masked means over
   max(ΣM, 1)) + value_coef·value loss (clipped: 0.5·mean(max(...)); unclipped: mean(...) without the 0.5)
   − entropy_coef(train_steps)·Σ_h c_h·masked-mean normalised entropy. Optimiser: clip_by_global_norm → Adam.
6. ``train_steps += 1`` (also when early-stopped), which drives the entropy anneal.

Quirks reproduced under ``compat="upstream"`` and corrected under ``compat="fixed"`` (the README copies this list):

| quirk | ``upstream`` | ``fixed`` (default) |
|---|---|---|
| states stored for the update | raw states; the update evaluates raw states while the rollout's old log-probs/values came from normalised ones | the normalised states the rollout acted on are stored and evaluated |
| truncation bootstrap LSTM state | zeros (the done env's carry is reset before the bootstrap pass) | the post-step carry of the truncated step |

Behaviour kept in both modes because it *is* the algorithm upstream (docs/compat.md#policy-side): per-head loss **sum**
(not mean); the unclipped value loss has no 0.5 factor; the KL check precedes the step; the adaptive entropy floor
is a dead knob (accepted, no effect); one gradient step per batch by default.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from esper_jax import normalization, policy
from esper_jax.advantages import explained_variance, gae, normalize_advantages, prepare_batch
from esper_jax.contracts import DEFAULT_COMPAT, HEAD_NAMES, Compat, PerHead, check_compat
from esper_jax.network import NetworkConfig
from esper_jax.ppo_loss import Batch, LossInfo, compute_loss, entropy_coefficient, factored_loss
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
    "factored_loss",
    "compute_loss",
    "prepare_batch",
    "minibatch_order",
    "select_minibatch",
    "make_optimizer",
    "create_train_state",
    "update",
]

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


def head_weights(weights: Any) -> tuple[tuple[str, float], ...]:
    """``PPOConfig.entropy_coef_per_head`` pairs from a mapping (or ``PerHead``) head → multiplier, in HEAD_NAMES
    order (the JSON reader's and the CLI's way to it)."""
    if isinstance(weights, PerHead):
        weights = weights.as_dict()
    weights = dict(weights)
    unknown = sorted(set(weights) - set(HEAD_NAMES), key=str)
    if unknown:
        raise ValueError(f"PPOConfig.entropy_coef_per_head has unknown heads {unknown}; valid: {HEAD_NAMES}")
    return tuple((h, weights[h]) for h in HEAD_NAMES if h in weights)


def _check_head_weights(pairs: Any) -> None:
    name = "PPOConfig.entropy_coef_per_head"
    if not isinstance(pairs, tuple) or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
        raise ValueError(f"{name} must be a tuple of (head, multiplier) pairs (hashable), got {pairs!r}; "
                         "PPOConfig.head_weights(mapping) builds them from a mapping")
    heads = [h for h, _ in pairs]
    unknown = sorted(set(heads) - set(HEAD_NAMES), key=str)
    if unknown:
        raise ValueError(f"{name} has unknown heads {unknown}; valid: {HEAD_NAMES}")
    in_order = [h for h in HEAD_NAMES if h in heads]
    if heads != in_order:
        raise ValueError(f"{name} must name each head once, in HEAD_NAMES order: {in_order}, got {heads}")
    for h, weight in pairs:
        _number(f"entropy_coef_per_head[{h}]", weight)


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Every loss/optimiser knob of the PPO update (docs/policy-and-ppo.md#ppo-update). Frozen and hashable (jit
    static).

    ``entropy_coef_per_head`` is a tuple of (head, multiplier) pairs in HEAD_NAMES order, so the config stays
    hashable; a missing head gets 1.0, as upstream (``head_entropy_coefs`` fills them in). A mapping is refused:
    ``PPOConfig.head_weights({"op": 2.0})`` builds the pairs from one.
    ``adaptive_entropy_floor`` is accepted for config compatibility but has no effect (dead upstream too).
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
    entropy_coef_per_head: Any = head_weights(ENTROPY_COEF_PER_HEAD)
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

        _check_head_weights(self.entropy_coef_per_head)

    head_weights = staticmethod(head_weights)
    json_readers: ClassVar[dict[str, Any]] = {"entropy_coef_per_head": head_weights}  # config.strict.from_dict

    @property
    def head_entropy_coefs(self) -> dict[str, float]:
        """The multiplier of every head (1.0 where ``entropy_coef_per_head`` does not name it)."""
        given = dict(self.entropy_coef_per_head)
        return {h: float(given.get(h, 1.0)) for h in HEAD_NAMES}

    @property
    def kl_threshold(self) -> float | None:
        return None if self.target_kl is None else self.kl_stop_multiplier * self.target_kl


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
class UpdateMetrics(LossInfo):
    """Per-update metrics: the ``LossInfo`` fields averaged over the update's steps, plus the update's own.

    Loss terms and grad norm average over the steps actually applied and are NaN when early stopping applied none
    (upstream then reports no loss keys); KL, clip fractions and ratios average over every evaluated minibatch,
    including the one that triggered the stop; ``mask_error`` is any evaluated minibatch's."""

    explained_variance: jax.Array
    grad_norm: jax.Array  # global norm before clipping
    early_stopped: jax.Array  # bool
    steps_applied: jax.Array  # int32
    entropy_coef: jax.Array
    advantage_mean: jax.Array  # raw (pre-normalisation) advantages
    advantage_std: jax.Array
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


def minibatch_order(key: jax.Array, num_envs: int, config: PPOConfig) -> jax.Array:
    """Env indices of every step, ``int32 [epochs · minibatches, num_envs // minibatches]``.

    One minibatch: every epoch takes all envs in order (upstream's full batch). Several (M): the envs form groups
    of M neighbours (0..M−1, M..2M−1, ...) and each epoch deals every group's M envs to the M minibatches in a
    fresh random order drawn from ``key``, so minibatch m holds one env of every group, listed group by group. A
    random partition into equal minibatches of whole sequences, stratified by env position: with the envs split
    over devices in contiguous blocks of whole groups, every device keeps its share of every minibatch and picks it
    locally (``select_minibatch``), and the order depends on the key alone, not on the device count.
    """
    if num_envs % config.minibatches:
        raise ValueError(
            f"PPOConfig.minibatches={config.minibatches} must divide the number of envs ({num_envs}): "
            "minibatches are made of whole env sequences"
        )
    m = config.minibatches
    groups = num_envs // m
    if m == 1:
        return jnp.tile(jnp.arange(num_envs, dtype=jnp.int32), (config.epochs, 1))

    def epoch(k: jax.Array) -> jax.Array:  # [M, groups]: row = minibatch, column = group
        within = jax.vmap(lambda g: jax.random.permutation(g, m))(jax.random.split(k, groups))
        return (within + m * jnp.arange(groups)[:, None]).T.astype(jnp.int32)

    order = jax.vmap(epoch)(jax.random.split(key, config.epochs))
    return order.reshape(config.epochs * m, groups)


def select_minibatch(batch: Batch, indices: jax.Array, minibatches: int) -> Batch:
    """The envs ``indices`` (one row of ``minibatch_order``: one env per group of ``minibatches`` neighbours) of an
    env-major batch. Picked inside each group (a gather with the group axis as a batch axis), so under SPMD every
    device selects from its own envs: a plain ``x[indices]`` over the env axis makes XLA assemble the minibatch on
    every device (an all-reduce of the whole minibatch), replicating the update's work."""
    if minibatches == 1:
        return batch
    groups = indices.shape[0]
    within = indices - minibatches * jnp.arange(groups, dtype=indices.dtype)

    def pick(x: jax.Array) -> jax.Array:
        grouped = x.reshape((groups, minibatches) + x.shape[1:])
        return jax.vmap(lambda rows, j: rows[j])(grouped, within)

    return jax.tree.map(pick, batch)


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
        minibatch = select_minibatch(batch, indices, config.minibatches)
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
    if order.shape[0] == 1:
        # The default single step always runs (nothing has stopped before it): called straight, not through a
        # length-1 scan and a cond, whose loop and branch boundaries XLA must copy params and Adam state across.
        final, record = run(start, order[0])
        records = jax.tree.map(lambda x: x[None], record)
    else:
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
