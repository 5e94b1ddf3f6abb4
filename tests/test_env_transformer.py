"""The transformer host env (issue 19): sizes against the spec, the seven seeds at birth, isolation and blending
gradients, causality, token data and its errors, fused validation on per-token correctness, vmap equivalence and
a seedless host that learns the embedded corpus."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax.contracts import TRANSFORMER_BLUEPRINTS, AlphaAlgorithm, BlueprintAction, SeedStage
from esper_jax.env import EnvConfig, HostConfig, lifecycle, make, signals
from esper_jax.env.config import TASKS, gate_params
from esper_jax.env.core import slot_view
from esper_jax.env.host import tokens
from esper_jax.env.host import transformer as tf
from esper_jax.env.host.lm_oracle import LMOracle
from esper_jax.env.host.transformer_blueprints import SequenceGateLayout, TransformerSlotLayout, blend
from esper_jax.env.lm_config import LMConfig, transformer_blueprint_params, transformer_host_params

# docs/environment.md#blueprints (spec §3.2): upstream's modules counted at D = 384.
SPEC_PARAMS_384 = {
    BlueprintAction.NORM: 769, BlueprintAction.LORA: 6_144, BlueprintAction.LORA_LARGE: 24_576,
    BlueprintAction.ATTENTION: 591_360, BlueprintAction.FLEX_ATTENTION: 591_360,
    BlueprintAction.MLP_SMALL: 590_976, BlueprintAction.MLP: 1_181_568,
}
SMALL = EnvConfig.create(1, task="tinystories_small", host=HostConfig(minibatches_per_step=1))


# ---- static: sizes ---------------------------------------------------------------------------------------------


def test_blueprint_param_counts_at_384_match_the_spec_table():
    layout = TransformerSlotLayout(384, "fixed")
    for branch, bp in enumerate(TRANSFORMER_BLUEPRINTS):
        assert layout.param_counts[branch] == SPEC_PARAMS_384[bp] == transformer_blueprint_params(bp, 384), bp.name
    assert layout.size == SPEC_PARAMS_384[BlueprintAction.MLP]  # the union: the largest seed
    assert SequenceGateLayout(384).size == gate_params(384) == 37_057
    table = EnvConfig(task="tinystories").param_table()  # what rent and the observation see
    for bp, count in SPEC_PARAMS_384.items():
        assert table[0, bp] == count
    assert table[0, BlueprintAction.CONV_HEAVY] == 0


def test_host_param_counts_match_upstream_and_the_built_host():
    assert transformer_host_params(384, 6, 256, 50_257) == TASKS["tinystories"].host_params == 30_044_544
    big = make("host", EnvConfig(task="tinystories"))  # built, never run
    shapes = jax.eval_shape(big.oracle.init, jax.random.PRNGKey(0))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes.host)) == 30_044_544
    assert shapes.host.layers.qkv_kernel.shape == (6, 384, 1152) and shapes.host.pos_emb.shape == (256, 384)
    assert big.config.host_params == 30_044_544 and big.oracle.data.block_size == 256
    # The vocabulary is the task's unless set (the simulator keeps upstream's host); the count follows it.
    assert EnvConfig(task="tinystories").host_params == 30_044_544
    assert make("host", EnvConfig(task="tinystories", lm=LMConfig(vocab_size=256))).config.host_params == 10_844_160
    small = make("host", SMALL).oracle
    leaves = jax.tree.leaves(small.init(jax.random.PRNGKey(0)).host)
    assert sum(x.size for x in leaves) == small.spec.param_count() == TASKS["tinystories_small"].host_params


# ---- the seeds, blending and causality ---------------------------------------------------------------------------


@functools.cache
def _births():
    layouts = {compat: TransformerSlotLayout(16, compat) for compat in ("upstream", "fixed")}

    def run(x):
        return {compat: jnp.stack([
            jnp.stack([lay._apply_one(b, lay.init(jax.random.PRNGKey(b), b, jnp.asarray(m)), x) for m in (False, True)])
            for b in range(len(TRANSFORMER_BLUEPRINTS))]) for compat, lay in layouts.items()}

    return jax.jit(run)


def _x(d=16, key=0):
    return jax.random.normal(jax.random.PRNGKey(key), (3, 5, d), jnp.float32)


def test_every_transformer_seed_is_the_identity_at_birth_under_both_styles_and_modes():
    x = _x()
    for compat, out in _births()(x).items():
        for b, bp in enumerate(TRANSFORMER_BLUEPRINTS):
            for m in (0, 1):
                np.testing.assert_allclose(out[b, m], x, atol=1e-6, err_msg=f"{compat} {bp.name} multiply={m}")


def _trained(lay: TransformerSlotLayout, branch: int) -> jnp.ndarray:
    flat = lay.init(jax.random.PRNGKey(1), jnp.asarray(branch), jnp.asarray(False))
    return flat + 0.1 * jax.random.normal(jax.random.PRNGKey(2), flat.shape)


# The seeds that mix positions, and one that does not (the others act per position like mlp).
_MIXING = tuple(TRANSFORMER_BLUEPRINTS.index(b) for b in (
    BlueprintAction.ATTENTION, BlueprintAction.FLEX_ATTENTION, BlueprintAction.MLP))


@jax.jit
def _causality_probe(x, later, toks, toks_later):
    lay = TransformerSlotLayout(16, "fixed")
    seeds = [(lay._apply_one(b, _trained(lay, b), x), lay._apply_one(b, _trained(lay, b), later)) for b in _MIXING]
    spec = tf.TransformerSpec(vocab_size=32, d_model=16, n_head=4, n_layer=3, block_size=8)
    host = tf.init_host(spec, jax.random.PRNGKey(0))
    return seeds, (tf.forward(spec, host, toks, tf.no_injection), tf.forward(spec, host, toks_later, tf.no_injection))


def test_seeds_and_the_host_are_causal_and_seeds_differ_once_trained():
    x = _x()
    toks = jax.random.randint(jax.random.PRNGKey(3), (2, 8), 0, 32)
    # change positions 3, 4 of the seeds' input and tokens 5.. of the host's
    seeds, (logits, changed) = _causality_probe(x, x.at[:, 3:].add(1.0), toks, toks.at[:, 5:].set((toks[:, 5:] + 1) % 32))
    for (y, y_later), b in zip(seeds, _MIXING):
        bp = TRANSFORMER_BLUEPRINTS[b]
        np.testing.assert_allclose(y[:, :3], y_later[:, :3], atol=1e-6, err_msg=bp.name)
        assert not np.allclose(y, x, atol=1e-3), bp.name
    np.testing.assert_allclose(logits[:, :5], changed[:, :5], atol=1e-5)
    assert not np.allclose(logits[:, 5:], changed[:, 5:], atol=1e-3)


def test_blends_are_the_identity_at_alpha_zero_and_the_seed_at_add_one():
    h, s = _x(), _x(key=1)
    gate = SequenceGateLayout(16)
    g = gate.apply(gate.init(jax.random.PRNGKey(0)), h)
    assert g.shape == (3,)
    for algo in AlphaAlgorithm:
        np.testing.assert_array_equal(blend(jnp.asarray(int(algo)), h, s, h, jnp.asarray(0.0), g), h)
        assert not np.allclose(blend(jnp.asarray(int(algo)), h, s, h, jnp.asarray(1.0), g + 1.0), h), algo.name
    np.testing.assert_allclose(blend(jnp.asarray(int(AlphaAlgorithm.ADD)), h, s, h, jnp.asarray(1.0), g), s, atol=1e-6)


def _slot_grads(stage: SeedStage, alpha: float):
    """∂/∂h and ∂/∂seed of Σ r·y for one lora slot of the oracle, at ``stage`` and ``alpha`` (ADD)."""
    oracle = make("host", SMALL).oracle
    lay = oracle.layouts[0]
    branch = TRANSFORMER_BLUEPRINTS.index(BlueprintAction.LORA)
    params = oracle.init(jax.random.PRNGKey(0)).slots[0].replace(seed=_trained(lay, branch))
    slots = lifecycle.empty_slots(1).replace(
        stage=jnp.asarray([stage], jnp.int32), blueprint=jnp.asarray([BlueprintAction.LORA]),
        seed_id=jnp.asarray([0], jnp.int32), algorithm=jnp.asarray([AlphaAlgorithm.ADD], jnp.int32))
    ctrl = oracle.control(slot_view(slots), jnp.asarray([alpha]))
    h, r = _x(64), _x(64, key=5)

    def f(h, seed):
        return jnp.sum(r * oracle._slot(0, (params.replace(seed=seed),), ctrl, h))

    g_h, g_seed = jax.jit(jax.grad(f, argnums=(0, 1)))(h, params.seed)
    p = lay.unpack(branch, params.seed)
    return np.asarray(g_h), np.asarray(g_seed), r, np.asarray(p["down"] @ p["up"])


def test_training_isolates_the_host_and_blending_passes_gradient_through_the_seed():
    g_h, g_seed, r, w = _slot_grads(SeedStage.TRAINING, 0.0)
    np.testing.assert_allclose(g_h, r, atol=1e-6)  # the host-only gradient: the incubator's value is h
    assert np.abs(g_seed).max() > 0.0
    # BLENDING at a = 1 under ADD: y = s(h) = h + h·W with h not detached (docs/environment.md#blending).
    g_h, g_seed, r, w = _slot_grads(SeedStage.BLENDING, 1.0)
    np.testing.assert_allclose(g_h, r + np.asarray(r) @ w.T, rtol=1e-5, atol=1e-5)
    assert np.abs(g_seed).max() > 0.0


# ---- token data ------------------------------------------------------------------------------------------------


def test_embedded_corpus_is_fixed_byte_text_with_structure():
    a, b = tokens.embedded_corpus(32, 16), tokens.embedded_corpus(32, 16)
    assert a == b and a.vocab_size == 256 and a.val_windows.shape == (16, 33)
    assert a.num_train > 500_000 and a.train.max() < 128  # ASCII
    text = bytes(a.train[:400].astype(np.uint8)).decode()
    assert text.startswith("Once upon a time, ")
    assert not np.array_equal(a.val_windows[0], a.train[:33])  # validation stories are their own


def test_token_files_load_as_text_npy_bin_and_nanogpt_directories(tmp_path):
    text = tmp_path / "story.txt"
    text.write_text("The cat sat on the mat. " * 200)
    data = tokens.load(str(text), 256, 8, 4, 0.1)
    assert data.val_windows.shape == (4, 9) and bytes(data.train[:7].astype(np.uint8)) == b"The cat"
    arr = np.arange(2000) % 300
    np.save(tmp_path / "t.npy", arr)
    assert tokens.load(str(tmp_path / "t.npy"), 300, 8, 4, 0.1).num_train == 1800
    arr.astype(np.uint16).tofile(tmp_path / "t.bin")
    assert np.array_equal(tokens.load(str(tmp_path / "t.bin"), 300, 8, 4, 0.1).train, arr[:1800])
    assert np.array_equal(tokens.load(str(tmp_path / "t.bin"), 300, 8, 4, 0.1, max_train_tokens=100).train, arr[:100])
    nano = tmp_path / "nano"
    nano.mkdir()
    (np.arange(500) % 50_000).astype(np.uint16).tofile(nano / "train.bin")
    (np.arange(100) % 50_000).astype(np.uint16).tofile(nano / "val.bin")
    d = tokens.load(str(nano), 50_257, 8, 4, 0.1)
    assert d.num_train == 500 and d.val_windows[0, 0] == 0
    cfg = EnvConfig.create(1, task="tinystories_small", lm=LMConfig(data_path=str(tmp_path / "t.bin"), vocab_size=300))
    env = make("host", cfg)
    assert env.oracle.data.vocab_size == 300 and env.oracle.spec.vocab_size == 300
    assert env.config.host_params == transformer_host_params(64, 3, 32, 300)


def test_bad_token_files_are_refused_with_the_field_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"env.lm.data_path .*does not exist"):
        make("host", EnvConfig(task="tinystories_small", lm=LMConfig(data_path=str(tmp_path / "none.bin"))))
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        tokens.load(str(tmp_path / "empty.txt"), 256, 8, 4, 0.1)
    np.save(tmp_path / "wide.npy", np.arange(5000))
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 256\).*50257"):
        tokens.load(str(tmp_path / "wide.npy"), 256, 8, 4, 0.1)
    np.save(tmp_path / "neg.npy", np.arange(-1, 500))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokens.load(str(tmp_path / "neg.npy"), 256, 8, 4, 0.1)
    np.save(tmp_path / "float.npy", np.ones(500))
    with pytest.raises(ValueError, match="must be integers"):
        tokens.load(str(tmp_path / "float.npy"), 256, 8, 4, 0.1)
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(ValueError, match="leave nothing to train on"):
        tokens.load(str(tmp_path / "short.txt"), 256, 8, 4, 0.1)
    (tmp_path / "dir").mkdir()
    with pytest.raises(FileNotFoundError, match="train.bin"):
        tokens.load(str(tmp_path / "dir"), 256, 8, 4, 0.1)
    with pytest.raises(ValueError, match="LMConfig.vocab_size"):
        LMConfig(vocab_size=1)
    data = tokens.embedded_corpus(32, 16)
    with pytest.raises(ValueError, match="differs from env.lm.vocab_size"):
        LMOracle.from_config(EnvConfig(task="tinystories_small", lm=LMConfig(vocab_size=300)), data)
    with pytest.raises(ValueError, match="block_size 256"):
        LMOracle.from_config(EnvConfig(task="tinystories", lm=LMConfig(vocab_size=256)), data)


# ---- the oracle: fused validation, vmap, learning ------------------------------------------------------------


def _blended_slots(n: int = 1):
    return lifecycle.empty_slots(n).replace(
        stage=jnp.asarray([SeedStage.BLENDING] * n, jnp.int32),
        blueprint=jnp.asarray([BlueprintAction.ATTENTION] * n), seed_id=jnp.arange(n, dtype=jnp.int32),
        algorithm=jnp.asarray([AlphaAlgorithm.GATE] * n, jnp.int32))


@pytest.mark.slow  # two compiled validation passes: about a minute on a loaded 2-core CPU
def test_fused_validation_scores_per_token_and_equals_one_forward_per_row():
    oracle = make("host", SMALL).oracle
    slots = _blended_slots()
    slots = slots.replace(controller=slots.controller.replace(alpha=jnp.asarray([0.6])))
    view = slot_view(slots)
    state = oracle._sync_seeds(oracle.init(jax.random.PRNGKey(0)), view, jax.random.PRNGKey(1))
    branch = TRANSFORMER_BLUEPRINTS.index(BlueprintAction.ATTENTION)
    state = state.replace(slots=(state.slots[0].replace(seed=_trained(oracle.layouts[0], branch)),))
    configs = signals.validation_configs(slots, SMALL)
    correct, loss = jax.jit(oracle.correctness)(state, view, configs)
    k = configs.shape[0]
    assert correct.shape == loss.shape == (k, 16, 32) and correct.dtype == jnp.bool_
    fused = jax.jit(oracle.validate)(state, view, configs)
    rows = jax.jit(oracle.validate_rows)(state, view, configs)
    np.testing.assert_allclose(fused[0], rows[0], atol=0.2)  # at most one token flips on rounding
    np.testing.assert_allclose(fused[1], rows[1], rtol=1e-4)
    assert abs(float(fused[1][0] - fused[1][1])) > 1e-4  # the seed's row and its solo-off row really differ


@functools.cache
def _measure_fns():
    oracle = make("host", SMALL).oracle

    def two_epochs(key, view_a, view_b, configs):
        k0, k1, k2 = jax.random.split(key, 3)
        state = oracle.init(k0)
        state, m_a = oracle.measure(state, view_a, configs, jnp.asarray(1), k1)
        state, m_b = oracle.measure(state, view_b, configs, jnp.asarray(2), k2)
        return state, m_a, m_b

    return jax.jit(two_epochs), jax.jit(jax.vmap(two_epochs, in_axes=(0, None, None, None)))


@pytest.mark.slow  # two compiled two-epoch programs: minutes on a loaded 2-core CPU
def test_vmapped_oracle_with_the_same_key_equals_a_single_oracle():
    single, batched = _measure_fns()
    slots = lifecycle.empty_slots(1).replace(
        stage=jnp.asarray([SeedStage.GERMINATED], jnp.int32), blueprint=jnp.asarray([BlueprintAction.MLP_SMALL]),
        seed_id=jnp.asarray([0], jnp.int32))
    view_a = slot_view(slots)
    view_b = slot_view(slots.replace(stage=jnp.asarray([SeedStage.TRAINING], jnp.int32)))
    configs = signals.validation_configs(slots, SMALL)
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(0), jax.random.PRNGKey(9)])
    out = jax.tree.map(np.asarray, batched(keys, view_a, view_b, configs))
    one = jax.tree.map(np.asarray, single(keys[0], view_a, view_b, configs))
    jax.tree.map(lambda b, s: np.testing.assert_allclose(b[0], s, rtol=1e-4, atol=1e-5), out, one)
    jax.tree.map(lambda b: np.testing.assert_array_equal(b[0], b[1]), out)
    state, _, m_b = out
    assert m_b.gradient_norm[0, 0] > 0.0  # the TRAINING seed was sampled
    assert not np.array_equal(state.slots[0].seed[0], state.slots[0].seed[2])
    # fixed mode: the seedless twin equals the host while the seed only incubates (straight-through, value h)
    np.testing.assert_allclose(m_b.reference_accuracy[0], m_b.val_accuracy[0, 0], atol=1e-4)


def test_a_seedless_host_learns_the_embedded_corpus():
    oracle = make("host", SMALL).oracle
    slots = lifecycle.empty_slots(1)
    view, configs = slot_view(slots), signals.validation_configs(slots, SMALL)

    @jax.jit
    def run(key):
        def body(st, k):
            st, m = oracle.measure(st, view, configs, jnp.asarray(1), k)
            return st, (m.val_accuracy[0], m.val_loss[0])

        return jax.lax.scan(body, oracle.init(key), jax.random.split(key, 40))[1]

    acc, loss = (np.asarray(a) for a in run(jax.random.PRNGKey(0)))
    assert loss[-5:].mean() < 0.5 * loss[:5].mean(), loss
    assert acc[-5:].mean() > acc[:5].mean() + 2.0, acc


@pytest.mark.slow
def test_random_masked_episode_on_the_transformer_env_keeps_the_env_invariants():
    from tests.test_env_properties import LENGTH, _episode, check_episode

    env = make("host", EnvConfig(task="tinystories_small", episode_length=LENGTH, compat="fixed", max_seeds=4))
    records = jax.jit(functools.partial(_episode, env))(jax.random.PRNGKey(7))
    check_episode(records)
    assert int(np.asarray(records.stage_after).max()) >= SeedStage.TRAINING


@pytest.mark.slow  # compiles a whole training interval on the transformer host: minutes on a 2-core CPU
def test_the_small_preset_trains_an_interval_on_a_token_file_and_resumes(tmp_path):
    from esper_jax.train import main

    path = tmp_path / "tokens.bin"
    (np.frombuffer(tokens.__doc__.encode() * 40, np.uint8).astype(np.uint16)).tofile(path)
    common = ["--telemetry.no-progress-bar", "--telemetry.no-tensorboard", "--telemetry.no-plots"]
    run = tmp_path / "run"
    argv = ["tinystories-small", "--out", str(run), "--max-intervals", "1", "--episode-length", "4",
            "--n-episodes", "8", "--env.lm.data-path", str(path), *common]
    assert main(argv) == 0
    first = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    assert len(first) == 1 and '"env_steps": 16' in first[0]
    assert main(["--resume", str(run), *common]) == 0  # the LM host state checkpoints and restores
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
