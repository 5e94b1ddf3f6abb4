"""Feature extraction (policy.md §1): upstream's feature tests as exact vectors, plus vectorisation and validation.

Upstream's tests live in tests/tamiyo/policy/test_features.py and tests/simic/test_ppo.py at esper-lite 0872525b
(policy.md §7); each ``test_upstream_*`` below reproduces one of them against ``extract``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax.contracts import (
    NUM_STAGES,
    STAGE_TO_INDEX,
    AlphaAlgorithm,
    AlphaMode,
    BaseFeature,
    SeedStage,
    SlotFeature,
    feature_size,
    slot_feature_offset,
)
from esper_jax.features import Features, extract, extract_single, validate_observation
from esper_jax.observation import Observation, empty_observation, signal_dtypes, slot_dtypes
from esper_jax.testing import random_observation

LN16 = math.log(16.0)


# ---------------------------------------------------------------------------------------------------------------
# Builders: one env at a time, stacked for batches
# ---------------------------------------------------------------------------------------------------------------


def env(num_slots: int = 3, **signals) -> Observation:
    """An unbatched episode-start observation with the given Signals fields replaced."""
    obs = empty_observation(num_slots)
    dtypes = signal_dtypes()
    return obs.replace(
        signals=obs.signals.replace(**{k: jnp.asarray(v, dtypes[k]) for k, v in signals.items()})
    )


def with_report(obs: Observation, slot: int, stage: SeedStage | int, blueprint_index: int = 1, **fields) -> Observation:
    """Give slot ``slot`` of an unbatched observation a report; unspecified fields keep their episode-start values."""
    dtypes = slot_dtypes()
    values = dict(has_report=True, stage=int(stage), blueprint_index=blueprint_index, **fields)
    updates = {k: getattr(obs.slots, k).at[slot].set(jnp.asarray(v, dtypes[k])) for k, v in values.items()}
    return obs.replace(slots=obs.slots.replace(**updates))


def with_slot_values(obs: Observation, slot: int, **fields) -> Observation:
    """Set slot fields without creating a report (e.g. garbage in an empty slot)."""
    dtypes = slot_dtypes()
    updates = {k: getattr(obs.slots, k).at[slot].set(jnp.asarray(v, dtypes[k])) for k, v in fields.items()}
    return obs.replace(slots=obs.slots.replace(**updates))


def stack(envs: list[Observation]) -> Observation:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *envs)


def feats(obs: Observation, compat: str = "upstream") -> np.ndarray:
    return np.asarray(extract(obs, compat=compat).features)


def slot_block(features: np.ndarray, slot: int) -> np.ndarray:
    start = slot_feature_offset(slot)
    return features[..., start : start + 30]


def training_report(obs: Observation, slot: int = 0, **overrides) -> Observation:
    """The TRAINING report of upstream's slot-feature test."""
    fields = dict(
        current_alpha=0.5,
        has_counterfactual=True,
        counterfactual_contribution=2.5,
        contribution_velocity=0.5,
        blend_tempo_epochs=8,
        gradient_health_prev=0.85,
        epochs_since_counterfactual=5,
    )
    fields.update(overrides)
    return with_report(obs, slot, SeedStage.TRAINING, **fields)


# ---------------------------------------------------------------------------------------------------------------
# Upstream tests (policy.md §7)
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


# ---------------------------------------------------------------------------------------------------------------
# Formulas of §1.2-§1.4 beyond upstream's tests
# ---------------------------------------------------------------------------------------------------------------

CHECKED_HOLDING_VECTOR = [
    1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0.7, -1, 0.05, 8 / 12, 1.0, 0.5, 1.0, 0.16, 0.24,
    1.0, 1.0, -3.0, 1.0, 1.0, 0, 1, 1.7, 0.12, 0.995**3,
]  # fmt: skip


def holding_example(obs: Observation, slot: int = 0) -> Observation:
    """The checked HOLDING report of policy.md §1.4."""
    return with_report(
        obs,
        slot,
        SeedStage.HOLDING,
        has_telemetry=True,
        gradient_norm=25.0,
        gradient_health=float("nan"),
        has_vanishing=False,
        has_exploding=True,
        current_alpha=0.7,
        has_counterfactual=True,
        counterfactual_contribution=-25.0,
        contribution_velocity=0.5,
        blend_tempo_epochs=8,
        alpha_target=1.0,
        alpha_mode=AlphaMode.UP,
        alpha_steps_total=40,
        alpha_steps_done=4,
        time_to_target=6,
        alpha_velocity=3.0,
        alpha_algorithm=AlphaAlgorithm.GATE,
        interaction_sum=-30.0,
        gradient_health_prev=1.7,
        epochs_in_stage=3,
        epochs_since_counterfactual=3,
    )


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
