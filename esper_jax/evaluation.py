"""The trained policy against baselines on the same env seeds: sampled and greedy trained actions, random masked
actions and always-WAIT (``evaluate_baselines``), and the one-line verdict the CLI prints (``comparison_line``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from esper_jax.config import TrainingConfig
    from esper_jax.trainer import Static

__all__ = ["evaluate_baselines", "comparison_line"]


@functools.cache
def _eval_fn(static: Static, num_envs: int, num_steps: int, compat: str):
    import jax
    import jax.numpy as jnp

    from esper_jax import features as features_mod
    from esper_jax import masks as masks_mod
    from esper_jax import normalization, policy
    from esper_jax.contracts import HEAD_NAMES, PerHead
    from esper_jax.env.interface import bind_data
    from esper_jax.random_policy import random_masked_actions

    net = static.network

    kinds = ("sampled", "greedy", "random", "wait")

    def choose(kind_index, params, obs_stats, carry, obs, key):
        feats = features_mod.extract(obs, compat=compat, validate=False)
        masks = masks_mod.compute(obs, static.rollout.mask_config)

        def by_policy(deterministic):
            def f(_):
                normed = normalization.normalize(obs_stats, feats.features)
                out = policy.get_action(params, net, carry, normed, feats.blueprint_indices, masks, key,
                                        deterministic, validate=False)
                return out.actions.map(lambda a: a.astype(jnp.int32)), out.carry
            return f

        def wait(_):
            acts = {h: jnp.argmax(getattr(masks, h), axis=-1).astype(jnp.int32) for h in HEAD_NAMES}
            acts["op"] = jnp.zeros_like(acts["op"])
            return PerHead(**acts), carry

        def random(_):
            return random_masked_actions(masks, key), carry

        return jax.lax.switch(kind_index, [by_policy(False), by_policy(True), random, wait], None)

    def run(kind, params, obs_stats, key, env_data):
        env = bind_data(static.env, env_data)  # the env's data as an argument, not compiled-in constants
        k_reset, k_steps = jax.random.split(key)
        env_keys = jax.random.split(k_reset, num_envs)
        state, obs = jax.vmap(env.reset)(env_keys)
        carry = policy.initial_carry(net, (num_envs,))

        def step(c, k):
            state, obs, carry, ret = c
            k_act, k_env = jax.random.split(k)
            actions, carry = choose(kind, params, obs_stats, carry, obs, k_act)
            out = jax.vmap(env.step)(state, actions, jax.random.split(k_env, num_envs))
            info = out.info
            comp = jax.tree.map(jnp.sum, dataclasses.asdict(info.reward_components)) if dataclasses.is_dataclass(
                info.reward_components) else {}
            outcomes = {
                "germinated": jnp.sum(info.seeds_germinated), "fossilized": jnp.sum(info.seeds_fossilized),
                "pruned": jnp.sum(info.seeds_pruned),
            }
            return (out.state, out.obs, carry, ret + out.reward), (comp, outcomes)

        (_, _, _, ret), (comp, outcomes) = jax.lax.scan(
            step, (state, obs, carry, jnp.zeros((num_envs,), jnp.float32)), jax.random.split(k_steps, num_steps)
        )
        return ret, jax.tree.map(lambda x: jnp.sum(x) / num_envs, comp), jax.tree.map(
            lambda x: jnp.sum(x) / num_envs, outcomes)

    return kinds, jax.jit(run)


def evaluate_baselines(cfg: TrainingConfig, static: Static, train_state, seed: int | None = None) -> dict[str, Any]:
    """Mean episode return (raw reward) of the trained policy (sampled and greedy), a random-masked-action policy
    and an always-WAIT policy, each over ``eval_episodes`` envs with the same reset and step keys."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from esper_jax.env.interface import data_of
    from esper_jax.telemetry import RewardComponentsTelemetry

    kinds, fn = _eval_fn(static, cfg.eval_episodes, cfg.episode_length, cfg.compat)
    key = jax.random.PRNGKey(10_000_019 + (cfg.seed if seed is None else seed))
    result: dict[str, Any] = {}
    for index, kind in enumerate(kinds):
        ret, comp, outcomes = fn(
            jnp.asarray(index, jnp.int32), train_state.params, train_state.obs_stats, key, data_of(static.env)
        )
        ret = np.asarray(ret)
        result[kind] = {
            "mean_return": float(ret.mean()),
            "std_return": float(ret.std()),
            "reward_components_per_episode": {k: float(v) for k, v in comp.items()},
            "seed_outcomes_per_episode": {k: float(v) for k, v in outcomes.items()},
            # the same per-episode sums under upstream's RewardComponentsTelemetry names (docs/environment.md#log-names)
            "reward_telemetry": RewardComponentsTelemetry.from_env_components(
                {k: float(v) for k, v in comp.items()}, num_fossilized_seeds=int(round(float(outcomes["fossilized"])))
            ).to_dict(),
        }
    return result


def comparison_line(evaluation: dict[str, Any], episodes: int) -> str:
    """The final comparison. "trained" is the policy as PPO trains it, sampling its actions; the greedy (argmax)
    policy is shown beside it, flagged when it germinated no seed: while every slot is empty only WAIT and
    GERMINATE are allowed, so it then chose WAIT at every step and scores exactly always-WAIT's return."""
    s, g, r, w = (evaluation[k]["mean_return"] for k in ("sampled", "greedy", "random", "wait"))
    verdict = "beats" if s > r and s > w else "does NOT beat"
    greedy_note = ", germinated no seed: WAIT at every step" if (
        evaluation["greedy"]["seed_outcomes_per_episode"]["germinated"] == 0.0) else ""
    return (f"mean return over {episodes} eval episodes (same seeds): trained, sampled actions {s:+.3f} "
            f"(greedy {g:+.3f}{greedy_note}) | random-masked {r:+.3f} | always-WAIT {w:+.3f} "
            f"→ trained policy {verdict} both baselines")

