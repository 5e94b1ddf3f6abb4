"""The six lifecycle/reward behaviours of docs/compat.md#upstream-exact, each against a hand-computed expectation.

Every test here failed on the code before issue 14 (abd104d) except the three contrast cases that pin what was
already right: ADVANCE-fossilisation keeps the germination accuracy, the holding warning at ti = −5 (no underflow
yet), and fixed mode's frozen view."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax.contracts import (
    AlphaCurve,
    AlphaCurveAction,
    AlphaMode,
    AlphaSpeedAction,
    AlphaTargetAction,
    BlueprintAction,
    GerminationStyle,
    LifecycleOp,
    PerHead,
    SeedStage,
    TempoAction,
)
from esper_jax.env import EnvConfig, RewardConfig, lifecycle, make
from esper_jax.env import alpha as alpha_mod
from esper_jax.env import reward as R
from esper_jax.env.core import slot_view

W, G, SET, P, F, A = (int(o) for o in LifecycleOp)
S = SeedStage

# One compiled step per mode for the whole file; a seed limit of 2 so the total_seeds rule is exercised.
CONFIGS = {
    "upstream": EnvConfig(episode_length=40, compat="upstream", max_seeds=2),
    "fixed": EnvConfig(episode_length=40, compat="fixed", max_seeds=2),
}


@functools.cache
def _env(compat: str):
    env = make("sim", CONFIGS[compat])
    return jax.jit(env.reset), jax.jit(env.step)


def act(op, slot=0, speed=AlphaSpeedAction.INSTANT, target=AlphaTargetAction.FULL, curve=AlphaCurveAction.LINEAR):
    return PerHead(slot=int(slot), blueprint=int(BlueprintAction.CONV_LIGHT), style=int(GerminationStyle.LINEAR_ADD),
                   tempo=int(TempoAction.FAST), alpha_target=int(target), alpha_speed=int(speed),
                   alpha_curve=int(curve), op=int(op))


def run(actions, compat="upstream", seed=0):
    reset, step = _env(compat)
    state, _ = reset(jax.random.PRNGKey(seed))
    outs = []
    key = jax.random.PRNGKey(seed + 1)
    for a in actions:
        key, k = jax.random.split(key)
        out = step(state, a, k)
        outs.append(out)
        state = out.state
    return outs


def slot0(outs, field):
    return [np.asarray(getattr(o.obs.slots, field))[0].item() for o in outs]


# G → TRAINING → BLENDING (tempo 3) → alpha 1 → HOLDING at the 6th step (docs/environment.md#timing).
HOLDING_PREFIX = [act(G), act(A), act(A), act(W), act(W), act(A)]


def _slots_in(stage, k=1, n=1, **fields):
    slots = lifecycle.empty_slots(n)
    return slots.replace(stage=jnp.full((n,), int(stage), jnp.int32), epochs_in_stage=jnp.full((n,), k, jnp.int32),
                         **{name: v if not np.isscalar(v) else jnp.full((n,), v) for name, v in fields.items()})


# ---------------------------------------------------------------------------------------------------------------
# 1. Seed age keeps counting through EMBARGOED and RESETTING
# ---------------------------------------------------------------------------------------------------------------

def test_cooldown_ticks_advance_the_seed_age():
    cfg = CONFIGS["upstream"]
    stages = [S.PRUNED, S.EMBARGOED, S.EMBARGOED, S.RESETTING]
    slots = lifecycle.empty_slots(4).replace(
        stage=jnp.asarray([int(s) for s in stages], jnp.int32),
        epochs_in_stage=jnp.asarray([0, 1, 4, 0], jnp.int32),
        epochs_total=jnp.asarray([7, 7, 7, 7], jnp.int32),
    )
    ticked = lifecycle.step_epoch(slots, cfg)
    # PRUNED → EMBARGOED does not count; EMBARGOED k1 → k2; EMBARGOED k4 → RESETTING; RESETTING → empty (reset to 0).
    assert np.asarray(ticked.stage).tolist() == [S.EMBARGOED, S.EMBARGOED, S.RESETTING, S.DORMANT]
    assert np.asarray(ticked.epochs_total).tolist() == [7, 8, 8, 0]


def test_seed_age_in_the_observation_through_an_instant_prune():
    outs = run([act(G), act(W), act(P)] + [act(W)] * 6)
    assert slot0(outs, "stage") == [S.GERMINATED, S.GERMINATED] + [S.EMBARGOED] * 5 + [S.RESETTING, S.DORMANT]
    # Ages 1, 2 while alive; the prune's own tick (PRUNED → EMBARGOED) does not count; +1 per cooldown tick after.
    assert slot0(outs, "seed_age") == [1, 2, 2, 3, 4, 5, 6, 7, 0]


# ---------------------------------------------------------------------------------------------------------------
# 2. total_seeds = seeds holding a module (fossils included); seed ids follow the germination count
# ---------------------------------------------------------------------------------------------------------------

def test_live_seed_count_counts_modules_and_fossils():
    stages = [S.FOSSILIZED, S.HOLDING, S.EMBARGOED, S.DORMANT, S.PRUNED, S.GERMINATED]
    slots = lifecycle.empty_slots(6).replace(stage=jnp.asarray([int(s) for s in stages], jnp.int32))
    assert int(lifecycle.live_seed_count(slots)) == 3


def test_a_prune_frees_the_seed_limit():
    outs = run([act(G, slot=0), act(G, slot=1), act(G, slot=2), act(P, slot=0), act(G, slot=2)])
    assert [bool(o.info.action_success) for o in outs] == [True, True, False, True, True]
    assert [int(o.obs.signals.total_seeds) for o in outs] == [1, 2, 2, 1, 2]
    final = outs[-1].state
    # The third seed is the episode's third germination: id 2, although only two seeds are alive.
    assert np.asarray(final.slots.seed_id).tolist() == [0, 1, 2]
    assert int(final.feedback.seeds_created) == 3


# ---------------------------------------------------------------------------------------------------------------
# 3. acc_at_germination: popped by a successful PRUNE or FOSSILIZE op, and once no module is left
# ---------------------------------------------------------------------------------------------------------------

def _has_acc(out):
    return bool(np.asarray(out.state.feedback.has_acc_at_germination)[0])


def test_instant_prune_and_fossilize_pop_the_germination_accuracy():
    pruned = run([act(G), act(W), act(P)])
    assert [_has_acc(o) for o in pruned] == [True, True, False]
    fossil = run(HOLDING_PREFIX + [act(F)])
    assert slot0(fossil, "stage")[-1] == S.FOSSILIZED
    assert [_has_acc(o) for o in fossil] == [True] * 6 + [False]


def test_advance_fossilisation_keeps_the_germination_accuracy():
    # Contrast case (already right before): upstream's ADVANCE from HOLDING fossilises without the FOSSILIZE op's pop.
    outs = run(HOLDING_PREFIX + [act(A)])
    assert slot0(outs, "stage")[-1] == S.FOSSILIZED
    assert _has_acc(outs[-1])


def test_scheduled_prune_pays_the_no_baseline_branch_during_its_ramp():
    outs = run(HOLDING_PREFIX + [act(P, speed=AlphaSpeedAction.FAST), act(W)])
    ramp = outs[6]
    assert slot0(outs, "stage")[6] == S.BLENDING and int(np.asarray(ramp.obs.slots.alpha_mode)[0]) == AlphaMode.DOWN
    assert not _has_acc(ramp)
    # The WAIT scored on slot 0 during the ramp: hand-computed from the pre-step state with upstream's formula.
    slots, tracker = ramp.state.slots, ramp.state.tracker
    c = float(slots.contribution[0])
    ti = float(slots.current_acc[0] - slots.initial_acc[0])
    assert bool(slots.contribution_fresh[0]) and c > 0.0 and ti >= 0.0
    ratio_pen = 0.0
    if c > 1.0:
        ratio_pen = -min(0.3, 0.1 * (c / ti - 5.0) / 5.0) if ti > 0.1 and c / ti > 5.0 else (
            -0.3 * min(1.0, c / 10.0) if ti <= 0.1 else 0.0)
    expected = 0.5 * c + ratio_pen
    assert float(outs[7].info.reward_components.attribution) == pytest.approx(expected, abs=1e-5)
    # With the stale baseline the progress branch would have paid something else.
    progress = float(tracker.val_accuracy) - float(ramp.state.feedback.acc_at_germination[0])
    stale = (0.0 if progress <= 0 else (math.sqrt(progress * c) if c >= progress else c)) + ratio_pen
    assert abs(stale - expected) > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# 4. Holding warning: the sign of the bounded attribution as float64 sees it
# ---------------------------------------------------------------------------------------------------------------

def f(x, dtype=jnp.float32):
    return jnp.asarray(x, dtype)


def _holding_seed(ti, c=2.0, k=3):
    return R.SeedInputs(
        present=f(True, jnp.bool_), stage=f(int(S.HOLDING), jnp.int32), epochs_in_stage=f(k, jnp.int32),
        previous_stage=f(int(S.BLENDING), jnp.int32), previous_epochs_in_stage=f(3, jnp.int32),
        total_improvement=f(ti), contribution=f(c), contribution_known=f(True, jnp.bool_), interaction_sum=f(0.0),
        acc_at_germination=f(40.0), has_acc_at_germination=f(True, jnp.bool_),
    )


@pytest.mark.parametrize("ti", [-5.0, -35.0, -300.0])
def test_holding_warning_survives_float32_underflow(ti):
    # Upstream (float64): d = 1/(1 + e^(−3·ti)) > 0 for every finite ti (exponent clamped at 700), so a HOLDING seed
    # with c = 2 > 0 and progress 10 has bounded attribution 2·d > 0 and WAIT at k = 3 pays −min(0.1 + 0.05, 0.3).
    d64 = 1.0 / (1.0 + math.exp(min(-3.0 * ti, 700.0)))
    assert 2.0 * d64 > 0.0
    t = R.seed_terms(jnp.asarray(W), _holding_seed(ti), jnp.float32(50.0), jnp.float32(0.0), RewardConfig(), False)
    assert float(t.holding_warning) == pytest.approx(-0.15)
    # ... while FOSSILIZE/PRUNE never pay it, and a non-positive attribution does not either.
    zero_c = R.seed_terms(jnp.asarray(W), _holding_seed(ti, c=0.0), jnp.float32(50.0), jnp.float32(0.0),
                          RewardConfig(), False)
    assert float(zero_c.holding_warning) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# 5. Reward config fields act as upstream's
# ---------------------------------------------------------------------------------------------------------------

def _terms(cfg, op=W, val_acc=50.0, acc_delta=0.0, stage=S.BLENDING, ti=0.0, c=0.0, known=False, has_germ=False):
    seed = R.SeedInputs(
        present=f(True, jnp.bool_), stage=f(int(stage), jnp.int32), epochs_in_stage=f(1, jnp.int32),
        previous_stage=f(int(S.TRAINING), jnp.int32), previous_epochs_in_stage=f(1, jnp.int32),
        total_improvement=f(ti), contribution=f(c), contribution_known=f(known, jnp.bool_), interaction_sum=f(0.0),
        acc_at_germination=f(0.0), has_acc_at_germination=f(has_germ, jnp.bool_),
    )
    return seed, R.seed_terms(jnp.asarray(op), seed, f(val_acc), f(acc_delta), cfg, False)


def test_contribution_weight_scales_the_proxy_and_not_the_ratio_penalty():
    cfg = RewardConfig(contribution_weight=2.0)
    _, proxy = _terms(cfg, acc_delta=1.5)
    assert float(proxy.attribution) == pytest.approx(2.0 * 0.3 * 1.5)
    # c = 3 known, ti = 0.05 ≤ 0.1, no baseline: bounded 1.5, ratio penalty −0.3·min(1, 0.3) = −0.09 (unweighted).
    _, known = _terms(cfg, c=3.0, ti=0.05, known=True)
    assert float(known.attribution) == pytest.approx(2.0 * 1.5 - 0.09, abs=1e-5)


def test_prune_good_seed_penalty_drives_the_prune_shaping_and_the_ratio_penalty_caps():
    cfg = RewardConfig(prune_good_seed_penalty=-0.5)
    seed, _ = _terms(cfg, c=20.0, ti=2.0, known=True)
    # max(−0.5 − 0.05·20, 3·(−0.5)) = −1.5, plus the prune cost −0.005.
    assert float(R.action_shaping(jnp.asarray(P), seed, cfg)) == pytest.approx(-1.505)
    # Ratio c/ti = 50 > 5 in the safe zone: −min(0.5, 0.1·45/5 = 0.9) = −0.5.
    assert float(R.ratio_penalty(jnp.float32(10.0), jnp.float32(0.2), jnp.float32(1.0), cfg)) == pytest.approx(-0.5)
    # ti ≤ 0.1: −0.5·min(1, 20/10) = −0.5.
    assert float(R.ratio_penalty(jnp.float32(20.0), jnp.float32(0.05), jnp.float32(1.0), cfg)) == pytest.approx(-0.5)


def test_min_fossilize_contribution_is_the_fossilize_bonus_threshold():
    cfg = RewardConfig(min_fossilize_contribution=2.0)
    seed, _ = _terms(cfg, stage=S.HOLDING, c=1.5, ti=1.0, known=True)
    # c = 1.5 < 2: the non-contributing penalty −0.2, plus the fossilize cost −0.01.
    assert float(R.action_shaping(jnp.asarray(F), seed, cfg)) == pytest.approx(-0.21)
    seed_default, _ = _terms(RewardConfig(), stage=S.HOLDING, c=1.5, ti=1.0, known=True)
    assert float(R.action_shaping(jnp.asarray(F), seed_default, RewardConfig())) == pytest.approx(
        -0.01 + (0.5 + 0.15) * 1 / 5)


@pytest.mark.parametrize("weight", [0.0, float("nan"), float("inf")])
def test_contribution_weight_must_be_finite_and_non_zero(weight):
    with pytest.raises(ValueError, match="contribution_weight"):
        RewardConfig(contribution_weight=weight)


# ---------------------------------------------------------------------------------------------------------------
# 6. Controller dead state and the blend-out freeze
# ---------------------------------------------------------------------------------------------------------------

def test_entering_holding_snaps_alpha_start_to_one():
    outs = run(HOLDING_PREFIX)
    ctrl = outs[-1].state.slots.controller
    assert slot0(outs, "stage")[-1] == S.HOLDING
    assert float(ctrl.start[0]) == 1.0 and float(ctrl.alpha[0]) == 1.0 and float(ctrl.target[0]) == 1.0
    assert int(ctrl.steps_done[0]) == int(ctrl.steps_total[0]) == 3


def test_instant_prune_keeps_curve_and_steepness():
    ctrl = alpha_mod.fresh((1,)).replace(
        alpha=jnp.asarray([0.6]), start=jnp.asarray([0.2]), target=jnp.asarray([1.0]),
        mode=jnp.asarray([int(AlphaMode.UP)], jnp.int32), curve=jnp.asarray([int(AlphaCurve.SIGMOID)], jnp.int32),
        steepness=jnp.asarray([24.0]), steps_total=jnp.asarray([5], jnp.int32), steps_done=jnp.asarray([2], jnp.int32),
    )
    slots = _slots_in(S.BLENDING, k=3, controller=ctrl)
    pruned = lifecycle.prune_now(slots, jnp.asarray([True])).controller
    assert int(pruned.curve[0]) == AlphaCurve.SIGMOID and float(pruned.steepness[0]) == 24.0
    assert (float(pruned.alpha[0]), float(pruned.start[0]), float(pruned.target[0])) == (0.0, 0.0, 0.0)
    assert (int(pruned.mode[0]), int(pruned.steps_total[0]), int(pruned.steps_done[0])) == (AlphaMode.HOLD, 0, 0)


def test_blend_out_frozen_reads_the_mode_before_the_tick():
    before = _slots_in(S.BLENDING, controller=alpha_mod.fresh((1,)).replace(mode=jnp.asarray([2], jnp.int32)))
    after = before.replace(controller=before.controller.replace(mode=jnp.asarray([0], jnp.int32)))
    assert int(AlphaMode.DOWN) == 2 and int(AlphaMode.HOLD) == 0
    assert bool(lifecycle.blend_out_frozen(before, after, CONFIGS["upstream"])[0])
    assert not bool(lifecycle.blend_out_frozen(before, after, CONFIGS["fixed"])[0])


@pytest.mark.parametrize("compat, expected", [("upstream", [True, True, True, False]),
                                              ("fixed", [True, True, False, False])])
def test_frozen_view_after_a_set_alpha_target_ramp_down(compat, expected):
    # HOLDING at alpha 1, then SET_ALPHA_TARGET 0.5 over 3 ticks: alpha 5/6, 2/3, 1/2 (HOLD) after steps 7, 8, 9.
    outs = run(HOLDING_PREFIX + [act(SET, speed=AlphaSpeedAction.FAST, target=AlphaTargetAction.HALF)]
               + [act(W)] * 3, compat=compat)
    ramp = outs[6:]
    np.testing.assert_allclose(slot0(ramp, "current_alpha"), [5 / 6, 2 / 3, 0.5, 0.5], atol=1e-6)
    assert slot0(ramp, "alpha_mode") == [AlphaMode.DOWN, AlphaMode.DOWN, AlphaMode.HOLD, AlphaMode.HOLD]
    # The view the host env trains the next epoch with (the same slot_view serves the host and the simulator).
    assert [bool(slot_view(o.state.slots).frozen[0]) for o in ramp] == expected
