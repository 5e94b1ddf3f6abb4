"""esper_jax.distributed: launch detection, layout refusals, and 1-device vs 8-device equivalence.

The equivalence checks need 8 simulated CPU devices, which must be configured before JAX starts; this pytest
process (an xdist worker) has JAX running already, so they run ``tests/spmd_check.py`` in a fresh process with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. Bound (docs/parity.md, parameters after one full update):
|x₈ − x₁| ≤ 1e-6 + 1e-4·|x₁|. The two layouts run the same math with the same keys; what differs is the shape of
each device's work (8× smaller batches pick other CPU matmul kernels) and the order of the float32 sums over the
env axis (per-device partial sums, then the all-reduce), so results agree to float32 rounding, not bit for bit.

Default run: the refusals, the collectives in the compiled multi-minibatch update's HLO, and the trainer's compiled
interval (rollout + update) with a small env, 3 iterations.
Behind ``-m slow``: ``ppo.update`` on one identical trajectory, and ``esper_jax.train.train`` on the lifecycle
simulator (each two more compiles).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from esper_jax import distributed, telemetry
from esper_jax.config import ConfigError, DistributedConfig

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 8
# Both layouts of a check compile in the same process under the same flags, so lighter LLVM optimisation (it only
# changes how fast the compiled code runs, not which operations it runs) is fair and halves the compile time.
XLA_FLAGS = (f"--xla_force_host_platform_device_count={DEVICES} --xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")
TIMEOUT_S = 900


def _spmd_check(out: Path, only: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=XLA_FLAGS, JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "spmd_check.py"), str(out), "--only", only],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"spmd_check.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))  # the observed differences, so a regression shows its size
    assert report["available"] == DEVICES, f"expected {DEVICES} simulated devices, got {report['available']}"
    return report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return _spmd_check(tmp_path_factory.mktemp("spmd"), "errors,hlo,interval")


# ---------------------------------------------------------------------------------------------------------------
# 1 vs 8 devices
# ---------------------------------------------------------------------------------------------------------------


def test_first_update_of_the_compiled_interval_on_8_devices_matches_1_device(report):
    diff = report["interval"]["first_update_params"]
    assert diff["bound_excess"] <= 0, f"params after one update outside docs/parity.md's bound: {diff}"


def test_multi_minibatch_update_on_8_devices_moves_no_batch_between_devices(report):
    """Issue 20: with several minibatches each device picks its share of a minibatch from its own envs, the
    observation normaliser sums over [T, E] in place and the LSTM kernel gradient contracts T and E in place, so
    the compiled update's only collectives are all-reduces of gradients and scalars: none carries a time axis or a
    global env count (before, the minibatch gather all-reduced every minibatch onto every device and the
    normaliser and the kernel gradient all-gathered [T, E, ...])."""
    hlo = report["hlo"]
    assert hlo["collectives"] > 0, "the 8-device update must at least all-reduce its gradients"
    assert hlo["batch_collectives"] == [], f"batch data moved between devices: {hlo['batch_collectives']}"
    assert hlo["all_gathers"] == 0


@pytest.mark.slow  # two more compiles of ppo.update (~40 s of CPU); the interval check covers one update by default
def test_one_update_on_the_same_trajectory_on_8_devices_matches_1_device(tmp_path):
    upd = _spmd_check(tmp_path, "update")["update"]
    assert upd["trajectory_sharding"] == "P(None, 'data')", "the trajectory was not split by env"
    assert upd["steps_applied"] == 4 and upd["params_moved"] > 1e-4, "the update must actually move the params"
    for part in ("params", "opt_state", "metrics"):
        assert upd[part]["bound_excess"] <= 0, f"{part}: 8-device update outside docs/parity.md's bound: {upd[part]}"


def test_three_compiled_training_intervals_on_8_devices_match_1_device(report):
    run = report["interval"]
    assert run["carry_sharding"] == "P('data',)", "runner state not split by env"
    assert run["episodes"] > 0 and run["key_equal"]
    # Same keys → the same sampled actions, resets and episode counts; floats within the update bound.
    for part in ("metrics", "params", "runner"):
        assert run[part]["discrete_equal"], f"{part}: discrete outcomes differ between 1 and 8 devices"
        assert run[part]["bound_excess"] <= 0, f"{part}: 8-device interval outside docs/parity.md's bound: {run[part]}"


@pytest.mark.slow  # two compiles of the full interval with the simulator (~3 min of CPU on 2 cores)
def test_short_training_run_on_8_devices_matches_1_device(tmp_path):
    run = _spmd_check(tmp_path, "train")["train"]
    assert run["carry_devices"] == DEVICES and run["carry_sharding"] == "P('data',)", "runner state not split by env"
    assert run["num_records"] == 3 and run["checkpoints"], "the runs did not log every interval and checkpoint"
    # Same keys → the same sampled actions, episodes and seed ops; float metrics within the update bound.
    assert run["counts_identical"], "discrete outcomes differ between 1 and 8 devices"
    for part in ("records", "params", "runner"):  # runner: env states, carries, returns after the last rollout
        assert run[part]["bound_excess"] <= 0, f"{part}: 8-device run outside docs/parity.md's bound: {run[part]}"


def test_bad_device_and_env_counts_are_refused_clearly(report):
    err = report["errors"]
    assert "n_envs=10 does not split evenly over 8 devices" in err["uneven_envs"]
    assert "[8, 16, 24, 32]" in err["uneven_envs"] and "devices in [1, 2, 5]" in err["uneven_envs"]
    assert "devices=9 requested but only 8 cpu device(s)" in err["too_many_devices"]
    assert err["cli_uneven"].startswith("returned 2") and "does not split evenly" in err["cli_uneven"]
    assert err["cli_wrote_nothing"], "a refused run must not create its run directory"


# ---------------------------------------------------------------------------------------------------------------
# In-process: layout refusals on this process's devices, launch detection, settings
# ---------------------------------------------------------------------------------------------------------------


def test_layout_over_the_local_devices():
    n = len(jax.devices())
    layout = distributed.make_layout(4 * n)
    assert layout.num_devices == n and layout.envs_per_device == 4
    assert layout.batch(1).spec == jax.sharding.PartitionSpec(None, "data")
    with pytest.raises(distributed.DistributedError, match=rf"devices={n + 1} requested but only {n}"):
        distributed.make_layout(4 * n, n + 1)
    with pytest.raises(distributed.DistributedError, match="positive integer"):
        distributed.make_layout(4, 0)


def test_valid_env_counts_are_the_nearest_multiples():
    assert distributed.valid_env_counts(8, 10) == [8, 16, 24, 32]
    assert distributed.valid_env_counts(4, 30) == [24, 28, 32, 36]
    assert distributed.valid_env_counts(3, 1) == [3, 6, 9, 12]


@pytest.mark.parametrize("environ, expected", [
    ({}, False),
    ({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}, False),
    ({"SLURM_NTASKS": "4"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ({"TPU_WORKER_HOSTNAMES": "t1"}, False),
    ({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}, True),
])
def test_cluster_launch_detection(environ, expected):
    assert distributed.cluster_launch_detected(environ) is expected


def test_single_process_launch_does_not_start_the_runtime():
    assert distributed.initialize(environ={}) is False


def test_multi_host_settings_are_all_or_nothing():
    with pytest.raises(distributed.DistributedError, match=r"missing \['num_processes', 'process_id'\]"):
        distributed.initialize(coordinator="localhost:1234")
    with pytest.raises(distributed.DistributedError, match=r"process_id must be in \[0, 1\]"):
        distributed.initialize("localhost:1234", 2, 2)
    with pytest.raises(ConfigError, match="devices must be >= 1"):
        DistributedConfig(devices=0)


@pytest.mark.slow  # three trainer compiles (two processes, then one reference) of the simulator interval
def test_two_process_run_matches_one_process_and_writes_once(tmp_path):
    """Two processes × 2 simulated CPU devices joined by jax.distributed (explicit coordinator flags): each owns
    half the envs, both see the same metrics, only process 0 writes the logs, and the result matches a single
    process running the same 4-device mesh."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Output to files, not pipes: a process blocked on a full pipe would stall the other at its next collective.
    logs = [(tmp_path / f"out{i}.txt", tmp_path / f"err{i}.txt") for i in range(2)]
    procs = []
    for i, (out, err) in enumerate(logs):
        with out.open("w") as out_fh, err.open("w") as err_fh:
            procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "spmd_check.py"), str(tmp_path), "--only", "process",
                 "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
                cwd=ROOT, env=env, stdout=out_fh, stderr=err_fh))
    for p, (_out, err) in zip(procs, logs):
        assert p.wait(timeout=TIMEOUT_S) == 0, f"process failed:\n{err.read_text()[-6000:]}"
    reports = [json.loads(out.read_text().strip().splitlines()[-1]) for out, _ in logs]
    assert [r["process_index"] for r in reports] == [0, 1]
    assert all(r["process_count"] == 2 and r["global_devices"] == 4 and r["local_envs"] == 4 for r in reports)
    assert reports[0]["records"] == reports[1]["records"] and reports[0]["params"] == reports[1]["params"]
    run_dir = tmp_path / "multihost"
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    written = [telemetry.deterministic(json.loads(line)) for line in lines]  # the wall-clock keys differ per process
    assert written == reports[0]["records"], "metrics.jsonl must be written once"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2", "3"]

    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "spmd_check.py"), str(tmp_path / "single"), "--only",
                           "process"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"single-process reference failed:\n{proc.stderr[-6000:]}"
    single = json.loads(proc.stdout.strip().splitlines()[-1])
    assert single["process_count"] == 1 and single["global_devices"] == 4 and single["local_envs"] == 8
    numeric = lambda recs: [[v for _, v in sorted(r.items()) if isinstance(v, (int, float))] for r in recs]  # noqa: E731
    for got, want in ((numeric(reports[0]["records"]), numeric(single["records"])),
                      (reports[0]["params"], single["params"])):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-4, atol=1e-6)
