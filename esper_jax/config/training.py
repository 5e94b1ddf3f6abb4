"""The trainer's configuration: one tree of the configs the code already uses.

``TrainingConfig`` holds the run's own settings (seed, budget, env kind, cadence) and, as sections, the configs
its parts take: ``env`` (``esper_jax.env.EnvConfig``, with ``env.reward`` and ``env.host``), ``network``
(``NetworkConfig``), ``ppo`` (``PPOConfig``), ``rollout`` (``RolloutConfig``), ``checkpoints`` and ``telemetry``.
Each section validates itself; ``TrainingConfig`` checks only what spans sections: values two parts must share
are stored in each part and must agree (nothing is copied or rewritten behind the user's back):

* ``env.compat`` = ``ppo.compat`` = ``rollout.compat`` (the one compat switch, ``TrainingConfig.compat``);
* ``rollout.num_steps`` = ``env.episode_length`` (a rollout is one whole episode per env);
* ``network.num_slots`` = the number of ``env.slots``;
* ``rollout.mask_config`` offers what the env accepts: its ``max_seeds`` and ``topology``;
* ``ppo.gamma`` = ``env.reward.gamma`` (PBRS is policy-invariant only then).

Budget: one PPO *iteration* = a rollout of ``env.episode_length`` steps in each of ``n_envs`` envs followed by
one update; the run does ceil(n_episodes / n_envs) iterations in *intervals* of ``iterations_per_interval`` (one
compiled call and one metrics.jsonl line each).
"""

# ruff: noqa: RUF009  (the sections are frozen dataclasses: a shared default instance is safe)
from __future__ import annotations

import dataclasses
from typing import Literal

from esper_jax.config.strict import ConfigError, check_field_types
from esper_jax.contracts import SlotConfig
from esper_jax.env import EnvConfig
from esper_jax.network import NetworkConfig
from esper_jax.ppo import PPOConfig
from esper_jax.rollout import RolloutConfig

__all__ = [
    "COMPATIBLE_OVERRIDES",
    "HOST_TASKS",
    "CheckpointConfig",
    "DistributedConfig",
    "RunTelemetryConfig",
    "TrainingConfig",
]

HOST_TASKS = ("digits", "cifar10", "tinystories", "tinystories_small")  # tasks whose data the host env carries
# (make("host"); cifar10 reads env.host.data_dir; the transformer tasks read env.lm: the embedded corpus or a token file)

# Settings a resumed run may change (dotted prefixes): the budget and what is only recorded, never traced.
COMPATIBLE_OVERRIDES: tuple[str, ...] = ("n_episodes", "eval_episodes", "checkpoints", "telemetry")


def _at_least(cfg, where: str, names: tuple[str, ...], minimum: int) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{where}{name} must be >= {minimum}, got {value}")


@dataclasses.dataclass(frozen=True)
class RunTelemetryConfig:
    """What a run records (simic's ``TelemetryConfig``, renamed: upstream had two classes of that name)."""

    level: Literal["off", "minimal", "normal", "debug"] = "normal"
    """off: no TensorBoard and no plots; debug: also per-head entropies/losses in TensorBoard (always in
    metrics.jsonl)."""
    tensorboard: bool = True
    """Write TensorBoard event files (tensorboardX) under RUN_DIR/tb."""
    plots: bool = True
    """Write RUN_DIR/learning_curves.png at each checkpoint and at the end."""
    progress_bar: bool = True
    """Rich progress bar on stderr."""

    def __post_init__(self) -> None:
        check_field_types(self, "telemetry.")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints under RUN_DIR/checkpoints (one is always written at the end)."""

    every: int = 2
    """Intervals between checkpoints."""
    keep: int = 2
    """Checkpoints kept on disk (orbax max_to_keep)."""

    def __post_init__(self) -> None:
        check_field_types(self, "checkpoints.")
        _at_least(self, "checkpoints.", ("every", "keep"), 1)


_DEFAULT_SLOTS = SlotConfig(("r0c1",))  # upstream TrainingConfig.slots


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Train the Esper seed-slot controller: run settings plus the env, network, PPO and rollout configs.

    Defaults are upstream's ``TrainingConfig()`` (one slot r0c1, 150-step episodes, LSTM 512) on the simulator."""

    seed: int = 42
    n_episodes: int = 100
    """Episodes in the whole run (one per env per iteration)."""
    n_envs: int = 4
    env_kind: Literal["sim", "host"] = "sim"
    """sim: lifecycle simulator (cheap accuracy model); host: real hosts trained with their seeds (CNNs on task
    digits, or cifar10 with --env.host.data-dir; transformers on tinystories / tinystories_small)."""
    iterations_per_interval: int = 5
    """PPO iterations inside one compiled call (one metrics.jsonl line)."""
    eval_episodes: int = 16
    """Envs (one episode each) of the final trained / random / always-WAIT comparison."""
    env: EnvConfig = EnvConfig(slots=_DEFAULT_SLOTS)
    network: NetworkConfig = NetworkConfig(num_slots=_DEFAULT_SLOTS.num_slots)
    ppo: PPOConfig = PPOConfig()
    rollout: RolloutConfig = RolloutConfig(num_steps=150)
    checkpoints: CheckpointConfig = CheckpointConfig()
    telemetry: RunTelemetryConfig = RunTelemetryConfig()

    def __post_init__(self) -> None:
        check_field_types(self, "")
        _at_least(self, "", ("n_episodes", "n_envs", "iterations_per_interval", "eval_episodes"), 1)
        env, net, ppo, roll = self.env, self.network, self.ppo, self.rollout
        compats = {"env.compat": env.compat, "ppo.compat": ppo.compat, "rollout.compat": roll.compat}
        if len(set(compats.values())) != 1:
            raise ConfigError(
                f"env.compat, ppo.compat and rollout.compat must agree (one compat for the run), got {compats}; "
                f"set all three (on the command line: --compat upstream)"
            )
        if roll.num_steps != env.episode_length:
            raise ConfigError(
                f"rollout.num_steps ({roll.num_steps}) must equal env.episode_length ({env.episode_length}): a "
                f"rollout is one whole episode per env (full-episode BPTT; on the command line: --episode-length N)"
            )
        if net.num_slots != env.num_slots:
            raise ConfigError(
                f"network.num_slots ({net.num_slots}) must equal the number of env.slots ({list(env.slots.slot_ids)})"
            )
        mask = roll.mask_config
        if (mask.max_seeds, mask.topology) != (env.max_seeds, env.resolved_topology):
            raise ConfigError(
                f"rollout.mask_config (max_seeds {mask.max_seeds}, topology {mask.topology!r}) must offer what the "
                f"env accepts: env.max_seeds {env.max_seeds}, env.topology {env.resolved_topology!r}"
            )
        if ppo.gamma != env.reward.gamma:
            raise ConfigError(f"ppo.gamma ({ppo.gamma}) must equal env.reward.gamma ({env.reward.gamma}) (PBRS)")
        if roll.info_totals is not None:
            raise ConfigError("rollout.info_totals is chosen by the trainer; leave it None")
        if self.env_kind == "host" and env.task not in HOST_TASKS:
            raise ConfigError(
                f"env.task {env.task!r} has no data in the host env (valid host tasks: {list(HOST_TASKS)}); "
                f"set env.task 'digits' (--env.task digits, or the preset digits) or 'cifar10' with env.host.data_dir, "
                f"use env_kind 'sim' for this task, "
                f"or build the env from your own arrays (README: Host-network environment)"
            )

    # ---- derived -----------------------------------------------------------------------------------------------

    @property
    def compat(self) -> str:
        return self.env.compat

    @property
    def episode_length(self) -> int:
        return self.env.episode_length

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

    # ---- serialisation (the nested format; flat upstream / pre-tree files go through config.upstream) ----------

    def to_dict(self) -> dict:
        from esper_jax.config.strict import to_dict

        return to_dict(self)


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
        check_field_types(self, "")
        _at_least(self, "", ("devices", "num_processes"), 1)
        _at_least(self, "", ("process_id",), 0)
