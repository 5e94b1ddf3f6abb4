"""Upstream's action masks, written the upstream way (``tamiyo/policy/action_masks.py`` and
``leyline/causal_masks.py``): one env at a time, a Python loop over slots, item writes into small torch tensors,
then ``torch.stack`` over envs. This is the baseline that parity tests and benchmarks compare the JAX port against,
so its structure (and its cost) is kept as upstream has it, quirks included:

- an unknown topology string silently selects the CNN blueprint set;
- ids in ``enabled_slots`` that are not in the slot config are silently ignored;
- ``max_seeds <= 0`` means unlimited.

The one extension: ``compute_batch_masks`` also accepts one enabled-slot list per env (upstream takes one list for
every env), so that observations whose envs enable different slots can be fed to it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reference_torch.leyline import (
    CNN_BLUEPRINTS,
    MIN_PRUNE_AGE,
    NUM_BLUEPRINTS,
    NUM_OPS,
    TRANSFORMER_BLUEPRINTS,
    VALID_TRANSITIONS,
    AlphaCurveAction,
    AlphaMode,
    AlphaSpeedAction,
    AlphaTargetAction,
    BlueprintAction,
    GerminationStyle,
    LifecycleOp,
    SeedStage,
    SlotConfig,
    TempoAction,
)

# Derived from VALID_TRANSITIONS as upstream does (a stage is prunable if PRUNED is reachable from it, ...).
_FOSSILIZABLE_STAGES = frozenset(
    stage.value for stage, transitions in VALID_TRANSITIONS.items() if SeedStage.FOSSILIZED in transitions
)
_PRUNABLE_STAGES = frozenset(
    stage.value for stage, transitions in VALID_TRANSITIONS.items() if SeedStage.PRUNED in transitions
)
_ADVANCABLE_STAGES = frozenset({SeedStage.GERMINATED.value, SeedStage.TRAINING.value, SeedStage.BLENDING.value})
_RETARGETABLE_STAGES = (SeedStage.BLENDING.value, SeedStage.HOLDING.value)


@dataclass(frozen=True, slots=True)
class MaskSeedInfo:
    """What the masks need to know about one seed. Plain ints (not enums), as upstream."""

    stage: int  # SeedStage value
    seed_age_epochs: int
    alpha_mode: int = AlphaMode.HOLD.value


def build_slot_states(slot_reports: Mapping[str, Any], slot_ids: Sequence[str]) -> dict[str, MaskSeedInfo | None]:
    """slot id -> MaskSeedInfo, or None where the report dict has no entry. Any present report (DORMANT included)
    counts as occupied at this commit."""
    slot_states: dict[str, MaskSeedInfo | None] = {}
    for slot_id in slot_ids:
        report = slot_reports.get(slot_id)
        if report is None:
            slot_states[slot_id] = None
        else:
            slot_states[slot_id] = MaskSeedInfo(
                stage=report.stage.value,
                seed_age_epochs=report.metrics.epochs_total,
                alpha_mode=report.alpha_mode,
            )
    return slot_states


def compute_action_masks(
    slot_states: Mapping[str, MaskSeedInfo | None],
    enabled_slots: Sequence[str],
    total_seeds: int = 0,
    max_seeds: int = 0,
    slot_config: SlotConfig | None = None,
    device: torch.device | None = None,
    topology: str = "cnn",
    allow_governor_override: bool = False,
) -> dict[str, torch.Tensor]:
    """One env's masks: a dict of 8 bool tensors keyed by head name (docs/policy-and-ppo.md#masks).

    ``enabled_slots`` has no default, so forgetting it is a TypeError, as upstream.
    """
    if slot_config is None:
        slot_config = SlotConfig.default()
    device = device or torch.device("cpu")

    enabled_set = set(enabled_slots)
    ordered = tuple(slot_id for slot_id in slot_config.slot_ids if slot_id in enabled_set)

    slot_mask = torch.zeros(slot_config.num_slots, dtype=torch.bool, device=device)
    for slot_id in ordered:
        slot_mask[slot_config.index_for_slot_id(slot_id)] = True

    blueprint_mask = torch.zeros(NUM_BLUEPRINTS, dtype=torch.bool, device=device)
    valid_blueprints = TRANSFORMER_BLUEPRINTS if topology == "transformer" else CNN_BLUEPRINTS
    for bp in valid_blueprints:
        blueprint_mask[bp] = True
    blueprint_mask[BlueprintAction.NOOP] = False

    style_mask = torch.zeros(len(GerminationStyle), dtype=torch.bool, device=device)
    tempo_mask = torch.ones(len(TempoAction), dtype=torch.bool, device=device)
    alpha_target_mask = torch.zeros(len(AlphaTargetAction), dtype=torch.bool, device=device)
    alpha_speed_mask = torch.ones(len(AlphaSpeedAction), dtype=torch.bool, device=device)
    alpha_curve_mask = torch.ones(len(AlphaCurveAction), dtype=torch.bool, device=device)

    op_mask = torch.zeros(NUM_OPS, dtype=torch.bool, device=device)
    op_mask[LifecycleOp.WAIT] = True

    has_empty_enabled_slot = any(slot_states.get(slot_id) is None for slot_id in ordered)
    seed_limit_reached = max_seeds > 0 and total_seeds >= max_seeds
    can_germinate = has_empty_enabled_slot and not seed_limit_reached
    if can_germinate:
        op_mask[LifecycleOp.GERMINATE] = True

    has_retargetable_hold_slot = False
    for slot_id in ordered:
        seed_info = slot_states.get(slot_id)
        if seed_info is None:
            continue
        stage = seed_info.stage
        age = seed_info.seed_age_epochs
        if stage in _ADVANCABLE_STAGES:
            op_mask[LifecycleOp.ADVANCE] = True
        if stage in _FOSSILIZABLE_STAGES:
            op_mask[LifecycleOp.FOSSILIZE] = True
        if stage in _PRUNABLE_STAGES and age >= MIN_PRUNE_AGE:
            if allow_governor_override or seed_info.alpha_mode == AlphaMode.HOLD.value:
                op_mask[LifecycleOp.PRUNE] = True
        if stage in _RETARGETABLE_STAGES and seed_info.alpha_mode == AlphaMode.HOLD.value:
            op_mask[LifecycleOp.SET_ALPHA_TARGET] = True
            has_retargetable_hold_slot = True

    if can_germinate or has_retargetable_hold_slot:
        style_mask[:] = True
        alpha_target_mask[:] = True
    else:
        style_mask[GerminationStyle.SIGMOID_ADD] = True
        alpha_target_mask[AlphaTargetAction.FULL] = True

    return {
        "slot": slot_mask,
        "blueprint": blueprint_mask,
        "style": style_mask,
        "tempo": tempo_mask,
        "alpha_target": alpha_target_mask,
        "alpha_speed": alpha_speed_mask,
        "alpha_curve": alpha_curve_mask,
        "op": op_mask,
    }


def _per_env_enabled(enabled_slots: Sequence[str] | Sequence[Sequence[str]], num_envs: int) -> list[Sequence[str]]:
    """Upstream shares one enabled list across envs; a list of lists (one per env) is accepted as well."""
    if all(isinstance(s, str) for s in enabled_slots):
        return [enabled_slots] * num_envs  # type: ignore[list-item]
    if len(enabled_slots) != num_envs:
        raise ValueError(f"got {len(enabled_slots)} per-env enabled-slot lists for {num_envs} envs")
    return list(enabled_slots)  # type: ignore[arg-type]


def compute_batch_masks(
    batch_slot_states: Sequence[Mapping[str, MaskSeedInfo | None]],
    enabled_slots: Sequence[str] | Sequence[Sequence[str]],
    total_seeds_list: Sequence[int] | None = None,
    max_seeds: int = 0,
    slot_config: SlotConfig | None = None,
    device: torch.device | None = None,
    topology: str = "cnn",
    allow_governor_override: bool = False,
) -> dict[str, torch.Tensor]:
    """``compute_action_masks`` per env, each head stacked to [B, n]."""
    device = device or torch.device("cpu")
    per_env_enabled = _per_env_enabled(enabled_slots, len(batch_slot_states))
    masks_list = [
        compute_action_masks(
            slot_states=slot_states,
            enabled_slots=per_env_enabled[i],
            total_seeds=total_seeds_list[i] if total_seeds_list else 0,
            max_seeds=max_seeds,
            slot_config=slot_config,
            device=device,
            topology=topology,
            allow_governor_override=allow_governor_override,
        )
        for i, slot_states in enumerate(batch_slot_states)
    ]
    return {key: torch.stack([m[key] for m in masks_list]) for key in masks_list[0]}


def compute_causal_masks(op_actions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which heads' choices mattered for each op (docs/policy-and-ppo.md#masks); works on any shape of op tensor."""
    is_wait = op_actions == LifecycleOp.WAIT
    is_germinate = op_actions == LifecycleOp.GERMINATE
    is_set_alpha = op_actions == LifecycleOp.SET_ALPHA_TARGET
    is_prune = op_actions == LifecycleOp.PRUNE
    alpha_schedule_mask = is_set_alpha | is_prune
    return {
        "op": torch.ones_like(is_wait),
        "slot": ~is_wait,
        "blueprint": is_germinate,
        "style": is_germinate | is_set_alpha,
        "tempo": is_germinate,
        "alpha_target": is_germinate | is_set_alpha,
        "alpha_speed": alpha_schedule_mask,
        "alpha_curve": alpha_schedule_mask,
    }


def slot_states_from_observation(
    obs: Any, slot_config: SlotConfig
) -> tuple[list[dict[str, MaskSeedInfo | None]], list[list[str]], list[int]]:
    """Turn a batched observation (an object with ``.slots`` and ``.signals`` whose attributes are arrays shaped as the
JAX port's Observation: NumPy or JAX leaves, any leading axes, flattened in C order) into
    upstream's per-env inputs: slot states, enabled-slot lists and total seeds.

    Reads only what the masks read: ``enabled``, ``has_report``, ``stage``, ``seed_age`` (epochs_total) and
    ``alpha_mode`` per slot, ``total_seeds`` per env.
    """
    slots = obs.slots
    num_slots = np.shape(slots.stage)[-1]
    if num_slots != slot_config.num_slots:
        raise ValueError(f"observation has {num_slots} slots, slot_config has {slot_config.num_slots}")

    def per_env(values: Any) -> np.ndarray:
        return np.asarray(values).reshape(-1, num_slots)

    enabled = per_env(slots.enabled).astype(bool)
    has_report = per_env(slots.has_report).astype(bool)
    stage = per_env(slots.stage)
    seed_age = per_env(slots.seed_age)
    alpha_mode = per_env(slots.alpha_mode)
    total_seeds = np.asarray(obs.signals.total_seeds).reshape(-1)
    if total_seeds.shape[0] != enabled.shape[0]:
        raise ValueError(f"total_seeds has {total_seeds.shape[0]} envs, the slot leaves have {enabled.shape[0]}")

    batch_slot_states: list[dict[str, MaskSeedInfo | None]] = []
    enabled_lists: list[list[str]] = []
    for env in range(enabled.shape[0]):
        states: dict[str, MaskSeedInfo | None] = {}
        for k, slot_id in enumerate(slot_config.slot_ids):
            if has_report[env, k]:
                states[slot_id] = MaskSeedInfo(
                    stage=int(stage[env, k]),
                    seed_age_epochs=int(seed_age[env, k]),
                    alpha_mode=int(alpha_mode[env, k]),
                )
            else:
                states[slot_id] = None
        batch_slot_states.append(states)
        enabled_lists.append([slot_id for k, slot_id in enumerate(slot_config.slot_ids) if enabled[env, k]])
    return batch_slot_states, enabled_lists, [int(t) for t in total_seeds]
