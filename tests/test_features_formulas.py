"""Feature extraction (docs/policy-and-ppo.md#features): every formula and clamp beyond upstream's own tests, in both
compat modes."""

from __future__ import annotations

import numpy as np
import pytest

from esper_jax.contracts import (
    STAGE_TO_INDEX,
    AlphaMode,
    BaseFeature,
    SeedStage,
    SlotFeature,
    feature_size,
    slot_feature_offset,
)
from esper_jax.features import extract
from esper_jax.testing import random_observation
from tests.feature_builders import (
    CHECKED_HOLDING_VECTOR,
    env,
    feats,
    holding_example,
    slot_block,
    with_report,
    with_slot_values,
)

# ---------------------------------------------------------------------------------------------------------------
# Feature formulas (docs/policy-and-ppo.md#features) beyond upstream's tests
# ---------------------------------------------------------------------------------------------------------------

def test_checked_holding_example():
    np.testing.assert_allclose(slot_block(feats(holding_example(env())), 0), CHECKED_HOLDING_VECTOR, atol=1e-6)


def test_checked_holding_example_in_fixed_mode_differs_only_in_interaction():
    expected = list(CHECKED_HOLDING_VECTOR)
    expected[SlotFeature.INTERACTION_SUM] = -1.0
    np.testing.assert_allclose(slot_block(feats(holding_example(env()), "fixed"), 0), expected, atol=1e-6)


@pytest.mark.parametrize("num_slots", [1, 2, 3, 5, 9, 25])
def test_feature_width_scales_with_slots(num_slots):
    out = extract(random_observation(num_slots, num_slots, (2,)))
    assert out.features.shape == (2, 24 + 30 * num_slots) == (2, feature_size(num_slots))
    assert out.blueprint_indices.shape == (2, num_slots)


def test_blueprint_index_is_minus_one_for_empty_slots_and_unknown_blueprints():
    obs = with_report(with_report(env(), 0, SeedStage.TRAINING, 0), 1, SeedStage.DORMANT, -1)
    obs = with_slot_values(obs, 2, blueprint_index=7)  # stale value in an empty slot
    np.testing.assert_array_equal(extract(obs).blueprint_indices, [0, -1, -1])


def test_epoch_is_not_clamped():
    assert feats(env(epoch=200))[0] == pytest.approx(200 / 150, abs=1e-6)


@pytest.mark.parametrize("compat, divisor", [("upstream", 3.0), ("fixed", 5.0)])
def test_stage_counts_divisor(compat, divisor):
    obs = env(5)
    for slot in range(5):
        obs = with_report(obs, slot, SeedStage.TRAINING)
    f = feats(obs, compat)
    assert f[BaseFeature.NUM_TRAINING] == pytest.approx(5 / divisor, abs=1e-6)
    assert f[BaseFeature.NUM_TRAINING] == pytest.approx(5 / 3 if compat == "upstream" else 1.0, abs=1e-6)


def test_fossilized_counts_as_holding_and_other_stages_count_nowhere():
    obs = env(5)
    stages = (SeedStage.FOSSILIZED, SeedStage.HOLDING, SeedStage.DORMANT, SeedStage.PRUNED, 5)
    for slot, stage in enumerate(stages):
        obs = with_report(obs, slot, stage)
    np.testing.assert_allclose(feats(obs)[13:16], [0, 0, 2 / 3], atol=1e-7)


def test_stage_counts_ignore_stale_stages_of_empty_slots():
    obs = with_slot_values(env(), 0, stage=int(SeedStage.TRAINING))
    np.testing.assert_array_equal(feats(obs)[13:16], 0.0)


@pytest.mark.parametrize("stage", list(SeedStage))
def test_stage_one_hot_position(stage):
    s = slot_block(feats(with_report(env(), 0, stage)), 0)
    one_hot = s[1:11]
    assert one_hot.sum() == 1.0 and one_hot[STAGE_TO_INDEX[stage]] == 1.0
    assert s[SlotFeature.IS_ACTIVE] == 1.0  # DORMANT, PRUNED, ... are active too


@pytest.mark.parametrize("stage", [5, 11, 99, -1])
def test_invalid_stage_gives_zero_one_hot(stage):
    s = slot_block(feats(with_report(env(), 0, stage)), 0)
    assert s[SlotFeature.IS_ACTIVE] == 1.0
    np.testing.assert_array_equal(s[1:11], 0.0)


@pytest.mark.parametrize(
    "has_cf, cf, improvement, expected",
    [(True, 2.5, 7.0, 0.25), (False, 2.5, 7.0, 0.7), (True, -50.0, 0.0, -1.0), (False, 0.0, 40.0, 1.0)],
)
def test_contribution_uses_counterfactual_else_improvement(has_cf, cf, improvement, expected):
    obs = with_report(
        env(),
        0,
        SeedStage.BLENDING,
        has_counterfactual=has_cf,
        counterfactual_contribution=cf,
        improvement_since_stage_start=improvement,
    )
    assert slot_block(feats(obs), 0)[SlotFeature.CONTRIBUTION] == pytest.approx(expected, abs=1e-6)


def test_alpha_block_scalings():
    obs = with_report(
        env(),
        0,
        SeedStage.BLENDING,
        blend_tempo_epochs=3,
        alpha_mode=AlphaMode.DOWN,
        alpha_steps_total=-5,  # cap25 has no lower clamp
        alpha_steps_done=25,
        time_to_target=100,
        alpha_velocity=-0.25,
        alpha_algorithm=0,  # not an AlphaAlgorithm: (0 - 1) / 2
        interaction_sum=30.0,
        epochs_in_stage=50,
    )
    s = slot_block(feats(obs), 0)
    assert s[SlotFeature.BLEND_TEMPO] == pytest.approx(0.25, abs=1e-7)
    assert s[SlotFeature.ALPHA_MODE] == 1.0
    assert s[SlotFeature.ALPHA_STEPS_TOTAL] == pytest.approx(-0.2, abs=1e-7)
    assert s[SlotFeature.ALPHA_STEPS_DONE] == 1.0 and s[SlotFeature.TIME_TO_TARGET] == 1.0
    assert s[SlotFeature.ALPHA_VELOCITY] == -0.25
    assert s[SlotFeature.ALPHA_ALGORITHM] == -0.5
    assert s[SlotFeature.INTERACTION_SUM] == 1.0
    assert s[SlotFeature.EPOCHS_IN_STAGE] == 1.0


@pytest.mark.parametrize("compat, expected", [("upstream", -3.0), ("fixed", -1.0)])
def test_interaction_sum_lower_clamp_only_in_fixed(compat, expected):
    obs = with_report(env(), 0, SeedStage.BLENDING, interaction_sum=-30.0)
    assert slot_block(feats(obs, compat), 0)[SlotFeature.INTERACTION_SUM] == pytest.approx(expected, abs=1e-6)


def test_fixed_and_upstream_differ_exactly_at_the_two_quirks():
    obs = env(5)
    for slot in range(5):
        obs = with_report(obs, slot, SeedStage.TRAINING, interaction_sum=-30.0 if slot == 2 else 0.5)
    up, fixed = feats(obs, "upstream"), feats(obs, "fixed")
    differing = set(np.flatnonzero(up != fixed).tolist())
    assert differing == {BaseFeature.NUM_TRAINING, slot_feature_offset(2) + SlotFeature.INTERACTION_SUM}
    assert (up[13], fixed[13]) == (pytest.approx(5 / 3), pytest.approx(1.0))
    assert (up[slot_feature_offset(2) + 22], fixed[slot_feature_offset(2) + 22]) == (-3.0, -1.0)


@pytest.mark.parametrize(
    "norm, health, expected_norm, expected_health",
    [
        (float("nan"), float("nan"), 0.0, 1.0),
        (float("inf"), float("-inf"), 0.0, 1.0),
        (-25.0, -3.0, -1.0, -1.0),
        (25.0, 0.4, 1.0, 0.4),
        (3.0, 1.5, 0.3, 1.0),
    ],
)
def test_telemetry_safe(norm, health, expected_norm, expected_health):
    obs = with_report(env(), 0, SeedStage.TRAINING, has_telemetry=True, gradient_norm=norm, gradient_health=health)
    s = slot_block(feats(obs), 0)
    assert s[SlotFeature.GRADIENT_NORM] == pytest.approx(expected_norm, abs=1e-7)
    assert s[SlotFeature.GRADIENT_HEALTH] == pytest.approx(expected_health, abs=1e-7)


def test_absent_telemetry_defaults_ignore_stale_values():
    obs = with_report(
        env(),
        0,
        SeedStage.TRAINING,
        has_telemetry=False,
        gradient_norm=5.0,
        gradient_health=0.2,
        has_vanishing=True,
        has_exploding=True,
    )
    np.testing.assert_array_equal(slot_block(feats(obs), 0)[23:27], [0.0, 1.0, 0.0, 0.0])


def test_gradient_health_prev_is_raw():
    obs = with_report(env(), 0, SeedStage.TRAINING, gradient_health_prev=-2.5)
    assert slot_block(feats(obs), 0)[SlotFeature.GRADIENT_HEALTH_PREV] == -2.5


def test_empty_slot_is_all_zero_even_with_nan_fields():
    obs = with_slot_values(
        env(), 0, gradient_norm=float("nan"), interaction_sum=float("inf"), current_alpha=float("nan"), stage=3
    )
    f = feats(obs)
    assert (slot_block(f, 0) == 0.0).all() and np.isfinite(f).all()


def test_nan_in_two_sided_clips_reads_as_lower_bound():
    # Upstream's max(-1, min(nan, 1)) is -1; min(nan, 1) alone stays nan.
    obs = with_report(
        env(), 0, SeedStage.TRAINING, alpha_velocity=float("nan"), contribution_velocity=float("nan"),
        interaction_sum=float("nan"),
    )  # fmt: skip
    s = slot_block(feats(obs), 0)
    assert s[SlotFeature.ALPHA_VELOCITY] == -1.0 and s[SlotFeature.CONTRIBUTION_VELOCITY] == -1.0
    assert np.isnan(s[SlotFeature.INTERACTION_SUM])
    assert slot_block(feats(obs, "fixed"), 0)[SlotFeature.INTERACTION_SUM] == -1.0
