"""Feature extraction over batches (vmap, several leading axes, jit, program size) and its input validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax.features import extract, extract_single, validate_observation
from esper_jax.observation import Observation
from esper_jax.testing import random_observation
from tests.feature_builders import CHECKED_HOLDING_VECTOR, env, holding_example, slot_block

# ---------------------------------------------------------------------------------------------------------------
# Batching and vectorisation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_batch_equals_per_env_calls(compat):
    batch = random_observation(11, 4, (6,))
    out = extract(batch, compat=compat)
    for i in range(6):
        single = extract(jax.tree.map(lambda x: x[i], batch), compat=compat)
        np.testing.assert_array_equal(out.features[i], single.features)
        np.testing.assert_array_equal(out.blueprint_indices[i], single.blueprint_indices)


def test_two_leading_axes_match_flattened_batch():
    obs = random_observation(12, 3, (5, 4))
    out = extract(obs)
    assert out.features.shape == (5, 4, 114) and out.blueprint_indices.shape == (5, 4, 3)
    flat = extract(jax.tree.map(lambda x: x.reshape((20,) + x.shape[2:]), obs))
    np.testing.assert_array_equal(np.asarray(out.features).reshape(20, 114), flat.features)
    np.testing.assert_array_equal(np.asarray(out.blueprint_indices).reshape(20, 3), flat.blueprint_indices)


def test_extract_under_jit_skips_host_validation_and_agrees():
    obs = random_observation(13, 3, (4,))
    jitted = jax.jit(lambda o: extract(o, compat="upstream").features)
    np.testing.assert_array_equal(jitted(obs), extract(obs, compat="upstream").features)


def test_extract_single_matches_extract():
    obs = random_observation(14, 2)
    single = jax.jit(extract_single, static_argnames="compat")(obs, compat="upstream")
    np.testing.assert_array_equal(single.features, extract(obs, compat="upstream").features)
    np.testing.assert_array_equal(single.blueprint_indices, extract(obs, compat="upstream").blueprint_indices)


def test_x64_computation_still_returns_float32():
    obs = holding_example(env())
    with jax.enable_x64(True):
        out = extract(obs, compat="upstream")
    assert out.features.dtype == jnp.float32 and out.blueprint_indices.dtype == jnp.int32
    np.testing.assert_allclose(slot_block(np.asarray(out.features), 0), CHECKED_HOLDING_VECTOR, atol=1e-6)


def _count_equations(jaxpr) -> int:
    """Equations of a jaxpr including those of nested jaxprs (pjit, while, cond bodies)."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _count_equations(inner)
    return total


@pytest.mark.parametrize("batch_shape", [(), (4,)])
def test_program_size_does_not_grow_with_slot_count(batch_shape):
    sizes = {}
    for num_slots in (3, 25):
        obs = random_observation(0, num_slots, batch_shape)
        closed = jax.make_jaxpr(lambda o: extract(o, compat="upstream"))(obs)
        sizes[num_slots] = _count_equations(closed.jaxpr)
    assert sizes[3] > 50  # the nested jaxpr was counted, not just the outer jit call
    assert sizes[3] == sizes[25]


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


def _replace_signal(obs: Observation, **kw) -> Observation:
    return obs.replace(signals=obs.signals.replace(**kw))


def _replace_slots(obs: Observation, **kw) -> Observation:
    return obs.replace(slots=obs.slots.replace(**kw))


@pytest.mark.parametrize(
    "make_bad, field",
    [
        (lambda o: _replace_signal(o, loss_history=jnp.zeros((4, 4))), "signals.loss_history"),
        (lambda o: _replace_signal(o, accuracy_history=jnp.zeros((4, 6))), "signals.accuracy_history"),
        (lambda o: _replace_slots(o, stage=jnp.zeros((4, 2), jnp.int32)), "slots.stage"),
        (lambda o: _replace_slots(o, gradient_norm=jnp.zeros((3, 3))), "slots.gradient_norm"),
        (lambda o: _replace_signal(o, val_loss=jnp.zeros((3,))), "signals.val_loss"),
        (lambda o: _replace_slots(o, stage=jnp.zeros((4, 3), jnp.float32)), "slots.stage"),
        (lambda o: _replace_signal(o, last_action_op=jnp.array([0, 1, 7, 2])), "signals.last_action_op"),
        (lambda o: _replace_signal(o, last_action_op=jnp.array([0, -1, 0, 2])), "signals.last_action_op"),
        (lambda o: _replace_signal(o, val_loss=jnp.array([0.5, -1.0, 0.2, 0.1])), "signals.val_loss"),
    ],
)
def test_bad_input_raises_naming_the_field(make_bad, field):
    bad = make_bad(random_observation(3, 3, (4,)))
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        validate_observation(bad)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        extract(bad)


def test_wrong_history_length_message_gives_expected_shape():
    bad = _replace_signal(env(), loss_history=jnp.zeros(4))
    with pytest.raises(ValueError, match=r"signals\.loss_history has shape \(4,\), expected \(5,\)"):
        extract(bad)


def test_validate_checks_requested_slot_count():
    obs = random_observation(4, 3, (2,))
    validate_observation(obs, num_slots=3)
    with pytest.raises(ValueError, match=r"slots\.enabled.*S = 5"):
        validate_observation(obs, num_slots=5)


def test_validation_can_be_skipped_and_unknown_compat_is_rejected():
    bad_op = env(last_action_op=7)
    f = np.asarray(extract(bad_op, validate=False).features)
    np.testing.assert_array_equal(f[18:24], 0.0)  # out-of-range op one-hots to nothing under jit
    with pytest.raises(ValueError, match="compat"):
        extract(env(), compat="legacy")
