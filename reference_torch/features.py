"""Upstream's feature extraction, written the upstream way: the baseline for parity and benchmarks.

Per env and per slot Python loops, Python float (float64) maths, one rounding to float32 when each list becomes a
tensor, blueprint indices through a NumPy int64 array (docs/policy-and-ppo.md#features). Deliberately not optimised.

``compat="fixed"`` applies the same two corrections as the JAX port's features (stage counts divided by the slot
count, interaction_sum clipped to [-1, 1]) so both modes can be compared.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reference_torch.leyline import (
    DEFAULT_GAMMA,
    HISTORY_LENGTH,
    MAX_EPOCHS_DEN,
    MAX_EPOCHS_NORM,
    NUM_OPS,
    NUM_STAGES,
    SLOT_FEATURE_SIZE,
    STAGE_COUNT_DIVISOR,
    STAGE_TO_INDEX,
    AlphaAlgorithm,
    AlphaMode,
    SeedStage,
    SlotConfig,
    check_compat,
)

_VALID_STAGE_VALUES = frozenset(stage.value for stage in SeedStage)
_IMPROVEMENT_CLAMP_PCT_PTS = 10.0
_ALPHA_MODE_MAX = max(mode.value for mode in AlphaMode)
_ALPHA_ALGO_MIN = min(algo.value for algo in AlphaAlgorithm)
_ALPHA_ALGO_RANGE = max(max(algo.value for algo in AlphaAlgorithm) - _ALPHA_ALGO_MIN, 1)


def safe(v: float | int | None, default: float = 0.0, max_val: float = 100.0) -> float:
    """None / NaN / inf -> default, else clip to [-max_val, max_val]; the NaN test only applies to floats."""
    if v is None:
        return default
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return default
    return max(-max_val, min(float(v), max_val))


def _lognorm(x: float) -> float:
    return math.log(1 + x) / math.log(16)


def _cap25(x: float | int) -> float:
    return min(float(x), MAX_EPOCHS_DEN) / MAX_EPOCHS_DEN


def _pad_history(history: list[float], length: int = HISTORY_LENGTH) -> list[float]:
    if len(history) >= length:
        return list(history[-length:])
    return [0.0] * (length - len(history)) + list(history)


def _stage_to_one_hot(stage_value: int) -> list[float]:
    one_hot = [0.0] * NUM_STAGES
    one_hot[STAGE_TO_INDEX[stage_value]] = 1.0
    return one_hot


def _extract_base_features_v3(
    signal: Any,
    env_state: Any,
    num_training: int,
    num_blending: int,
    num_holding: int,
    host_stabilized: bool,
    stage_count_divisor: float,
) -> torch.Tensor:
    """The 24 base features of one env."""
    epoch_norm = float(signal.metrics.epoch) / MAX_EPOCHS_NORM
    val_loss_norm = _lognorm(signal.metrics.val_loss)
    val_accuracy_norm = signal.metrics.val_accuracy / 100.0
    loss_history_norm = [_lognorm(x) for x in _pad_history(signal.loss_history)]
    acc_history_norm = [x / 100.0 for x in _pad_history(signal.accuracy_history)]

    num_training_norm = num_training / stage_count_divisor
    num_blending_norm = num_blending / stage_count_divisor
    num_holding_norm = num_holding / stage_count_divisor
    host_stabilized_float = 1.0 if host_stabilized else 0.0

    last_action_success = 1.0 if env_state.last_action_success else 0.0
    assert 0 <= env_state.last_action_op < NUM_OPS, f"Invalid last_action_op: {env_state.last_action_op}"
    last_op_one_hot = F.one_hot(torch.tensor(env_state.last_action_op), num_classes=NUM_OPS).float()

    base_features = (
        [epoch_norm, val_loss_norm, val_accuracy_norm]
        + loss_history_norm
        + acc_history_norm
        + [num_training_norm, num_blending_norm, num_holding_norm]
        + [host_stabilized_float]
        + [last_action_success]
        + last_op_one_hot.tolist()
    )
    return torch.tensor(base_features, dtype=torch.float32)


def _extract_slot_features_v3(slot_report: Any, env_state: Any, slot_id: str, compat: str) -> torch.Tensor:
    """The 30 features of one slot that has a report."""
    stage_val = slot_report.stage.value
    if stage_val in _VALID_STAGE_VALUES:
        stage_one_hot = _stage_to_one_hot(stage_val)
    else:
        stage_one_hot = [0.0] * NUM_STAGES

    current_alpha = slot_report.metrics.current_alpha

    contribution = slot_report.metrics.counterfactual_contribution
    if contribution is None:
        contribution = slot_report.metrics.improvement_since_stage_start
    contribution_norm = max(-1.0, min(contribution / _IMPROVEMENT_CLAMP_PCT_PTS, 1.0))

    velocity = slot_report.metrics.contribution_velocity
    velocity_norm = max(-1.0, min(velocity / _IMPROVEMENT_CLAMP_PCT_PTS, 1.0))

    blend_tempo_norm = float(slot_report.blend_tempo_epochs) / 12.0

    alpha_target = slot_report.alpha_target
    alpha_mode_norm = float(slot_report.alpha_mode) / max(_ALPHA_MODE_MAX, 1)
    alpha_steps_total_norm = _cap25(slot_report.alpha_steps_total)
    alpha_steps_done_norm = _cap25(slot_report.alpha_steps_done)
    time_to_target_norm = _cap25(slot_report.time_to_target)
    alpha_velocity = max(-1.0, min(slot_report.alpha_velocity, 1.0))
    alpha_algorithm_norm = float(slot_report.alpha_algorithm - _ALPHA_ALGO_MIN) / _ALPHA_ALGO_RANGE
    if compat == "upstream":
        interaction_sum_norm = min(slot_report.metrics.interaction_sum / 10.0, 1.0)
    else:
        interaction_sum_norm = max(-1.0, min(slot_report.metrics.interaction_sum / 10.0, 1.0))

    if slot_report.telemetry is not None:
        gradient_norm = safe(slot_report.telemetry.gradient_norm, 0.0, max_val=10.0) / 10.0
        gradient_health = safe(slot_report.telemetry.gradient_health, 1.0, max_val=1.0)
        has_vanishing = 1.0 if slot_report.telemetry.has_vanishing else 0.0
        has_exploding = 1.0 if slot_report.telemetry.has_exploding else 0.0
    else:
        gradient_norm = 0.0
        gradient_health = 1.0
        has_vanishing = 0.0
        has_exploding = 0.0

    gradient_health_prev = env_state.gradient_health_prev.get(slot_id, 1.0)
    epochs_in_stage_norm = _cap25(slot_report.metrics.epochs_in_current_stage)
    epochs_since_cf = env_state.epochs_since_counterfactual.get(slot_id, 0)
    counterfactual_fresh = DEFAULT_GAMMA**epochs_since_cf

    slot_features = (
        [1.0]
        + stage_one_hot
        + [current_alpha, contribution_norm, velocity_norm, blend_tempo_norm]
        + [
            alpha_target,
            alpha_mode_norm,
            alpha_steps_total_norm,
            alpha_steps_done_norm,
            time_to_target_norm,
            alpha_velocity,
            alpha_algorithm_norm,
            interaction_sum_norm,
        ]
        + [gradient_norm, gradient_health, has_vanishing, has_exploding]
        + [gradient_health_prev, epochs_in_stage_norm, counterfactual_fresh]
    )
    return torch.tensor(slot_features, dtype=torch.float32)


def batch_obs_to_features(
    batch_signals: list[Any],
    batch_slot_reports: list[dict[str, Any]],
    batch_env_states: list[Any],
    slot_config: SlotConfig,
    device: torch.device | str,
    *,
    compat: str = "upstream",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(obs float32 [n_envs, 24 + 30·S], blueprint_indices int64 [n_envs, S]) for a batch of envs."""
    compat = check_compat(compat)
    n_envs = len(batch_signals)
    num_slots = slot_config.num_slots
    divisor = STAGE_COUNT_DIVISOR if compat == "upstream" else float(num_slots)

    stage_distributions = []
    for reports in batch_slot_reports:
        num_training = num_blending = num_holding = 0
        for report in reports.values():
            stage_name = report.stage.name
            if stage_name == "TRAINING":
                num_training += 1
            elif stage_name == "BLENDING":
                num_blending += 1
            elif stage_name in ("HOLDING", "GRAFTED", "FOSSILIZED"):
                num_holding += 1
        stage_distributions.append((num_training, num_blending, num_holding))

    all_features = []
    for env_idx in range(n_envs):
        env_state = batch_env_states[env_idx]
        reports = batch_slot_reports[env_idx]
        num_training, num_blending, num_holding = stage_distributions[env_idx]
        base_features = _extract_base_features_v3(
            signal=batch_signals[env_idx],
            env_state=env_state,
            num_training=num_training,
            num_blending=num_blending,
            num_holding=num_holding,
            host_stabilized=False,  # a placeholder upstream
            stage_count_divisor=divisor,
        )
        slot_features_list = []
        for slot_id in slot_config.slot_ids:
            report = reports.get(slot_id)
            if report is not None:
                slot_features_list.append(_extract_slot_features_v3(report, env_state, slot_id, compat))
            else:
                slot_features_list.append(torch.zeros(SLOT_FEATURE_SIZE, dtype=torch.float32))
        all_features.append(torch.cat([base_features] + slot_features_list, dim=0))

    obs = torch.stack(all_features, dim=0).to(device)

    bp_indices = np.zeros((n_envs, num_slots), dtype=np.int64)
    for env_idx, reports in enumerate(batch_slot_reports):
        for slot_idx, slot_id in enumerate(slot_config.slot_ids):
            report = reports.get(slot_id)
            bp_indices[env_idx, slot_idx] = report.blueprint_index if report is not None else -1
    blueprint_indices = torch.from_numpy(bp_indices).to(device)
    return obs, blueprint_indices
