"""Lifecycle, alpha controller and gates of the JAX Esper env against docs/environment.md#timing, #alpha-controller,
#gates, #ops."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax.contracts import (
    AlphaCurve,
    AlphaMode,
    AlphaSpeedAction,
    AlphaTargetAction,
    BlueprintAction,
    GerminationStyle,
    LifecycleOp,
    PerHead,
    SeedStage,
    SlotConfig,
    TempoAction,
)
from esper_jax.env import EnvConfig, lifecycle, make
from esper_jax.env import alpha as alpha_mod

W, G, SET, P, F, A = (int(o) for o in LifecycleOp)
S = SeedStage


# Two compiled configs serve the whole file (compiling a step costs seconds on a loaded 2-core box): upstream
# defaults, and fixed mode with a seed limit and a raised prune age so those rules are exercised too.
CONFIGS = {
    "upstream": EnvConfig(episode_length=40, compat="upstream"),
    "fixed": EnvConfig(episode_length=40, compat="fixed", max_seeds=2, min_prune_age=2),
}


@functools.cache
def _env(compat: str = "upstream"):
    env = make("sim", CONFIGS[compat])
    return env, jax.jit(env.reset), jax.jit(env.step)


def act(op, slot=0, blueprint=BlueprintAction.CONV_LIGHT, style=GerminationStyle.LINEAR_ADD, tempo=TempoAction.FAST,
        target=AlphaTargetAction.FULL, speed=AlphaSpeedAction.INSTANT, curve=0):
    return PerHead(slot=int(slot), blueprint=int(blueprint), style=int(style), tempo=int(tempo),
                   alpha_target=int(target), alpha_speed=int(speed), alpha_curve=int(curve), op=int(op))


def run(actions, compat="upstream", seed=0):
    """Drive one env; returns the per-step outputs (obs after each action)."""
    _, reset, step = _env(compat)
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


# ---------------------------------------------------------------------------------------------------------------
# Stage timelines (docs/environment.md#timing)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "tempo, alphas",
    [
        (TempoAction.FAST, [1 / 3, 2 / 3, 1.0]),
        (TempoAction.STANDARD, [0.2, 0.4, 0.6, 0.8, 1.0]),
        (TempoAction.SLOW, [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]),
    ],
)
def test_fastest_germinate_to_fossilize(tempo, alphas):
    n = len(alphas)
    # GERMINATE at t=0, ADVANCE at 1 (TRAINING), 2 (BLENDING), WAIT while ramping, ADVANCE at 2+n (HOLDING),
    # FOSSILIZE at 3+n: t+6 / t+8 / t+11 for tempo 3 / 5 / 8.
    actions = [act(G, tempo=tempo), act(A), act(A)] + [act(W)] * (n - 1) + [act(A), act(F)]
    outs = run(actions)
    stages = slot0(outs, "stage")
    expected = [S.GERMINATED, S.TRAINING, S.BLENDING] + [S.BLENDING] * (n - 1) + [S.HOLDING, S.FOSSILIZED]
    assert stages == [int(s) for s in expected]
    assert slot0(outs, "epochs_in_stage") == [1, 1, 1] + list(range(2, n + 1)) + [1, 1]
    np.testing.assert_allclose(slot0(outs, "current_alpha")[2:2 + n], alphas, atol=1e-6)
    assert slot0(outs, "current_alpha")[-2:] == [1.0, 1.0]
    assert 3 + n == {3: 6, 5: 8, 8: 11}[n]
    assert all(bool(o.info.action_success) for i, o in enumerate(outs) if int(actions[i].op) != W)
    assert int(outs[-1].state.feedback.seeds_fossilized) == 1


def test_advance_before_alpha_reaches_one_fails_g3():
    outs = run([act(G), act(A), act(A), act(A)])
    assert slot0(outs, "stage")[-1] == S.BLENDING
    assert not bool(outs[-1].info.action_success)
    # quirk 12 (kept in both modes): a failed-gate ADVANCE is still a valid action for the reward
    assert int(outs[-1].info.invalid_action) == 0


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_instant_prune_timeline(compat):
    # germinate at 0, prune at t=2: EMBARGOED k=0..4 at t+1..t+5, RESETTING at t+6, empty at t+7.
    actions = [act(G), act(W), act(P)] + [act(W)] * 5 + [act(G), act(G)]
    outs = run(actions, compat=compat)
    stages = slot0(outs, "stage")[2:]
    ks = slot0(outs, "epochs_in_stage")[2:]
    assert stages[0:5] == [S.EMBARGOED] * 5 and ks[0:5] == [0, 1, 2, 3, 4]
    assert stages[5] == S.RESETTING
    assert not bool(outs[8].info.action_success), "the slot still has a state at t+6: GERMINATE fails"
    assert stages[6] == S.DORMANT and not slot0(outs, "has_report")[8]
    assert bool(outs[9].info.action_success) and stages[7] == S.GERMINATED
    assert slot0(outs, "current_alpha")[2] == 0.0


@pytest.mark.parametrize("speed, steps", [(AlphaSpeedAction.FAST, 3), (AlphaSpeedAction.MEDIUM, 5)])
def test_scheduled_prune_timeline(speed, steps):
    # reach HOLDING at step 5 (tempo 3), prune scheduled at t=6.
    prefix = [act(G), act(A), act(A), act(W), act(W), act(A)]
    t = len(prefix)
    actions = prefix + [act(P, speed=speed)] + [act(W)] * (steps + 8)
    outs = run(actions)
    stages = slot0(outs, "stage")
    modes = slot0(outs, "alpha_mode")
    assert stages[t - 1] == S.HOLDING
    # BLENDING with mode DOWN during t+1..t+s-1 (observed after the actions at t..t+s-2)
    assert stages[t:t + steps - 1] == [S.BLENDING] * (steps - 1)
    assert modes[t:t + steps - 1] == [AlphaMode.DOWN] * (steps - 1)
    assert stages[t + steps - 1] == S.PRUNED  # observed at t+s
    assert stages[t + steps] == S.EMBARGOED  # from t+s+1
    assert stages[t + steps + 5] == S.RESETTING
    assert stages[t + steps + 6] == S.DORMANT  # empty at t+s+7
    alphas = slot0(outs, "current_alpha")[t:t + steps]
    assert all(a > b for a, b in zip(alphas, alphas[1:])) and alphas[-1] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Alpha curves (docs/environment.md#alpha-controller)
# ---------------------------------------------------------------------------------------------------------------

CURVE_TABLE = {
    (AlphaCurve.LINEAR, 12.0): {3: [.333, .667, 1], 5: [.2, .4, .6, .8, 1], 8: [.125, .25, .375, .5, .625, .75, .875, 1]},
    (AlphaCurve.COSINE, 12.0): {3: [.25, .75, 1], 5: [.095, .345, .655, .905, 1],
                                8: [.038, .146, .309, .5, .691, .854, .962, 1]},
    (AlphaCurve.SIGMOID, 6.0): {3: [.245, .755, 1], 5: [.104, .339, .661, .896, 1],
                                8: [.053, .149, .302, .5, .698, .851, .947, 1]},
    (AlphaCurve.SIGMOID, 12.0): {3: [.117, .883, 1], 5: [.024, .23, .77, .976, 1],
                                 8: [.009, .045, .181, .5, .819, .955, .991, 1]},
    (AlphaCurve.SIGMOID, 24.0): {3: [.018, .982, 1], 5: [.001, .083, .917, .999, 1],
                                 8: [0, .002, .047, .5, .953, .998, 1, 1]},
}


@pytest.mark.parametrize("curve, steepness", list(CURVE_TABLE))
def test_alpha_curves_match_table(curve, steepness):
    for steps, expected in CURVE_TABLE[(curve, steepness)].items():
        ctrl = alpha_mod.fresh(())
        ctrl = alpha_mod.retarget(ctrl, jnp.asarray(True), 1.0, steps, int(curve), steepness)
        assert int(ctrl.mode) == AlphaMode.UP
        got = []
        for _ in range(steps):
            ctrl = alpha_mod.tick(ctrl, jnp.asarray(True))
            got.append(float(ctrl.alpha))
        np.testing.assert_allclose(got, expected, atol=6e-4, err_msg=f"{curve.name} k={steepness} steps={steps}")
        assert int(ctrl.mode) == AlphaMode.HOLD and int(alpha_mod.time_to_target(ctrl)) == 0


def test_alpha_retarget_down_is_monotone_and_instant_jumps():
    ctrl = alpha_mod.snap(alpha_mod.fresh(()), jnp.asarray(True), 1.0)
    down = alpha_mod.retarget(ctrl, jnp.asarray(True), 0.5, 5, int(AlphaCurve.COSINE), 12.0)
    assert int(down.mode) == AlphaMode.DOWN
    np.testing.assert_allclose(float(alpha_mod.velocity(down)), -0.1, atol=1e-7)
    seq = []
    for _ in range(5):
        down = alpha_mod.tick(down, jnp.asarray(True))
        seq.append(float(down.alpha))
    np.testing.assert_allclose(seq, [1 - 0.5 * p for p in [.0955, .3455, .6545, .9045, 1]], atol=1e-4)
    jump = alpha_mod.retarget(ctrl, jnp.asarray(True), 0.7, 0, int(AlphaCurve.LINEAR), 12.0)
    assert float(jump.alpha) == pytest.approx(0.7) and int(jump.mode) == AlphaMode.HOLD
    # a tick in HOLD, or where not selected, changes nothing
    held = alpha_mod.tick(jump, jnp.asarray(True))
    assert float(held.alpha) == pytest.approx(0.7) and int(held.steps_done) == 0
    frozen = alpha_mod.tick(alpha_mod.retarget(ctrl, jnp.asarray(True), 0.5, 3, 1, 12.0), jnp.asarray(False))
    assert float(frozen.alpha) == 1.0


def test_blending_uses_style_curve_not_heads():
    # SIGMOID_ADD blends with SIGMOID k=12 whatever alpha_curve/speed say (docs/environment.md#alpha-controller); target
    # HALF parks in BLENDING.
    actions = [act(G, style=GerminationStyle.SIGMOID_ADD, target=AlphaTargetAction.HALF),
               act(A), act(A, curve=0, speed=AlphaSpeedAction.SLOW), act(W), act(W), act(A)]
    outs = run(actions)
    np.testing.assert_allclose(slot0(outs, "current_alpha")[2:5], [0.5 * .117, 0.5 * .883, 0.5], atol=5e-4)
    assert slot0(outs, "stage")[-1] == S.BLENDING and not bool(outs[-1].info.action_success)  # G3 needs target 1


# ---------------------------------------------------------------------------------------------------------------
# Gates and op rules
# ---------------------------------------------------------------------------------------------------------------

def _slots_in(stage, k=1, **fields):
    slots = lifecycle.empty_slots(1)
    return slots.replace(stage=jnp.asarray([int(stage)], jnp.int32), epochs_in_stage=jnp.asarray([k], jnp.int32),
                         **{n: jnp.asarray([v]) for n, v in fields.items()})


def test_gates_permissive_and_strict():
    perm = EnvConfig(gates="permissive")
    strict = EnvConfig(gates="strict")
    assert not bool(lifecycle.gate_g2(_slots_in(S.TRAINING, k=0), perm)[0])
    assert bool(lifecycle.gate_g2(_slots_in(S.TRAINING, k=1), perm)[0])
    good = dict(current_acc=2.0, stage_start_acc=1.0, gradient_ratio_ema=0.2)
    assert not bool(lifecycle.gate_g2(_slots_in(S.TRAINING, k=2, **good), strict)[0])
    assert bool(lifecycle.gate_g2(_slots_in(S.TRAINING, k=3, **good), strict)[0])
    assert not bool(lifecycle.gate_g2(_slots_in(S.TRAINING, k=3, **{**good, "gradient_ratio_ema": 0.05}), strict)[0])
    assert not bool(lifecycle.gate_g5(_slots_in(S.HOLDING), perm)[0])  # no counterfactual yet
    with_cf = _slots_in(S.HOLDING, has_contribution=True, contribution=0.5)
    assert bool(lifecycle.gate_g5(with_cf, perm)[0]) and not bool(lifecycle.gate_g5(with_cf, strict)[0])


def test_min_prune_age():
    outs = run([act(G), act(P), act(W), act(P)], compat="fixed")  # min_prune_age 2
    assert not bool(outs[1].info.action_success) and int(outs[1].info.invalid_action) == 1
    assert slot0(outs, "stage")[1] == S.GERMINATED
    assert bool(outs[3].info.action_success) and slot0(outs, "stage")[3] == S.EMBARGOED


def test_germinate_needs_empty_slot_and_seed_limit():
    outs = run([act(G), act(G), act(G, slot=1), act(G, slot=2)], compat="fixed")  # max_seeds 2
    assert [bool(o.info.action_success) for o in outs] == [True, False, True, False]
    assert [int(o.info.invalid_action) for o in outs] == [0, 1, 0, 1]
    assert int(outs[-1].obs.signals.total_seeds) == 2
    noop = run([act(G, blueprint=BlueprintAction.NOOP), act(G, blueprint=BlueprintAction.LORA)])
    assert [int(o.info.invalid_action) for o in noop] == [1, 1]  # NOOP and transformer blueprints are masked on cnn


# ---------------------------------------------------------------------------------------------------------------
# Quirks 5, 6, 11 by compat
# ---------------------------------------------------------------------------------------------------------------

HOLDING_PREFIX = [act(G), act(A), act(A), act(W), act(W), act(A)]


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_advance_on_holding(compat):
    outs = run(HOLDING_PREFIX + [act(A)], compat=compat)
    last = outs[-1]
    assert int(last.info.invalid_action) == 1 and int(last.info.effective_op) == W
    if compat == "upstream":
        assert slot0(outs, "stage")[-1] == S.FOSSILIZED and bool(last.info.action_success)
        assert int(last.state.feedback.seeds_fossilized) == 0  # not counted
    else:
        assert slot0(outs, "stage")[-1] == S.HOLDING and not bool(last.info.action_success)


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_instant_prune_while_ramping(compat):
    outs = run([act(G), act(A), act(A), act(P, speed=AlphaSpeedAction.INSTANT)], compat=compat)
    last = outs[-1]
    assert int(last.info.invalid_action) == 1  # controller not in HOLD: invalid for the reward in both modes
    if compat == "upstream":
        assert slot0(outs, "stage")[-1] == S.EMBARGOED and bool(last.info.action_success)
    else:
        assert slot0(outs, "stage")[-1] == S.BLENDING and not bool(last.info.action_success)


@pytest.mark.parametrize("compat, expected", [("upstream", False), ("fixed", True)])
def test_wait_success_flag(compat, expected):
    outs = run([act(W)], compat=compat)
    assert bool(outs[0].obs.signals.last_action_success) is expected
    assert int(outs[0].obs.signals.last_action_op) == W


def test_set_alpha_target_from_holding_reopens_blending():
    outs = run(HOLDING_PREFIX + [act(SET, target=AlphaTargetAction.HALF, speed=AlphaSpeedAction.FAST,
                                     curve=0, style=GerminationStyle.GATED_GATE), act(W), act(W)])
    assert slot0(outs, "stage")[-3:] == [S.BLENDING] * 3
    np.testing.assert_allclose(slot0(outs, "current_alpha")[-3:], [1 - 0.5 / 3, 1 - 1 / 3, 0.5], atol=1e-6)
    assert slot0(outs, "alpha_algorithm")[-1] == 3  # switched to GATE
    assert slot0(outs, "alpha_mode")[-1] == AlphaMode.HOLD


# ---------------------------------------------------------------------------------------------------------------
# Episode end, config validation, make
# ---------------------------------------------------------------------------------------------------------------

def test_episode_truncates_at_length_without_reset():
    env, reset, step = _env("upstream")
    length = env.config.episode_length
    state, obs = reset(jax.random.PRNGKey(0))
    assert int(obs.signals.epoch) == 1
    flags = []
    for i in range(length):
        out = step(state, act(G if i == 0 else W), jax.random.PRNGKey(i))
        flags.append((bool(out.done), bool(out.truncated), int(out.obs.signals.epoch)))
        state = out.state
    # done only at epoch L; the final obs keeps epoch L's measurements (peek) with the post-action lifecycle state
    assert flags[:-1] == [(False, False, e + 2) for e in range(length - 1)]
    assert flags[-1] == (True, True, length)
    assert bool(out.info.reward_components.terminal != 0.0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(episode_length=0), "episode_length"),
        (dict(task="mnist"), "task"),
        (dict(topology="rnn"), "topology"),
        (dict(topology="transformer"), "topology"),
        (dict(gates="lenient"), "gates"),
        (dict(compat="old"), "compat"),
        (dict(max_seeds=-1), "max_seeds"),
        (dict(slots=SlotConfig(("r0c0", "r0c3"))), "slots"),
    ],
)
def test_config_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EnvConfig(**kwargs)


def test_config_slot_count_and_blueprint_validation():
    with pytest.raises(ValueError, match="num_slots"):
        EnvConfig.create(num_slots=0)
    assert EnvConfig.create(num_slots=2).num_slots == 2
    assert EnvConfig.create(num_slots=5, task="cifar10_deep").slot_channels == (8, 16, 32, 64, 128)
    from esper_jax.env import SimulatorConfig
    with pytest.raises(ValueError, match="conv_mega"):
        SimulatorConfig(gain_means=(("conv_mega", 1.0),))


def test_make_names():
    with pytest.raises(ValueError, match="cifar10_deep.*needs dataset"):
        make("host", EnvConfig(task="cifar10_deep"))  # built-in data: digits, and cifar10 from local files
    with pytest.raises(ValueError, match="data_dir"):
        make("host", EnvConfig())  # task cifar10 without EnvConfig.host.data_dir
    with pytest.raises(ValueError, match="available"):
        make("gym", EnvConfig())
