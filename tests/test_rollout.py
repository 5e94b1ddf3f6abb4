"""Rollout collection: shapes, auto-reset, LSTM carry reset at episode starts, stored states per compat, the
truncation bootstrap per compat, and reward normalisation order."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from esper_jax import features as features_mod
from esper_jax import masks as masks_mod
from esper_jax import normalization, policy, rollout
from esper_jax.contracts import HEAD_NAMES, feature_size
from esper_jax.observation import empty_observation
from tests.conftest import NET_2_SLOTS as NET

NUM_ENVS = 3
NUM_STEPS = 11
TERMINAL_LENGTH = 3  # episodes of this length end in a true terminal; 4 and 5 are truncated


@struct.dataclass
class CounterState:
    t: jax.Array
    length: jax.Array


@dataclasses.dataclass(frozen=True)
class CounterEnv:
    """Episodes of 3, 4 or 5 steps (drawn at reset); the observation depends only on the step count, so a test
    can rebuild any post-step observation. Reward = 1 + t + op, so rewards expose the action stream."""

    num_slots: int = 2

    def observe(self, t: jax.Array) -> object:
        obs = empty_observation(self.num_slots)
        t = jnp.asarray(t, jnp.int32)
        signals = obs.signals.replace(
            epoch=t, val_accuracy=10.0 * t.astype(jnp.float32), val_loss=0.5 * t.astype(jnp.float32)
        )
        return obs.replace(signals=signals)

    def reset(self, key):
        state = CounterState(t=jnp.zeros((), jnp.int32), length=jax.random.randint(key, (), 3, 6))
        return state, self.observe(state.t)

    def step(self, state, actions, key):
        t = state.t + 1
        done = t >= state.length
        return rollout.StepOutput(
            state=state.replace(t=t),
            obs=self.observe(t),
            reward=(1.0 + state.t + actions.op).astype(jnp.float32),
            done=done,
            truncated=done & (state.length != TERMINAL_LENGTH),
            info={"op": actions.op, "ended": done},
        )


ENV = CounterEnv()


def counter_info_totals(info):
    """RolloutConfig.info_totals for CounterEnv: one env-step's info → additive counts."""
    return {"steps": jnp.ones((), jnp.int32), "op_sum": info["op"], "ended": info["ended"].astype(jnp.int32)}


@pytest.fixture(scope="module")
def params():
    return jax.jit(policy.init, static_argnums=1)(jax.random.PRNGKey(0), NET)


@pytest.fixture(scope="module")
def obs_stats():
    # Far from identity so normalised and raw states differ visibly.
    rng = np.random.default_rng(1)
    d = feature_size(NET.num_slots)
    return normalization.init(d).replace(
        mean=jnp.asarray(rng.normal(0, 0.3, d), jnp.float32), var=jnp.asarray(rng.uniform(0.2, 3.0, d), jnp.float32)
    )


def _collect(params, obs_stats, compat: str, normalize_rewards: bool = True, info_totals=None):
    config = rollout.RolloutConfig(num_steps=NUM_STEPS, compat=compat, normalize_rewards=normalize_rewards,
                                   info_totals=info_totals)
    runner = rollout.init_runner(ENV, NET, NUM_ENVS, jax.random.PRNGKey(3))
    return runner, *rollout.collect(
        ENV, params, runner, obs_stats, jax.random.PRNGKey(4), network_config=NET, config=config
    )


@pytest.fixture(scope="module")
def fixed_run(params, obs_stats):
    return _collect(params, obs_stats, "fixed", info_totals=counter_info_totals)


@pytest.fixture(scope="module")
def upstream_run(params, obs_stats):
    return _collect(params, obs_stats, "upstream")


def _episode_starts(done: np.ndarray) -> np.ndarray:
    """[T, E] bool: True where a step is the first of an episode."""
    starts = np.zeros_like(done)
    starts[0] = True
    starts[1:] = done[:-1]
    return starts


def test_trajectory_shapes_and_dtypes(fixed_run):
    _, _, traj, metrics = fixed_run
    t, e, d, s = NUM_STEPS, NUM_ENVS, feature_size(NET.num_slots), NET.num_slots
    assert traj.features.shape == traj.raw_features.shape == (t, e, d)
    assert traj.blueprint_indices.shape == (t, e, s) and traj.blueprint_indices.dtype == jnp.int32
    sizes = NET.head_sizes
    for head in HEAD_NAMES:
        assert getattr(traj.actions, head).shape == (t, e) and getattr(traj.actions, head).dtype == jnp.int32
        assert getattr(traj.log_probs, head).shape == (t, e)
        assert getattr(traj.masks, head).shape == (t, e, sizes[head]) and getattr(traj.masks, head).dtype == bool
    for name in ("value", "reward", "raw_reward", "bootstrap_value"):
        assert getattr(traj, name).shape == (t, e) and getattr(traj, name).dtype == jnp.float32
    for name in ("done", "truncated", "valid"):
        assert getattr(traj, name).shape == (t, e) and getattr(traj, name).dtype == bool
    assert traj.initial_carry.h.shape == traj.initial_carry.c.shape == (e, NET.lstm_layers, NET.hidden_dim)
    assert bool(jnp.all(traj.valid))
    assert not bool(metrics.mask_error) and not bool(metrics.nonfinite_error)
    assert int(metrics.episodes_completed) == int(jnp.sum(traj.done)) > NUM_ENVS  # several episodes per env


def test_auto_reset_restarts_the_observation(fixed_run):
    _, runner, traj, _ = fixed_run
    epoch = np.rint(np.asarray(traj.raw_features[..., 0]) * 150.0).astype(int)  # base feature 0 = epoch / 150
    done = np.asarray(traj.done)
    starts = _episode_starts(done)
    # The step count since the episode start is what the env reports: 0 at every start, +1 each step.
    expected = np.zeros_like(epoch)
    for t in range(1, NUM_STEPS):
        expected[t] = np.where(starts[t], 0, expected[t - 1] + 1)
    np.testing.assert_array_equal(epoch, expected)
    # Episode lengths are 3..5 and the flags follow the env's rule.
    lengths = expected[done] + 1
    assert set(lengths.tolist()) <= {3, 4, 5}
    np.testing.assert_array_equal(np.asarray(traj.truncated)[done], lengths != TERMINAL_LENGTH)
    assert not np.any(np.asarray(traj.truncated) & ~done)
    # The runner continues mid-episode with a raw return that sums only the unfinished episode.
    last_start = np.array([np.max(np.nonzero(starts[:, e])[0]) for e in range(NUM_ENVS)])
    partial = np.array(
        [0.0 if done[-1, e] else np.asarray(traj.raw_reward)[last_start[e]:, e].sum() for e in range(NUM_ENVS)]
    )
    np.testing.assert_allclose(np.asarray(runner.episode_return), partial, rtol=1e-6)


MAX_EPISODE = 5


def _replay_log_probs_and_carries(params, traj, states: jax.Array):
    """Re-evaluate every episode segment from a ZERO carry; returns per-step log-probs/values and, per done step,
    the LSTM carry after it (for the fixed-mode bootstrap). All segments go through one batched call, each
    padded to MAX_EPISODE steps by repeating its last step (the LSTM is causal: padding after a segment cannot
    change it, and one shape means one compilation). The carries come from stepping the same batch with
    get_action, whose carry does not depend on the sampled actions."""
    starts = _episode_starts(np.asarray(traj.done))
    segments = []  # (env, begin, end)
    for e in range(NUM_ENVS):
        begins = list(np.nonzero(starts[:, e])[0]) + [NUM_STEPS]
        segments += [(e, b, end) for b, end in zip(begins[:-1], begins[1:])]
    seg_states, seg_indices, seg_actions, seg_masks = _segment_batch(traj, states, segments)
    ev = policy.evaluate_actions(
        params, NET, policy.initial_carry(NET, (len(segments),)), seg_states, seg_indices, seg_actions, seg_masks
    )
    log_probs = {h: np.zeros((NUM_STEPS, NUM_ENVS), np.float32) for h in HEAD_NAMES}
    values = np.zeros((NUM_STEPS, NUM_ENVS), np.float32)
    end_carry = {}
    for n, (e, b, end) in enumerate(segments):
        assert end - b <= MAX_EPISODE
        for h in HEAD_NAMES:
            log_probs[h][b:end, e] = np.asarray(getattr(ev.log_probs, h))[n, : end - b]
        values[b:end, e] = np.asarray(ev.value)[n, : end - b]
    carry = policy.initial_carry(NET, (len(segments),))
    carries = []
    for k in range(MAX_EPISODE):
        step = lambda x: x[:, k]  # noqa: E731
        carry = policy.get_action(
            params, NET, carry, step(seg_states), step(seg_indices), jax.tree.map(step, seg_masks),
            jax.random.PRNGKey(k), True,  # deterministic, like the bootstrap check below: one compilation
        ).carry
        carries.append(carry)
    for n, (e, b, end) in enumerate(segments):
        end_carry[(end - 1, e)] = jax.tree.map(lambda x: x[n], carries[end - b - 1])
    return log_probs, values, end_carry, ev, segments


def _segment_batch(traj, states, segments):
    """[T, E, ...] arrays -> [N, MAX_EPISODE, ...], one row per (env, begin, end) segment, padded by repeating
    the segment's last step."""
    env_idx = np.array([e for e, _, _ in segments])
    time_idx = np.array([[min(b + k, end - 1) for k in range(MAX_EPISODE)] for _, b, end in segments])
    gather = lambda x: x[time_idx, env_idx[:, None]]  # noqa: E731
    return gather(states), gather(traj.blueprint_indices), jax.tree.map(gather, traj.actions), jax.tree.map(
        gather, traj.masks
    )


@pytest.mark.parametrize("compat", ["fixed", "upstream"])
def test_carry_resets_at_episode_starts_and_stored_states_follow_compat(compat, params, obs_stats, fixed_run, upstream_run):
    """Stored log-probs and values equal a replay of each episode from a zero LSTM state on the states the policy
    acted on — which only holds if the rollout zeroed the carry at every episode start. Upstream stores raw states
    (the replay must normalise them), fixed stores the normalised ones."""
    _, _, traj, _ = fixed_run if compat == "fixed" else upstream_run
    normed = normalization.normalize(obs_stats, traj.raw_features)
    if compat == "fixed":  # equal up to float rounding of the fused in-jit normalisation
        np.testing.assert_allclose(np.asarray(traj.features), np.asarray(normed), rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(np.asarray(traj.features), np.asarray(traj.raw_features))
    assert float(jnp.max(jnp.abs(traj.raw_features - normed))) > 0.1

    log_probs, values, end_carry, ev, segments = _replay_log_probs_and_carries(params, traj, normed)
    for h in HEAD_NAMES:
        np.testing.assert_allclose(np.asarray(getattr(traj.log_probs, h)), log_probs[h], atol=2e-5, err_msg=h)
    np.testing.assert_allclose(np.asarray(traj.value), values, atol=2e-5)

    # Control: starting each later episode from the carry the previous one ended with (no reset) disagrees.
    carried = [
        end_carry[(b - 1, e)] if b > 0 else jax.tree.map(lambda x: x[n], policy.initial_carry(NET, (len(segments),)))
        for n, (e, b, _) in enumerate(segments)
    ]
    carried = jax.tree.map(lambda *xs: jnp.stack(xs), *carried)
    no_reset = policy.evaluate_actions(params, NET, carried, *_segment_batch(traj, normed, segments))
    later = np.array([b > 0 for _, b, _ in segments])
    gap = np.max(np.abs(np.asarray(no_reset.value) - np.asarray(ev.value))[later])
    assert gap > 1e-4, gap


@pytest.mark.parametrize("compat", ["fixed", "upstream"])
def test_bootstrap_value_per_compat(compat, params, obs_stats, fixed_run, upstream_run):
    """Q(s', argmax op) on the post-step observation where truncated, from zeros (upstream) or from the post-step
    carry (fixed); exactly 0 on every other step, true terminals included."""
    _, _, traj, _ = fixed_run if compat == "fixed" else upstream_run
    normed = normalization.normalize(obs_stats, traj.raw_features)
    _, _, end_carry, _, segments = _replay_log_probs_and_carries(params, traj, normed)
    done, truncated = np.asarray(traj.done), np.asarray(traj.truncated)
    epoch = np.rint(np.asarray(traj.raw_features[..., 0]) * 150.0).astype(int)
    boot = np.asarray(traj.bootstrap_value)
    assert np.all(boot[~truncated] == 0.0)
    assert truncated.sum() >= 2 and (done & ~truncated).sum() >= 1
    where = list(zip(*np.nonzero(truncated)))
    # Padded to the segment count so the call reuses the replay's compiled get_action.
    where = where + [where[0]] * (len(segments) - len(where))
    post = jax.vmap(ENV.observe)(jnp.asarray([epoch[t, e] + 1 for t, e in where]))
    feats = features_mod.extract(post, compat=compat)
    post_masks = masks_mod.compute(post, masks_mod.MaskConfig())
    if compat == "upstream":
        carry = policy.initial_carry(NET, (len(where),))
    else:
        carry = jax.tree.map(lambda *xs: jnp.stack(xs), *[end_carry[(t, e)] for t, e in where])
    out = policy.get_action(
        params, NET, carry, normalization.normalize(obs_stats, feats.features), feats.blueprint_indices,
        post_masks, jax.random.PRNGKey(0), True,
    )
    expected = np.asarray(out.value)[: int(truncated.sum())]
    np.testing.assert_allclose(boot[truncated], expected, atol=2e-5)


def test_bootstrap_differs_between_compats(fixed_run, upstream_run):
    """Same seeds, same actions (the rollouts act identically); only the bootstrap carry differs."""
    _, _, fixed, _ = fixed_run
    _, _, upstream, _ = upstream_run
    for h in HEAD_NAMES:
        np.testing.assert_array_equal(np.asarray(getattr(fixed.actions, h)), np.asarray(getattr(upstream.actions, h)))
    truncated = np.asarray(fixed.truncated)
    diff = np.abs(np.asarray(fixed.bootstrap_value) - np.asarray(upstream.bootstrap_value))[truncated]
    assert np.max(diff) > 1e-5


def _welford_reference(rewards: list[float]) -> list[float]:
    mean, m2, out = 0.0, 0.0, []
    for count, r in enumerate(rewards, start=1):
        delta = r - mean
        mean += delta / count
        m2 += delta * (r - mean)
        if count < 2:
            out.append(max(-10.0, min(10.0, r)))
        else:
            std = max(1e-8, (m2 / (count - 1)) ** 0.5)
            out.append(max(-10.0, min(10.0, r / std)))
    return out


def test_reward_normalisation_runs_in_step_then_env_order(fixed_run):
    _, runner, traj, _ = fixed_run
    raw = np.asarray(traj.raw_reward)
    expected = np.asarray(_welford_reference(raw.reshape(-1).tolist()), np.float32).reshape(raw.shape)
    np.testing.assert_allclose(np.asarray(traj.reward), expected, rtol=1e-5, atol=1e-6)
    assert int(runner.reward_stats.count) == raw.size
    assert not np.allclose(np.asarray(traj.reward), raw)


def test_info_totals_and_op_counts_sum_over_steps_and_envs(fixed_run, upstream_run):
    _, _, traj, metrics = fixed_run
    ops = np.asarray(traj.actions.op)
    totals = jax.tree.map(np.asarray, metrics.info_totals)
    assert totals == {"steps": NUM_STEPS * NUM_ENVS, "op_sum": ops.sum(), "ended": np.asarray(traj.done).sum()}
    np.testing.assert_array_equal(np.asarray(metrics.op_counts), np.bincount(ops.ravel(), minlength=6))
    # without a reducer the env's info stays on the device and nothing is carried
    _, _, up_traj, up_metrics = upstream_run
    assert up_metrics.info_totals == {}
    np.testing.assert_array_equal(np.asarray(up_metrics.op_counts),
                                  np.bincount(np.asarray(up_traj.actions.op).ravel(), minlength=6))


def test_rollout_config_validation():
    with pytest.raises(TypeError, match="info_totals"):
        rollout.RolloutConfig(num_steps=3, info_totals="steps")
    with pytest.raises(ValueError, match="num_steps"):
        rollout.RolloutConfig(num_steps=0)
    with pytest.raises(ValueError, match="compat"):
        rollout.RolloutConfig(num_steps=3, compat="newest")
