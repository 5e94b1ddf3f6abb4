"""Causal relevance of heads per op (the table of upstream's test_advantages.py), masks over batches, vmap and jit,
and upstream's test_mask_properties.py as hypothesis properties."""

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
    BlueprintAction,
    LifecycleOp,
    PerHead,
    SeedStage,
    head_sizes,
)
from esper_jax.observation import empty_observation
from esper_jax.testing import random_observation
from tests.mask_builders import ALL_STYLES, ALL_TARGETS, ONLY_FULL, ONLY_SIGMOID_ADD, OP, make_obs

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
