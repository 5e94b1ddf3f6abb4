"""Upstream-shaped Python objects for the torch reference, and a converter from the JAX port's Observation
(duck-typed: any object with ``.signals`` and ``.slots`` holding arrays of those field names).

Upstream feeds ``batch_obs_to_features`` lists of per-env objects: ``TrainingSignals`` (leyline/
signals.py), a dict of ``SeedStateReport`` per env keyed by slot id (leyline/reports.py) and a
``ParallelEnvState`` (simic/training/parallel_env_state.py). These dataclasses carry exactly the attributes that
feature extraction reads (docs/policy-and-ppo.md#features), with upstream's names, so the reference code reads like
upstream's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reference_torch.leyline import HISTORY_LENGTH, SeedStage, SlotConfig


@dataclass
class TrainingMetrics:
    epoch: int = 0
    val_loss: float = 0.0
    val_accuracy: float = 0.0  # 0-100 scale
    host_stabilized: int = 0  # present upstream, never read by the features


@dataclass
class TrainingSignals:
    metrics: TrainingMetrics = field(default_factory=TrainingMetrics)
    loss_history: list[float] = field(default_factory=list)  # oldest first
    accuracy_history: list[float] = field(default_factory=list)


@dataclass
class SeedMetrics:
    current_alpha: float = 0.0
    counterfactual_contribution: float | None = None
    improvement_since_stage_start: float = 0.0
    contribution_velocity: float = 0.0
    interaction_sum: float = 0.0
    epochs_in_current_stage: int = 0


@dataclass
class SeedTelemetry:
    gradient_norm: float = 0.0
    gradient_health: float = 1.0
    has_vanishing: bool = False
    has_exploding: bool = False


@dataclass(frozen=True)
class InvalidStage:
    """A stage value that is no SeedStage (e.g. the retired 5), which upstream's features map to a zero one-hot.

    Quacks like an enum member (``.value``, ``.name``) so the reference code needs no special case to read it.
    """

    value: int

    @property
    def name(self) -> str:
        return f"INVALID_{self.value}"


@dataclass
class SeedStateReport:
    stage: SeedStage | InvalidStage
    blueprint_index: int = -1
    blend_tempo_epochs: int = 5
    alpha_target: float = 0.0
    alpha_mode: int = 0
    alpha_steps_total: int = 0
    alpha_steps_done: int = 0
    time_to_target: int = 0
    alpha_velocity: float = 0.0
    alpha_algorithm: int = 1
    metrics: SeedMetrics = field(default_factory=SeedMetrics)
    telemetry: SeedTelemetry | None = None


@dataclass
class ParallelEnvState:
    """The caller-side state the features read (upstream's class holds much more)."""

    last_action_success: bool = True
    last_action_op: int = 0
    gradient_health_prev: dict[str, float] = field(default_factory=dict)
    epochs_since_counterfactual: dict[str, int] = field(default_factory=dict)


def _stage(value: int) -> SeedStage | InvalidStage:
    try:
        return SeedStage(value)
    except ValueError:
        return InvalidStage(value)


def _flat(leaf: Any, batch: tuple[int, ...]) -> np.ndarray:
    """Host copy of a leaf with its batch axes flattened into one env axis (row-major, as a reshape would)."""
    array = np.asarray(leaf)
    return array.reshape((int(np.prod(batch, dtype=np.int64)),) + array.shape[len(batch) :])


def _report(slots: dict[str, np.ndarray], env: int, k: int) -> SeedStateReport:
    """SeedStateReport of slot k of env ``env``; float() of a float32 is exact, as upstream's float64 inputs."""

    def num(name: str) -> float:
        return float(slots[name][env, k])

    def integer(name: str) -> int:
        return int(slots[name][env, k])

    def flag(name: str) -> bool:
        return bool(slots[name][env, k])

    telemetry = None
    if flag("has_telemetry"):
        telemetry = SeedTelemetry(
            gradient_norm=num("gradient_norm"),
            gradient_health=num("gradient_health"),
            has_vanishing=flag("has_vanishing"),
            has_exploding=flag("has_exploding"),
        )
    metrics = SeedMetrics(
        current_alpha=num("current_alpha"),
        counterfactual_contribution=num("counterfactual_contribution") if flag("has_counterfactual") else None,
        improvement_since_stage_start=num("improvement_since_stage_start"),
        contribution_velocity=num("contribution_velocity"),
        interaction_sum=num("interaction_sum"),
        epochs_in_current_stage=integer("epochs_in_stage"),
    )
    return SeedStateReport(
        stage=_stage(integer("stage")),
        blueprint_index=integer("blueprint_index"),
        blend_tempo_epochs=integer("blend_tempo_epochs"),
        alpha_target=num("alpha_target"),
        alpha_mode=integer("alpha_mode"),
        alpha_steps_total=integer("alpha_steps_total"),
        alpha_steps_done=integer("alpha_steps_done"),
        time_to_target=integer("time_to_target"),
        alpha_velocity=num("alpha_velocity"),
        alpha_algorithm=integer("alpha_algorithm"),
        metrics=metrics,
        telemetry=telemetry,
    )


def from_observation(
    obs: Any, slot_config: SlotConfig
) -> tuple[list[TrainingSignals], list[dict[str, SeedStateReport]], list[ParallelEnvState]]:
    """Per-env upstream objects for every env of ``obs`` (leading batch axes flattened row-major; none = 1 env).

    Reports exist only for slots with ``has_report``; telemetry / counterfactual are None where the observation
    says so. Histories pass all 5 stored values: the observation's left zero padding is what upstream's own
    padding would add, so the features agree. The env-state dicts get an entry for every slot.
    """
    batch = tuple(np.shape(obs.signals.epoch))
    num_slots = np.shape(obs.slots.has_report)[-1]
    if num_slots != slot_config.num_slots:
        raise ValueError(f"observation has {num_slots} slots but slot_config has {slot_config.num_slots}")
    sig = {name: _flat(value, batch) for name, value in vars(obs.signals).items()}
    slots = {name: _flat(value, batch) for name, value in vars(obs.slots).items()}
    if sig["loss_history"].shape[-1] != HISTORY_LENGTH or sig["accuracy_history"].shape[-1] != HISTORY_LENGTH:
        raise ValueError(f"histories must hold {HISTORY_LENGTH} values per env")

    batch_signals, batch_reports, batch_states = [], [], []
    for env in range(sig["epoch"].shape[0]):
        batch_signals.append(
            TrainingSignals(
                metrics=TrainingMetrics(
                    epoch=int(sig["epoch"][env]),
                    val_loss=float(sig["val_loss"][env]),
                    val_accuracy=float(sig["val_accuracy"][env]),
                ),
                loss_history=[float(v) for v in sig["loss_history"][env]],
                accuracy_history=[float(v) for v in sig["accuracy_history"][env]],
            )
        )
        batch_reports.append(
            {
                slot_id: _report(slots, env, k)
                for k, slot_id in enumerate(slot_config.slot_ids)
                if slots["has_report"][env, k]
            }
        )
        batch_states.append(
            ParallelEnvState(
                last_action_success=bool(sig["last_action_success"][env]),
                last_action_op=int(sig["last_action_op"][env]),
                gradient_health_prev={
                    slot_id: float(slots["gradient_health_prev"][env, k])
                    for k, slot_id in enumerate(slot_config.slot_ids)
                },
                epochs_since_counterfactual={
                    slot_id: int(slots["epochs_since_counterfactual"][env, k])
                    for k, slot_id in enumerate(slot_config.slot_ids)
                },
            )
        )
    return batch_signals, batch_reports, batch_states
