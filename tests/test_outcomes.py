"""Per-interval env outcomes: ``StepInfo``'s seed-transition counts and ``outcomes.step_totals`` checked against a
hand count over a scripted sim-env episode, and ``interval_summary``'s record entries."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax import env as env_mod
from esper_jax import masks as masks_mod
from esper_jax import outcomes
from esper_jax.contracts import HEAD_NAMES, NUM_OPS, LifecycleOp, PerHead, SeedStage
from esper_jax.telemetry import ENV_COMPONENT_TO_TELEMETRY

EPISODE = 60
# Op preferences of the scripted policy: push seeds through the lifecycle (advance, fossilize) and prune often
# enough that every outcome happens within one short episode.
OP_WEIGHTS = (1.0, 3.0, 1.0, 2.0, 6.0, 4.0)


@pytest.fixture(scope="module")
def episode():
    """One sim-env episode (3 slots) under a random masked policy, as per-step arrays: pre/post slot stages and
    the StepInfo, plus the summed step_totals. One compiled call."""
    env = env_mod.make("sim", env_mod.EnvConfig(episode_length=EPISODE))

    def act(obs, key):
        masks = masks_mod.compute(obs, masks_mod.MaskConfig())
        keys = jax.random.split(key, len(HEAD_NAMES))
        chosen = {}
        for k, head in zip(keys, HEAD_NAMES):
            mask = getattr(masks, head)
            weights = jnp.asarray(OP_WEIGHTS) if head == "op" else jnp.ones(mask.shape)
            chosen[head] = jax.random.categorical(k, jnp.where(mask, jnp.log(weights), -jnp.inf)).astype(jnp.int32)
        return PerHead(**chosen)

    @jax.jit
    def run(key):
        k_reset, k_steps = jax.random.split(key)
        state, obs = env.reset(k_reset)

        def step(carry, k):
            state, obs = carry
            k_act, k_env = jax.random.split(k)
            out = env.step(state, act(obs, k_act), k_env)
            per_step = {"pre": state.slots.stage, "post": out.state.slots.stage, "info": out.info,
                        "reward": out.reward, "totals": outcomes.step_totals(out.info)}
            return (out.state, out.obs), per_step

        _, per_step = jax.lax.scan(step, (state, obs), jax.random.split(k_steps, EPISODE))
        return per_step, jax.tree.map(lambda x: jnp.sum(x, axis=0), per_step["totals"])

    per_step, totals = run(jax.random.PRNGKey(0))
    return jax.tree.map(np.asarray, per_step), jax.tree.map(np.asarray, totals)


def test_seed_outcomes_match_stage_transitions_and_ops(episode):
    per_step, totals = episode
    pre, post, info = per_step["pre"], per_step["post"], per_step["info"]
    # Hand count from the slot stages before and after each step. An instant prune is already EMBARGOED after the
    # step's tick; a scheduled prune shows as PRUNED when its ramp ends.
    out_of_play = [SeedStage.PRUNED, SeedStage.EMBARGOED]
    gone = np.isin(post, out_of_play) & ~np.isin(pre, out_of_play)
    hand = {
        "germinated": int(np.sum((post == SeedStage.GERMINATED) & (pre != SeedStage.GERMINATED))),
        "fossilized": int(np.sum((post == SeedStage.FOSSILIZED) & (pre != SeedStage.FOSSILIZED))),
        "pruned": int(np.sum(gone)),
    }
    assert all(hand[k] > 0 for k in hand), f"the scripted episode must exercise every outcome: {hand}"
    assert {k: int(getattr(totals, k)) for k in outcomes.SEED_OUTCOMES} == hand
    # Per step too, not just in total.
    np.testing.assert_array_equal(info.seeds_pruned, gone.sum(axis=1))
    # In fixed mode germinations and fossilisations only happen through their own successful op.
    ok = info.action_success
    assert hand["germinated"] == int(np.sum((info.effective_op == LifecycleOp.GERMINATE) & ok))
    assert hand["fossilized"] == int(np.sum((info.effective_op == LifecycleOp.FOSSILIZE) & ok))


def test_step_totals_match_hand_counts(episode):
    per_step, totals = episode
    info = per_step["info"]
    assert int(totals.steps) == EPISODE
    assert int(totals.invalid_actions) == int(np.sum(info.invalid_action)) > 0
    assert int(totals.successful_actions) == int(np.sum(info.action_success))
    np.testing.assert_array_equal(totals.effective_op_counts, np.bincount(info.effective_op, minlength=NUM_OPS))
    for f in dataclasses.fields(totals.reward_components):
        np.testing.assert_allclose(getattr(totals.reward_components, f.name),
                                   np.sum(getattr(info.reward_components, f.name)), rtol=1e-5, atol=1e-5)


def test_interval_summary_entries(episode):
    per_step, totals = episode
    info = per_step["info"]
    sampled = np.bincount(info.effective_op, minlength=NUM_OPS) + np.arange(NUM_OPS)  # any counts will do
    summary = outcomes.interval_summary(totals, sampled)
    assert summary["op_counts"] == {op.name.lower(): int(sampled[op]) for op in LifecycleOp}
    assert summary["effective_op_counts"]["wait"] == int(np.sum(info.effective_op == LifecycleOp.WAIT))
    assert summary["invalid_action_rate"] == pytest.approx(np.mean(info.invalid_action))
    assert summary["action_success_rate"] == pytest.approx(np.mean(info.action_success))
    comps = summary["reward_components"]
    assert set(comps) == set(ENV_COMPONENT_TO_TELEMETRY.values()) | {"total_reward"}
    assert comps["total_reward"] == pytest.approx(float(np.mean(per_step["reward"])), abs=1e-5)
    assert comps["pbrs_bonus"] == pytest.approx(float(np.mean(info.reward_components.pbrs)), abs=1e-6)
    assert set(summary["seed_outcomes"]) == set(outcomes.SEED_OUTCOMES)


def test_foreign_info_maps_to_nothing():
    assert outcomes.step_totals({"anything": jnp.ones(())}) == {}
    assert set(outcomes.interval_summary({}, np.zeros(NUM_OPS))) == {"op_counts"}
    with pytest.raises(ValueError, match="op_counts"):
        outcomes.interval_summary({}, np.zeros(3))
