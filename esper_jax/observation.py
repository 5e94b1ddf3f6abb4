"""The Observation pytree: what an environment reports to the policy each step, as a struct of arrays.

Written for one env; a batch of envs is the same pytree with a leading env axis on every leaf (``[E, ...]``), and
per-slot leaves carry the slot axis next (``[E, S]``), in ``SlotConfig`` order. The fields are upstream's
``TrainingSignals``, ``SeedStateReport`` and the caller-side env state (docs/policy-and-ppo.md#features,
docs/environment.md#signals-and-observation), flattened into fixed-shape arrays: an absent slot report is
``has_report = False`` (its other fields are ignored), a ``None`` counterfactual is ``has_counterfactual = False``,
missing telemetry is ``has_telemetry = False``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from esper_jax.contracts import HISTORY_LENGTH


@struct.dataclass
class Signals:
    """Per-env training signals and last-action feedback (leading axes ``[...]``)."""

    epoch: jnp.ndarray  # int32 [...]
    val_loss: jnp.ndarray  # float32 [...]
    val_accuracy: jnp.ndarray  # float32 [...], 0–100 scale
    loss_history: jnp.ndarray  # float32 [..., 5], oldest first, left-padded with 0.0
    accuracy_history: jnp.ndarray  # float32 [..., 5], 0–100 scale, left-padded with 0.0
    last_action_success: jnp.ndarray  # bool [...]
    last_action_op: jnp.ndarray  # int32 [...], a LifecycleOp value
    total_seeds: jnp.ndarray  # int32 [...], seeds holding a module now, fossils included (the max_seeds mask rule)


@struct.dataclass
class SlotReports:
    """Per-slot seed reports (leading axes ``[..., S]``)."""

    enabled: jnp.ndarray  # bool: slot is in the enabled set (masks only)
    has_report: jnp.ndarray  # bool: the slot has a seed state (any stage, DORMANT included)
    stage: jnp.ndarray  # int32 SeedStage value
    blueprint_index: jnp.ndarray  # int32, -1 when unknown
    seed_age: jnp.ndarray  # int32 epochs_total (masks: MIN_PRUNE_AGE)
    blend_tempo_epochs: jnp.ndarray  # int32
    current_alpha: jnp.ndarray  # float32
    alpha_target: jnp.ndarray  # float32
    alpha_mode: jnp.ndarray  # int32 AlphaMode
    alpha_steps_total: jnp.ndarray  # int32
    alpha_steps_done: jnp.ndarray  # int32
    time_to_target: jnp.ndarray  # int32
    alpha_velocity: jnp.ndarray  # float32
    alpha_algorithm: jnp.ndarray  # int32 AlphaAlgorithm
    has_counterfactual: jnp.ndarray  # bool: counterfactual_contribution is not None
    counterfactual_contribution: jnp.ndarray  # float32
    improvement_since_stage_start: jnp.ndarray  # float32 (fallback when no counterfactual)
    contribution_velocity: jnp.ndarray  # float32
    interaction_sum: jnp.ndarray  # float32
    epochs_in_stage: jnp.ndarray  # int32 epochs_in_current_stage
    has_telemetry: jnp.ndarray  # bool
    gradient_norm: jnp.ndarray  # float32 (may be NaN/inf: the features replace it)
    gradient_health: jnp.ndarray  # float32 (may be NaN/inf)
    has_vanishing: jnp.ndarray  # bool
    has_exploding: jnp.ndarray  # bool
    gradient_health_prev: jnp.ndarray  # float32, 1.0 where never set
    epochs_since_counterfactual: jnp.ndarray  # int32, 0 where never set


@struct.dataclass
class Observation:
    signals: Signals
    slots: SlotReports

    @property
    def num_slots(self) -> int:
        return self.slots.stage.shape[-1]


_SLOT_DTYPES: dict[str, jnp.dtype] = {
    name: (jnp.bool_ if name.startswith("has_") or name == "enabled" else jnp.float32)
    for name in SlotReports.__dataclass_fields__
}
for _name in (
    "stage",
    "blueprint_index",
    "seed_age",
    "blend_tempo_epochs",
    "alpha_mode",
    "alpha_steps_total",
    "alpha_steps_done",
    "time_to_target",
    "alpha_algorithm",
    "epochs_in_stage",
    "epochs_since_counterfactual",
):
    _SLOT_DTYPES[_name] = jnp.int32

_SIGNAL_DTYPES: dict[str, jnp.dtype] = {
    "epoch": jnp.int32,
    "val_loss": jnp.float32,
    "val_accuracy": jnp.float32,
    "loss_history": jnp.float32,
    "accuracy_history": jnp.float32,
    "last_action_success": jnp.bool_,
    "last_action_op": jnp.int32,
    "total_seeds": jnp.int32,
}


def empty_observation(num_slots: int, batch_shape: tuple[int, ...] = ()) -> Observation:
    """An episode-start observation: epoch 0, no seeds, every slot enabled and empty, last action a successful WAIT.

    Defaults follow upstream's caller-side state after reset (docs/environment.md#signals-and-observation).
    """
    if num_slots < 1:
        raise ValueError(f"num_slots must be >= 1, got {num_slots}")
    signals = Signals(
        epoch=jnp.zeros(batch_shape, jnp.int32),
        val_loss=jnp.zeros(batch_shape, jnp.float32),
        val_accuracy=jnp.zeros(batch_shape, jnp.float32),
        loss_history=jnp.zeros(batch_shape + (HISTORY_LENGTH,), jnp.float32),
        accuracy_history=jnp.zeros(batch_shape + (HISTORY_LENGTH,), jnp.float32),
        last_action_success=jnp.ones(batch_shape, jnp.bool_),
        last_action_op=jnp.zeros(batch_shape, jnp.int32),
        total_seeds=jnp.zeros(batch_shape, jnp.int32),
    )
    shape = batch_shape + (num_slots,)
    slot_fields = {name: jnp.zeros(shape, dtype) for name, dtype in _SLOT_DTYPES.items()}
    slot_fields["enabled"] = jnp.ones(shape, jnp.bool_)
    slot_fields["blueprint_index"] = jnp.full(shape, -1, jnp.int32)
    slot_fields["gradient_health"] = jnp.ones(shape, jnp.float32)
    slot_fields["gradient_health_prev"] = jnp.ones(shape, jnp.float32)
    return Observation(signals=signals, slots=SlotReports(**slot_fields))


def signal_dtypes() -> dict[str, jnp.dtype]:
    """dtype of every Signals field (for validation and random generators)."""
    return dict(_SIGNAL_DTYPES)


def slot_dtypes() -> dict[str, jnp.dtype]:
    """dtype of every SlotReports field."""
    return dict(_SLOT_DTYPES)
