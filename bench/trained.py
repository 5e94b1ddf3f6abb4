"""A policy trained by ``python -m esper_jax.train``, played as a controller of ``python -m bench.controllers``.

``load(run_dir)`` restores the newest intact checkpoint of a run directory (its ``config.json`` rebuilds the
network, the observation normaliser and the state layout); ``act`` is the trained policy for ONE env in the form
of the scripted controllers, ``act(arg, carry, obs, key) -> (carry, PerHead)``, with the LSTM state as its carry and
``arg = (index, params, obs_stats)``: index 0 samples the actions as PPO trains them (``trained``), 1 takes the
argmax of every head (``trained_greedy``). Observation → features → normaliser → policy is the trainer's own path
(``esper_jax.evaluation``), under the run's compat and action masks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from esper_jax import features as features_mod
from esper_jax import masks as masks_mod
from esper_jax import normalization, policy
from esper_jax.contracts import PerHead
from esper_jax.observation import Observation

KINDS: tuple[str, ...] = ("trained", "trained_greedy")


@dataclasses.dataclass(frozen=True)
class TrainedPolicy:
    run_dir: Path
    config: Any  # the run's TrainingConfig
    params: Any
    obs_stats: normalization.RunningMeanStd
    episodes_trained: int

    @property
    def compat(self) -> str:
        return self.config.compat


def load(run_dir: str | Path) -> TrainedPolicy:
    """The newest intact checkpoint of ``run_dir`` (refused, naming the problem, when there is none)."""
    from esper_jax.checkpoint import Checkpointer, CheckpointError, read_meta_config
    from esper_jax.config import load_dict, to_dict
    from esper_jax.trainer import build_static, initial_state

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"{run_dir} is not a training run directory (no config.json)")
    cfg = load_dict(read_meta_config(run_dir))
    static = build_static(cfg)
    reference = initial_state(cfg, static)
    ckpt = Checkpointer(run_dir, create=False)
    try:
        state, _, _ = ckpt.restore_newest_intact(reference, to_dict(cfg))
    finally:
        ckpt.close()
    return TrainedPolicy(run_dir=run_dir, config=cfg, params=state.train.params, obs_stats=state.train.obs_stats,
                         episodes_trained=int(state.counters.episodes))


def check_fits(trained: TrainedPolicy, compat: str, num_slots: int, task: str) -> None:
    """Refuse a policy trained for a different compat mode, slot count or task than the benchmark's env."""
    cfg = trained.config
    problems = []
    if cfg.compat != compat:
        problems.append(f"compat {cfg.compat!r} (benchmark env: {compat!r})")
    if cfg.network.num_slots != num_slots:
        problems.append(f"{cfg.network.num_slots} slots (benchmark env: {num_slots})")
    if cfg.env_kind != "host" or cfg.env.task != task:
        problems.append(f"env {cfg.env_kind!r} task {cfg.env.task!r} (benchmark env: 'host' task {task!r})")
    if problems:
        raise ValueError(f"policy in {trained.run_dir} does not fit: " + "; ".join(problems))


def initial_carry(trained: TrainedPolicy) -> policy.LSTMCarry:
    return policy.initial_carry(trained.config.network, (1,))


def act_fn(trained: TrainedPolicy):
    """act(arg, carry, obs, key) for one env; ``arg = (index, params, obs_stats)`` (index 0 sampled, 1 greedy)."""
    net, compat, mask_config = trained.config.network, trained.compat, trained.config.rollout.mask_config

    def act(arg, carry, obs: Observation, key) -> tuple[Any, PerHead]:
        index, params, obs_stats = arg
        batched = jax.tree.map(lambda x: x[None], obs)  # the policy's functions take a leading env axis
        feats = features_mod.extract(batched, compat=compat, validate=False)
        masks = masks_mod.compute(batched, mask_config)
        normed = normalization.normalize(obs_stats, feats.features)

        def by_policy(deterministic):
            def f(_):
                out = policy.get_action(params, net, carry, normed, feats.blueprint_indices, masks, key,
                                        deterministic, validate=False)
                return out.carry, out.actions.map(lambda a: a[0].astype(jnp.int32))
            return f

        return jax.lax.switch(index, [by_policy(False), by_policy(True)], None)

    return act
