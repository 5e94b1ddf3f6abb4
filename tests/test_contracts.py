"""Enum values, sizes, slot ordering and the observation layout, pinned to upstream (docs/policy-and-ppo.md#masks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax import contracts as c


def test_stage_values_and_one_hot_positions():
    assert [s.value for s in c.VALID_STAGES] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert c.NUM_STAGES == 10
    assert c.STAGE_TO_INDEX.tolist() == [0, 1, 2, 3, 4, -1, 5, 6, 7, 8, 9]  # 5 (retired SHADOWING) has no slot


def test_transition_derived_stage_sets():
    assert c.PRUNABLE_STAGES == (c.SeedStage.GERMINATED, c.SeedStage.TRAINING, c.SeedStage.BLENDING, c.SeedStage.HOLDING)
    assert c.FOSSILIZABLE_STAGES == (c.SeedStage.HOLDING,)
    assert c.VALID_TRANSITIONS[c.SeedStage.FOSSILIZED] == ()
    assert c.MIN_PRUNE_AGE == 1


def test_action_enums_and_lookup_tables():
    assert [op.value for op in c.LifecycleOp] == list(range(6))
    assert [s.value for s in c.GerminationStyle] == list(range(4))
    assert [t.value for t in c.TempoAction] == [0, 1, 2]
    assert c.TEMPO_TO_EPOCHS == (3, 5, 8)
    assert c.ALPHA_TARGET_VALUES[c.AlphaTargetAction.FULL] == 1.0
    assert c.ALPHA_SPEED_TO_STEPS[c.AlphaSpeedAction.FAST] == 3
    assert c.ALPHA_SPEED_TO_STEPS[c.AlphaSpeedAction.SLOW] == 8
    assert c.STYLE_TO_KASMINA[c.GerminationStyle.GATED_GATE] == ("gated", c.AlphaAlgorithm.GATE)
    assert c.ALPHA_CURVE_STEEPNESS[c.AlphaCurveAction.SIGMOID_SHARP] == 24.0
    assert c.BLUEPRINT_IDS[0] == "noop" and c.BLUEPRINT_IDS[12] == "flex_attention"
    assert c.BLUEPRINT_NULL_INDEX == 13
    assert len(c.CNN_BLUEPRINTS) == len(c.TRANSFORMER_BLUEPRINTS) == 7
    assert c.BlueprintAction.NOOP not in c.CNN_BLUEPRINTS + c.TRANSFORMER_BLUEPRINTS


@pytest.mark.parametrize("num_slots", [1, 3, 5, 25])
def test_head_sizes_follow_slot_count(num_slots):
    sizes = c.head_sizes(num_slots)
    assert tuple(sizes) == c.HEAD_NAMES
    assert sizes["slot"] == num_slots
    assert sum(sizes.values()) == 38 + num_slots


def test_causal_relevance_table():
    rows = {op: {h for h, on in zip(c.HEAD_NAMES, c.CAUSAL_RELEVANCE[op]) if on} for op in c.LifecycleOp}
    assert rows[c.LifecycleOp.WAIT] == {"op"}
    assert rows[c.LifecycleOp.GERMINATE] == {"op", "slot", "blueprint", "style", "tempo", "alpha_target"}
    assert rows[c.LifecycleOp.SET_ALPHA_TARGET] == {"op", "slot", "style", "alpha_target", "alpha_speed", "alpha_curve"}
    assert rows[c.LifecycleOp.PRUNE] == {"op", "slot", "alpha_speed", "alpha_curve"}
    assert rows[c.LifecycleOp.FOSSILIZE] == rows[c.LifecycleOp.ADVANCE] == {"op", "slot"}


def test_observation_layout_sizes():
    assert c.feature_size(3) == 114
    assert c.network_input_size(3) == 126
    assert [c.feature_size(s) for s in (1, 2, 5, 9, 25)] == [54, 84, 174, 294, 774]
    assert c.slot_feature_offset(1) == 54
    assert c.SlotFeature.COUNTERFACTUAL_FRESH == c.SLOT_FEATURE_SIZE - 1
    assert c.BaseFeature.LAST_ACTION_OP + c.NUM_OPS == c.BASE_FEATURE_SIZE


def test_slot_config_canonical_order_and_aliases():
    assert c.SlotConfig.default().slot_ids == ("r0c0", "r0c1", "r0c2")
    assert c.SlotConfig.of(("late", "early", "mid")).slot_ids == ("r0c0", "r0c1", "r0c2")
    assert c.SlotConfig.of(("r1c0", "r0c2")).slot_ids == ("r0c2", "r1c0")  # row-major network order
    assert c.SlotConfig.for_grid(2, 3).slot_ids == ("r0c0", "r0c1", "r0c2", "r1c0", "r1c1", "r1c2")
    assert c.SlotConfig.with_num_slots(25).num_slots == 25
    assert c.SlotConfig.for_grid(1, 12).slot_ids[10] == "r0c10"  # numeric, not lexicographic, order
    cfg = c.SlotConfig.default()
    assert cfg.index("mid") == 1
    assert cfg.ordered(["late", "r0c0"]) == ("r0c0", "r0c2")


@pytest.mark.parametrize(
    "slot_ids, error, fragment",
    [
        ((), ValueError, "at least one slot"),
        (("r0c0", "early"), ValueError, "duplicates"),
        (("slot_a",), ValueError, "'slot_a'"),
        ("r0c0", TypeError, "sequence"),
    ],
)
def test_slot_config_rejects_bad_ids(slot_ids, error, fragment):
    with pytest.raises(error, match=fragment):
        c.SlotConfig(slot_ids)


def test_slot_config_unknown_lookup_names_the_slot():
    with pytest.raises(KeyError, match="r0c7"):
        c.SlotConfig.default().index("r0c7")
    with pytest.raises(KeyError, match="r2c0"):
        c.SlotConfig.default().ordered(["r2c0"])


def test_compat_modes():
    assert c.DEFAULT_COMPAT == "fixed"
    assert c.check_compat("upstream") == "upstream"
    with pytest.raises(ValueError, match="compat must be one of"):
        c.check_compat("exact")


def test_per_head_is_a_pytree_with_head_order():
    values = c.PerHead.from_dict({h: jnp.full((2,), i) for i, h in enumerate(c.HEAD_NAMES)})
    assert list(values.as_dict()) == list(c.HEAD_NAMES)
    doubled = jax.jit(lambda v: v.map(lambda x: 2 * x))(values)
    assert np.asarray(doubled.op).tolist() == [14, 14]
    with pytest.raises(KeyError, match="missing"):
        c.PerHead.from_dict({"op": 1})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_head_stack_puts_heads_on_the_axis_in_head_order_and_unstack_inverts_it(axis):
    values = c.PerHead.from_dict({h: jnp.full((2, 3), i) + jnp.arange(3) for i, h in enumerate(c.HEAD_NAMES)})
    stacked = values.stack(axis=axis)
    assert stacked.shape[axis] == c.NUM_HEADS and stacked.ndim == 3
    for i, h in enumerate(c.HEAD_NAMES):
        np.testing.assert_array_equal(np.take(np.asarray(stacked), i, axis=axis), np.asarray(getattr(values, h)))
    back = c.PerHead.unstack(stacked, axis=axis)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(values)))


def test_per_head_unstack_rejects_an_axis_that_is_not_the_heads():
    with pytest.raises(ValueError, match="axis 0 must have 8 heads"):
        c.PerHead.unstack(jnp.zeros((7, 2)), axis=0)
