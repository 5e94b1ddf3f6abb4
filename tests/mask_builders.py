"""Hand-made observations for the action-mask tests: one env whose slots hold seeds at given stages."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from esper_jax import masks
from esper_jax.contracts import AlphaMode, AlphaTargetAction, GerminationStyle, LifecycleOp
from esper_jax.observation import Observation, empty_observation

OP = LifecycleOp
EMPTY = None  # a slot without a seed report


def make_obs(
    stages: list[int | None],
    *,
    ages: list[int] | None = None,
    modes: list[int] | None = None,
    enabled: list[bool] | None = None,
    total_seeds: int = 0,
    stale_stages: list[int] | None = None,
) -> Observation:
    """One env whose slot k holds a seed in ``stages[k]`` (None = empty). Ages default to 5, modes to HOLD,
    every slot enabled. ``stale_stages`` fills the stage field of empty slots, which the masks must ignore."""
    n = len(stages)
    stale_stages = [0] * n if stale_stages is None else stale_stages
    obs = empty_observation(n)
    ages = [5] * n if ages is None else ages
    modes = [AlphaMode.HOLD] * n if modes is None else modes
    enabled = [True] * n if enabled is None else enabled
    slots = obs.slots.replace(
        enabled=jnp.asarray(enabled, bool),
        has_report=jnp.asarray([s is not None for s in stages], bool),
        stage=jnp.asarray([int(x) if s is None else int(s) for s, x in zip(stages, stale_stages)], jnp.int32),
        seed_age=jnp.asarray(ages, jnp.int32),
        alpha_mode=jnp.asarray([int(m) for m in modes], jnp.int32),
    )
    signals = obs.signals.replace(total_seeds=jnp.asarray(total_seeds, jnp.int32))
    return Observation(signals=signals, slots=slots)


def op_mask(obs: Observation, config: masks.MaskConfig = masks.MaskConfig()) -> dict[LifecycleOp, bool]:
    op = np.asarray(masks.compute(obs, config).op)
    return {o: bool(op[o]) for o in LifecycleOp}


def valid_ops(obs: Observation, config: masks.MaskConfig = masks.MaskConfig()) -> set[LifecycleOp]:
    return {o for o, valid in op_mask(obs, config).items() if valid}


# Expected style / alpha-target rows: every choice free, or only the canonical one.
ALL_STYLES = [True] * len(GerminationStyle)
ALL_TARGETS = [True] * len(AlphaTargetAction)
ONLY_SIGMOID_ADD = [s == GerminationStyle.SIGMOID_ADD for s in GerminationStyle]
ONLY_FULL = [t == AlphaTargetAction.FULL for t in AlphaTargetAction]
