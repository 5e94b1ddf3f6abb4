"""The Observation pytree and the synthetic generator that feeds tests, parity checks and benchmarks."""

import jax
import numpy as np
import pytest

from esper_jax.contracts import HISTORY_LENGTH, VALID_STAGES
from esper_jax.observation import empty_observation, signal_dtypes, slot_dtypes
from esper_jax.testing import random_observation


def _leaf_specs(obs):
    return jax.tree.map(lambda x: (x.shape, str(x.dtype)), obs)


@pytest.mark.parametrize("batch_shape", [(), (4,), (7, 2)])
def test_empty_and_random_observations_share_one_structure(batch_shape):
    empty = empty_observation(5, batch_shape)
    rand = random_observation(0, 5, batch_shape)
    assert _leaf_specs(empty) == _leaf_specs(rand)
    assert empty.slots.stage.shape == batch_shape + (5,)
    assert empty.signals.loss_history.shape == batch_shape + (HISTORY_LENGTH,)
    assert empty.num_slots == 5


def test_dtype_tables_cover_every_field():
    obs = empty_observation(2)
    assert {k: str(v.dtype) for k, v in vars(obs.signals).items()} == {
        k: str(np.dtype(v)) for k, v in signal_dtypes().items()
    }
    assert {k: str(v.dtype) for k, v in vars(obs.slots).items()} == {
        k: str(np.dtype(v)) for k, v in slot_dtypes().items()
    }


def test_episode_start_defaults():
    obs = empty_observation(3)
    assert not obs.slots.has_report.any()
    assert (obs.slots.blueprint_index == -1).all()
    assert obs.slots.enabled.all()
    assert bool(obs.signals.last_action_success) and int(obs.signals.last_action_op) == 0
    assert (obs.slots.gradient_health_prev == 1.0).all()


def test_random_observation_is_seeded_and_valid():
    a = random_observation(3, 4, (64,))
    b = random_observation(3, 4, (64,))
    c = random_observation(4, 4, (64,))
    same = jax.tree.map(lambda x, y: np.array_equal(x, y, equal_nan=True), a, b)
    assert all(jax.tree.leaves(same))
    assert not np.array_equal(a.slots.stage, c.slots.stage)
    stages = np.asarray(a.slots.stage)[np.asarray(a.slots.has_report)]
    assert set(stages.tolist()) <= {s.value for s in VALID_STAGES}
    assert (np.asarray(a.slots.alpha_steps_done) <= np.asarray(a.slots.alpha_steps_total)).all()
    assert ((np.asarray(a.slots.blueprint_index) == -1) | np.asarray(a.slots.has_report)).all()


def test_zero_slots_rejected():
    with pytest.raises(ValueError, match="num_slots"):
        empty_observation(0)
    with pytest.raises(ValueError, match="num_slots"):
        random_observation(0, 0)
