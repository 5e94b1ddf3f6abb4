"""What the Esper env did during training, per interval: reward components, invalid-action and action-success
rates, op histograms and seed outcomes (germinated, fossilized, pruned).

Two halves:

* ``step_totals(info)`` — traced, per env-step: maps one ``esper_jax.env.StepInfo`` to additive ``StepTotals``.
  It is the ``RolloutConfig.info_totals`` reducer the trainer installs, so ``rollout.collect`` sums it over envs
  and steps inside the compiled interval. Any other info pytree (an env without ``StepInfo``) maps to ``{}``: the
  rollout then carries nothing and the record has no env-outcome keys.
* ``interval_summary(totals, op_counts)`` — host side: turns the summed totals into the metrics.jsonl entries,
  reward components under ``RewardComponentsTelemetry``'s names (docs/environment.md#log-names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esper_jax.contracts import NUM_OPS, LifecycleOp
from esper_jax.env import RewardComponents, StepInfo
from esper_jax.telemetry import ENV_COMPONENT_TO_TELEMETRY

__all__ = ["StepTotals", "SEED_OUTCOMES", "OP_NAMES", "step_totals", "interval_summary"]

SEED_OUTCOMES: tuple[str, ...] = ("germinated", "fossilized", "pruned")
OP_NAMES: tuple[str, ...] = tuple(op.name.lower() for op in LifecycleOp)


@struct.dataclass
class StepTotals:
    """Additive per-step quantities (one env-step, or a sum over any number of them)."""

    steps: jax.Array  # int32
    reward_components: RewardComponents  # float32 sums
    invalid_actions: jax.Array  # int32
    successful_actions: jax.Array  # int32
    effective_op_counts: jax.Array  # int32 [NUM_OPS]: the op the env scored (an invalid action counts as WAIT)
    germinated: jax.Array  # int32: seeds that entered GERMINATED
    fossilized: jax.Array  # int32: seeds that entered FOSSILIZED
    pruned: jax.Array  # int32: seeds that entered PRUNED (instant, or at the end of a scheduled ramp)


def step_totals(info: Any) -> StepTotals | dict:
    """One env-step's ``StepInfo`` → ``StepTotals``; ``{}`` for any other info pytree."""
    if not isinstance(info, StepInfo):
        return {}
    return StepTotals(
        steps=jnp.ones((), jnp.int32),
        reward_components=jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), info.reward_components),
        invalid_actions=jnp.asarray(info.invalid_action, jnp.int32),
        successful_actions=jnp.asarray(info.action_success, jnp.int32),
        effective_op_counts=jax.nn.one_hot(info.effective_op, NUM_OPS, dtype=jnp.int32),
        germinated=jnp.asarray(info.seeds_germinated, jnp.int32),
        fossilized=jnp.asarray(info.seeds_fossilized, jnp.int32),
        pruned=jnp.asarray(info.seeds_pruned, jnp.int32),
    )


def interval_summary(totals: StepTotals | Mapping, op_counts: Any) -> dict[str, Any]:
    """metrics.jsonl entries for one interval from totals already summed over it.

    ``op_counts``: sampled-op counts [NUM_OPS] (``RolloutMetrics.op_counts`` summed). Without env totals only
    ``op_counts`` is reported."""
    sampled = np.asarray(op_counts, np.int64).reshape(-1)
    if sampled.shape != (NUM_OPS,):
        raise ValueError(f"op_counts must hold {NUM_OPS} counts (one per LifecycleOp), got shape {sampled.shape}")
    out: dict[str, Any] = {"op_counts": {name: int(n) for name, n in zip(OP_NAMES, sampled)}}
    if not isinstance(totals, StepTotals):
        return out
    per_step = 1.0 / max(int(np.asarray(totals.steps)), 1)
    sums = {f.name: float(np.asarray(getattr(totals.reward_components, f.name)))
            for f in dataclasses.fields(totals.reward_components)}
    components = {ENV_COMPONENT_TO_TELEMETRY[name]: value * per_step for name, value in sums.items()}
    components["total_reward"] = sum(sums.values()) * per_step
    effective = np.asarray(totals.effective_op_counts, np.int64).reshape(-1)
    out.update({
        "reward_components": components,  # mean per env-step, RewardComponentsTelemetry names
        "invalid_action_rate": int(np.asarray(totals.invalid_actions)) * per_step,
        "action_success_rate": int(np.asarray(totals.successful_actions)) * per_step,
        "effective_op_counts": {name: int(n) for name, n in zip(OP_NAMES, effective)},
        "seed_outcomes": {name: int(np.asarray(getattr(totals, name))) for name in SEED_OUTCOMES},
    })
    return out
