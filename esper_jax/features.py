"""Observation -> feature vector ("Obs V3", docs/policy-and-ppo.md#features), vectorised over slots and envs.

``extract`` turns an :class:`~esper_jax.observation.Observation` with 0, 1 or 2 (or more) leading batch axes into
``Features(features float32 [..., 24 + 30·S], blueprint_indices int32 [..., S])``. The per-env function works on
``[S, 30]`` arrays with whole-array ``jnp`` ops, so the traced program has the same size for 1 or 25 slots (seed
ticket B10-CR-02: upstream loops over envs and slots in Python).

Compatibility modes (``compat``; everything not in this table is identical in both modes):

| feature                    | "upstream"                        | "fixed" (default)                  |
|----------------------------|-----------------------------------|------------------------------------|
| base 13-15 (stage counts)  | count / 3.0 for any slot count S  | count / S (always within [0, 1])   |
| slot 22 (interaction_sum)  | min(x / 10, 1), no lower clamp    | clip(x / 10, -1, 1)                |

Both modes keep upstream's other choices (docs/compat.md#policy-side): epoch/150 unclamped, host_stabilized 0,
zero-padded histories, cap25 without a lower clamp, gradient-health defaults of 1.0, the contribution fallback and
a zero one-hot for invalid stage values. NaN handling follows upstream's Python ``max(lo, min(x, hi))``: a NaN
input to a two-sided clip reads as ``lo``; ``min(x, hi)`` alone (interaction_sum upstream, cap25) keeps NaN.

Upstream computes in float64 and rounds once to float32; here the maths runs in JAX's default float type
(float32, or float64 with ``jax_enable_x64``) and the result is cast to float32. In float32 a value can differ
from upstream's by about 1 ulp (XLA compiles division by a constant into multiplication by its reciprocal); with
x64 enabled the parity tests find the features bit-identical.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esper_jax.contracts import (
    CAP25,
    DEFAULT_COMPAT,
    DEFAULT_GAMMA,
    EPOCH_NORMALISER,
    HISTORY_LENGTH,
    LOG_LOSS_BASE,
    NUM_OPS,
    NUM_STAGES,
    STAGE_COUNT_DIVISOR,
    STAGE_TO_INDEX,
    Compat,
    SeedStage,
    check_compat,
)
from esper_jax.observation import Observation, Signals, SlotReports, signal_dtypes, slot_dtypes

__all__ = ["Features", "extract", "extract_single", "validate_observation"]

# Scales of upstream's per-slot normalisation (upstream's features.py), named here because contracts.py does not.
CONTRIBUTION_SCALE = 10.0  # percentage points -> [-1, 1] for contribution and its velocity
BLEND_TEMPO_SCALE = 12.0
ALPHA_MODE_SCALE = 2.0  # max AlphaMode value
ALPHA_ALGORITHM_MIN = 1.0  # AlphaAlgorithm.ADD
ALPHA_ALGORITHM_RANGE = 2.0  # GATE - ADD
INTERACTION_SCALE = 10.0
GRADIENT_NORM_CAP = 10.0
# gamma ** n as exp(n · ln gamma): ln gamma is taken in float64, so float32 maths stays within ~1 ulp of
# upstream's float64 power even for n in the hundreds (a float32 gamma would drift by ~n · 5e-9 relative).
_LOG_GAMMA = math.log(DEFAULT_GAMMA)


@struct.dataclass
class Features:
    """Policy input for a batch of envs: leading axes ``[...]`` are the observation's batch axes."""

    features: jax.Array  # float32 [..., 24 + 30·S]
    blueprint_indices: jax.Array  # int32 [..., S]; -1 for an empty slot or an unknown blueprint


# --------------------------------------------------------------------------------------------------------------
# Upstream's scalar primitives, element-wise
# --------------------------------------------------------------------------------------------------------------


def _clip(x: jax.Array, lo: float, hi: float) -> jax.Array:
    """Python's ``max(lo, min(x, hi))``, NaN included: min(nan, hi) is nan and max(lo, nan) is lo."""
    return jnp.where(jnp.isnan(x), lo, jnp.clip(x, lo, hi))


def _lognorm(x: jax.Array) -> jax.Array:
    """ln(1 + x) / ln 16, unclamped (validation rejects x <= -1, where upstream raises)."""
    return jnp.log1p(x) / LOG_LOSS_BASE


def _cap25(x: jax.Array) -> jax.Array:
    """min(x, 25) / 25: upper clamp only, negatives pass through as upstream does."""
    return jnp.minimum(x, CAP25) / CAP25


def _safe(x: jax.Array, default: float, max_val: float) -> jax.Array:
    """Upstream ``safe``: NaN/inf -> default, otherwise a symmetric clip to ±max_val."""
    return jnp.where(jnp.isfinite(x), jnp.clip(x, -max_val, max_val), default)


# --------------------------------------------------------------------------------------------------------------
# One env
# --------------------------------------------------------------------------------------------------------------


def _stage_counts(slots: SlotReports, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    present = slots.has_report
    training = jnp.sum(present & (slots.stage == SeedStage.TRAINING))
    blending = jnp.sum(present & (slots.stage == SeedStage.BLENDING))
    # Upstream matches the names HOLDING/GRAFTED/FOSSILIZED; GRAFTED is no stage, so FOSSILIZED joins HOLDING.
    holding = jnp.sum(present & ((slots.stage == SeedStage.HOLDING) | (slots.stage == SeedStage.FOSSILIZED)))
    return training.astype(dtype), blending.astype(dtype), holding.astype(dtype)


def _base_features(signals: Signals, slots: SlotReports, compat: Compat, dtype: jnp.dtype) -> jax.Array:
    """The 24 base features (docs/policy-and-ppo.md#features) for one env."""
    num_slots = slots.stage.shape[-1]
    divisor = STAGE_COUNT_DIVISOR if compat == "upstream" else float(num_slots)
    counts = jnp.stack(_stage_counts(slots, dtype)) / divisor
    scalars = jnp.stack(
        [
            signals.epoch.astype(dtype) / EPOCH_NORMALISER,
            _lognorm(signals.val_loss.astype(dtype)),
            signals.val_accuracy.astype(dtype) / 100.0,
        ]
    )
    op_one_hot = (signals.last_action_op == jnp.arange(NUM_OPS)).astype(dtype)
    return jnp.concatenate(
        [
            scalars,
            _lognorm(signals.loss_history.astype(dtype)),
            signals.accuracy_history.astype(dtype) / 100.0,
            counts,
            jnp.zeros(1, dtype),  # host_stabilized: a hard-coded False upstream
            signals.last_action_success.astype(dtype)[None],
            op_one_hot,
        ]
    )


def _stage_one_hot(stage: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """[S] stage values -> [S, 10]; values that are not valid stages (5, negatives, > 10) give all zeros."""
    table = jnp.asarray(STAGE_TO_INDEX)
    in_table = (stage >= 0) & (stage < table.shape[0])
    position = jnp.where(in_table, table[jnp.clip(stage, 0, table.shape[0] - 1)], -1)
    return (position[:, None] == jnp.arange(NUM_STAGES)).astype(dtype)


def _slot_features(slots: SlotReports, compat: Compat, dtype: jnp.dtype) -> jax.Array:
    """The [S, 30] per-slot block (docs/policy-and-ppo.md#features) for one env; rows of slots without a report are
    zero."""

    def f(x: jax.Array) -> jax.Array:
        return x.astype(dtype)

    contribution = jnp.where(
        slots.has_counterfactual, f(slots.counterfactual_contribution), f(slots.improvement_since_stage_start)
    )
    interaction = f(slots.interaction_sum) / INTERACTION_SCALE
    interaction = jnp.minimum(interaction, 1.0) if compat == "upstream" else _clip(interaction, -1.0, 1.0)
    telemetry = slots.has_telemetry
    columns = [
        f(slots.current_alpha),
        _clip(contribution / CONTRIBUTION_SCALE, -1.0, 1.0),
        _clip(f(slots.contribution_velocity) / CONTRIBUTION_SCALE, -1.0, 1.0),
        f(slots.blend_tempo_epochs) / BLEND_TEMPO_SCALE,
        f(slots.alpha_target),
        f(slots.alpha_mode) / ALPHA_MODE_SCALE,
        _cap25(f(slots.alpha_steps_total)),
        _cap25(f(slots.alpha_steps_done)),
        _cap25(f(slots.time_to_target)),
        _clip(f(slots.alpha_velocity), -1.0, 1.0),
        (f(slots.alpha_algorithm) - ALPHA_ALGORITHM_MIN) / ALPHA_ALGORITHM_RANGE,
        interaction,
        # Without telemetry upstream assumes a healthy seed: norm 0, health 1, no flags.
        jnp.where(telemetry, _safe(f(slots.gradient_norm), 0.0, GRADIENT_NORM_CAP) / GRADIENT_NORM_CAP, 0.0),
        jnp.where(telemetry, _safe(f(slots.gradient_health), 1.0, 1.0), 1.0),
        f(telemetry & slots.has_vanishing),
        f(telemetry & slots.has_exploding),
        f(slots.gradient_health_prev),
        _cap25(f(slots.epochs_in_stage)),
        jnp.exp(f(slots.epochs_since_counterfactual) * _LOG_GAMMA),
    ]
    present = slots.has_report
    block = jnp.concatenate(
        [f(present)[:, None], _stage_one_hot(slots.stage, dtype), jnp.stack(columns, axis=-1)], axis=-1
    )
    # where, not multiply: fields of absent slots may hold NaN/inf that must not leak into the zeros.
    return jnp.where(present[:, None], block, 0.0)


def extract_single(obs: Observation, compat: Compat = DEFAULT_COMPAT) -> Features:
    """Features of ONE env (no batch axes); pure jnp, traceable, with no Python loop over slots."""
    dtype = jnp.result_type(float)  # float32, or float64 under jax_enable_x64
    signals, slots = obs.signals, obs.slots
    base = _base_features(signals, slots, compat, dtype)
    per_slot = _slot_features(slots, compat, dtype)
    features = jnp.concatenate([base, per_slot.reshape(-1)]).astype(jnp.float32)
    blueprint_indices = jnp.where(slots.has_report, slots.blueprint_index, -1).astype(jnp.int32)
    return Features(features=features, blueprint_indices=blueprint_indices)


@functools.partial(jax.jit, static_argnames=("compat",))
def _extract_jit(obs: Observation, compat: Compat) -> Features:
    fn = functools.partial(extract_single, compat=compat)
    for _ in range(jnp.ndim(obs.signals.epoch)):
        fn = jax.vmap(fn)
    return fn(obs)


def extract(obs: Observation, *, compat: Compat = DEFAULT_COMPAT, validate: bool = True) -> Features:
    """Features for an observation with any number of leading batch axes (``[]``, ``[E]``, ``[T, E]``, ...).

    Concrete inputs are checked with :func:`validate_observation` first (skip with ``validate=False`` on a hot
    path whose inputs are known good); traced inputs (inside jit/vmap/scan) are not, since their values are
    unknown. Returns float32 features ``[..., 24 + 30·S]`` and int32 blueprint indices ``[..., S]``.
    """
    compat = check_compat(compat)
    if validate and not _is_traced(obs):
        validate_observation(obs)
    return _extract_jit(obs, compat)


# --------------------------------------------------------------------------------------------------------------
# Validation (host side, outside jit)
# --------------------------------------------------------------------------------------------------------------


def _is_traced(tree: object) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def _dtype_ok(actual: np.dtype, expected: np.dtype) -> bool:
    """Same kind is enough (float64 for float32 etc.); integers may feed float fields, never the reverse."""
    expected_kind = np.dtype(expected).kind
    if expected_kind == "f":
        return actual.kind in "fiu"
    if expected_kind in "iu":
        return actual.kind in "iu"
    return actual.kind == "b"


def _check_leaf(name: str, value: object, expected_shape: tuple[int, ...], expected_dtype: np.dtype, why: str) -> None:
    shape = tuple(np.shape(value))
    dtype = np.asarray(value).dtype if not hasattr(value, "dtype") else np.dtype(value.dtype)
    if shape != expected_shape:
        raise ValueError(f"{name} has shape {shape}, expected {expected_shape} ({why})")
    if not _dtype_ok(dtype, expected_dtype):
        raise ValueError(f"{name} has dtype {dtype}, expected {np.dtype(expected_dtype)}")


def validate_observation(obs: Observation, num_slots: int | None = None) -> None:
    """Raise a ValueError naming the field for anything ``extract`` would silently mis-read.

    Checks, on the host: every leaf's shape against the batch shape (taken from ``signals.epoch``) and slot
    count (``num_slots``, else ``slots.has_report``'s last axis), history length 5, dtype kinds, and - for
    concrete values - ``last_action_op`` in [0, 6) (upstream asserts) and losses > -1 (upstream's ln(1 + x)
    raises a math domain error).
    """
    if not isinstance(obs, Observation):
        raise ValueError(f"expected an esper_jax.observation.Observation, got {type(obs).__name__}")
    batch = tuple(np.shape(obs.signals.epoch))
    batch_why = f"batch shape {batch} taken from signals.epoch"
    has_report_shape = tuple(np.shape(obs.slots.has_report))
    if num_slots is None:
        if len(has_report_shape) != len(batch) + 1:
            raise ValueError(
                f"slots.has_report has shape {has_report_shape}, expected {batch} + (num_slots,) ({batch_why})"
            )
        num_slots = has_report_shape[-1]
        slot_why = f"{batch_why}, S = {num_slots} taken from slots.has_report"
    else:
        slot_why = f"{batch_why}, S = {num_slots} requested"
    if num_slots < 1:
        raise ValueError(f"an observation needs at least one slot, got S = {num_slots}")

    for name, dtype in signal_dtypes().items():
        trailing = (HISTORY_LENGTH,) if name.endswith("_history") else ()
        why = f"{batch_why}, history length {HISTORY_LENGTH}" if trailing else batch_why
        _check_leaf(f"signals.{name}", getattr(obs.signals, name), batch + trailing, dtype, why)
    for name, dtype in slot_dtypes().items():
        _check_leaf(f"slots.{name}", getattr(obs.slots, name), batch + (num_slots,), dtype, slot_why)

    if _is_traced(obs):
        return
    op = np.asarray(obs.signals.last_action_op)
    bad_op = (op < 0) | (op >= NUM_OPS)
    if bad_op.any():
        raise ValueError(
            f"signals.last_action_op must lie in [0, {NUM_OPS}), got {op[bad_op].ravel()[:5].tolist()}"
        )
    for name in ("val_loss", "loss_history"):
        loss = np.asarray(getattr(obs.signals, name))
        if (loss <= -1.0).any():
            raise ValueError(f"signals.{name} must be > -1 (ln(1 + loss) is undefined), got {loss[loss <= -1.0][:5]}")

