"""ppo.update on a toy recurrent task: determinism and metrics, non-finite flags, epochs/minibatches, the KL early
stop, and learning a recurrent cue task that a memoryless policy cannot solve (float32 and bf16 matmuls)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from esper_jax import normalization, ppo, rollout
from esper_jax.contracts import LifecycleOp, PerHead
from esper_jax.observation import empty_observation
from tests.conftest import NET_1_SLOT


@struct.dataclass
class CueState:
    t: jax.Array
    cue: jax.Array


@dataclasses.dataclass(frozen=True)
class CueEnv:
    """A coin flip is shown at step 0 only (val_accuracy 100 or 0; 50 afterwards); at the last step the op must
    be GERMINATE for heads and WAIT for tails (reward 1, else 0). With an empty slot exactly those two ops are
    valid, so a policy without memory scores 0.5 at best. The observation carries nothing else that could leak
    the cue (last_action_op stays WAIT), so only the LSTM state can carry it."""

    length: int = 3
    num_slots: int = 1

    def _observe(self, state: CueState):
        obs = empty_observation(self.num_slots)
        accuracy = jnp.where(state.t == 0, jnp.where(state.cue, 100.0, 0.0), 50.0).astype(jnp.float32)
        return obs.replace(signals=obs.signals.replace(epoch=state.t, val_accuracy=accuracy))

    def reset(self, key):
        state = CueState(t=jnp.zeros((), jnp.int32), cue=jax.random.bernoulli(key))
        return state, self._observe(state)

    def step(self, state, actions, key):
        decide = state.t == self.length - 1
        target = jnp.where(state.cue, int(LifecycleOp.GERMINATE), int(LifecycleOp.WAIT))
        reward = jnp.where(decide & (actions.op == target), 1.0, 0.0).astype(jnp.float32)
        nxt = state.replace(t=state.t + 1)
        return rollout.StepOutput(
            state=nxt, obs=self._observe(nxt), reward=reward, done=decide, truncated=jnp.asarray(False)
        )


CUE = CueEnv()
NET = NET_1_SLOT

ROLLOUT = rollout.RolloutConfig(num_steps=CUE.length, compat="fixed")
NUM_ENVS = 64
LEARN = ppo.PPOConfig(learning_rate=2e-3, entropy_coef=0.01, epochs=2, minibatches=2)
SINGLE = dataclasses.replace(LEARN, epochs=1, minibatches=1)


@pytest.fixture(scope="module")
def start():
    state = ppo.create_train_state(jax.random.PRNGKey(0), LEARN, NET)
    runner = rollout.init_runner(CUE, NET, NUM_ENVS, jax.random.PRNGKey(1))
    runner, traj, metrics = rollout.collect(
        CUE, state.params, runner, state.obs_stats, jax.random.PRNGKey(2), network_config=NET, config=ROLLOUT
    )
    return state, runner, traj, metrics


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_update_is_deterministic_for_a_key_and_reports_metrics(start):
    state, _, traj, _ = start
    a, ma = ppo.update(state, traj, jax.random.PRNGKey(5), config=LEARN, network_config=NET)
    b, mb = ppo.update(state, traj, jax.random.PRNGKey(5), config=LEARN, network_config=NET)
    c, _ = ppo.update(state, traj, jax.random.PRNGKey(6), config=LEARN, network_config=NET)
    assert _leaves_equal(a, b) and _leaves_equal(ma, mb)
    assert not _leaves_equal(a.params, c.params)  # another key shuffles the minibatches differently

    assert int(a.train_steps) == 1 and int(ma.steps_applied) == 4 and not bool(ma.early_stopped)
    expected = {
        "policy_loss", "policy_loss_per_head", "value_loss", "entropy", "entropy_per_head", "loss", "approx_kl",
        "clip_fraction", "clip_fraction_positive", "clip_fraction_negative", "ratio_mean", "ratio_max", "ratio_min",
        "explained_variance", "grad_norm", "early_stopped", "steps_applied", "entropy_coef", "advantage_mean",
        "advantage_std", "mask_error", "loss_nonfinite", "grad_nonfinite", "param_nonfinite",
    }
    assert {f.name for f in dataclasses.fields(ma)} == expected
    n_leaves = len(jax.tree.leaves(state.params))
    assert ma.grad_nonfinite.shape == ma.param_nonfinite.shape == (n_leaves,)
    assert not (bool(ma.loss_nonfinite) or ma.grad_nonfinite.any() or ma.param_nonfinite.any())
    assert isinstance(ma.policy_loss_per_head, PerHead) and isinstance(ma.entropy_per_head, PerHead)
    for leaf in jax.tree.leaves(ma):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
    assert float(ma.grad_norm) > 0 and 0 < float(ma.entropy_per_head.op) <= 1.0
    # Policy loss = sum of the per-head terms.
    np.testing.assert_allclose(float(ma.policy_loss), sum(jax.tree.leaves(ma.policy_loss_per_head)), rtol=1e-5)
    # The obs normaliser took one EMA step from this batch's raw states.
    expected_stats = normalization.update(state.obs_stats, traj.raw_features)
    np.testing.assert_allclose(a.obs_stats.mean, expected_stats.mean, rtol=1e-6, atol=1e-7)


def test_update_flags_nonfinite_leaves_from_its_own_gradients(start):
    """One poisoned leaf: the flags name exactly the leaves whose gradient / new value went NaN, in flatten order."""
    state, _, traj, _ = start
    flat, treedef = jax.tree_util.tree_flatten_with_path(state.params)
    paths = [jax.tree_util.keystr(p) for p, _ in flat]
    target = next(i for i, p in enumerate(paths) if "value_head" in p and "kernel" in p)
    leaves = [x.at[(0,) * x.ndim].set(jnp.nan) if i == target else x for i, (_, x) in enumerate(flat)]
    poisoned = state.replace(params=jax.tree_util.tree_unflatten(treedef, leaves))
    _, m = ppo.update(poisoned, traj, jax.random.PRNGKey(5), config=LEARN, network_config=NET)
    assert bool(m.loss_nonfinite) and np.asarray(m.param_nonfinite)[target]
    grad_flags = np.asarray(m.grad_nonfinite)
    assert grad_flags[target] and grad_flags.shape == (len(paths),)


def test_epochs_and_minibatches_change_the_update(start):
    state, _, traj, _ = start
    multi, m_multi = ppo.update(state, traj, jax.random.PRNGKey(5), config=LEARN, network_config=NET)
    single, m_single = ppo.update(state, traj, jax.random.PRNGKey(5), config=SINGLE, network_config=NET)
    assert int(m_single.steps_applied) == 1 and int(m_multi.steps_applied) == 4
    moved = lambda s: max(  # noqa: E731
        float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(s.params), jax.tree.leaves(state.params))
    )
    # Adam's first step moves a weight by at most ~lr; four steps move further.
    assert moved(single) <= 1.01 * SINGLE.learning_rate
    assert moved(multi) > 1.5 * LEARN.learning_rate
    # Adam's step counter saw one and four updates.
    counts = lambda s: [int(x) for x in jax.tree.leaves(s.opt_state) if jnp.ndim(x) == 0 and x.dtype == jnp.int32]  # noqa: E731
    assert set(counts(single)) == {1} and set(counts(multi)) == {4}
    with pytest.raises(ValueError, match="minibatches"):
        ppo.minibatch_order(jax.random.PRNGKey(0), 6, dataclasses.replace(LEARN, minibatches=4))
    order = np.asarray(ppo.minibatch_order(jax.random.PRNGKey(0), 8, dataclasses.replace(LEARN, epochs=3)))
    assert order.shape == (6, 4) and all(sorted(order[2 * e:2 * e + 2].ravel()) == list(range(8)) for e in range(3))
    # Each minibatch holds one env of every group of `minibatches` neighbours, in group order (so a device holding
    # whole groups picks its share locally), and the deal differs between epochs.
    assert all(list(row // 2) == [0, 1, 2, 3] for row in order)
    assert len({tuple(order[2 * e]) for e in range(3)}) > 1


def _primitive_names(jaxpr) -> set[str]:
    """Every primitive in a jaxpr, nested ones (scan bodies, cond branches, pjit calls) included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitive_names(inner)
    return names


def test_single_step_update_runs_without_a_cond(start):
    """The default single step (1 epoch × 1 minibatch) always runs, so it is called straight: no length-1 scan with
    a cond around it (whose branch boundary made XLA copy params and Adam state). Several steps keep the cond,
    which skips the steps after a KL stop."""
    state, _, traj, _ = start

    def names(config):
        jaxpr = jax.make_jaxpr(lambda s, t, k: ppo.update(s, t, k, config=config, network_config=NET))(
            state, traj, jax.random.PRNGKey(0))
        return _primitive_names(jaxpr.jaxpr)

    assert "cond" not in names(SINGLE)
    assert "cond" in names(LEARN)


def test_select_minibatch_is_indexing_by_the_order(start):
    state, _, traj, _ = start
    config = dataclasses.replace(LEARN, minibatches=4)
    batch, _ = ppo.prepare_batch(traj, config)
    order = ppo.minibatch_order(jax.random.PRNGKey(1), batch.valid.shape[0], config)
    for row in np.asarray(order):
        picked = ppo.select_minibatch(batch, jnp.asarray(row), config.minibatches)
        for got, want in zip(jax.tree.leaves(picked), jax.tree.leaves(batch), strict=True):
            np.testing.assert_array_equal(got, np.asarray(want)[row])


def test_kl_early_stop_leaves_params_and_optimizer_untouched(start):
    state, _, traj, _ = start
    # Old log-probs one nat below the current ones: KL3 = e − 2 ≈ 0.72 per relevant step, far above 0.0225.
    stale = traj.replace(log_probs=traj.log_probs.map(lambda x: x - 1.0))
    new, metrics = ppo.update(state, stale, jax.random.PRNGKey(5), config=LEARN, network_config=NET)
    assert bool(metrics.early_stopped) and int(metrics.steps_applied) == 0  # stopped before the first of 4 steps
    assert _leaves_equal(new.params, state.params) and _leaves_equal(new.opt_state, state.opt_state)
    assert int(new.train_steps) == 1  # counted anyway, as upstream
    # e − 2 exactly for every head with a relevant step; heads with none (alpha_speed/curve: their ops are masked
    # here) add weight 1/N with KL 0, pulling the average down by well under 1 %.
    assert float(metrics.approx_kl) == pytest.approx(math.e - 2.0, rel=1e-2)
    assert math.isnan(float(metrics.policy_loss)) and math.isnan(float(metrics.grad_norm))  # no step taken
    # The same config on the fresh trajectory takes all four steps (test_update_is_deterministic...), so the stop
    # came from the KL check alone.


# Learning is judged on the mean over seeds, not one seed: which seeds learn fast depends on float rounding, which
# differs between CPUs (AVX2 vs AVX-512, native bf16 or not). Measured on an AVX-512 CPU with native bf16, 32 seeds:
# float32 late-10 mean 0.963 (sd 0.092, min 0.494: one seed in 32 stays memoryless), bf16 0.965 (sd 0.086, min 0.567);
# the means of four disjoint blocks of 8 seeds ranged 0.917-0.990 (f32) and 0.937-0.989 (bf16). Seed 0 alone gave
# 0.747 with bf16 there (≥ 0.8 on AVX2). A mean of 8 seeds falls to 0.8 only if about three of them stay memoryless.
CUE_SEEDS = tuple(range(8))
CUE_BAR = 0.8


def _cue_late_return(net, seed: int, iterations: int = 70) -> float:
    """Mean return of the last 10 of ``iterations`` batches, training from seed ``seed`` (seed 0: the keys of
    ``start``)."""
    state = ppo.create_train_state(jax.random.PRNGKey(seed), LEARN, net)
    runner = rollout.init_runner(CUE, net, NUM_ENVS, jax.random.PRNGKey(seed + 1))
    runner, traj, _ = rollout.collect(
        CUE, state.params, runner, state.obs_stats, jax.random.PRNGKey(seed + 2), network_config=net, config=ROLLOUT
    )
    key = jax.random.PRNGKey(10 + seed)
    returns = []
    for _ in range(iterations):
        key, k_update, k_collect = jax.random.split(key, 3)
        state, _ = ppo.update(state, traj, k_update, config=LEARN, network_config=net)
        runner, traj, metrics = rollout.collect(
            CUE, state.params, runner, state.obs_stats, k_collect, network_config=net, config=ROLLOUT
        )
        returns.append(float(metrics.mean_episode_return))
    return float(np.mean(returns[-10:]))


def test_ppo_learns_the_recurrent_cue_task(start):
    """A memoryless policy scores ≤ 0.5 in expectation; the std of a 640-episode mean at p = 0.5 is 0.02, so a
    mean of 0.8 over the last 10 batches and 8 seeds is far from anything a policy without recurrence reaches."""
    _, _, _, first_metrics = start
    assert abs(float(first_metrics.mean_episode_return) - 0.5) < 0.2  # the fresh policy is near-uniform
    late = [_cue_late_return(NET, seed) for seed in CUE_SEEDS]
    print(f"cue task mean return of the last 10 batches per seed: {np.round(late, 3)}, mean {np.mean(late):.3f}")
    assert np.mean(late) >= CUE_BAR


def test_ppo_learns_the_recurrent_cue_task_with_bf16_matmuls():
    """The same task with every matmul in bfloat16 (float32 params, accumulation and optimiser): the memory
    must survive the rounding of the LSTM's kernels and state."""
    net = dataclasses.replace(NET, matmul_dtype="bfloat16")
    state = ppo.create_train_state(jax.random.PRNGKey(0), LEARN, net)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
    late = [_cue_late_return(net, seed) for seed in CUE_SEEDS]
    print(f"cue task with bf16 matmuls, last 10 batches per seed: {np.round(late, 3)}, mean {np.mean(late):.3f}")
    assert np.mean(late) >= CUE_BAR
