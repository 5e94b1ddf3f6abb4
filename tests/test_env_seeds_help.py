"""Issue 17 in ``fixed`` mode: the host keeps its gradient through blended and fossilised slots, and the reward
cannot be farmed by seeds that change nothing (idle seeds, identity seeds, germinate→prune cycling). Each behaviour
is also checked to be upstream's quirk under ``compat="upstream"``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import controllers as bench_controllers
from esper_jax.contracts import (
    CNN_BLUEPRINTS,
    AlphaAlgorithm,
    BlueprintAction,
    LifecycleOp,
    SeedStage,
)
from esper_jax.env import EnvConfig, RewardConfig, SimulatorConfig, make
from esper_jax.env import reward as R
from esper_jax.env.host.blend import blend
from esper_jax.env.host.oracle import SlotControl

S = SeedStage
CFG = RewardConfig()


# ---- gradient path -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [AlphaAlgorithm.ADD, AlphaAlgorithm.GATE])
def test_blend_keeps_the_host_gradient_only_when_asked_and_never_changes_the_value(algorithm):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    h = jax.random.normal(k1, (2, 4, 4, 8))
    s = h + jax.random.normal(k2, (2, 4, 4, 8))
    gate = jnp.ones((2,))  # GATE at full amplitude: a·g = 1

    def y(h_, host_gradient):
        return blend(jnp.int32(algorithm), h_, s, jax.lax.stop_gradient(h_), jnp.float32(1.0), gate, host_gradient)

    for flag in (False, True):
        np.testing.assert_array_equal(np.asarray(y(h, flag)), np.asarray(s))
    g_upstream = jax.grad(lambda h_: jnp.sum(y(h_, False)))(h)
    g_fixed = jax.grad(lambda h_: jnp.sum(y(h_, True)))(h)
    assert float(jnp.max(jnp.abs(g_upstream))) == 0.0  # ∂y/∂h = 1 − a = 0
    np.testing.assert_array_equal(np.asarray(g_fixed), np.ones_like(h))


@functools.cache
def _host_block_gradients(compat: str):
    """Gradient norm of every host block's kernel with a fossilised conv_light seed at alpha 1 in every slot."""
    env = make("host", EnvConfig.create(3, task="digits", episode_length=5, compat=compat))
    oracle = env.oracle
    key = jax.random.PRNGKey(0)
    state = oracle.init(key)
    branch = int(np.flatnonzero(np.asarray(CNN_BLUEPRINTS) == BlueprintAction.CONV_LIGHT)[0])
    slots = tuple(
        p.replace(seed=lay.init(jax.random.fold_in(key, i), jnp.int32(branch), jnp.asarray(False)))
        for i, (lay, p) in enumerate(zip(oracle.layouts, state.slots))
    )
    n = oracle.num_slots
    ctrl = SlotControl(
        branch=jnp.full((n,), branch, jnp.int32),
        blended=jnp.ones((n,), jnp.bool_),
        straight_through=jnp.zeros((n,), jnp.bool_),
        alpha=jnp.ones((n,), jnp.float32),
        algorithm=jnp.full((n,), AlphaAlgorithm.ADD, jnp.int32),
    )
    x = jnp.asarray(oracle.data.train_images[:32])
    labels = jnp.asarray(oracle.data.train_labels[:32])

    def loss(host):
        logits = oracle.forward(host, slots, ctrl, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1))

    grads = jax.jit(jax.grad(loss))(state.host)
    return [float(jnp.linalg.norm(b.kernel)) for b in grads.blocks], float(jnp.linalg.norm(grads.head_kernel))


def test_host_blocks_before_fossilised_slots_learn_in_fixed_mode_only():
    fixed_blocks, fixed_head = _host_block_gradients("fixed")
    upstream_blocks, upstream_head = _host_block_gradients("upstream")
    assert all(g > 1e-4 for g in fixed_blocks), fixed_blocks
    assert upstream_blocks == [0.0, 0.0, 0.0]  # gradient starvation under ADD at alpha 1
    assert fixed_head > 0.0 and upstream_head > 0.0


# ---- reward terms --------------------------------------------------------------------------------------------


def _seed(stage=S.TRAINING, k=2, ti=0.0, c=0.0, known=False, acc_germ=0.0, has_germ=False):
    f = jnp.asarray
    return R.SeedInputs(
        present=f(True), stage=f(int(stage), jnp.int32), epochs_in_stage=f(k, jnp.int32),
        previous_stage=f(int(stage), jnp.int32), previous_epochs_in_stage=f(k - 1, jnp.int32),
        total_improvement=f(ti, jnp.float32), contribution=f(c, jnp.float32), contribution_known=f(known),
        interaction_sum=f(0.0, jnp.float32), acc_at_germination=f(acc_germ, jnp.float32),
        has_acc_at_germination=f(has_germ),
    )


def _attribution(fixed, **kw):
    op, val_acc, acc_delta = jnp.int32(LifecycleOp.WAIT), jnp.float32(60.0), jnp.float32(5.0)
    terms = R.seed_terms(op, _seed(**kw), val_acc, acc_delta, CFG, fixed, fixed)
    return float(terms.attribution)


def test_seeds_that_cannot_change_the_forward_pass_earn_no_proxy_in_fixed_mode():
    assert _attribution(False, stage=S.TRAINING) == pytest.approx(0.3 * 5.0)
    assert _attribution(True, stage=S.TRAINING) == 0.0
    assert _attribution(True, stage=S.GERMINATED) == 0.0


def test_fixed_attribution_is_bounded_by_the_gain_over_the_seedless_host():
    # The host rose 20 pp since germination but is no better than without seeds: upstream pays c; fixed pays
    # nothing but the ratio penalty for a contribution without improvement, −0.3·min(1, c/10).
    kw = {"stage": S.BLENDING, "c": 2.0, "known": True, "acc_germ": 40.0, "has_germ": True}
    assert _attribution(False, ti=20.0, **kw) == pytest.approx(2.0)
    assert _attribution(True, ti=0.0, **kw) == pytest.approx(-0.06, abs=1e-6)
    # 0.5 pp better than without seeds: fixed pays sqrt(0.5 · 2).
    assert _attribution(True, ti=0.5, **kw) == pytest.approx(1.0, abs=1e-6)


def test_fixed_keeps_attributing_a_fossil_its_measured_contribution():
    # Upstream stops at FOSSILIZED, so a seed held in HOLDING forever out-earned the same seed fossilised.
    kw = {"c": 2.0, "known": True, "ti": 0.5, "acc_germ": 40.0, "has_germ": True}
    assert _attribution(False, stage=S.FOSSILIZED, **kw) == 0.0
    assert _attribution(True, stage=S.FOSSILIZED, **kw) == pytest.approx(1.0, abs=1e-6)
    assert _attribution(True, stage=S.FOSSILIZED, **kw) == _attribution(True, stage=S.HOLDING, **kw)


def test_pbrs_removal_charges_the_potential_of_leaving_seeds():
    stage = jnp.asarray([S.GERMINATED, S.HOLDING, S.FOSSILIZED], jnp.int32)
    k = jnp.asarray([2, 3, 10], jnp.int32)
    leaving = jnp.asarray([True, False, False])
    assert float(R.pbrs_removal(stage, k, leaving, CFG)) == pytest.approx(-0.3 * (1.0 + 0.6), abs=1e-6)
    assert float(R.pbrs_removal(stage, k, leaving, RewardConfig(disable_pbrs=True))) == 0.0


# ---- anti-farming on the simulator ---------------------------------------------------------------------------

FARMERS = ("idle", "cycle", "grow_small")
EPISODES = 4


def _sim(compat: str, gain: float) -> EnvConfig:
    """Every seed's latent gain is ``gain`` pp (no spread, no interactions, no host dependency): with 0 the seeds
    are identities, so no controller can change the accuracy."""
    sim = SimulatorConfig(
        gain_means=tuple((b.name.lower(), gain) for b in BlueprintAction if b != BlueprintAction.NOOP and
                         b.name.lower() in dict(SimulatorConfig().gain_means)),
        gain_spread=0.0,
        interaction_spread=0.0,
        host_dependency=(0.0, 0.0),
    )
    return EnvConfig.create(3, episode_length=40, compat=compat, simulator=sim)


@functools.cache
def _returns(compat: str, gain: float):
    env = make("sim", _sim(compat, gain))
    names = ("wait",) + FARMERS + ("grow_light", "hold_light")
    out = bench_controllers.run(env, names, EPISODES, seed=3, log=lambda *_: None)
    return {n: (np.asarray(r["return"]), np.asarray(r["final_acc"])) for n, r in out.items()}


def test_identity_idle_and_cycling_seeds_do_not_out_earn_wait_in_fixed_mode():
    res = _returns("fixed", 0.0)
    wait_return, wait_acc = res["wait"]
    for name in FARMERS:
        ret, acc = res[name]
        np.testing.assert_allclose(acc, wait_acc, atol=1e-4, err_msg=name)  # they cannot raise accuracy here
        assert np.all(ret <= wait_return + 1e-3), (name, ret, wait_return)


def test_the_same_controllers_farm_the_upstream_reward():
    res = _returns("upstream", 0.0)
    wait_return = res["wait"][0]
    assert np.all(res["idle"][0] > wait_return + 1.0)  # the proxy pays seeds at alpha 0
    assert np.all(res["cycle"][0] > wait_return)  # GERMINATE shaping + PBRS climb, never charged back


def test_seeds_that_raise_accuracy_still_out_earn_wait_in_fixed_mode():
    res = _returns("fixed", 5.0)
    wait_return, wait_acc = res["wait"]
    ret, acc = res["grow_small"]
    assert np.all(acc > wait_acc + 5.0)
    assert np.all(ret > wait_return)


def test_holding_seeds_forever_does_not_out_earn_fossilising_them_in_fixed_mode():
    res = _returns("fixed", 5.0)
    (grow_ret, grow_acc), (hold_ret, hold_acc) = res["grow_light"], res["hold_light"]
    np.testing.assert_allclose(hold_acc, grow_acc, atol=1e-4)  # the same seeds at alpha 1 either way
    assert np.all(grow_acc > res["wait"][1] + 5.0)
    assert np.all(grow_ret > hold_ret), (grow_ret, hold_ret)
    assert np.all(grow_ret > res["wait"][0])


# ---- seeds born as the identity (quirk 16) -------------------------------------------------------------------

_RESIDUAL = (BlueprintAction.DEPTHWISE, BlueprintAction.CONV_LIGHT, BlueprintAction.CONV_HEAVY)


@functools.cache
def _birth_outputs_and_gradients(compat: str):
    """Per residual blueprint at 16 channels, under ADD (False) and MULTIPLY (True) init: max |seed(x) − x| at birth
    and the norm of the gradient of a loss on seed(x) with respect to the seed's parameters."""
    from esper_jax.env.host.blueprints import SlotLayout

    layout = SlotLayout(16, compat)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 4, 16)) + 0.5
    weights = jax.random.normal(jax.random.PRNGKey(1), x.shape)

    @jax.jit
    def measure():
        res = {}
        for bp in _RESIDUAL:
            branch = int(np.flatnonzero(np.asarray(CNN_BLUEPRINTS) == bp)[0])
            for multiply in (False, True):
                flat = layout.init(jax.random.PRNGKey(branch), jnp.int32(branch), jnp.asarray(multiply))
                moved = jnp.max(jnp.abs(layout._apply_one(branch, flat, x) - x))
                grad = jax.grad(lambda f, b=branch: jnp.sum(weights * layout._apply_one(b, f, x)))(flat)
                res[f"{bp.name}-{int(multiply)}"] = (moved, jnp.linalg.norm(grad))
        return res

    out = {}
    for name, (moved, grad) in jax.device_get(measure()).items():
        bp_name, multiply = name.split("-")
        out[BlueprintAction[bp_name], bool(int(multiply))] = (float(moved), float(grad))
    return out


@pytest.mark.parametrize("bp", _RESIDUAL, ids=lambda b: b.name.lower())
def test_residual_seeds_are_the_identity_at_birth_and_still_learn_in_fixed_mode(bp):
    """Quirk 16: a seed that is not the identity when it blends in perturbs the host; fixed starts these branches
    at 0 (zero-scale last norm) and they must still get a gradient (unlike a zero conv behind a ReLU)."""
    fixed = _birth_outputs_and_gradients("fixed")
    upstream = _birth_outputs_and_gradients("upstream")
    for multiply in (False, True):
        moved, grad = fixed[bp, multiply]
        assert moved == 0.0 and grad > 1e-3, (bp.name, multiply, moved, grad)
    assert upstream[bp, False][0] > 1e-2  # upstream's branch is not 0 at birth (ADD init)
