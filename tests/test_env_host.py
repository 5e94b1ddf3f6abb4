"""The host-network env (``make("host")``): data, host CNN, blueprints, blend operators, and whole seeds driven through
the real env — learning, counterfactual contributions, pruning, ablation, vmap equivalence."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax.contracts import (
    CNN_BLUEPRINTS,
    AlphaAlgorithm,
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
from esper_jax.env import EnvConfig, HostConfig, lifecycle, make, signals
from esper_jax.env.config import TASKS, cnn_blueprint_params, gate_params
from esper_jax.env.core import slot_view
from esper_jax.env.host import cnn, from_arrays, load_digits
from esper_jax.env.host.blend import GateLayout, blend
from esper_jax.env.host.blueprints import SlotLayout, num_groups

W, G, SET, P, F, A = (int(o) for o in LifecycleOp)

# Two slots (8 and 16 channels) keep the compiled step small (K = 7 fused-validation rows in fixed mode), and 4
# minibatches of 32 per step let the host learn within a short test episode. Every env-level test below shares the
# two compiled functions of ``_env`` (plus their vmapped pair): compiling a host step is the expensive part.
CFG = EnvConfig.create(
    2, task="digits", episode_length=30, host=HostConfig(minibatches_per_step=4, batch_size=32)
)


# ---- static: sizes and configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [8, 16, 32, 64])
def test_blueprint_param_counts_match_the_spec_formulas(channels):
    layout = SlotLayout(channels, "fixed")
    for branch, bp in enumerate(CNN_BLUEPRINTS):
        assert layout.param_counts[branch] == cnn_blueprint_params(bp, channels), bp.name
    assert layout.size == cnn_blueprint_params(BlueprintAction.CONV_HEAVY, channels)  # the union: the largest seed
    assert GateLayout(channels).size == gate_params(channels)


def test_group_counts_follow_upstream():
    assert [num_groups(c) for c in (8, 16, 32, 64, 128)] == [8, 1, 2, 4, 8]


@pytest.mark.parametrize("task", ["digits", "cifar10", "cifar10_deep", "cifar10_blind"])
def test_host_param_count_matches_the_task(task):
    t = TASKS[task]
    spec = cnn.HostSpec(t.input_channels, t.slot_channels, t.pool_layers, t.kernel_size, t.num_classes, 1e-5)
    assert spec.param_count() == t.host_params
    params = jax.eval_shape(lambda k: cnn.init_host(spec, k), jax.random.PRNGKey(0))
    assert sum(x.size for x in jax.tree.leaves(params)) == t.host_params


def test_digits_split_is_fixed_stratified_and_scaled():
    data = load_digits()
    assert (data.num_train, data.num_val, data.image_shape) == (1437, 360, (8, 8, 1))
    assert np.bincount(data.val_labels).tolist() == [36] * 10
    assert 0.0 <= data.train_images.min() and data.train_images.max() <= 1.0
    assert load_digits() == data and hash(load_digits()) == hash(data)


def test_bad_configs_and_data_are_rejected_with_the_field_named():
    with pytest.raises(ValueError, match="minibatches_per_step"):
        HostConfig(minibatches_per_step=0)
    with pytest.raises(ValueError, match="host_momentum"):
        HostConfig(host_momentum=1.0)
    with pytest.raises(TypeError, match="EnvConfig.host"):
        EnvConfig(host={"minibatches_per_step": 2})
    with pytest.raises(ValueError, match="data_dir"):
        make("host", EnvConfig(task="cifar10"))
    with pytest.raises(ValueError, match="needs dataset"):
        make("host", EnvConfig.create(2, task="cifar10_blind"))
    grey = from_arrays(np.zeros((8, 32, 32, 1), np.float32), np.zeros(8, int), np.zeros((4, 32, 32, 1), np.float32),
                       np.zeros(4, int))
    with pytest.raises(ValueError, match="3-channel"):
        make("host", EnvConfig(task="cifar10"), dataset=grey)
    with pytest.raises(ValueError, match="NHWC"):
        from_arrays(np.zeros((8, 32, 32), np.float32), np.zeros(8, int), np.zeros((4, 32, 32), np.float32),
                    np.zeros(4, int))
    with pytest.raises(ValueError, match="exceeds"):
        make("host", EnvConfig(task="digits", host=HostConfig(minibatches_per_step=100)))


# ---- blueprints and blend operators --------------------------------------------------------------------------


def _features(channels, key=0):
    return jax.random.normal(jax.random.PRNGKey(key), (4, 4, 4, channels), jnp.float32) + 0.5


@functools.cache
def _births():
    """Every blueprint's output at birth, under ADD and MULTIPLY init, both compat modes: one compiled call."""
    layouts = {compat: SlotLayout(16, compat) for compat in ("upstream", "fixed")}

    def run(x):
        return {
            compat: jnp.stack([
                jnp.stack([
                    layout._apply_one(branch, layout.init(jax.random.PRNGKey(branch), branch, jnp.asarray(mult)), x)
                    for mult in (False, True)
                ])
                for branch in range(len(CNN_BLUEPRINTS))
            ])
            for compat, layout in layouts.items()
        }

    return jax.jit(run)


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_blueprint_birth_behaviour(compat):
    x = _features(16)
    out = np.asarray(_births()(x)[compat])  # [7, 2 (ADD, MULTIPLY), ...]
    identity_add = {BlueprintAction.NORM, BlueprintAction.BOTTLENECK, BlueprintAction.CONV_SMALL}
    if compat == "fixed":  # quirks 7 and 16: every blueprint is the identity at birth
        identity_add |= {BlueprintAction.ATTENTION, BlueprintAction.DEPTHWISE, BlueprintAction.CONV_LIGHT,
                         BlueprintAction.CONV_HEAVY}
    for branch, bp in enumerate(CNN_BLUEPRINTS):
        for multiply in (False, True):
            s = out[branch, int(multiply)]
            if bp == BlueprintAction.ATTENTION and compat == "upstream":
                # σ(3) at birth; MULTIPLY's zero-init also zeroes the bias: σ(0) = 0.5 (quirk 7).
                np.testing.assert_allclose(s, x * (0.5 if multiply else jax.nn.sigmoid(3.0)), rtol=1e-6)
            elif bp in identity_add or multiply:
                np.testing.assert_allclose(s, x, atol=1e-6, err_msg=f"{bp.name} multiply={multiply}")
            else:
                assert not np.allclose(s, x, atol=1e-3), bp.name


@jax.jit
def _blends(h, s, g):
    algos = [int(a) for a in AlphaAlgorithm]
    zero = jnp.stack([blend(jnp.asarray(a), h, s, h, jnp.asarray(0.0), g) for a in algos])
    one = jnp.stack([blend(jnp.asarray(a), h, s, h, jnp.asarray(1.0), jnp.ones_like(g)) for a in algos])
    return zero, one


def test_every_blend_operator_is_the_identity_at_alpha_zero():
    h, s = _features(8, 1), _features(8, 2)
    gate = GateLayout(8)
    g = jax.jit(gate.apply)(gate.init(jax.random.PRNGKey(0)), h)
    zero, one = _blends(h, s, g)
    for i, algo in enumerate(AlphaAlgorithm):
        np.testing.assert_array_equal(zero[i], h)
        assert not np.allclose(one[i], h), algo.name
    np.testing.assert_allclose(one[0], s, atol=1e-6)  # ADD at alpha 1 is the seed


# ---- a seedless host learns ------------------------------------------------------------------------------------


# ---- whole seeds through the env -------------------------------------------------------------------------------


def act(op, slot, blueprint=BlueprintAction.CONV_LIGHT, style=GerminationStyle.LINEAR_ADD, speed=AlphaSpeedAction.INSTANT):
    return PerHead(slot=int(slot), blueprint=int(blueprint), style=int(style), tempo=int(TempoAction.FAST),
                   alpha_target=int(AlphaTargetAction.FULL), alpha_speed=int(speed), alpha_curve=0, op=int(op))


@functools.cache
def _env():
    env = make("host", CFG)
    probe = jax.jit(lambda state, view, alpha, x: env.oracle.forward(
        state.host, state.slots, env.oracle.control(view, alpha), x))
    return env, jax.jit(env.reset), jax.jit(env.step), probe


def _scripted_run(seed=0):
    """Slot 0: conv_light (ADD) germinated → trained → blended → held → fossilised. Slot 1: bottleneck (GATE)
    germinated → trained → blended → pruned. Returns the per-step states and the actions taken."""
    env, reset, step, _ = _env()
    state, _ = reset(jax.random.PRNGKey(seed))
    key = jax.random.PRNGKey(seed + 100)
    states, actions = [state], []
    plan = [act(G, 0), act(G, 1, BlueprintAction.BOTTLENECK, GerminationStyle.GATED_GATE), act(A, 0), act(A, 1),
            act(W, 0), act(W, 0), act(A, 0), act(A, 1)]
    pruned = False
    for t in range(20):
        slots = state.slots
        stage = np.asarray(slots.stage)
        hold = np.asarray(slots.controller.mode) == AlphaMode.HOLD
        if t < len(plan):
            a = plan[t]
        elif stage[1] == SeedStage.BLENDING and hold[1] and not pruned:
            a, pruned = act(P, 1), True
        elif stage[0] == SeedStage.BLENDING and hold[0]:
            a = act(A, 0)
        elif stage[0] == SeedStage.HOLDING:
            a = act(F, 0)
        else:
            a = act(W, 0)
        key, k = jax.random.split(key)
        state = step(state, a, k).state
        states.append(state)
        actions.append(a)
    return states, actions


@functools.cache
def scripted_run(seed=0):
    return _scripted_run(seed)


def test_seedless_host_learns_digits_reduced():
    """Reduced form for the default run (the test config's larger minibatches, 25 steps, WAIT only); the default
    config's full 150-step curve is the slow test below."""
    _, reset, step, _ = _env()
    state, _ = reset(jax.random.PRNGKey(3))
    first = float(state.tracker.val_accuracy)
    key = jax.random.PRNGKey(4)
    accs = []
    for _ in range(25):
        key, k = jax.random.split(key)
        state = step(state, act(W, 0), k).state
        accs.append(float(state.tracker.val_accuracy))
    assert first < 50.0
    assert np.mean(accs[-3:]) > 80.0, accs
    assert not bool(np.asarray(state.slots.has_module).any())


@functools.cache
def _seedless_curve_fn(cfg: EnvConfig, steps: int):
    env = make("host", cfg)
    oracle = env.oracle
    slots = lifecycle.empty_slots(cfg.num_slots)
    view, configs = slot_view(slots), signals.validation_configs(slots, cfg)

    def episode(key):
        k0, k1 = jax.random.split(key)

        def body(state, k):
            state, m = oracle.measure(state, view, configs, jnp.asarray(0), k)
            return state, m.val_accuracy[0]

        return jax.lax.scan(body, oracle.init(k0), jax.random.split(k1, steps))[1]

    return jax.jit(jax.vmap(episode))


@pytest.mark.slow
def test_seedless_host_is_above_80_and_still_improving_at_epoch_150():
    """The default config (digits, 2 minibatches of 16 per step): a seedless host over one 150-step episode."""
    curves = np.asarray(_seedless_curve_fn(EnvConfig(task="digits"), 150)(jax.random.split(jax.random.PRNGKey(0), 4)))
    mean = curves.mean(axis=0)
    assert mean[-1] > 80.0, mean
    assert mean[140:150].mean() > mean[100:110].mean(), mean


def test_a_seed_grown_to_fossil_changes_the_host_and_its_contribution_is_measured():
    env, _, _, probe = _env()
    states, _ = scripted_run()
    stages = np.asarray([np.asarray(s.slots.stage) for s in states])
    assert SeedStage.TRAINING in stages[:, 0] and SeedStage.BLENDING in stages[:, 0]
    assert stages[-1, 0] == SeedStage.FOSSILIZED
    final = states[-1]
    assert bool(final.slots.has_contribution[0])
    contributions = [float(s.slots.contribution[0]) for s in states if bool(s.slots.contribution_fresh[0])]
    assert contributions and any(abs(c) > 0.0 for c in contributions), contributions

    # The fossil is part of the function: the composite's logits differ from the host alone, and ablating the slot
    # (alpha 0) gives back exactly the host without that seed.
    x = jnp.asarray(env.oracle.data.val_images)
    view = slot_view(final.slots)
    with_seed = probe(final.oracle, view, view.alpha, x)
    ablated = probe(final.oracle, view, view.alpha.at[0].set(0.0), x)
    without = probe(final.oracle, slot_view(lifecycle.prune_now(final.slots, jnp.arange(2) == 0)), view.alpha, x)
    host_only = env.oracle.host_only(final.oracle.host, x)
    assert float(jnp.max(jnp.abs(with_seed - host_only))) > 1e-3
    np.testing.assert_array_equal(ablated, without)
    # Slot 1 was pruned: nothing else is left (a different compiled program, so equal up to float rounding).
    np.testing.assert_allclose(without, host_only, rtol=1e-5, atol=1e-5)


def test_fixed_mode_reference_accuracy_is_a_seedless_twin_of_the_host():
    """Issue 17: the fixed reward's reference is the same initial host trained on the same minibatches without
    seeds. Equal to the host while no seed has changed its forward pass; apart once a fossil has."""
    env, _, _, _ = _env()
    states, _ = scripted_run()
    first, final = states[0], states[-1]
    assert float(first.tracker.reference_accuracy) == float(first.tracker.val_accuracy)
    for a, b in zip(jax.tree.leaves(first.oracle.twin), jax.tree.leaves(first.oracle.host)):
        np.testing.assert_array_equal(a, b)
    apart = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(final.oracle.twin),
                                                                jax.tree.leaves(final.oracle.host)))
    assert apart > 1e-4
    logits = env.oracle.host_only(final.oracle.twin, jnp.asarray(env.oracle.data.val_images))
    twin_acc = 100.0 * np.mean(np.argmax(np.asarray(logits), -1) == env.oracle.data.val_labels)
    assert float(final.tracker.reference_accuracy) == pytest.approx(twin_acc, abs=1e-4)


def test_a_pruned_seed_leaves_the_host_function_exactly():
    env, _, _, probe = _env()
    states, actions = scripted_run()
    x = jnp.asarray(env.oracle.data.val_images)
    t_prune = next(t for t, a in enumerate(actions) if int(a.op) == P)
    before = states[t_prune]  # slot 1 blending with alpha > 0: it changes the function
    view = slot_view(before.slots)
    assert float(view.alpha[1]) > 0.0
    solo_off = view.alpha.at[1].set(0.0)
    assert float(jnp.max(jnp.abs(probe(before.oracle, view, view.alpha, x) - probe(before.oracle, view, solo_off, x)))) > 1e-4
    after = states[t_prune + 1]
    assert int(after.slots.stage[1]) in (SeedStage.PRUNED, SeedStage.EMBARGOED)
    view = slot_view(after.slots)
    gone = lifecycle.prune_now(after.slots, jnp.arange(2) == 1).replace(
        stage=after.slots.stage.at[1].set(SeedStage.DORMANT))
    np.testing.assert_array_equal(
        probe(after.oracle, view, view.alpha, x), probe(after.oracle, slot_view(gone), view.alpha, x)
    )


@functools.cache
def _measure_fns():
    """One slot, one minibatch of 16: the smallest oracle whose vmapped and single compiles can be compared."""
    cfg = EnvConfig.create(1, task="digits", host=HostConfig(minibatches_per_step=1))
    oracle = make("host", cfg).oracle

    def two_epochs(key, view_a, view_b, configs):
        k0, k1, k2 = jax.random.split(key, 3)
        state = oracle.init(k0)
        state, m_a = oracle.measure(state, view_a, configs, jnp.asarray(1), k1)
        state, m_b = oracle.measure(state, view_b, configs, jnp.asarray(2), k2)
        return state, m_a, m_b

    return cfg, jax.jit(two_epochs), jax.jit(jax.vmap(two_epochs, in_axes=(0, None, None, None)))


def test_vmapped_oracle_with_the_same_key_equals_a_single_oracle():
    """Reduced form of the vmap test below: a germinated seed, then one training epoch, at the oracle level."""
    cfg, single, batched = _measure_fns()
    slots = lifecycle.empty_slots(1).replace(
        stage=jnp.asarray([SeedStage.GERMINATED], jnp.int32), blueprint=jnp.asarray([BlueprintAction.CONV_LIGHT]),
        seed_id=jnp.asarray([0], jnp.int32),
    )
    view_a = slot_view(slots)
    view_b = slot_view(slots.replace(stage=jnp.asarray([SeedStage.TRAINING], jnp.int32)))
    configs = signals.validation_configs(slots, cfg)
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(0), jax.random.PRNGKey(9)])
    out = jax.tree.map(np.asarray, batched(keys, view_a, view_b, configs))
    one = jax.tree.map(np.asarray, single(keys[0], view_a, view_b, configs))
    jax.tree.map(lambda b, s: np.testing.assert_allclose(b[0], s, rtol=1e-5, atol=1e-6), out, one)
    jax.tree.map(lambda b: np.testing.assert_array_equal(b[0], b[1]), out)
    state, _, m_b = out
    assert m_b.gradient_norm[0, 0] > 0.0  # the TRAINING seed was sampled: its statistics are live
    assert not np.array_equal(state.slots[0].seed[0], state.slots[0].seed[2])


@pytest.mark.slow  # two more compiled programs (3 slots): minutes on a loaded 2-core CPU
def test_fused_validation_equals_one_forward_per_row():
    """The branching validation pass against the plain one (a full forward per alpha row), with two blended seeds
    of different operators and a third in TRAINING (fixed mode: its layout has every row kind, singletons too)."""
    for compat in ("fixed",):
        cfg = EnvConfig.create(3, task="digits", compat=compat)
        oracle = make("host", cfg).oracle
        state = oracle.init(jax.random.PRNGKey(0))
        slots = lifecycle.empty_slots(3).replace(
            stage=jnp.asarray([SeedStage.BLENDING, SeedStage.TRAINING, SeedStage.HOLDING], jnp.int32),
            blueprint=jnp.asarray([BlueprintAction.CONV_LIGHT, BlueprintAction.NORM, BlueprintAction.DEPTHWISE]),
            seed_id=jnp.asarray([0, 1, 2], jnp.int32),
            algorithm=jnp.asarray([AlphaAlgorithm.GATE, AlphaAlgorithm.ADD, AlphaAlgorithm.MULTIPLY], jnp.int32),
        )
        slots = slots.replace(controller=slots.controller.replace(alpha=jnp.asarray([0.4, 0.0, 1.0])))
        view = slot_view(slots)
        state = oracle._sync_seeds(state, view, jax.random.PRNGKey(1))
        state = state.replace(slots=tuple(
            p.replace(seed=p.seed + 0.05 * jax.random.normal(jax.random.PRNGKey(i), p.seed.shape))
            for i, p in enumerate(state.slots)
        ))
        configs = signals.validation_configs(slots, cfg)
        fused = jax.jit(oracle.validate)(state, view, configs)
        rows = jax.jit(oracle.validate_rows)(state, view, configs)
        np.testing.assert_allclose(fused[0], rows[0], atol=0.3)  # at most one image flips on rounding
        np.testing.assert_allclose(fused[1], rows[1], rtol=1e-4, atol=1e-5)
        assert len(set(np.round(np.asarray(fused[1]), 5).tolist())) > 2  # the rows really differ


@pytest.mark.slow
def test_vmapped_envs_with_the_same_key_equal_a_single_env():
    env, _, _, _ = _env()
    states, actions = scripted_run()
    steps = 12
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(5)])
    state, _ = jax.jit(jax.vmap(env.reset))(keys)
    vstep = jax.jit(jax.vmap(env.step))
    key = jax.random.PRNGKey(100)
    for t in range(steps):
        key, k = jax.random.split(key)
        batch_actions = jax.tree.map(lambda a: jnp.full((2,), a, jnp.int32), actions[t])
        state = vstep(state, batch_actions, jnp.stack([k, k])).state
    single = jax.tree.map(lambda x: np.asarray(x), states[steps])
    first = jax.tree.map(lambda x: np.asarray(x)[0], state)
    # Lifecycle state must match exactly. Floats to rounding: the host CNN's small-map convolutions are one matmul
    # by a conv matrix, batched under vmap and plain for one env, and 12 SGD steps with batch-statistics BatchNorm
    # amplify the different rounding (measured: params within 7e-5, the twin's momenta within 3e-3, values ~0.2).
    # A vmap mix-up between envs (the other env has another reset key) moves them by orders of magnitude more.
    def same(a, b):
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-3)
        else:
            np.testing.assert_array_equal(a, b)

    jax.tree.map(same, first, single)
    other = jax.tree.map(lambda x: np.asarray(x)[1], state)
    assert not np.array_equal(other.tracker.val_accuracy, single.tracker.val_accuracy) or not np.array_equal(
        other.oracle.host.head_kernel, single.oracle.host.head_kernel)


@pytest.mark.slow
def test_random_masked_episode_on_the_host_env_keeps_the_env_invariants():
    """The simulator's whole-episode property checks (random masked actions), run on real host networks."""
    from tests.test_env_properties import LENGTH, _episode, check_episode

    env = make("host", EnvConfig(task="digits", episode_length=LENGTH, compat="fixed", max_seeds=4))
    records = jax.jit(functools.partial(_episode, env))(jax.random.PRNGKey(7))
    check_episode(records)
    assert int(np.asarray(records.stage_after).max()) >= SeedStage.TRAINING
