"""Feature extraction (docs/policy-and-ppo.md#features): upstream's feature tests as exact vectors.

Upstream's tests live in tests/tamiyo/policy/test_features.py and tests/simic/test_ppo.py upstream
(esper-lite); each ``test_upstream_*`` below reproduces one of them against ``extract``. The formulas beyond
upstream's tests are in test_features_formulas.py, batching and validation in test_features_batching.py.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax.contracts import (
    NUM_STAGES,
    BaseFeature,
    SeedStage,
    SlotFeature,
)
from esper_jax.features import Features, extract
from esper_jax.testing import random_observation
from tests.feature_builders import LN16, env, feats, slot_block, stack, training_report, with_report

# ---------------------------------------------------------------------------------------------------------------
# Upstream tests
# ---------------------------------------------------------------------------------------------------------------


def test_upstream_basic_shapes_and_blueprint_indices():
    e0 = with_report(with_report(env(), 0, SeedStage.TRAINING, 1), 1, SeedStage.BLENDING, 2)
    e1 = with_report(env(), 0, SeedStage.TRAINING, 3)
    out = extract(stack([e0, e1]), compat="upstream")
    assert isinstance(out, Features)
    assert out.features.shape == (2, 114) and out.features.dtype == jnp.float32
    assert out.blueprint_indices.shape == (2, 3) and out.blueprint_indices.dtype == jnp.int32
    np.testing.assert_array_equal(out.blueprint_indices, [[1, 2, -1], [3, -1, -1]])


def test_upstream_base_features():
    loss_history = [2.0, 1.9, 1.7, 1.6, 1.5]
    acc_history = [60.0, 70.0, 75.0, 80.0, 85.0]
    obs = env(
        epoch=50,
        val_loss=1.5,
        val_accuracy=85.0,
        loss_history=loss_history,
        accuracy_history=acc_history,
        last_action_success=True,
        last_action_op=2,
    )
    f = feats(obs)
    assert f[BaseFeature.EPOCH] == pytest.approx(50 / 150, abs=1e-6)
    assert f[BaseFeature.VAL_LOSS] == pytest.approx(math.log(2.5) / LN16, abs=1e-6)
    assert f[BaseFeature.VAL_ACCURACY] == pytest.approx(0.85, abs=1e-6)
    np.testing.assert_allclose(f[3:8], [math.log1p(x) / LN16 for x in loss_history], atol=1e-6)
    np.testing.assert_allclose(f[8:13], [x / 100 for x in acc_history], atol=1e-6)
    np.testing.assert_array_equal(f[13:16], 0.0)  # no reports
    assert f[BaseFeature.HOST_STABILIZED] == 0.0
    assert f[BaseFeature.LAST_ACTION_SUCCESS] == 1.0
    np.testing.assert_array_equal(f[18:24], [0, 0, 1, 0, 0, 0])


def test_upstream_short_history_padding_reads_zero():
    obs = env(loss_history=[0.0, 0.0, 0.0, 2.0, 1.0], accuracy_history=[0.0, 0.0, 0.0, 40.0, 50.0])
    f = feats(obs)
    np.testing.assert_allclose(f[3:8], [0, 0, 0, math.log(3) / LN16, math.log(2) / LN16], atol=1e-6)
    np.testing.assert_allclose(f[8:13], [0, 0, 0, 0.4, 0.5], atol=1e-6)


def test_upstream_slot_features_of_a_training_report():
    s = slot_block(feats(training_report(env())), 0)
    assert s[SlotFeature.IS_ACTIVE] == 1.0
    one_hot = s[SlotFeature.STAGE_ONE_HOT : SlotFeature.STAGE_ONE_HOT + NUM_STAGES]
    assert one_hot[3] == 1.0 and one_hot.sum() == 1.0
    assert s[SlotFeature.CURRENT_ALPHA] == pytest.approx(0.5, abs=1e-6)
    assert s[SlotFeature.CONTRIBUTION] == pytest.approx(0.25, abs=1e-6)
    assert s[SlotFeature.CONTRIBUTION_VELOCITY] == pytest.approx(0.05, abs=1e-6)
    assert s[SlotFeature.BLEND_TEMPO] == pytest.approx(8 / 12, abs=1e-6)
    assert s[SlotFeature.GRADIENT_HEALTH_PREV] == pytest.approx(0.85, abs=1e-6)
    assert s[SlotFeature.COUNTERFACTUAL_FRESH] == pytest.approx(0.995**5, abs=1e-6)


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_upstream_all_features_finite_and_bounded_for_a_diverse_batch(compat):
    f = feats(random_observation(7, 3, (64,)), compat)
    assert np.isfinite(f).all()
    assert (np.abs(f) < 10).all()


def test_upstream_action_feedback():
    failed_fossilize = env(last_action_success=False, last_action_op=4)
    germinated = env(last_action_success=True, last_action_op=1)
    f = feats(stack([failed_fossilize, germinated]))
    np.testing.assert_array_equal(f[:, 17], [0.0, 1.0])
    np.testing.assert_array_equal(f[:, 18:24], [[0, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, 0]])


def test_upstream_gradient_health_prev_passthrough_and_default():
    tracked = with_report(env(), 0, SeedStage.TRAINING, gradient_health_prev=0.75)
    untracked = with_report(env(), 0, SeedStage.TRAINING)  # 1.0 is the observation's "never set" value
    f = feats(stack([tracked, untracked]))
    assert f[0, 51] == pytest.approx(0.75, abs=1e-7)
    assert f[1, 51] == 1.0


@pytest.mark.parametrize("n", [0, 5, 10, 50, 138])
def test_upstream_counterfactual_freshness(n):
    f = feats(with_report(env(), 0, SeedStage.TRAINING, epochs_since_counterfactual=n))
    assert f[53] == pytest.approx(0.995**n, abs=1e-6)


def test_upstream_five_slots():
    obs = env(5)
    for slot, bp in ((0, 1), (2, 2), (4, 3)):
        obs = with_report(obs, slot, SeedStage.TRAINING, bp)
    out = extract(stack([obs]), compat="upstream")
    assert out.features.shape == (1, 174)
    np.testing.assert_array_equal(out.blueprint_indices, [[1, -1, 2, -1, 3]])


def test_upstream_stage_distribution():
    obs = env()
    for slot, stage in enumerate((SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING)):
        obs = with_report(obs, slot, stage)
    np.testing.assert_allclose(feats(obs)[13:16], [1 / 3, 1 / 3, 1 / 3], atol=1e-7)


def test_upstream_batch_of_four_envs():
    envs = [env(epoch=10 * (i + 1)) for i in range(4)]
    envs[0] = with_report(envs[0], 0, SeedStage.TRAINING, 4)
    envs[2] = with_report(with_report(envs[2], 1, SeedStage.BLENDING, 5), 2, SeedStage.HOLDING, 6)
    out = extract(stack(envs), compat="upstream")
    f = np.asarray(out.features)
    assert f.shape == (4, 114)
    assert (np.diff(f[:, 0]) > 0).all()
    np.testing.assert_array_equal(out.blueprint_indices, [[4, -1, -1], [-1, -1, -1], [-1, 5, 6], [-1, -1, -1]])


def test_upstream_missing_slots_are_exact_zeros():
    f = feats(training_report(env()))
    assert (f[54:84] == 0.0).all() and (f[84:114] == 0.0).all()
    assert (f[24:54] != 0.0).any()


def test_upstream_ppo_empty_reports_width():
    assert feats(stack([env(), env()])).shape == (2, 114)


def test_upstream_ppo_telemetry_slot_alignment():
    obs = with_report(
        env(),
        1,
        SeedStage.TRAINING,
        has_telemetry=True,
        gradient_norm=2.5,
        gradient_health=0.8,
        has_vanishing=True,
        has_exploding=False,
    )
    f = feats(obs)
    s = f[54:84]
    assert s[23] > 0 and 0.0 <= s[24] <= 1.0 and s[25] == 1.0 and s[26] == 0.0
    np.testing.assert_allclose(s[23:27], [0.25, 0.8, 1.0, 0.0], atol=1e-7)
    assert (f[24:54] == 0.0).all() and (f[84:114] == 0.0).all()
