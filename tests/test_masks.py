"""Action masks (docs/policy-and-ppo.md#masks) per head, after upstream's test_action_masks.py and
test_action_schema_drift.py. Causal relevance, batching and the property tests are in test_masks_batching.py."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax import masks
from esper_jax.contracts import (
    CNN_BLUEPRINTS,
    HEAD_NAMES,
    MIN_PRUNE_AGE,
    TRANSFORMER_BLUEPRINTS,
    AlphaMode,
    BlueprintAction,
    LifecycleOp,
    SeedStage,
    SlotConfig,
    head_sizes,
)
from esper_jax.observation import empty_observation
from esper_jax.testing import random_observation
from tests.mask_builders import (
    ALL_STYLES,
    ALL_TARGETS,
    EMPTY,
    ONLY_FULL,
    ONLY_SIGMOID_ADD,
    OP,
    make_obs,
    op_mask,
    valid_ops,
)

# --------------------------------------------------------------------------------------------------------------
# Schema: keys, sizes, config validation
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_slots", [1, 3, 5])
def test_mask_keys_are_head_names_and_sizes_match(num_slots: int) -> None:
    result = masks.compute(make_obs([EMPTY] * num_slots)).as_dict()
    assert tuple(result) == HEAD_NAMES
    sizes = head_sizes(num_slots)
    for head, mask in result.items():
        assert mask.shape == (sizes[head],), head
        assert mask.dtype == jnp.bool_, head
    assert bool(result["op"][OP.WAIT])


def test_mask_config_rejects_unknown_topology_and_negative_limit() -> None:
    with pytest.raises(ValueError, match="topology"):
        masks.MaskConfig(topology="vit")
    with pytest.raises(ValueError, match="max_seeds"):
        masks.MaskConfig(max_seeds=-1)
    with pytest.raises(TypeError, match="max_seeds"):
        masks.MaskConfig(max_seeds=2.5)  # type: ignore[arg-type]


def test_mask_config_is_frozen_and_hashable() -> None:
    config = masks.MaskConfig(max_seeds=3, topology="transformer", allow_governor_override=True)
    assert hash(config) == hash(masks.MaskConfig(3, "transformer", True))
    with pytest.raises(AttributeError):
        config.max_seeds = 4  # type: ignore[misc]


def test_compute_rejects_mismatched_total_seeds_shape() -> None:
    obs = random_observation(0, 3, (4,))
    bad = obs.replace(signals=obs.signals.replace(total_seeds=jnp.zeros((5,), jnp.int32)))
    with pytest.raises(ValueError, match="total_seeds"):
        masks.compute(bad)


# --------------------------------------------------------------------------------------------------------------
# Slot head
# --------------------------------------------------------------------------------------------------------------


def test_empty_slots_all_selectable_wait_and_germinate_only() -> None:
    result = masks.compute(make_obs([EMPTY, EMPTY, EMPTY]))
    assert np.asarray(result.slot).tolist() == [True, True, True]
    assert valid_ops(make_obs([EMPTY, EMPTY, EMPTY])) == {OP.WAIT, OP.GERMINATE}


@pytest.mark.parametrize("num_slots", [1, 2, 5, 9, 25])
def test_every_enabled_slot_selectable(num_slots: int) -> None:
    result = masks.compute(make_obs([EMPTY] * num_slots))
    assert np.asarray(result.slot).tolist() == [True] * num_slots


def test_partial_enabling_in_a_grid_selects_only_enabled_slots() -> None:
    config = SlotConfig.for_grid(2, 3)
    enabled_ids = {"r0c1", "r1c0", "r1c2"}
    enabled = [slot_id in enabled_ids for slot_id in config.slot_ids]
    result = masks.compute(make_obs([EMPTY] * config.num_slots, enabled=enabled))
    assert np.asarray(result.slot).tolist() == [False, True, False, True, False, True]


def test_no_enabled_slot_leaves_only_wait_and_an_empty_slot_mask() -> None:
    obs = make_obs([EMPTY, SeedStage.HOLDING, SeedStage.TRAINING], enabled=[False, False, False])
    result = masks.compute(obs)
    assert not np.asarray(result.slot).any()
    assert valid_ops(obs) == {OP.WAIT}


# --------------------------------------------------------------------------------------------------------------
# Op head per stage
# --------------------------------------------------------------------------------------------------------------


def test_training_seed_age_5_allows_prune_and_advance() -> None:
    assert valid_ops(make_obs([SeedStage.TRAINING], ages=[5])) == {OP.WAIT, OP.PRUNE, OP.ADVANCE}


def test_holding_seed_allows_fossilize_prune_and_set_alpha_target() -> None:
    assert valid_ops(make_obs([SeedStage.HOLDING])) == {OP.WAIT, OP.FOSSILIZE, OP.PRUNE, OP.SET_ALPHA_TARGET}


def test_fossilized_seed_allows_nothing_but_wait() -> None:
    assert valid_ops(make_obs([SeedStage.FOSSILIZED])) == {OP.WAIT}


def test_dormant_report_occupies_the_slot() -> None:
    assert valid_ops(make_obs([SeedStage.DORMANT])) == {OP.WAIT}
    assert OP.GERMINATE in valid_ops(make_obs([SeedStage.DORMANT, EMPTY]))


@pytest.mark.parametrize("stage", list(SeedStage))
def test_each_op_only_from_its_stages(stage: SeedStage) -> None:
    ops = op_mask(make_obs([stage], ages=[5]))
    assert ops[OP.FOSSILIZE] == (stage == SeedStage.HOLDING)
    assert ops[OP.PRUNE] == (stage in (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING))
    assert ops[OP.ADVANCE] == (stage in (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING))
    assert ops[OP.SET_ALPHA_TARGET] == (stage in (SeedStage.BLENDING, SeedStage.HOLDING))
    assert not ops[OP.GERMINATE]
    assert ops[OP.WAIT]


def test_prune_age_boundary() -> None:
    assert MIN_PRUNE_AGE == 1
    assert not op_mask(make_obs([SeedStage.GERMINATED], ages=[0]))[OP.PRUNE]
    assert op_mask(make_obs([SeedStage.GERMINATED], ages=[1]))[OP.PRUNE]


def test_prune_needs_hold_unless_governor_override() -> None:
    override = masks.MaskConfig(allow_governor_override=True)
    up = make_obs([SeedStage.BLENDING], modes=[AlphaMode.UP])
    down = make_obs([SeedStage.BLENDING], modes=[AlphaMode.DOWN])
    assert not op_mask(up)[OP.PRUNE]
    assert not op_mask(down)[OP.PRUNE]
    assert op_mask(down, override)[OP.PRUNE]
    assert op_mask(up, override)[OP.PRUNE]
    # The override relaxes PRUNE only: retargeting alpha still needs HOLD.
    assert not op_mask(down, override)[OP.SET_ALPHA_TARGET]


def test_ops_are_optimistic_over_enabled_slots_only() -> None:
    obs = make_obs([SeedStage.TRAINING, SeedStage.HOLDING, EMPTY], enabled=[True, True, False])
    assert valid_ops(obs) == {OP.WAIT, OP.ADVANCE, OP.PRUNE, OP.FOSSILIZE, OP.SET_ALPHA_TARGET}
    hidden_holding = make_obs([SeedStage.TRAINING, SeedStage.HOLDING], enabled=[True, False])
    assert valid_ops(hidden_holding) == {OP.WAIT, OP.ADVANCE, OP.PRUNE}


# --------------------------------------------------------------------------------------------------------------
# Seed limit
# --------------------------------------------------------------------------------------------------------------


def test_max_seeds_zero_is_unlimited() -> None:
    obs = make_obs([EMPTY, EMPTY], total_seeds=1000)
    assert op_mask(obs, masks.MaskConfig(max_seeds=0))[OP.GERMINATE]


@pytest.mark.parametrize("total_seeds", [5, 6, 100])
def test_at_or_over_the_limit_blocks_only_germinate(total_seeds: int) -> None:
    stages = [EMPTY, SeedStage.BLENDING, SeedStage.HOLDING]
    limited = masks.MaskConfig(max_seeds=5)
    blocked = np.asarray(masks.compute(make_obs(stages, total_seeds=total_seeds), limited).op)
    free = np.asarray(masks.compute(make_obs(stages, total_seeds=4), limited).op)
    assert free[OP.GERMINATE] and not blocked[OP.GERMINATE]
    others = [o for o in LifecycleOp if o != OP.GERMINATE]
    assert blocked[others].tolist() == free[others].tolist()


def test_per_env_seed_limits_in_a_batch() -> None:
    obs = random_observation(3, 2, (3,), p_report=0.0, p_enabled=1.0)
    obs = obs.replace(signals=obs.signals.replace(total_seeds=jnp.asarray([0, 5, 10], jnp.int32)))
    result = masks.compute(obs, masks.MaskConfig(max_seeds=5))
    assert np.asarray(result.op[:, OP.GERMINATE]).tolist() == [True, False, False]


def test_default_total_seeds_is_zero() -> None:
    assert int(empty_observation(3).signals.total_seeds) == 0
    assert op_mask(empty_observation(3), masks.MaskConfig(max_seeds=1))[OP.GERMINATE]


# --------------------------------------------------------------------------------------------------------------
# Style and alpha target
# --------------------------------------------------------------------------------------------------------------



@pytest.mark.parametrize(
    ("stages", "modes", "total_seeds", "expect_free"),
    [
        ([EMPTY, SeedStage.TRAINING], [AlphaMode.HOLD] * 2, 0, True),  # germination possible
        ([SeedStage.BLENDING, SeedStage.TRAINING], [AlphaMode.HOLD] * 2, 0, True),  # BLENDING in HOLD
        ([SeedStage.HOLDING], [AlphaMode.HOLD], 0, True),  # HOLDING in HOLD
        ([SeedStage.BLENDING, SeedStage.TRAINING], [AlphaMode.UP, AlphaMode.HOLD], 0, False),
        ([SeedStage.HOLDING], [AlphaMode.DOWN], 0, False),
        ([EMPTY, SeedStage.TRAINING], [AlphaMode.HOLD] * 2, 3, False),  # empty slot but limit reached
        ([SeedStage.FOSSILIZED, SeedStage.TRAINING], [AlphaMode.HOLD] * 2, 0, False),
    ],
)
def test_style_and_alpha_target_rules(stages, modes, total_seeds, expect_free) -> None:
    result = masks.compute(make_obs(stages, modes=modes, total_seeds=total_seeds), masks.MaskConfig(max_seeds=3))
    assert np.asarray(result.style).tolist() == (ALL_STYLES if expect_free else ONLY_SIGMOID_ADD)
    assert np.asarray(result.alpha_target).tolist() == (ALL_TARGETS if expect_free else ONLY_FULL)


# --------------------------------------------------------------------------------------------------------------
# Blueprints and always-on heads
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topology", "expected"),
    [("cnn", CNN_BLUEPRINTS), ("transformer", TRANSFORMER_BLUEPRINTS)],
)
def test_blueprint_mask_is_the_topology_set_without_noop(topology, expected) -> None:
    obs = make_obs([SeedStage.TRAINING, EMPTY, SeedStage.HOLDING])
    blueprint = np.asarray(masks.compute(obs, masks.MaskConfig(topology=topology)).blueprint)
    assert not blueprint[BlueprintAction.NOOP]
    assert {BlueprintAction(i) for i in np.flatnonzero(blueprint)} == set(expected)
    assert blueprint.sum() == 7


def test_cnn_default_offers_the_basic_convolutional_blueprints() -> None:
    blueprint = np.asarray(masks.compute(make_obs([EMPTY])).blueprint)
    for bp in (BlueprintAction.CONV_LIGHT, BlueprintAction.ATTENTION, BlueprintAction.NORM, BlueprintAction.DEPTHWISE):
        assert blueprint[bp]
    assert not blueprint[BlueprintAction.LORA]


def test_tempo_and_alpha_schedule_heads_always_all_valid() -> None:
    result = masks.compute(random_observation(7, 5, (16,)))
    for head in ("tempo", "alpha_speed", "alpha_curve"):
        assert np.asarray(getattr(result, head)).all(), head
