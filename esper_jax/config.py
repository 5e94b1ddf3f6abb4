"""Run configuration: ``TrainingConfig`` (simic ``TrainingConfig`` at esper-lite 0872525b, ppo.md §10) and
``RunTelemetryConfig`` (simic's telemetry ``TelemetryConfig``, ppo.md §10.1).

The telemetry config is deliberately **not** called ``TelemetryConfig``: upstream had two classes of that name
(simic's verbosity levels and nissa's diagnostics model) and the audit in seed 004 flags the clash (TC-01).

Both are frozen dataclasses; every upstream field is kept so upstream JSON configs load. Fields that exist upstream
but do nothing in this JAX trainer (at this commit) are marked **inert** in their comments and documented in
``INERT_FIELDS``; they are validated like the live ones so a typo still fails.

Strict JSON (``from_dict`` / ``from_json_path``): the top level must be an object; ``entropy_anneal_rounds`` is an
alias of ``entropy_anneal_episodes`` (both → error); unknown keys, wrong types and out-of-range values raise
``ConfigError`` naming the key and listing the valid ones. Nothing is coerced except int → float and list → tuple.

Presets (``PRESETS``; upstream's ``for_*`` constructors, hyperparameters unchanged). Two envs exist: the
host-network env (``"host"``: real CNN hosts trained with their seeds; one built-in dataset, scikit-learn's digits,
on cifar10's CNNHost widths 8/16/32) and the lifecycle simulator (``"sim"``: exact lifecycle, signals and reward
over a cheap accuracy model; it trains no network). The default stays on the simulator so that ``make train`` runs
upstream's whole budget on a 2-core CPU in a few minutes: the host env steps at ~14 env-steps/s on that CPU
(minutes per episode batch, plus minutes of compile), which is GPU work. ``cifar10`` is the same task on real
networks; the deeper CNN and the transformer exist only in the simulator.

| preset | upstream constructor | overrides of the defaults | env | task |
|---|---|---|---|---|
| ``default`` | ``TrainingConfig()`` | none: upstream's budget too (100 episodes = 25 iterations of 4 envs x 150 steps, LSTM 512) | sim | cifar10 (upstream: task None → the CLI's cifar10) |
| ``cifar10`` | ``for_cifar10()`` | entropy_coef 0.1, plateau_threshold 0.4 | host | digits |
| ``cifar10-deep`` | ``for_cifar10_deep()`` | entropy_coef 0.08, plateau_threshold 0.35 | sim | cifar10_deep |
| ``tinystories`` | ``for_tinystories()`` | entropy_coef 0.05, entropy_anneal_episodes 10, plateau_threshold 0.3, improvement_threshold 1.5, sparse_reward_scale 0.5 | sim | tinystories |

``--env host`` on any preset trains on digits (task None → digits); a task other than digits needs env ``"sim"``.
On ``"host"``, ``batch_size_per_env`` (the SGD minibatch) and ``max_grad_norm`` (clipping of the host and of each
seed) are live; on ``"sim"`` they are inert.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ConfigError",
    "RunTelemetryConfig",
    "DistributedConfig",
    "TrainingConfig",
    "PRESETS",
    "PRESET_NAMES",
    "INERT_FIELDS",
    "preset",
    "config_to_dict",
]


class ConfigError(ValueError):
    """A configuration that must not start a run (unknown key, wrong type, out-of-range value)."""


# ---------------------------------------------------------------------------------------------------------------
# Strict typing helpers
# ---------------------------------------------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = config_to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against annotation ``tp``; returns the (int→float, list→tuple) coerced value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, arg, value)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name}: {value!r} matches none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool):
            raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        (item, *_rest) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list of {_type_name(item)}, got {value!r}")
        return tuple(_coerce(f"{name}[{i}]", item, v) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be a bool (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return _from_dict(tp, value, name)
    raise ConfigError(f"{name}: unsupported annotation {tp}")


def _check_types(cfg: Any) -> None:
    """Validate (and coerce) every field of a frozen dataclass instance in place."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = _coerce(f.name, hints[f.name], getattr(cfg, f.name))
        object.__setattr__(cfg, f.name, value)


def _check_min(cfg: Any, name: str, minimum: int) -> None:
    v = getattr(cfg, name)
    if v < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {v}")


def _from_dict(cls: type, data: Any, where: str, base: Any = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a JSON object, got {type(data).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            sub_base = getattr(base, key) if base is not None else None
            kwargs[key] = _from_dict(tp, value, f"{where}.{key}", sub_base)
        else:
            kwargs[key] = _coerce(key, tp, value)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}; valid keys: {valid}") from None


TELEMETRY_LEVELS = ("off", "minimal", "normal", "debug")
TASKS = ("cifar10", "cifar10_deep", "cifar10_blind", "tinystories", "digits")
HOST_TASKS = ("digits",)  # tasks whose data the host env carries (esper_jax.env.make("host"))
ENVS = ("host", "sim")


@dataclasses.dataclass(frozen=True)
class RunTelemetryConfig:
    """What a run records (simic's ``TelemetryConfig``, renamed to avoid the nissa clash; ppo.md §10.1).

    Live here: ``level`` (``off`` disables TensorBoard and plots; ``debug`` also logs per-head entropies/losses to
    TensorBoard every interval — they are always in metrics.jsonl), ``tensorboard``, ``plots``, ``progress_bar``.
    Inert (kept for upstream JSON, no effect in the compiled trainer): the interval/monitoring/escalation knobs.
    """

    level: Literal["off", "minimal", "normal", "debug"] = "normal"
    gradient_check_interval: int = 1  # inert
    memory_check_interval: int = 5  # inert
    per_layer_gradients: bool = False  # inert
    activation_monitoring: bool = False  # inert
    weight_tracking: bool = False  # inert
    weight_track_interval: int = 10  # inert
    auto_escalate_on_anomaly: bool = True  # inert
    anomaly_escalation_epochs: int = 5  # inert
    tensorboard: bool = True  # write TensorBoard event files (tensorboardX) under RUN_DIR/tb
    plots: bool = True  # write RUN_DIR/learning_curves.png at each checkpoint and at the end
    progress_bar: bool = True  # rich progress bar on stderr

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("gradient_check_interval", "memory_check_interval", "weight_track_interval"):
            _check_min(self, name, 1)
        _check_min(self, "anomaly_escalation_epochs", 0)

    @classmethod
    def from_dict(cls, data: Any) -> RunTelemetryConfig:
        return _from_dict(cls, data, "telemetry")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Every field of upstream's ``TrainingConfig`` (ppo.md §10) plus the JAX trainer's own settings.

    Budget: one PPO *iteration* = a rollout of ``max_epochs`` steps in each of ``n_envs`` envs (one full episode
    per env, as upstream) followed by one PPO update; the run does ceil(n_episodes / n_envs) iterations, grouped
    in *intervals* of ``iterations_per_interval`` (one compiled call each, one metrics.jsonl line each).
    """

    # ---- upstream fields (ppo.md §10) ----

    n_episodes: int = 100
    n_envs: int = 4
    max_epochs: int = 150  # episode length (env steps per episode)
    batch_size_per_env: int | None = None  # host env: SGD minibatch size (None → the task's, 16 on digits); inert on sim
    lr: float = 3e-4
    clip_ratio: float = 0.2
    gamma: float = 0.995
    gae_lambda: float = 0.98
    ppo_updates_per_batch: int = 1  # → PPOConfig.epochs (full-batch gradient steps per iteration)
    entropy_coef: float = 0.05
    entropy_coef_start: float | None = None
    entropy_coef_end: float | None = None
    entropy_coef_min: float = 0.01
    adaptive_entropy_floor: bool = False  # inert (dead upstream too)
    entropy_anneal_episodes: int = 0  # → PPOConfig.entropy_anneal_steps = ceil(episodes / n_envs)
    use_telemetry: bool = True  # False ≡ telemetry.level "off"
    amp: bool = False  # inert (float32 throughout)
    amp_dtype: Literal["auto", "float16", "bfloat16", "off"] = "auto"  # inert
    compile_mode: Literal["default", "max-autotune", "reduce-overhead", "off"] = "default"  # inert (always jit)
    chunk_length: int | None = None  # None → max_epochs (kept None so --max-epochs alone works); if set must equal max_epochs
    slots: tuple[str, ...] = ("r0c1",)
    max_seeds: int | None = None  # None → unlimited
    reward_mode: Literal["shaped"] = "shaped"  # the simulator implements SHAPED only
    reward_family: Literal["contribution"] = "contribution"  # LOSS family not implemented by the simulator
    param_budget: int = 500_000  # inert (SPARSE/MINIMAL modes only)
    param_penalty_weight: float = 0.1  # inert (SPARSE/MINIMAL modes only)
    sparse_reward_scale: float = 1.0  # inert (SPARSE mode only)
    reward_mode_per_env: tuple[str, ...] | None = None  # must be None or all "shaped"
    plateau_threshold: float = 0.5  # inert (upstream telemetry events)
    improvement_threshold: float = 2.0  # inert (upstream telemetry events)
    gradient_telemetry_stride: int = 10  # inert
    seed: int = 42
    task: Literal["cifar10", "cifar10_deep", "cifar10_blind", "tinystories", "digits"] | None = None  # None → digits (host) / cifar10 (sim)
    permissive_gates: bool = True  # → EnvConfig.gates "permissive"/"strict"
    disable_pbrs: bool = False
    disable_terminal_reward: bool = False
    disable_anti_gaming: bool = False
    max_grad_norm: float = 1.0  # host env: gradient clipping of the host and of each seed; inert on sim
    lstm_hidden_dim: int = 512

    # ---- JAX trainer settings ----

    env: Literal["host", "sim"] = "sim"  # lifecycle simulator ("sim", CPU-budget default) or real host networks ("host")
    compat: Literal["upstream", "fixed"] = "fixed"  # esper_jax.contracts.Compat for env, rollout and PPO
    feature_dim: int = 512  # width of the policy's feature net (upstream 512)
    # Operand type of the policy's matmuls (float32 accumulation, float32 params): bfloat16 halves the weight bytes a
    # rollout step streams (1.6-3.9x faster acting at 4 envs on a 2-core CPU) and uses bf16 tensor cores on GPUs.
    matmul_dtype: Literal["float32", "bfloat16"] = "float32"
    iterations_per_interval: int = 5  # PPO iterations inside one compiled call / one metrics line
    checkpoint_every: int = 2  # intervals between orbax checkpoints (one is always written at the end)
    keep_checkpoints: int = 2  # orbax max_to_keep
    normalize_rewards: bool = True
    target_kl: float | None = 0.015
    value_coef: float = 0.5
    policy_max_grad_norm: float = 1.0  # PPO gradient clipping (PPOAgent default)
    eval_episodes: int = 16  # envs (one episode each) of the final trained/random/WAIT comparison
    telemetry: RunTelemetryConfig = RunTelemetryConfig()

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("n_episodes", "n_envs", "max_epochs", "ppo_updates_per_batch", "gradient_telemetry_stride",
                     "lstm_hidden_dim", "feature_dim", "iterations_per_interval", "checkpoint_every",
                     "keep_checkpoints", "eval_episodes", "param_budget"):
            _check_min(self, name, 1)
        _check_min(self, "entropy_anneal_episodes", 0)
        if self.batch_size_per_env is not None:
            _check_min(self, "batch_size_per_env", 1)
        if self.max_seeds is not None:
            _check_min(self, "max_seeds", 1)
        if self.chunk_length is not None and self.chunk_length != self.max_epochs:
            raise ConfigError(
                f"chunk_length must equal max_epochs ({self.max_epochs}): the update runs full-episode BPTT; "
                f"got {self.chunk_length}"
            )
        if self.env == "host" and self.env_task not in HOST_TASKS:
            raise ConfigError(
                f"task {self.env_task!r} has no data in the host env (valid host tasks: {list(HOST_TASKS)}); "
                f"use env 'sim' for it, or build the env from your own arrays (README: Host-network environment)"
            )
        if self.lstm_hidden_dim % 2:
            raise ConfigError(f"lstm_hidden_dim must be even (heads use hidden // 2), got {self.lstm_hidden_dim}")
        for name in ("gamma", "gae_lambda", "clip_ratio"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1], got {v}")
        for name in ("lr", "max_grad_norm", "policy_max_grad_norm", "sparse_reward_scale"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("entropy_coef", "entropy_coef_min", "param_penalty_weight", "value_coef"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("entropy_coef_start", "entropy_coef_end", "target_kl"):
            v = getattr(self, name)
            if v is not None and not v >= 0 or (name == "target_kl" and v is not None and v <= 0):
                raise ConfigError(f"{name} must be None or {'>' if name == 'target_kl' else '>='} 0, got {v}")
        for name, v in ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)):
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{name} must be finite, got {v}")
        if not self.slots:
            raise ConfigError("slots must name at least one slot, e.g. ['r0c1']")
        try:
            from esper_jax.contracts import SlotConfig

            SlotConfig(self.slots)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"slots {list(self.slots)} invalid: {exc}") from None
        if self.reward_mode_per_env is not None:
            if len(self.reward_mode_per_env) != self.n_envs:
                raise ConfigError(
                    f"reward_mode_per_env must have n_envs={self.n_envs} entries, got {len(self.reward_mode_per_env)}"
                )
            bad = [m for m in self.reward_mode_per_env if m != "shaped"]
            if bad:
                raise ConfigError(f"reward_mode_per_env: only 'shaped' is implemented, got {bad}; valid: ['shaped']")
        if not self.use_telemetry and self.telemetry.level != "off":
            object.__setattr__(self, "telemetry", dataclasses.replace(self.telemetry, level="off"))

    # ---- derived -----------------------------------------------------------------------------------------------

    @property
    def env_task(self) -> str:
        return self.task or ("digits" if self.env == "host" else "cifar10")

    @property
    def num_iterations(self) -> int:
        return -(-self.n_episodes // self.n_envs)

    @property
    def num_intervals(self) -> int:
        return -(-self.num_iterations // self.iterations_per_interval)

    def interval_iterations(self, interval: int) -> int:
        """PPO iterations run by (0-based) ``interval``; the last one may be shorter."""
        start = interval * self.iterations_per_interval
        return max(0, min(self.iterations_per_interval, self.num_iterations - start))

    @property
    def entropy_anneal_steps(self) -> int:
        return -(-self.entropy_anneal_episodes // self.n_envs) if self.entropy_anneal_episodes else 0

    # ---- builders (imports kept local so `--help` and JSON checks stay light) ---------------------------------

    def env_config(self):
        from esper_jax.contracts import SlotConfig
        from esper_jax.env import EnvConfig, HostConfig, RewardConfig

        return EnvConfig(
            slots=SlotConfig(self.slots),
            task=self.env_task,
            episode_length=self.max_epochs,
            max_seeds=self.max_seeds or 0,
            gates="permissive" if self.permissive_gates else "strict",
            compat=self.compat,
            reward_mode=self.reward_mode,
            reward=RewardConfig(
                gamma=self.gamma,
                disable_pbrs=self.disable_pbrs,
                disable_terminal_reward=self.disable_terminal_reward,
                disable_anti_gaming=self.disable_anti_gaming,
            ),
            host=HostConfig(batch_size=self.batch_size_per_env, max_grad_norm=self.max_grad_norm),
        )

    def network_config(self):
        from esper_jax.network import NetworkConfig

        return NetworkConfig(
            num_slots=len(self.slots),
            feature_dim=self.feature_dim,
            hidden_dim=self.lstm_hidden_dim,
            matmul_dtype=self.matmul_dtype,
        )

    def ppo_config(self):
        from esper_jax.ppo import PPOConfig

        return PPOConfig(
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            clip_ratio=self.clip_ratio,
            value_coef=self.value_coef,
            entropy_coef=self.entropy_coef,
            entropy_coef_start=self.entropy_coef_start,
            entropy_coef_end=self.entropy_coef_end,
            entropy_coef_min=self.entropy_coef_min,
            entropy_anneal_steps=self.entropy_anneal_steps,
            adaptive_entropy_floor=self.adaptive_entropy_floor,
            learning_rate=self.lr,
            max_grad_norm=self.policy_max_grad_norm,
            target_kl=self.target_kl,
            epochs=self.ppo_updates_per_batch,
            compat=self.compat,
        )

    def rollout_config(self):
        from esper_jax.rollout import RolloutConfig

        return RolloutConfig(num_steps=self.max_epochs, compat=self.compat, normalize_rewards=self.normalize_rewards)

    # ---- serialisation -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, base: TrainingConfig | None = None) -> TrainingConfig:
        """Strict load; keys absent from ``data`` take ``base``'s values (default: ``TrainingConfig()``)."""
        if isinstance(data, dict) and "entropy_anneal_rounds" in data:
            if "entropy_anneal_episodes" in data:
                raise ConfigError("Cannot specify both entropy_anneal_rounds and entropy_anneal_episodes")
            data = dict(data)
            data["entropy_anneal_episodes"] = data.pop("entropy_anneal_rounds")
        return _from_dict(cls, data, "config", base)

    @classmethod
    def from_json_path(cls, path: str | Path, base: TrainingConfig | None = None) -> TrainingConfig:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, base)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Where a run executes (esper_jax.distributed). Not part of a run's config.json: the same run may resume on
    other hardware, and the seed gives the same training on any device count (up to float32 summation order).

    Envs are split evenly over the devices, so ``n_envs`` must be a multiple of the device count. Multi-host: the
    three process settings together, or none of them and a cluster launcher's variables (SLURM, Open MPI, a
    multi-host TPU slice, JAX_COORDINATOR_ADDRESS) are read by ``jax.distributed.initialize()``."""

    devices: int | None = None
    """Devices to split the envs over (default: every local device, or every device of every process)."""
    coordinator: str | None = None
    """Multi-host: HOST:PORT of process 0's coordinator service (with --num-processes and --process-id)."""
    num_processes: int | None = None
    """Multi-host: how many processes take part (one per host, usually)."""
    process_id: int | None = None
    """Multi-host: this process's rank, 0..num_processes-1; process 0 writes logs, plots and eval.json."""

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("devices", "num_processes"):
            if getattr(self, name) is not None:
                _check_min(self, name, 1)
        if self.process_id is not None:
            _check_min(self, "process_id", 0)


INERT_FIELDS: tuple[str, ...] = (
    "adaptive_entropy_floor", "amp", "amp_dtype", "compile_mode", "param_budget",
    "param_penalty_weight", "sparse_reward_scale", "plateau_threshold", "improvement_threshold",
    "gradient_telemetry_stride",
    "telemetry.gradient_check_interval", "telemetry.memory_check_interval", "telemetry.per_layer_gradients",
    "telemetry.activation_monitoring", "telemetry.weight_tracking", "telemetry.weight_track_interval",
    "telemetry.auto_escalate_on_anomaly", "telemetry.anomaly_escalation_epochs",
)

PRESETS: dict[str, TrainingConfig] = {
    "default": TrainingConfig(),
    "cifar10": TrainingConfig(entropy_coef=0.1, plateau_threshold=0.4, env="host", task="digits"),
    "cifar10-deep": TrainingConfig(entropy_coef=0.08, plateau_threshold=0.35, task="cifar10_deep"),
    "tinystories": TrainingConfig(
        entropy_coef=0.05, entropy_anneal_episodes=10, plateau_threshold=0.3, improvement_threshold=1.5,
        sparse_reward_scale=0.5, task="tinystories",
    ),
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def preset(name: str) -> TrainingConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {list(PRESET_NAMES)}")
    return PRESETS[name]


