"""Property tests of the JAX Esper env over whole episodes of random masked actions (hypothesis)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_jax import masks
from esper_jax.contracts import VALID_TRANSITIONS, LifecycleOp, PerHead, SeedStage
from esper_jax.env import EnvConfig, lifecycle, make
from esper_jax.env.reward import _FIELDS, RewardComponents

LENGTH = 30
CONFIGS = {
    "fixed": EnvConfig(episode_length=LENGTH, compat="fixed", max_seeds=4),
    "upstream": EnvConfig(episode_length=LENGTH, compat="upstream"),
}


@struct.dataclass
class Record:
    stage_before: jnp.ndarray  # [S]
    stage_after: jnp.ndarray  # [S]
    alpha: jnp.ndarray  # [S]
    op_mask: jnp.ndarray  # [6]
    op_valid_somewhere: jnp.ndarray  # [6]: some slot makes the op valid for the env
    op: jnp.ndarray
    invalid: jnp.ndarray
    reward: jnp.ndarray
    components: RewardComponents
    done: jnp.ndarray
    epoch: jnp.ndarray


def _episode(env, key):
    cfg = env.config
    mask_cfg = masks.MaskConfig(max_seeds=cfg.max_seeds, topology=cfg.resolved_topology)
    k_reset, k_run = jax.random.split(key)
    state, obs = env.reset(k_reset)

    def body(carry, k):
        state, obs = carry
        k_act, k_step = jax.random.split(k)
        m = masks.compute_env(obs, mask_cfg)
        head_keys = dict(zip(m.as_dict(), jax.random.split(k_act, 8)))
        actions = PerHead.from_dict({
            h: jax.random.categorical(head_keys[h], jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)
            for h, mask in m.as_dict().items()
        })

        def valid_for(op, slot):
            return lifecycle.execute(state.slots, actions.replace(op=op, slot=slot), state.feedback.seeds_created, cfg)[1].valid

        grid = jax.vmap(jax.vmap(valid_for, (None, 0)), (0, None))(jnp.arange(6), jnp.arange(cfg.num_slots))
        out = env.step(state, actions, k_step)
        rec = Record(
            stage_before=obs.slots.stage, stage_after=out.obs.slots.stage, alpha=out.obs.slots.current_alpha,
            op_mask=m.op, op_valid_somewhere=jnp.any(grid, axis=1), op=actions.op, invalid=out.info.invalid_action,
            reward=out.reward, components=out.info.reward_components, done=out.done, epoch=out.obs.signals.epoch,
        )
        return (out.state, out.obs), rec

    _, records = jax.lax.scan(body, (state, obs), jax.random.split(k_run, cfg.episode_length))
    return records


@functools.cache
def episode_fn(compat: str):
    env = make("sim", CONFIGS[compat])
    return jax.jit(functools.partial(_episode, env))


@functools.cache
def batched_episode_fn(compat: str):
    env = make("sim", CONFIGS[compat])
    return jax.jit(jax.vmap(functools.partial(_episode, env)))


def _reachable(a: int, b: int) -> bool:
    """b equals a or is reached through one or two legal transitions (an instant prune goes X→PRUNED→EMBARGOED in
    one step; an empty slot is DORMANT)."""
    if a == b:
        return True
    one = VALID_TRANSITIONS[SeedStage(a)]
    return b in one or any(b in VALID_TRANSITIONS[s] for s in one)


def check_episode(rec: Record) -> None:
    rec = jax.tree.map(np.asarray, rec)
    for t in range(LENGTH):
        for s in range(rec.stage_before.shape[1]):
            a, b = int(rec.stage_before[t, s]), int(rec.stage_after[t, s])
            assert _reachable(a, b), f"step {t} slot {s}: illegal {SeedStage(a).name} -> {SeedStage(b).name}"
    assert np.all((rec.alpha >= 0.0) & (rec.alpha <= 1.0))
    assert np.all(rec.op_mask[:, LifecycleOp.WAIT])
    allowed_but_illegal = rec.op_mask & ~rec.op_valid_somewhere
    assert not allowed_but_illegal.any(), np.argwhere(allowed_but_illegal)
    # The reward is RewardComponents.total() of the reported components. Inside the compiled step XLA fuses the sum
    # with the components' own arithmetic, so the two can differ by an ulp of float32: compare to that rounding.
    total64 = sum(np.asarray(getattr(rec.components, f), np.float64) for f in _FIELDS)
    np.testing.assert_allclose(rec.reward, total64, rtol=1e-6, atol=1e-7)
    assert np.all(np.isfinite(rec.reward))
    assert rec.done.tolist() == [False] * (LENGTH - 1) + [True]
    assert rec.epoch[-1] == LENGTH


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_fixed_mode_episode_invariants(seed):
    check_episode(episode_fn("fixed")(jax.random.PRNGKey(seed)))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_upstream_mode_episode_invariants(seed):
    rec = episode_fn("upstream")(jax.random.PRNGKey(seed))
    check_episode(rec)


def test_random_policy_visits_the_lifecycle():
    """Guards the properties above against a vacuous run: random masked play reaches most stages."""
    rec = jax.tree.map(np.asarray, episode_fn("fixed")(jax.random.PRNGKey(7)))
    seen = set(np.unique(rec.stage_after).tolist())
    assert {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING} <= seen
    assert len(seen) >= 5
    assert set(np.unique(rec.op).tolist()) >= {0, 1, 5}


def test_same_key_same_trajectory():
    fn = episode_fn("fixed")
    a = fn(jax.random.PRNGKey(3))
    b = fn(jax.random.PRNGKey(3))
    c = fn(jax.random.PRNGKey(4))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(np.asarray(a.reward), np.asarray(c.reward))


def test_vmap_over_64_envs_equals_single_runs():
    keys = jax.random.split(jax.random.PRNGKey(11), 64)
    batched = batched_episode_fn("fixed")(keys)
    single = episode_fn("fixed")
    for i in (0, 17, 63):
        one = single(keys[i])
        # Integer and bool leaves (stages, ops, masks, flags) must match exactly; float leaves up to the rounding
        # of batched vs single matmuls.
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(np.asarray(x)[i], np.asarray(y), rtol=1e-5, atol=2e-5),
            batched, one,
        )
