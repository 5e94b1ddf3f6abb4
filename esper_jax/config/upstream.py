"""The one reader of flat configs: esper-lite's ``TrainingConfig`` JSON and run directories written before the
config became a tree (``config.json`` and checkpoint metadata of esper-jax up to the flat format).

Both are one flat namespace: upstream's fields plus the old trainer's own. ``from_flat_dict`` maps each key to its
place in the tree (``max_epochs`` → ``env.episode_length`` and ``rollout.num_steps``; ``lr`` →
``ppo.learning_rate``; ``max_grad_norm`` → ``env.host.max_grad_norm``, the host's clipping; ``policy_max_grad_norm``
→ ``ppo.max_grad_norm``; ``entropy_anneal_episodes`` → ``ppo.entropy_anneal_steps`` = ceil(episodes / n_envs);
...). Upstream fields this trainer does not implement (``INERT_FIELDS``) are type-checked and dropped: they exist
only here, never in the tree. Unknown keys are refused by name. ``load_dict`` tells the two formats apart.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from esper_jax.config.strict import ConfigError, coerce, from_dict
from esper_jax.config.training import RunTelemetryConfig, TrainingConfig
from esper_jax.slots import SlotConfig

__all__ = ["FLAT_FIELDS", "INERT_FIELDS", "from_flat_dict", "is_flat", "load_dict"]

_TASK = Literal["cifar10", "cifar10_deep", "cifar10_blind", "tinystories", "tinystories_small", "digits"] | None

# Every key of the flat format with its type; values are checked before they are mapped.
FLAT_FIELDS: dict[str, Any] = {
    # upstream esper-lite's TrainingConfig
    "n_episodes": int, "n_envs": int, "max_epochs": int, "batch_size_per_env": int | None, "lr": float,
    "clip_ratio": float, "gamma": float, "gae_lambda": float, "ppo_updates_per_batch": int, "entropy_coef": float,
    "entropy_coef_start": float | None, "entropy_coef_end": float | None, "entropy_coef_min": float,
    "adaptive_entropy_floor": bool, "entropy_anneal_episodes": int, "use_telemetry": bool, "amp": bool,
    "amp_dtype": Literal["auto", "float16", "bfloat16", "off"],
    "compile_mode": Literal["default", "max-autotune", "reduce-overhead", "off"], "chunk_length": int | None,
    "slots": tuple[str, ...], "max_seeds": int | None, "reward_mode": Literal["shaped"],
    "reward_family": Literal["contribution"], "param_budget": int, "param_penalty_weight": float,
    "sparse_reward_scale": float, "reward_mode_per_env": tuple[str, ...] | None, "plateau_threshold": float,
    "improvement_threshold": float, "gradient_telemetry_stride": int, "seed": int, "task": _TASK,
    "permissive_gates": bool, "disable_pbrs": bool, "disable_terminal_reward": bool, "disable_anti_gaming": bool,
    "max_grad_norm": float, "lstm_hidden_dim": int,
    # the flat esper-jax trainer's own (run directories written before the tree)
    "env": Literal["host", "sim"], "compat": Literal["upstream", "fixed"], "feature_dim": int,
    "matmul_dtype": Literal["float32", "bfloat16"], "iterations_per_interval": int, "checkpoint_every": int,
    "keep_checkpoints": int, "normalize_rewards": bool, "target_kl": float | None, "value_coef": float,
    "policy_max_grad_norm": float, "eval_episodes": int, "telemetry": dict,
}

# Upstream fields with no effect in this trainer: accepted (and type-checked) only by this reader.
INERT_FIELDS: tuple[str, ...] = (
    "amp", "amp_dtype", "compile_mode", "param_budget", "param_penalty_weight", "sparse_reward_scale",
    "plateau_threshold", "improvement_threshold", "gradient_telemetry_stride",
    "telemetry.gradient_check_interval", "telemetry.memory_check_interval", "telemetry.per_layer_gradients",
    "telemetry.activation_monitoring", "telemetry.weight_tracking", "telemetry.weight_track_interval",
    "telemetry.auto_escalate_on_anomaly", "telemetry.anomaly_escalation_epochs",
)
_INERT_TELEMETRY: dict[str, Any] = {
    "gradient_check_interval": int, "memory_check_interval": int, "per_layer_gradients": bool,
    "activation_monitoring": bool, "weight_tracking": bool, "weight_track_interval": int,
    "auto_escalate_on_anomaly": bool, "anomaly_escalation_epochs": int,
}

# A flat key → the tree sections it fills (the ones whose mapping is a plain rename).
_RENAMES: dict[str, tuple[str, ...]] = {
    "n_episodes": ("n_episodes",), "n_envs": ("n_envs",), "seed": ("seed",), "env": ("env_kind",),
    "iterations_per_interval": ("iterations_per_interval",), "eval_episodes": ("eval_episodes",),
    "max_epochs": ("env.episode_length", "rollout.num_steps"),
    "batch_size_per_env": ("env.host.batch_size",), "max_grad_norm": ("env.host.max_grad_norm",),
    "compat": ("env.compat", "ppo.compat", "rollout.compat"),
    "disable_pbrs": ("env.reward.disable_pbrs",), "disable_terminal_reward": ("env.reward.disable_terminal_reward",),
    "disable_anti_gaming": ("env.reward.disable_anti_gaming",), "reward_mode": ("env.reward_mode",),
    "gamma": ("ppo.gamma", "env.reward.gamma"), "gae_lambda": ("ppo.gae_lambda",), "clip_ratio": ("ppo.clip_ratio",),
    "lr": ("ppo.learning_rate",), "ppo_updates_per_batch": ("ppo.epochs",), "entropy_coef": ("ppo.entropy_coef",),
    "entropy_coef_start": ("ppo.entropy_coef_start",), "entropy_coef_end": ("ppo.entropy_coef_end",),
    "entropy_coef_min": ("ppo.entropy_coef_min",), "adaptive_entropy_floor": ("ppo.adaptive_entropy_floor",),
    "target_kl": ("ppo.target_kl",), "value_coef": ("ppo.value_coef",), "policy_max_grad_norm": ("ppo.max_grad_norm",),
    "lstm_hidden_dim": ("network.hidden_dim",), "feature_dim": ("network.feature_dim",),
    "matmul_dtype": ("network.matmul_dtype",), "normalize_rewards": ("rollout.normalize_rewards",),
    "checkpoint_every": ("checkpoints.every",), "keep_checkpoints": ("checkpoints.keep",),
}


def is_flat(data: Any) -> bool:
    """A flat (upstream or pre-tree) config: it has a key only the flat format knows (old files wrote ``"env":
    "sim"``). Keys both formats share (n_envs, seed, ...) read the same either way."""
    if not isinstance(data, dict):
        return False
    tree_keys = {f.name for f in dataclasses.fields(TrainingConfig)}
    return isinstance(data.get("env"), str) or any(k in FLAT_FIELDS and k not in tree_keys for k in data) or (
        "entropy_anneal_rounds" in data)


def load_dict(data: Any, base: TrainingConfig | None = None) -> TrainingConfig:
    """Any config JSON. The nested format strictly, keys absent keeping ``base``'s values (default
    ``TrainingConfig()``); a flat one through ``from_flat_dict``: it is a whole config (upstream's defaults for
    absent keys), so it does not combine with a base other than the defaults."""
    if is_flat(data):
        if base is not None and base != TrainingConfig():
            raise ConfigError(
                "a flat (upstream-format) config is a whole config with upstream's defaults; it cannot be applied "
                "over another preset or run: write the nested format (TrainingConfig.to_dict) instead"
            )
        return from_flat_dict(data)
    return from_dict(TrainingConfig, data, base=base)


def from_flat_dict(data: Any) -> TrainingConfig:
    """A ``TrainingConfig`` from a flat config (esper-lite's ``TrainingConfig`` fields, or an esper-jax run
    directory's config.json written before the tree); keys absent take upstream's defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    if "entropy_anneal_rounds" in data:
        if "entropy_anneal_episodes" in data:
            raise ConfigError("Cannot specify both entropy_anneal_rounds and entropy_anneal_episodes")
        data["entropy_anneal_episodes"] = data.pop("entropy_anneal_rounds")
    unknown = sorted(set(data) - set(FLAT_FIELDS))
    if unknown:
        raise ConfigError(f"config: unknown key(s) {unknown}; valid keys: {sorted(FLAT_FIELDS)}")
    flat = {k: v if k == "telemetry" else coerce(k, FLAT_FIELDS[k], v) for k, v in data.items()}
    for name in ("param_budget", "gradient_telemetry_stride", "max_seeds", "batch_size_per_env"):
        if flat.get(name) is not None and flat[name] < 1:
            raise ConfigError(f"{name} must be >= 1 (or null where allowed), got {flat[name]}")
    for name, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be finite, got {value}")
    n_envs = flat.get("n_envs", TrainingConfig.n_envs)
    max_epochs = flat.get("max_epochs", 150)
    if flat.get("chunk_length") is not None and flat["chunk_length"] != max_epochs:
        raise ConfigError(f"chunk_length must equal max_epochs ({max_epochs}): the update runs full-episode BPTT; "
                          f"got {flat['chunk_length']}")
    modes = flat.get("reward_mode_per_env")
    if modes is not None:
        if len(modes) != n_envs:
            raise ConfigError(f"reward_mode_per_env must have n_envs={n_envs} entries, got {len(modes)}")
        bad = [m for m in modes if m != "shaped"]
        if bad:
            raise ConfigError(f"reward_mode_per_env: only 'shaped' is implemented, got {bad}; valid: ['shaped']")

    tree: dict[str, Any] = {"env": {}, "ppo": {}, "network": {}, "rollout": {"mask_config": {}}}
    for key, value in flat.items():
        for path in _RENAMES.get(key, ()):
            *sections, leaf = path.split(".")
            node = tree
            for s in sections:
                node = node.setdefault(s, {})
            node[leaf] = value
    slots = flat.get("slots", ("r0c1",))
    try:  # upstream accepts its slots in any order; the tree holds them in network order
        tree["env"]["slots"] = {"slot_ids": list(SlotConfig.of(slots).slot_ids)}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"slots: {exc}") from None
    tree["network"]["num_slots"] = len(slots)
    env_kind = flat.get("env", "sim")
    task = flat.get("task") or ("digits" if env_kind == "host" else "cifar10")  # upstream: None → the CLI's task
    tree["env"]["task"] = task
    tree["env"]["max_seeds"] = tree["rollout"]["mask_config"]["max_seeds"] = flat.get("max_seeds") or 0
    from esper_jax.env.config import TASKS

    tree["rollout"]["mask_config"]["topology"] = TASKS[task].topology  # env.topology None: the task's
    tree["env"]["gates"] = "permissive" if flat.get("permissive_gates", True) else "strict"
    anneal = flat.get("entropy_anneal_episodes", 0)
    if anneal < 0:
        raise ConfigError(f"entropy_anneal_episodes must be >= 0, got {anneal}")
    tree["ppo"]["entropy_anneal_steps"] = -(-anneal // max(n_envs, 1)) if anneal else 0
    tree["telemetry"] = _telemetry(flat.get("telemetry", {}), flat.get("use_telemetry", True))
    try:
        return from_dict(TrainingConfig, _prune(tree))
    except ConfigError as exc:
        raise ConfigError(f"{exc} (from the flat config's keys: {sorted(data)})") from None


def _telemetry(data: Any, use_telemetry: bool) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"telemetry must be a JSON object, got {type(data).__name__}")
    live = {f.name for f in dataclasses.fields(RunTelemetryConfig)}
    unknown = sorted(set(data) - live - set(_INERT_TELEMETRY))
    if unknown:
        raise ConfigError(f"telemetry: unknown key(s) {unknown}; valid keys: {sorted(live | set(_INERT_TELEMETRY))}")
    for key, tp in _INERT_TELEMETRY.items():
        if key in data:
            value = coerce(f"telemetry.{key}", tp, data[key])
            minimum = 0 if key == "anomaly_escalation_epochs" else 1
            if tp is int and value < minimum:
                raise ConfigError(f"telemetry.{key} must be >= {minimum}, got {value}")
    out = {k: v for k, v in data.items() if k in live}
    if not use_telemetry:  # upstream: use_telemetry False ≡ level off
        out["level"] = "off"
    return out


def _prune(tree: dict) -> dict:
    return {k: _prune(v) if isinstance(v, dict) else v for k, v in tree.items() if not (isinstance(v, dict) and not v)}
