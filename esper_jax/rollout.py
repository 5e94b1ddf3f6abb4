"""Compiled rollout collection: ``lax.scan`` over env steps → a ``Trajectory`` pytree ``[T, E, ...]``.

The rollout mirrors simic's collection loop (upstream esper-lite; docs/policy-and-ppo.md#rollout) with the environment
behind a small functional interface (``esper_jax.env.interface.Environment``, re-exported here), written for ONE env and
vmapped here over the env axis:

* ``env.reset(key) -> (state, Observation)``
* ``env.step(state, actions: PerHead[int32 scalar], key) -> StepOutput(state, obs, reward, done, truncated, info)``

``step`` must NOT auto-reset: ``obs`` is the true post-step observation, which the truncation bootstrap needs.
The rollout resets an env itself (``env.reset`` with a fresh key) whenever ``done`` is True. ``done`` means "the
episode ended" (time limit included) and ``truncated`` "it ended by the time limit", as in upstream's buffer: at
the last step of a normal episode both are True; a true terminal is ``done and not truncated``. The env object is
a static jit argument, so it must be hashable (a frozen dataclass or any plain object; its identity keys the
compile cache).

Per step (all envs at once, no Python loop over steps or envs):
features.extract + masks.compute → normalise features with the *frozen* obs stats → ``policy.get_action``
(stochastic) → ``env.step`` → reward normalisation (optional, upstream's Welford over rewards in env order) →
truncation bootstrap ``Q(s', argmax op)`` with deterministic ``get_action`` on the post-step observation (only
traced work when some env truncates) → auto-reset of done envs, and their LSTM carry to zeros.

Quirks by ``compat`` (docs/compat.md#policy-side):

| | ``upstream`` | ``fixed`` |
|---|---|---|
| ``Trajectory.features`` (what the update evaluates) | raw states (the rollout acted on normalised ones) | the normalised states the rollout acted on |
| bootstrap LSTM state | the batched carry after done envs were reset, i.e. zeros at an episode end | the post-step carry of the truncated step |

``raw_features`` are stored in both modes: the observation normaliser is updated from them before the PPO update.

Env diagnostics: the env's ``info`` is any pytree, and the trajectory does not keep it. ``RolloutConfig.info_totals``
(optional) maps ONE env-step's info to additive quantities (counts, sums); ``collect`` applies it to every step
inside the compiled call and returns the sums over envs and steps in ``RolloutMetrics.info_totals`` (an empty dict
without a reducer), so no ``[T, E]`` info ever leaves the device. ``RolloutMetrics.op_counts`` counts the sampled
ops whatever the env.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from esper_jax import features as features_mod
from esper_jax import masks as masks_mod
from esper_jax import normalization, policy
from esper_jax.contracts import DEFAULT_COMPAT, NUM_OPS, Compat, PerHead, check_compat
from esper_jax.env.interface import Environment, StepOutput
from esper_jax.masks import MaskConfig
from esper_jax.network import LSTMCarry, NetworkConfig
from esper_jax.observation import Observation

__all__ = [
    "Environment",
    "StepOutput",
    "RolloutConfig",
    "RunnerState",
    "Trajectory",
    "RolloutMetrics",
    "init_runner",
    "collect",
]


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Static rollout settings (hashable: a jit static argument)."""

    num_steps: int
    compat: Compat = DEFAULT_COMPAT
    mask_config: MaskConfig = MaskConfig()
    normalize_rewards: bool = True
    # ONE env-step's info → additive pytree (summed over envs and steps inside collect). A module-level function,
    # so the config stays hashable and the compile cache keys on it.
    info_totals: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"RolloutConfig.num_steps must be an integer >= 1, got {self.num_steps!r}")
        check_compat(self.compat)
        if not isinstance(self.mask_config, MaskConfig):
            raise TypeError(f"RolloutConfig.mask_config must be a MaskConfig, got {type(self.mask_config).__name__}")
        if self.info_totals is not None and not callable(self.info_totals):
            raise TypeError(
                f"RolloutConfig.info_totals must be a callable or None, got {type(self.info_totals).__name__}"
            )


@struct.dataclass
class RunnerState:
    """Everything the rollout carries from one ``collect`` call to the next (env axis leading)."""

    env_state: Any  # [E, ...]
    obs: Observation  # [E, ...], the observation the next action is chosen from
    carry: LSTMCarry  # [E, L, H], the LSTM state before the next action
    reward_stats: normalization.RewardNormalizer  # one normaliser shared by all envs (upstream)
    episode_return: jax.Array  # float32 [E], raw reward summed since the env's episode began


@struct.dataclass
class Trajectory:
    """One rollout, time-major ``[T, E, ...]``; ``initial_carry`` is ``[E, L, H]``."""

    features: jax.Array  # float32 [T, E, D]: the states the update evaluates (raw in upstream, normalised in fixed)
    raw_features: jax.Array  # float32 [T, E, D]: un-normalised states (obs-normaliser update)
    blueprint_indices: jax.Array  # int32 [T, E, S]
    actions: PerHead  # int32 [T, E]
    log_probs: PerHead  # float32 [T, E], per head (never joint)
    masks: PerHead  # bool [T, E, n]: env masks, style before the op canonicalisation
    value: jax.Array  # float32 [T, E]: Q(s, sampled op) at rollout
    reward: jax.Array  # float32 [T, E]: normalised if the rollout normalises rewards, else raw
    raw_reward: jax.Array  # float32 [T, E]
    done: jax.Array  # bool [T, E]
    truncated: jax.Array  # bool [T, E]
    bootstrap_value: jax.Array  # float32 [T, E]: Q(s', argmax op) where truncated, else 0
    valid: jax.Array  # bool [T, E]: real transitions (a prefix in time per env); all True from collect
    initial_carry: LSTMCarry  # [E, L, H]: LSTM state before step 0 of each env's sequence

    @property
    def num_steps(self) -> int:
        return self.value.shape[0]

    @property
    def num_envs(self) -> int:
        return self.value.shape[1]


@struct.dataclass
class RolloutMetrics:
    episodes_completed: jax.Array  # int32
    mean_episode_return: jax.Array  # float32, raw rewards, over episodes completed in this call (NaN if none)
    mean_raw_reward: jax.Array  # float32
    mask_error: jax.Array  # bool: some sampled row had an empty mask (upstream would have raised)
    nonfinite_error: jax.Array  # bool: some logits or values were NaN/inf
    op_counts: jax.Array  # int32 [NUM_OPS]: sampled ops (before the env judged them) over all steps and envs
    info_totals: Any  # RolloutConfig.info_totals summed over steps and envs; {} without a reducer


@struct.dataclass
class _StepExtras:
    finished_return: jax.Array  # float32 [E]: the episode's raw return where it ended this step, else 0
    ended: jax.Array  # bool [E]
    mask_error: jax.Array  # bool
    nonfinite_error: jax.Array  # bool
    op_counts: jax.Array  # int32 [NUM_OPS], summed over envs
    info_totals: Any  # summed over envs


@struct.dataclass
class _StepOutputs:
    transition: Trajectory
    extras: _StepExtras


def _select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Per-env ``where`` over whole pytrees: ``pred`` is [E] and broadcasts over each leaf's trailing axes."""

    def pick(a: jax.Array, b: jax.Array) -> jax.Array:
        p = jnp.reshape(pred, pred.shape + (1,) * (jnp.ndim(a) - pred.ndim))
        return jnp.where(p, a, b)

    return jax.tree.map(pick, on_true, on_false)


def init_runner(env: Environment, network_config: NetworkConfig, num_envs: int, key: jax.Array) -> RunnerState:
    """Reset ``num_envs`` envs and start from a zero LSTM state and a fresh reward normaliser."""
    env_state, obs = jax.vmap(env.reset)(jax.random.split(key, num_envs))
    return RunnerState(
        env_state=env_state,
        obs=obs,
        carry=policy.initial_carry(network_config, (num_envs,)),
        reward_stats=normalization.reward_init(),
        episode_return=jnp.zeros((num_envs,), jnp.float32),
    )


@functools.partial(jax.jit, static_argnames=("env", "network_config", "config"))
def collect(
    env: Environment,
    params: Any,
    runner: RunnerState,
    obs_stats: normalization.RunningMeanStd,
    key: jax.Array,
    *,
    network_config: NetworkConfig,
    config: RolloutConfig,
) -> tuple[RunnerState, Trajectory, RolloutMetrics]:
    """Run ``config.num_steps`` steps of every env; returns the next runner state, the trajectory and metrics."""
    compat = config.compat
    num_envs = runner.episode_return.shape[0]
    zero_carry = policy.initial_carry(network_config, (num_envs,))
    params = policy.cast_kernels(params, network_config)  # once per rollout, not once per step

    def observe(obs: Observation) -> tuple[features_mod.Features, PerHead]:
        return features_mod.extract(obs, compat=compat, validate=False), masks_mod.compute(obs, config.mask_config)

    def one_step(state: RunnerState, step_key: jax.Array):
        act_key, env_key, reset_key, boot_key = jax.random.split(step_key, 4)
        feats, env_masks = observe(state.obs)
        normed = normalization.normalize(obs_stats, feats.features)
        out = policy.get_action(
            params, network_config, state.carry, normed, feats.blueprint_indices, env_masks, act_key, False,
            validate=False,
        )
        stepped: StepOutput = jax.vmap(env.step)(state.env_state, out.actions, jax.random.split(env_key, num_envs))
        raw_reward = jnp.asarray(stepped.reward, jnp.float32)
        done = jnp.asarray(stepped.done, jnp.bool_)
        truncated = jnp.asarray(stepped.truncated, jnp.bool_)

        if config.normalize_rewards:
            reward_stats, reward = normalization.reward_update_and_normalize_sequence(state.reward_stats, raw_reward)
        else:
            reward_stats, reward = state.reward_stats, raw_reward

        # Upstream resets the batched hidden of done envs to zeros *before* the bootstrap pass, so its bootstrap
        # sees zeros at every episode end; fixed uses the state the policy actually reached.
        next_carry = _select(done, zero_carry, out.carry)
        boot_carry = next_carry if compat == "upstream" else out.carry

        def bootstrap(_: None) -> jax.Array:
            post, post_masks = observe(stepped.obs)
            post_normed = normalization.normalize(obs_stats, post.features)
            boot = policy.get_action(
                params, network_config, boot_carry, post_normed, post.blueprint_indices, post_masks, boot_key, True,
                validate=False,
            )
            return boot.value.astype(jnp.float32)

        boot_value = jax.lax.cond(
            jnp.any(truncated), bootstrap, lambda _: jnp.zeros((num_envs,), jnp.float32), None
        )
        bootstrap_value = jnp.where(truncated, boot_value, 0.0)

        # Reset only when some env finished: a real env's reset (building a host network) is not free.
        def reset_done(_: None) -> tuple[Any, Observation]:
            fresh_state, fresh_obs = jax.vmap(env.reset)(jax.random.split(reset_key, num_envs))
            return _select(done, fresh_state, stepped.state), _select(done, fresh_obs, stepped.obs)

        next_env_state, next_obs = jax.lax.cond(
            jnp.any(done), reset_done, lambda _: (stepped.state, stepped.obs), None
        )

        if config.info_totals is None:
            info_totals = {}
        else:
            info_totals = jax.tree.map(lambda x: jnp.sum(x, axis=0), jax.vmap(config.info_totals)(stepped.info))

        episode_return = state.episode_return + raw_reward
        transition = Trajectory(
            features=feats.features if compat == "upstream" else normed,
            raw_features=feats.features,
            blueprint_indices=feats.blueprint_indices,
            actions=out.actions,
            log_probs=out.log_probs,
            masks=env_masks,
            value=out.value.astype(jnp.float32),
            reward=reward,
            raw_reward=raw_reward,
            done=done,
            truncated=truncated,
            bootstrap_value=bootstrap_value,
            valid=jnp.ones((num_envs,), jnp.bool_),
            initial_carry=None,  # filled after the scan: only the carry before step 0 is needed
        )
        extras = _StepExtras(
            finished_return=jnp.where(done, episode_return, 0.0),
            ended=done,
            mask_error=jnp.any(out.mask_error),
            nonfinite_error=jnp.any(out.nonfinite_error),
            op_counts=jnp.sum(jax.nn.one_hot(out.actions.op, NUM_OPS, dtype=jnp.int32), axis=0),
            info_totals=info_totals,
        )
        next_state = RunnerState(
            env_state=next_env_state,
            obs=next_obs,
            carry=next_carry,
            reward_stats=reward_stats,
            episode_return=jnp.where(done, 0.0, episode_return),
        )
        return next_state, _StepOutputs(transition=transition, extras=extras)

    start_carry = runner.carry
    runner, outputs = jax.lax.scan(one_step, runner, jax.random.split(key, config.num_steps))
    trajectory = outputs.transition.replace(initial_carry=start_carry)
    extras = outputs.extras
    episodes = jnp.sum(extras.ended, dtype=jnp.int32)
    metrics = RolloutMetrics(
        episodes_completed=episodes,
        mean_episode_return=jnp.where(
            episodes > 0, jnp.sum(extras.finished_return) / jnp.maximum(episodes, 1), jnp.nan
        ),
        mean_raw_reward=jnp.mean(trajectory.raw_reward),
        mask_error=jnp.any(extras.mask_error),
        nonfinite_error=jnp.any(extras.nonfinite_error),
        op_counts=jnp.sum(extras.op_counts, axis=0),
        info_totals=jax.tree.map(lambda x: jnp.sum(x, axis=0), extras.info_totals),
    )
    return runner, trajectory, metrics
