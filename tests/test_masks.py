"""Action masks and causal relevance (policy.md §2.2, §3), after upstream's test_action_masks.py,
test_mask_properties.py, test_action_schema_drift.py and the causal table of test_advantages.py."""

from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_jax import masks
from esper_jax.contracts import (
    CNN_BLUEPRINTS,
    HEAD_NAMES,
    MIN_PRUNE_AGE,
    TRANSFORMER_BLUEPRINTS,
    AlphaMode,
    AlphaTargetAction,
    BlueprintAction,
    GerminationStyle,
    LifecycleOp,
    PerHead,
    SeedStage,
    SlotConfig,
    head_sizes,
)
from esper_jax.observation import Observation, empty_observation
from esper_jax.testing import random_observation

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

ALL_STYLES = [True] * len(GerminationStyle)
ALL_TARGETS = [True] * len(AlphaTargetAction)
ONLY_SIGMOID_ADD = [s == GerminationStyle.SIGMOID_ADD for s in GerminationStyle]
ONLY_FULL = [t == AlphaTargetAction.FULL for t in AlphaTargetAction]


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


# --------------------------------------------------------------------------------------------------------------
# Causal relevance (test_advantages.py)
# --------------------------------------------------------------------------------------------------------------

CAUSAL_EXPECTED: dict[LifecycleOp, set[str]] = {
    OP.WAIT: {"op"},
    OP.GERMINATE: {"op", "slot", "blueprint", "style", "tempo", "alpha_target"},
    OP.SET_ALPHA_TARGET: {"op", "slot", "style", "alpha_target", "alpha_speed", "alpha_curve"},
    OP.PRUNE: {"op", "slot", "alpha_speed", "alpha_curve"},
    OP.FOSSILIZE: {"op", "slot"},
    OP.ADVANCE: {"op", "slot"},
}


@pytest.mark.parametrize("op", list(LifecycleOp))
def test_causal_relevance_of_each_op_on_a_scalar(op: LifecycleOp) -> None:
    result = masks.causal_relevance(jnp.asarray(int(op), jnp.int32)).as_dict()
    assert tuple(result) == HEAD_NAMES
    for head, relevant in result.items():
        assert relevant.shape == ()
        assert bool(relevant) == (head in CAUSAL_EXPECTED[op]), (op, head)


@pytest.mark.parametrize("shape", [(12,), (4, 3)])
def test_causal_relevance_on_mixed_batches(shape: tuple[int, ...]) -> None:
    ops = np.random.default_rng(0).integers(0, len(LifecycleOp), size=shape)
    result = masks.causal_relevance(jnp.asarray(ops, jnp.int32)).as_dict()
    for head, relevant in result.items():
        expected = np.vectorize(lambda o: head in CAUSAL_EXPECTED[LifecycleOp(o)])(ops)
        assert relevant.shape == shape
        np.testing.assert_array_equal(np.asarray(relevant), expected, err_msg=head)


def test_causal_relevance_under_jit() -> None:
    ops = jnp.arange(len(LifecycleOp), dtype=jnp.int32)
    eager = masks.causal_relevance(ops)
    jitted = jax.jit(masks.causal_relevance)(ops)
    for head in HEAD_NAMES:
        np.testing.assert_array_equal(np.asarray(getattr(jitted, head)), np.asarray(getattr(eager, head)))


# --------------------------------------------------------------------------------------------------------------
# Batching, vmap and tracing
# --------------------------------------------------------------------------------------------------------------


def _assert_per_head_equal(a: PerHead, b: PerHead) -> None:
    for head in HEAD_NAMES:
        np.testing.assert_array_equal(np.asarray(getattr(a, head)), np.asarray(getattr(b, head)), err_msg=head)


def test_time_by_env_batch_matches_each_slice() -> None:
    obs = random_observation(11, 3, (4, 5), p_enabled=0.8)
    result = masks.compute(obs)
    sizes = head_sizes(3)
    for head in HEAD_NAMES:
        assert getattr(result, head).shape == (4, 5, sizes[head])
    for t in range(4):
        step = jax.tree.map(lambda x: np.asarray(x)[t], obs)
        _assert_per_head_equal(jax.tree.map(lambda x: x[t], result), masks.compute(step))


_compute_env_jit = jax.jit(masks.compute_env, static_argnames="config")


def test_vmapped_equals_per_env() -> None:
    config = masks.MaskConfig(max_seeds=4, allow_governor_override=True)
    obs = random_observation(12, 5, (8,), p_enabled=0.7)
    batched = masks.compute(obs, config)
    for env in range(8):
        single = jax.tree.map(lambda x: np.asarray(x)[env], obs)
        _assert_per_head_equal(jax.tree.map(lambda x: x[env], batched), _compute_env_jit(single, config))


def _count_equations(jaxpr: jax.extend.core.Jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _count_equations(sub)
    return total


def test_equation_count_does_not_grow_with_slot_count() -> None:
    """A Python loop over slots would add equations per slot; the array formulation has a fixed program."""
    config = masks.MaskConfig(max_seeds=3)
    counts = {}
    for num_slots in (3, 25):
        obs = empty_observation(num_slots)
        counts[num_slots] = _count_equations(jax.make_jaxpr(lambda o: masks.compute_env(o, config))(obs).jaxpr)
    assert counts[3] == counts[25] > 0


def test_expand_time_adds_a_broadcast_time_axis() -> None:
    result = masks.compute(random_observation(13, 3, (4,)))
    expanded = masks.expand_time(result, num_steps=6)
    for head in HEAD_NAMES:
        mask = np.asarray(getattr(result, head))
        out = np.asarray(getattr(expanded, head))
        assert out.shape == (4, 6, mask.shape[-1])
        np.testing.assert_array_equal(out, np.broadcast_to(mask[:, None, :], out.shape), err_msg=head)
    assert masks.expand_time(result).op.shape == (4, 1, 6)


def test_expand_time_is_traced_once_per_shape() -> None:
    first = masks.compute(random_observation(14, 2, (3,)))
    second = masks.compute(random_observation(15, 2, (3,)))
    masks.expand_time(first, num_steps=2)
    cached = masks.expand_time._cache_size()
    out = masks.expand_time(second, num_steps=2)
    assert masks.expand_time._cache_size() == cached
    np.testing.assert_array_equal(np.asarray(out.op[:, 1]), np.asarray(second.op))


def test_expand_time_keeps_absent_heads_and_rejects_zero_steps() -> None:
    only_op = PerHead(*([None] * 7), op=jnp.ones((2, 6), bool))
    expanded = masks.expand_time(only_op, num_steps=3)
    assert expanded.slot is None and expanded.op.shape == (2, 3, 6)
    with pytest.raises(ValueError, match="num_steps"):
        masks.expand_time(only_op, num_steps=0)


# --------------------------------------------------------------------------------------------------------------
# Properties (test_mask_properties.py)
# --------------------------------------------------------------------------------------------------------------

PROPERTY_CONFIGS = (
    masks.MaskConfig(),
    masks.MaskConfig(max_seeds=3, allow_governor_override=True),
    masks.MaskConfig(max_seeds=1, topology="transformer"),
)
_STAGE_VALUES = [int(s) for s in SeedStage]


@st.composite
def env_states(draw):
    num_slots = draw(st.sampled_from([1, 2, 3, 5]))
    slot = st.tuples(
        st.booleans(),  # enabled
        st.booleans(),  # has a report
        st.sampled_from(_STAGE_VALUES),
        st.integers(0, 3),  # age, around MIN_PRUNE_AGE
        st.sampled_from([int(m) for m in AlphaMode]),
    )
    slots = draw(st.lists(slot, min_size=num_slots, max_size=num_slots))
    total_seeds = draw(st.integers(0, 5))
    config = draw(st.sampled_from(PROPERTY_CONFIGS))
    return slots, total_seeds, config


@settings(max_examples=50, deadline=None)
@given(env_states())
def test_mask_properties(state) -> None:
    slots, total_seeds, config = state
    enabled, has_report, stage, age, mode = (np.asarray(column) for column in zip(*slots))
    obs = make_obs(
        [int(s) if r else None for s, r in zip(stage, has_report)],
        ages=age.tolist(),
        modes=mode.tolist(),
        enabled=enabled.tolist(),
        total_seeds=total_seeds,
        stale_stages=stage.tolist(),  # an empty slot keeps a leftover stage code that must not count
    )
    result = masks.compute(obs, config)
    sizes = head_sizes(len(slots))
    op = np.asarray(result.op)

    for head in HEAD_NAMES:
        mask = np.asarray(getattr(result, head))
        assert mask.shape == (sizes[head],), head
        if head != "slot":
            assert mask.any(), head
    np.testing.assert_array_equal(np.asarray(result.slot), enabled)
    assert np.asarray(result.tempo).all()
    assert op[OP.WAIT]

    occupied = enabled & has_report
    limit_reached = config.max_seeds > 0 and total_seeds >= config.max_seeds
    assert op[OP.GERMINATE] == (bool((enabled & ~has_report).any()) and not limit_reached)
    assert op[OP.FOSSILIZE] == bool((occupied & (stage == SeedStage.HOLDING)).any())
    advanceable = np.isin(stage, [SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING])
    assert op[OP.ADVANCE] == bool((occupied & advanceable).any())
    retargetable = occupied & np.isin(stage, [SeedStage.BLENDING, SeedStage.HOLDING]) & (mode == AlphaMode.HOLD)
    assert op[OP.SET_ALPHA_TARGET] == bool(retargetable.any())
    free_choice = bool(op[OP.GERMINATE] or retargetable.any())
    assert np.asarray(result.style).tolist() == (ALL_STYLES if free_choice else ONLY_SIGMOID_ADD)
    assert np.asarray(result.alpha_target).tolist() == (ALL_TARGETS if free_choice else ONLY_FULL)
    prunable = np.isin(stage, [SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING])
    mode_ok = (mode == AlphaMode.HOLD) | config.allow_governor_override
    assert op[OP.PRUNE] == bool((occupied & prunable & (age >= MIN_PRUNE_AGE) & mode_ok).any())
    if not occupied.any():
        assert not op[OP.PRUNE]

    blueprint = np.asarray(result.blueprint)
    expected_set = CNN_BLUEPRINTS if config.topology == "cnn" else TRANSFORMER_BLUEPRINTS
    assert not blueprint[BlueprintAction.NOOP]
    assert {BlueprintAction(i) for i in np.flatnonzero(blueprint)} == set(expected_set)
