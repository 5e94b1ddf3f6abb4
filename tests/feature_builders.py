"""Builders of hand-made observations for the feature-extraction tests: one env at a time, stacked for batches."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from esper_jax.contracts import AlphaAlgorithm, AlphaMode, SeedStage, slot_feature_offset
from esper_jax.features import extract
from esper_jax.observation import Observation, empty_observation, signal_dtypes, slot_dtypes

LN16 = math.log(16.0)


# ---------------------------------------------------------------------------------------------------------------
# Builders: one env at a time, stacked for batches
# ---------------------------------------------------------------------------------------------------------------


def env(num_slots: int = 3, **signals) -> Observation:
    """An unbatched episode-start observation with the given Signals fields replaced."""
    obs = empty_observation(num_slots)
    dtypes = signal_dtypes()
    return obs.replace(
        signals=obs.signals.replace(**{k: jnp.asarray(v, dtypes[k]) for k, v in signals.items()})
    )


def with_report(obs: Observation, slot: int, stage: SeedStage | int, blueprint_index: int = 1, **fields) -> Observation:
    """Give slot ``slot`` of an unbatched observation a report; unspecified fields keep their episode-start values."""
    dtypes = slot_dtypes()
    values = dict(has_report=True, stage=int(stage), blueprint_index=blueprint_index, **fields)
    updates = {k: getattr(obs.slots, k).at[slot].set(jnp.asarray(v, dtypes[k])) for k, v in values.items()}
    return obs.replace(slots=obs.slots.replace(**updates))


def with_slot_values(obs: Observation, slot: int, **fields) -> Observation:
    """Set slot fields without creating a report (e.g. garbage in an empty slot)."""
    dtypes = slot_dtypes()
    updates = {k: getattr(obs.slots, k).at[slot].set(jnp.asarray(v, dtypes[k])) for k, v in fields.items()}
    return obs.replace(slots=obs.slots.replace(**updates))


def stack(envs: list[Observation]) -> Observation:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *envs)


def feats(obs: Observation, compat: str = "upstream") -> np.ndarray:
    return np.asarray(extract(obs, compat=compat).features)


def slot_block(features: np.ndarray, slot: int) -> np.ndarray:
    start = slot_feature_offset(slot)
    return features[..., start : start + 30]


def training_report(obs: Observation, slot: int = 0, **overrides) -> Observation:
    """The TRAINING report of upstream's slot-feature test."""
    fields = dict(
        current_alpha=0.5,
        has_counterfactual=True,
        counterfactual_contribution=2.5,
        contribution_velocity=0.5,
        blend_tempo_epochs=8,
        gradient_health_prev=0.85,
        epochs_since_counterfactual=5,
    )
    fields.update(overrides)
    return with_report(obs, slot, SeedStage.TRAINING, **fields)


CHECKED_HOLDING_VECTOR = [
    1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0.7, -1, 0.05, 8 / 12, 1.0, 0.5, 1.0, 0.16, 0.24,
    1.0, 1.0, -3.0, 1.0, 1.0, 0, 1, 1.7, 0.12, 0.995**3,
]  # fmt: skip


def holding_example(obs: Observation, slot: int = 0) -> Observation:
    """The checked HOLDING report of docs/policy-and-ppo.md#features."""
    return with_report(
        obs,
        slot,
        SeedStage.HOLDING,
        has_telemetry=True,
        gradient_norm=25.0,
        gradient_health=float("nan"),
        has_vanishing=False,
        has_exploding=True,
        current_alpha=0.7,
        has_counterfactual=True,
        counterfactual_contribution=-25.0,
        contribution_velocity=0.5,
        blend_tempo_epochs=8,
        alpha_target=1.0,
        alpha_mode=AlphaMode.UP,
        alpha_steps_total=40,
        alpha_steps_done=4,
        time_to_target=6,
        alpha_velocity=3.0,
        alpha_algorithm=AlphaAlgorithm.GATE,
        interaction_sum=-30.0,
        gradient_health_prev=1.7,
        epochs_in_stage=3,
        epochs_since_counterfactual=3,
    )
