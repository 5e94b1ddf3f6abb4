"""PPO core: golden GAE vectors, loss semantics (causal masks, value clip, KL), config validation and normalisers.
The compiled update and the learning test on a recurrent cue task are in test_ppo_update.py."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax import normalization, ppo
from esper_jax.contracts import CAUSAL_RELEVANCE, HEAD_NAMES, LifecycleOp, PerHead
from esper_jax.network import LSTMCarry

# ---------------------------------------------------------------------------------------------------------------
# GAE (docs/policy-and-ppo.md#ppo-update golden vectors, computed by hand and with the upstream buffer code in float32)
# ---------------------------------------------------------------------------------------------------------------

R = np.array([[1.0, 0.0, 2.0]], np.float32)
V = np.array([[0.5, 0.2, 0.1]], np.float32)
LAST = np.array([[False, False, True]])


def test_gae_golden_truncated_with_bootstrap():
    adv, ret = ppo.gae(R, V, LAST, LAST, np.array([[0.0, 0.0, 0.4]]), gamma=0.995, gae_lambda=0.98)
    np.testing.assert_allclose(adv[0], [2.785987, 2.140280, 2.298000], atol=1e-5)
    np.testing.assert_allclose(ret[0], [3.285987, 2.340280, 2.398000], atol=1e-5)
    np.testing.assert_allclose(ppo.normalize_advantages(adv)[0], [1.374862, -0.974339, -0.400523], atol=1e-5)


def test_gae_golden_true_terminal():
    # Done but not truncated: next value 0 — a bootstrap value present in the buffer must be ignored.
    adv, ret = ppo.gae(R, V, LAST, ~LAST & LAST, np.array([[0.0, 0.0, 0.4]]), gamma=0.995, gae_lambda=0.98)
    np.testing.assert_allclose(adv[0], [2.407560, 1.752190, 1.900000], atol=1e-5)
    np.testing.assert_allclose(ret[0], [2.907560, 1.952190, 2.0], atol=1e-5)
    np.testing.assert_allclose(ppo.normalize_advantages(adv)[0], [1.381142, -0.953888, -0.427253], atol=1e-5)


def test_gae_golden_per_env_isolation_fixture():
    rewards = np.array([[1.0, 1.0, 1.0], [100.0, 100.0, 100.0]], np.float32)
    values = np.array([[1.0, 1.0, 1.0], [50.0, 50.0, 50.0]], np.float32)
    dones = np.array([[False, False, True]] * 2)
    adv, _ = ppo.gae(rewards, values, dones, np.zeros_like(dones), np.zeros((2, 3)), gamma=0.99, gae_lambda=0.95)
    np.testing.assert_allclose(adv[0], [1.921095, 0.99, 0.0], atol=1e-5)
    np.testing.assert_allclose(adv[1], [237.306763, 146.525, 50.0], atol=1e-4)  # float32 at magnitude 237


def test_gae_padding_mid_terminal_and_non_final_truncation():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(1, 8)).astype(np.float32)
    v = rng.normal(size=(1, 8)).astype(np.float32)
    b = rng.normal(size=(1, 8)).astype(np.float32)
    dones = np.zeros((1, 8), bool)
    trunc = np.zeros((1, 8), bool)
    dones[0, 2] = True  # true terminal mid-sequence: no value flows back across it
    dones[0, 4] = trunc[0, 4] = True  # a truncation that is not the last valid step: its bootstrap is unused
    adv, ret = ppo.gae(r, v, dones, trunc, b, gamma=0.9, gae_lambda=0.8, lengths=jnp.array([6]))
    # Hand recursion of GAE over the 6 valid steps.
    expected = np.zeros(6, np.float64)
    last = 0.0
    for t in reversed(range(6)):
        if t == 5:
            nv, nnt = 0.0, 1.0  # neither done nor truncated: shutdown-style end, next value 0, nnt 1
        else:
            nv, nnt = v[0, t + 1], 1.0 - float(dones[0, t] and not trunc[0, t])
        if dones[0, t] and not trunc[0, t]:
            last = 0.0
        last = r[0, t] + 0.9 * nv * nnt - v[0, t] + 0.9 * 0.8 * nnt * last
        expected[t] = last
    np.testing.assert_allclose(adv[0, :6], expected, atol=1e-5)
    np.testing.assert_allclose(ret[0, :6], expected + v[0, :6], atol=1e-5)
    assert np.all(np.asarray(adv)[0, 6:] == 0) and np.all(np.asarray(ret)[0, 6:] == 0)


def test_normalize_advantages_population_std_over_valid_only():
    a = jnp.array([[1.0, 2.0, 3.0, 100.0]])
    valid = jnp.array([[True, True, True, False]])
    out = np.asarray(ppo.normalize_advantages(a, valid))[0]
    np.testing.assert_allclose(out[:3], (np.array([1, 2, 3]) - 2.0) / (np.std([1, 2, 3]) + 1e-8), rtol=1e-6)
    assert out[3] == 0.0
    single = ppo.normalize_advantages(jnp.array([[5.0]]))
    assert float(single[0, 0]) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Loss semantics (pure factored_loss, no network)
# ---------------------------------------------------------------------------------------------------------------


def _loss_inputs(seed: int = 0, b: int = 3, t: int = 10):
    rng = np.random.default_rng(seed)
    ops = jnp.asarray(rng.integers(0, 6, (b, t)), jnp.int32)
    per_head = lambda f: PerHead(**{h: jnp.asarray(f(h), jnp.float32) for h in HEAD_NAMES})  # noqa: E731
    old = per_head(lambda h: rng.normal(-1.0, 0.3, (b, t)))
    new = per_head(lambda h: np.asarray(getattr(old, h)) + rng.normal(0, 0.3, (b, t)))
    ent = per_head(lambda h: rng.uniform(0, 1, (b, t)))
    zeros_i = jnp.zeros((b, t), jnp.int32)
    batch = ppo.Batch(
        features=jnp.zeros((b, t, 1)),
        blueprint_indices=jnp.zeros((b, t, 1), jnp.int32),
        actions=PerHead(**{h: (ops if h == "op" else zeros_i) for h in HEAD_NAMES}),
        log_probs=old,
        masks=PerHead(**{h: jnp.ones((b, t, 1), bool) for h in HEAD_NAMES}),
        values=jnp.asarray(rng.normal(0, 5, (b, t)), jnp.float32),
        returns=jnp.asarray(rng.normal(0, 5, (b, t)), jnp.float32),
        advantages=jnp.asarray(rng.normal(0, 1, (b, t)), jnp.float32),
        valid=jnp.ones((b, t), bool).at[-1, -3:].set(False),
        initial_carry=LSTMCarry(h=jnp.zeros((b, 1, 1)), c=jnp.zeros((b, 1, 1))),
    )
    new_values = batch.values + jnp.asarray(rng.normal(0, 15, (b, t)), jnp.float32)  # beyond the ±10 clip
    return new, ent, new_values, batch


def test_causal_masks_zero_irrelevant_heads_gradient_and_loss():
    new, ent, new_values, batch = _loss_inputs()
    cfg = ppo.PPOConfig()
    coef = jnp.float32(0.05)

    def loss_of(log_probs, entropies):
        return ppo.factored_loss(log_probs, entropies, new_values, batch, coef, cfg).loss

    g_lp, g_ent = jax.grad(loss_of, argnums=(0, 1))(new, ent)
    relevant = np.asarray(CAUSAL_RELEVANCE)[np.asarray(batch.actions.op)]  # [b, t, head]
    valid = np.asarray(batch.valid)
    for i, h in enumerate(HEAD_NAMES):
        irrelevant = ~(relevant[..., i] & valid)
        assert np.all(np.asarray(getattr(g_lp, h))[irrelevant] == 0.0), h
        assert np.all(np.asarray(getattr(g_ent, h))[irrelevant] == 0.0), h
        if (~irrelevant).any():
            assert np.any(np.asarray(getattr(g_lp, h))[~irrelevant] != 0.0), h

    # Perturbing an irrelevant head's log-probs and entropies (here: slot under WAIT) changes nothing at all.
    wait = np.asarray(batch.actions.op) == LifecycleOp.WAIT
    assert wait.any()
    noise = jnp.where(jnp.asarray(wait), 3.0, 0.0)
    perturbed = new.replace(slot=new.slot + noise, blueprint=new.blueprint - noise)
    perturbed_ent = ent.replace(slot=ent.slot * jnp.where(jnp.asarray(wait), 0.0, 1.0))
    base = ppo.factored_loss(new, ent, new_values, batch, coef, cfg)
    other = ppo.factored_loss(perturbed, perturbed_ent, new_values, batch, coef, cfg)
    assert float(base.loss) == float(other.loss)
    assert float(base.approx_kl) == float(other.approx_kl)
    # ...while perturbing a relevant entry (the op head is always relevant) does change it.
    moved = ppo.factored_loss(new.replace(op=new.op + noise), ent, new_values, batch, coef, cfg)
    assert float(moved.loss) != float(base.loss)


def test_factored_loss_matches_hand_formula():
    new, ent, new_values, batch = _loss_inputs(seed=1)
    coef = 0.05
    for clip_value in (True, False):
        cfg = ppo.PPOConfig(clip_value=clip_value)
        info = ppo.factored_loss(new, ent, new_values, batch, jnp.float32(coef), cfg)
        valid = np.asarray(batch.valid)
        rel = np.asarray(CAUSAL_RELEVANCE)[np.asarray(batch.actions.op)] & valid[..., None]
        adv = np.asarray(batch.advantages, np.float64)
        n = valid.sum()
        policy_loss, entropy, kl_num, kl_den = 0.0, 0.0, 0.0, 0.0
        for i, h in enumerate(HEAD_NAMES):
            m = rel[..., i]
            d = np.asarray(getattr(new, h), np.float64) - np.asarray(getattr(batch.log_probs, h), np.float64)
            ratio = np.exp(np.clip(d, -20, 20))
            a = adv * m
            surr = np.minimum(ratio * a, np.clip(ratio, 0.8, 1.2) * a)
            head = -(surr * m).sum() / max(m.sum(), 1)
            np.testing.assert_allclose(float(getattr(info.policy_loss_per_head, h)), head, rtol=1e-5, atol=1e-6)
            policy_loss += head
            entropy += cfg.head_entropy_coefs[h] * (np.asarray(getattr(ent, h)) * m).sum() / max(m.sum(), 1)
            w = max(m.sum(), 1) / n
            kl_num += w * ((np.exp(d) - 1 - d) * m).sum() / max(m.sum(), 1)
            kl_den += w
        q_new, q_old, ret = (np.asarray(x, np.float64) for x in (new_values, batch.values, batch.returns))
        if clip_value:
            clipped = q_old + np.clip(q_new - q_old, -10, 10)
            value = 0.5 * np.maximum((q_new - ret) ** 2, (clipped - ret) ** 2)[valid].mean()
        else:
            value = ((q_new - ret) ** 2)[valid].mean()  # no 0.5 on the unclipped branch (upstream)
        np.testing.assert_allclose(float(info.value_loss), value, rtol=1e-5)
        np.testing.assert_allclose(float(info.policy_loss), policy_loss, rtol=1e-5)
        np.testing.assert_allclose(float(info.entropy), entropy, rtol=1e-5)
        np.testing.assert_allclose(float(info.approx_kl), kl_num / kl_den, rtol=1e-5)
        np.testing.assert_allclose(float(info.loss), policy_loss + 0.5 * value - coef * entropy, rtol=1e-5)
        op_ratio = np.exp(np.asarray(new.op) - np.asarray(batch.log_probs.op))[valid]
        np.testing.assert_allclose(float(info.clip_fraction), np.mean(np.abs(op_ratio - 1) > 0.2), rtol=1e-6)


def test_entropy_coefficient_schedule():
    assert float(ppo.entropy_coefficient(ppo.PPOConfig(), 7)) == pytest.approx(0.05)
    assert float(ppo.entropy_coefficient(ppo.PPOConfig(entropy_coef=0.001), 0)) == pytest.approx(0.01)  # floor
    cfg = ppo.PPOConfig(entropy_coef_start=0.06, entropy_coef_end=0.03, entropy_anneal_steps=50)
    assert float(ppo.entropy_coefficient(cfg, 0)) == pytest.approx(0.06)
    assert float(ppo.entropy_coefficient(cfg, 25)) == pytest.approx(0.045)
    assert float(ppo.entropy_coefficient(cfg, 500)) == pytest.approx(0.03)
    no_endpoints = ppo.PPOConfig(entropy_coef=0.07, entropy_anneal_steps=10)  # start/end default to the coef
    assert float(ppo.entropy_coefficient(no_endpoints, 5)) == pytest.approx(0.07)


def test_ppo_config_defaults_and_validation():
    cfg = ppo.PPOConfig()
    assert (cfg.gamma, cfg.gae_lambda, cfg.clip_ratio, cfg.value_coef, cfg.value_clip) == (0.995, 0.98, 0.2, 0.5, 10.0)
    assert (cfg.entropy_coef, cfg.entropy_coef_min, cfg.learning_rate, cfg.adam_eps) == (0.05, 0.01, 3e-4, 1e-5)
    assert (cfg.max_grad_norm, cfg.target_kl, cfg.epochs, cfg.minibatches) == (1.0, 0.015, 1, 1)
    assert cfg.kl_threshold == pytest.approx(0.0225)
    assert cfg.head_entropy_coefs == ppo.ENTROPY_COEF_PER_HEAD
    hash(cfg)  # a jit static argument
    custom = ppo.PPOConfig(entropy_coef_per_head=ppo.PPOConfig.head_weights({"op": 2.0}))
    assert custom.head_entropy_coefs["op"] == 2.0 and custom.head_entropy_coefs["blueprint"] == 1.0
    assert ppo.PPOConfig(target_kl=None).kl_threshold is None
    for kwargs, field in [
        (dict(gamma=0.0), "gamma"),
        (dict(gamma=1.5), "gamma"),
        (dict(gae_lambda=-0.1), "gae_lambda"),
        (dict(clip_ratio=0.0), "clip_ratio"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(entropy_coef=-1.0), "entropy_coef"),
        (dict(target_kl=0.0), "target_kl"),
        (dict(epochs=0), "epochs"),
        (dict(minibatches=0), "minibatches"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
        (dict(value_clip=0.0), "value_clip"),
        (dict(entropy_anneal_steps=-1), "entropy_anneal_steps"),
        (dict(entropy_coef_per_head=(("opp", 1.0),)), "entropy_coef_per_head"),
        (dict(entropy_coef_per_head={"op": 1.0}), "entropy_coef_per_head"),  # a mapping is not hashable
        (dict(entropy_coef_per_head=(("op", 1.0), ("slot", 1.0))), "entropy_coef_per_head"),  # not in head order
        (dict(compat="latest"), "compat"),
    ]:
        with pytest.raises(ValueError, match=field):
            ppo.PPOConfig(**kwargs)
    with pytest.raises(TypeError, match="epochs"):
        ppo.PPOConfig(epochs=2.0)
    assert ppo.PPOConfig(gamma=1.0).gamma == 1.0 and ppo.PPOConfig(entropy_coef=0.0).entropy_coef == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Normalisers (docs/environment.md#reward-normalisation)
# ---------------------------------------------------------------------------------------------------------------


def test_obs_normaliser_init_clip_and_ema_update():
    stats = normalization.init(3)
    np.testing.assert_allclose(normalization.normalize(stats, jnp.array([1.0, -200.0, 200.0])),
                               [1.0 / math.sqrt(1.0001), -10.0, 10.0], rtol=1e-6)
    rng = np.random.default_rng(0)
    batch = rng.normal(3.0, 2.0, (7, 5, 3)).astype(np.float32)  # leading axes are all samples
    updated = normalization.update(stats, batch)
    flat = batch.reshape(-1, 3).astype(np.float64)
    mu, var = flat.mean(0), flat.var(0)  # population variance
    np.testing.assert_allclose(updated.mean, 0.01 * mu, rtol=1e-5)
    np.testing.assert_allclose(updated.var, 0.99 * 1.0 + 0.01 * var + 0.99 * 0.01 * mu**2, rtol=1e-5)
    assert float(updated.count) == pytest.approx(1e-4 + 35)
    # Padded rows are ignored; an empty batch changes nothing.
    valid = np.zeros((7, 5), bool)
    valid[:2] = True
    masked = normalization.update(stats, batch, valid)
    sub = batch[:2].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(masked.mean, 0.01 * sub.mean(0), rtol=1e-5)
    unchanged = normalization.update(stats, batch, np.zeros((7, 5), bool))
    with pytest.raises(ValueError, match=r"valid must have the leading shape of x \(7, 5\)"):
        normalization.update(stats, batch, np.ones((35,), bool))
    np.testing.assert_array_equal(unchanged.mean, stats.mean)
    # Without momentum: the full parallel-Welford merge.
    welford = normalization.update(normalization.init(3, momentum=None), batch)
    np.testing.assert_allclose(welford.mean, flat.sum(0) / (35 + 1e-4), rtol=1e-4)


def test_reward_normaliser_upstream_examples():
    s = normalization.reward_init()
    s5, out = normalization.reward_update_and_normalize(s, 5.0)
    assert float(out) == 5.0 and int(s5.count) == 1
    _, out = normalization.reward_update_and_normalize(normalization.reward_init(), 100.0)
    assert float(out) == 10.0  # first sample: clipped raw
    _, out = normalization.reward_update_and_normalize(s5, 5.0)
    assert float(out) == 10.0  # two identical samples: std floor 1e-8, clipped
    assert float(normalization.reward_normalize_only(s5, 50.0)) == 10.0  # fewer than 2 samples: clip only
    stats = normalization.reward_init()
    for r in (2.0, 4.0, 6.0, 8.0):
        stats, _ = normalization.reward_update_and_normalize(stats, r)
    assert float(stats.mean) == pytest.approx(5.0)
    assert 1.0 < float(normalization.reward_normalize_only(stats, 5.0)) < 3.0
    assert int(stats.count) == 4  # normalize_only did not update


# ---------------------------------------------------------------------------------------------------------------
# The compiled update, on trajectories of a recurrent cue task
# ---------------------------------------------------------------------------------------------------------------
