"""Data-parallel SPMD over many devices and hosts: one ("data",) mesh, env-sharded state, replicated params.

One code path for 1 and N devices. Every array with an env (batch) axis — the runner state (env states,
observations, LSTM carries, episode returns) and the trajectories — is split over the mesh axis ``"data"``;
params, optimiser state, normalisers, keys and metrics are replicated. The compiled training interval is a plain
``jax.jit`` with those input/output shardings: XLA's SPMD partitioner (GSPMD) runs each device's envs locally and
inserts the collectives itself. Nothing here is ``jax.pmap``. (With one minibatch, the trainer's setting,
``ppo.update`` uses the batch as it is, so its forward and backward are split by env and the gradients meet in
all-reduces; with several minibatches it selects each with an index gather over the env axis, which GSPMD
partitions by gathering the batch onto every device, so that update runs replicated. The README's "Running on many
devices" has the details.)

The math is the single-device math: every random key is split for the *global* env count and the minibatch order
comes from the update key and the global env count, so the same seed gives the same samples on 1 or N devices.
What can differ is the order of float additions over the sharded axis (per-device partial sums, then an
all-reduce) and the CPU kernels picked for the smaller per-device batches, which moves results by float32
rounding (``tests/test_distributed.py`` checks it against docs/parity.md's update bound).

Multi-host: :func:`initialize` calls ``jax.distributed.initialize()`` when the process was launched by a cluster
manager (SLURM, Open MPI / PMI, a multi-host TPU slice, or ``JAX_COORDINATOR_ADDRESS``) or when a coordinator is
given explicitly. The mesh then spans every process's devices; each process holds (and steps) only the envs on
its own devices, and only process 0 writes logs and plots (orbax checkpoints are written collectively: each
array shard once, metadata by process 0).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from esper_jax.config import ConfigError

__all__ = [
    "AXIS",
    "DistributedError",
    "Layout",
    "cluster_launch_detected",
    "initialize",
    "make_layout",
    "valid_env_counts",
]

AXIS = "data"


class DistributedError(ConfigError):
    """A device or process layout the run cannot use (names the setting and the values that would work)."""


# ---------------------------------------------------------------------------------------------------------------
# Multi-host start-up
# ---------------------------------------------------------------------------------------------------------------

# Variables a cluster manager sets when it starts several cooperating processes; jax.distributed.initialize()
# reads the same ones (jax._src.clusters) to find the coordinator, the process count and this process's id.
_PROCESS_COUNT_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def cluster_launch_detected(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started as one of several by a cluster launcher (so jax.distributed must be
    initialised with the launcher's settings). A lone process under SLURM (``SLURM_NTASKS=1``) is not."""
    env = os.environ if environ is None else environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for name in _PROCESS_COUNT_VARS:
        try:
            if int(env.get(name, "1")) > 1:
                return True
        except ValueError:
            continue
    # A multi-host TPU slice lists every worker; a single TPU VM lists one (or nothing).
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Start JAX's distributed runtime if this is a multi-process launch; returns whether it did.

    Explicit settings need all three of ``coordinator`` (host:port of process 0), ``num_processes`` and
    ``process_id``; without them the cluster variables decide (:func:`cluster_launch_detected`) and JAX reads
    them itself. Must run before anything touches a JAX device. Calling it again after success is a no-op."""
    explicit = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    given = {k for k, v in explicit.items() if v is not None}
    if given and given != set(explicit):
        missing = sorted(set(explicit) - given)
        raise DistributedError(
            f"multi-host settings are all-or-nothing: got {sorted(given)}, missing {missing} "
            "(--coordinator HOST:PORT --num-processes N --process-id I)"
        )
    if given:
        if num_processes < 1:
            raise DistributedError(f"num_processes must be >= 1, got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise DistributedError(f"process_id must be in [0, {num_processes - 1}], got {process_id}")
    elif not cluster_launch_detected(environ):
        return False
    if _runtime_started():
        return True
    if given:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()
    return True


def _runtime_started() -> bool:
    from jax._src import distributed as _dist  # the public API exposes no "is initialised" query

    return getattr(_dist.global_state, "client", None) is not None


# ---------------------------------------------------------------------------------------------------------------
# Mesh and shardings
# ---------------------------------------------------------------------------------------------------------------


def valid_env_counts(num_devices: int, around: int, how_many: int = 4) -> list[int]:
    """The multiples of ``num_devices`` nearest ``around`` (the env counts that split evenly)."""
    counts = [k * num_devices for k in range(1, around // num_devices + how_many + 1)]
    return sorted(sorted(counts, key=lambda c: (abs(c - around), c))[:how_many])


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every piece of the training state lives. Hashable (a jit cache key)."""

    mesh: Mesh
    num_envs: int

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def envs_per_device(self) -> int:
        return self.num_envs // self.num_devices

    @property
    def is_primary(self) -> bool:
        """Process 0 writes logs and plots; every process takes part in computing and checkpointing."""
        return jax.process_index() == 0

    # ---- shardings --------------------------------------------------------------------------------------------

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def batch(self, axis: int = 0) -> NamedSharding:
        """Split the env axis ``axis`` over the mesh (the other axes whole)."""
        return NamedSharding(self.mesh, PartitionSpec(*([None] * axis), AXIS))

    def runner(self) -> Any:
        """A RunnerState of shardings (a pytree prefix): per-env fields split, the shared reward normaliser
        replicated."""
        from esper_jax.rollout import RunnerState

        return RunnerState(env_state=self.batch(), obs=self.batch(), carry=self.batch(),
                           reward_stats=self.replicated, episode_return=self.batch())

    def trajectory(self) -> Any:
        """A Trajectory of shardings: time-major ``[T, E, ...]`` fields split on axis 1, ``initial_carry``
        ``[E, ...]`` on axis 0."""
        from esper_jax.rollout import Trajectory

        fields = {f.name: self.batch(1) for f in dataclasses.fields(Trajectory)}
        fields["initial_carry"] = self.batch(0)
        return Trajectory(**fields)

    def state(self) -> dict[str, Any]:
        """Shardings of the trainer's state (``trainer.TrainerState``) by field name; ``counters`` stay host numpy
        and are not placed."""
        return {"train": self.replicated, "runner": self.runner(), "key": self.replicated}

    # ---- placement and compilation ----------------------------------------------------------------------------

    def constrain_trajectory(self, trajectory: Any) -> Any:
        """Inside jit: keep the trajectory split by env between the rollout and the update."""
        return jax.lax.with_sharding_constraint(trajectory, self.trajectory())

    def place(self, state: Any) -> Any:
        """Put the trainer's state (a ``TrainerState``, or any struct with its ``train``/``runner``/``key``
        fields) on the mesh. Every process passes the same full values (they come from the same seed or
        checkpoint) and keeps only the shards on its own devices. Host numpy leaves stay on the host."""
        return state.replace(**{
            name: jax.tree.map(_put, shardings, getattr(state, name), is_leaf=lambda x: isinstance(x, NamedSharding))
            for name, shardings in self.state().items()
        })

    def abstract(self, state: Any) -> Any:
        """``ShapeDtypeStruct`` leaves carrying this layout's shardings, for restoring a checkpoint straight onto
        the mesh. Host numpy leaves (the int64 counters) stay numpy: every process reads them whole."""
        return state.replace(**{
            name: jax.tree.map(
                lambda s, tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree),
                shardings, getattr(state, name), is_leaf=lambda x: isinstance(x, NamedSharding))
            for name, shardings in self.state().items()
        })

    def jit_interval(self, run: Any) -> Any:
        """``jax.jit`` of ``run(train_state, runner, key, env_data) -> (train_state, runner, key, metrics)`` with
        the layout's shardings (``env_data``, the env's dataset arrays, replicated); GSPMD partitions the rest. The
        runner is donated: the caller replaces it with the returned one, and on an accelerator its env states need
        not exist twice."""
        return jax.jit(
            run,
            in_shardings=(self.replicated, self.runner(), self.replicated, self.replicated),
            out_shardings=(self.replicated, self.runner(), self.replicated, self.replicated),
            donate_argnums=(1,),
        )


def _put(sharding: NamedSharding, tree: Any) -> Any:
    def put(x: Any) -> Any:
        if isinstance(x, jax.Array) and x.sharding == sharding and not x.weak_type:
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def make_layout(num_envs: int, devices: int | None = None) -> Layout:
    """A ("data",) mesh over ``devices`` devices (default: all, across every process) for ``num_envs`` envs.

    Refuses, naming the values that work: more devices than exist, a device count that is not a whole number of
    processes' devices in a multi-host run, and an env count that does not split evenly over the devices."""
    available = jax.devices()
    if devices is None:
        devices = len(available)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise DistributedError(f"devices must be a positive integer or None (all), got {devices!r}")
    if devices > len(available):
        raise DistributedError(
            f"devices={devices} requested but only {len(available)} {available[0].platform} device(s) are available"
            f"{'' if jax.process_count() == 1 else f' across {jax.process_count()} processes'}; "
            f"use --devices 1..{len(available)}"
        )
    if jax.process_count() > 1 and devices != len(available):
        raise DistributedError(
            f"devices={devices}: a multi-host run uses every device of every process ({len(available)}); "
            "leave --devices unset"
        )
    if num_envs % devices:
        fits = [d for d in range(1, len(available) + 1) if num_envs % d == 0]
        raise DistributedError(
            f"n_envs={num_envs} does not split evenly over {devices} devices: use n_envs in "
            f"{valid_env_counts(devices, num_envs)} (any multiple of {devices}), or devices in {fits}"
        )
    mesh = Mesh(np.asarray(available[:devices]), (AXIS,))
    return Layout(mesh=mesh, num_envs=num_envs)
