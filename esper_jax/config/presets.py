"""Presets: upstream's ``TrainingConfig`` constructors (``for_*``), hyperparameters unchanged, read through the
flat adapter so they are exactly what esper-lite's JSON of the same constructor gives.

Two envs exist: the host-network env (``"host"``: real CNN hosts trained with their seeds, on CIFAR-10 read from
local files, ``--env.host.data-dir``, or on scikit-learn's digits with cifar10's CNNHost widths 8/16/32; or real
transformer hosts on the embedded story corpus or a token file) and the lifecycle simulator (``"sim"``: exact
lifecycle, signals and reward over a cheap accuracy model). The default stays on the simulator so that ``make
train`` runs upstream's whole budget on a 2-core CPU in a few minutes; the host env is accelerator work.

| preset | upstream constructor | overrides of the defaults | env_kind | env.task |
|---|---|---|---|---|
| ``default`` | ``TrainingConfig()`` | none (100 episodes = 25 iterations of 4 envs x 150 steps, LSTM 512) | sim | cifar10 |
| ``cifar10`` | ``for_cifar10()`` | entropy_coef 0.1 (inert upstream: plateau_threshold 0.4); host as upstream's 4-env CPU loader: 24 minibatches of 512 per step, validation on a fixed 2,048-image window per env, random crop + flip; needs ``--env.host.data-dir`` | host | cifar10 |
| ``digits`` | ``for_cifar10()`` | the same PPO settings; host env on scikit-learn's digits (cifar10's CNNHost widths, batch 16, 2 minibatches per step, the whole 360-image validation split) | host | digits |
| ``cifar10-deep`` | ``for_cifar10_deep()`` | entropy_coef 0.08 (inert: plateau_threshold 0.35) | sim | cifar10_deep |
| ``tinystories`` | ``for_tinystories()`` | entropy_coef 0.05, entropy_anneal_episodes 10 → ppo.entropy_anneal_steps 3 (inert: plateau_threshold 0.3, improvement_threshold 1.5, sparse_reward_scale 0.5); env.lm.vocab_size 256 (the embedded byte corpus; 50257 for GPT-2 token files) | host | tinystories |
| ``tinystories-small`` | ``for_tinystories()`` | as ``tinystories``, on the small transformer (D 64, 3 layers, 32-token windows); a CPU budget: 16 episodes of 50 steps, 1 iteration per interval, 4 evaluation episodes | host | tinystories_small |
"""

from __future__ import annotations

import dataclasses

from esper_jax.config.strict import ConfigError
from esper_jax.config.training import TrainingConfig
from esper_jax.config.upstream import from_flat_dict

__all__ = ["PRESETS", "PRESET_DESCRIPTIONS", "PRESET_NAMES", "preset"]

_UPSTREAM: dict[str, tuple[str, dict]] = {
    "default": ("upstream TrainingConfig() on the lifecycle simulator", {}),
    "cifar10": ("upstream for_cifar10(): real CNN hosts on CIFAR-10 (host env; needs --env.host.data-dir)",
                {"entropy_coef": 0.1, "plateau_threshold": 0.4, "env": "host", "task": "cifar10"}),
    "digits": ("upstream for_cifar10() settings, real CNN hosts on scikit-learn's 8x8 digits (host env)",
               {"entropy_coef": 0.1, "plateau_threshold": 0.4, "env": "host", "task": "digits"}),
    "cifar10-deep": ("upstream for_cifar10_deep() on the simulator",
                     {"entropy_coef": 0.08, "plateau_threshold": 0.35, "task": "cifar10_deep"}),
    # Issue 19: both train real transformer hosts (env.lm: the embedded byte-level corpus unless a token file is set).
    "tinystories": ("upstream for_tinystories(): a 384/6/6/256 transformer host (host env; accelerator work)",
                    {"entropy_coef": 0.05, "entropy_anneal_episodes": 10, "plateau_threshold": 0.3,
                     "improvement_threshold": 1.5, "sparse_reward_scale": 0.5, "env": "host", "task": "tinystories"}),
    "tinystories-small": ("for_tinystories() on a small transformer host a CPU steps (host env, minutes)",
                          {"entropy_coef": 0.05, "entropy_anneal_episodes": 10, "plateau_threshold": 0.3,
                           "improvement_threshold": 1.5, "sparse_reward_scale": 0.5, "env": "host",
                           "task": "tinystories_small", "n_episodes": 16, "max_epochs": 50,
                           "iterations_per_interval": 1, "eval_episodes": 4}),
}

# Upstream's CPU-loader path at its 4 envs (docs/environment.md#oracles): each env trains on its 1/4 share of a
# shuffled epoch (24 minibatches of 512, drop_last) and validates on 1/4 of the test split (4 × 512 images), with
# the loader's random crop + flip. Not flat upstream fields, so set on the tree.
_CIFAR10_HOST = {"minibatches_per_step": 24, "val_subset": 2048, "augment": True}


def _build(name: str, flat: dict) -> TrainingConfig:
    cfg = from_flat_dict(flat)
    if name == "cifar10":
        cfg = dataclasses.replace(cfg, env=dataclasses.replace(
            cfg.env, host=dataclasses.replace(cfg.env.host, **_CIFAR10_HOST)))
    return cfg


PRESETS: dict[str, TrainingConfig] = {name: _build(name, flat) for name, (_, flat) in _UPSTREAM.items()}
# Issue 19: upstream's tinystories host embeds GPT-2's 50257 tokens; the preset's data, the embedded corpus, is bytes.
_ts_env = PRESETS["tinystories"].env
PRESETS["tinystories"] = dataclasses.replace(
    PRESETS["tinystories"], env=dataclasses.replace(_ts_env, lm=dataclasses.replace(_ts_env.lm, vocab_size=256)))
PRESET_DESCRIPTIONS: dict[str, str] = {name: text for name, (text, _) in _UPSTREAM.items()}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def preset(name: str) -> TrainingConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {list(PRESET_NAMES)}")
    return PRESETS[name]
