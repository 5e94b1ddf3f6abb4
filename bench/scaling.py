"""scaling: env-steps/s of the trainer's compiled interval on 1, 2, 4, ... devices, envs per device fixed.

Weak scaling: with ``d`` devices the interval runs ``d × envs_per_device`` envs (rollout of 150 steps on the
lifecycle simulator + one PPO update, default PPOConfig), split over a ("data",) mesh by
``esper_jax.distributed`` exactly as ``python -m esper_jax.train --devices d`` runs it. Each row's note gives the
speed-up over 1 device and the weak-scaling efficiency ``throughput(d) / (d × throughput(1))``; ideal is 100 %.

Device counts are the powers of two up to the number of devices present, plus that number. When the only device
is one CPU, the measurement runs in a child process with ``--xla_force_host_platform_device_count`` (4 simulated
devices). Simulated devices share the host's cores, so those rows check that the sharded path runs and what its
overhead is — they are not a speed-up. ``--quick`` runs 2 envs per device on the devices present; with a single
CPU device it reports a skipped row instead (two more compiles of the interval would double the smoke run; the
sharded path is covered by ``tests/test_distributed.py``), and ``python -m bench.scaling --quick`` simulates 2
devices with XLA's backend optimisation off (compile time dominates such a run; its rows say so).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax

from bench import common, fixtures
from bench.common import JAX, Measurement, Options

NAME = "scaling"
ENVS_PER_DEVICE = 64
QUICK_ENVS_PER_DEVICE = 2
SIMULATED_DEVICES = 4
QUICK_SIMULATED_DEVICES = 2
SEQ_LEN = fixtures.SEQ_LEN
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
_CHILD = "ESPER_BENCH_SCALING_OPTIONS"  # set in the child process: the parent's Options as JSON
ROOT = Path(__file__).resolve().parents[1]


def device_counts(available: int) -> list[int]:
    counts = [1 << i for i in range(available.bit_length()) if 1 << i <= available]
    return counts if counts[-1] == available else counts + [available]


def _interval(num_envs: int, devices: int):
    """(compiled-interval inputs, jitted interval, network config, params) as the trainer builds them."""
    from esper_jax import distributed, ppo, rollout, trainer
    from esper_jax import env as env_pkg

    env = env_pkg.make("sim")
    config = fixtures.network_config(env.num_slots)
    static = trainer.Static(
        env=env, network=config, ppo=ppo.PPOConfig(compat=fixtures.COMPAT),
        rollout=rollout.RolloutConfig(num_steps=SEQ_LEN, compat=fixtures.COMPAT),
    )
    from bench.train import _train_state  # torch-built weights when torch is present: no policy.init compile

    layout = distributed.make_layout(num_envs, devices)
    runner = jax.jit(rollout.init_runner, static_argnums=(0, 1, 2))(env, config, num_envs, jax.random.PRNGKey(1))
    state = layout.place(trainer.TrainerState(train=_train_state(ppo, static.ppo, config), runner=runner,
                                              key=jax.random.PRNGKey(2), counters=trainer.Counters.of()))
    return state, trainer._interval_fn(static, 1, layout), config, state.train.params


def measure(devices: int, envs_per_device: int, options: Options, baseline: float | None, note: str) -> Measurement:
    num_envs = devices * envs_per_device
    state, fn, config, params = _interval(num_envs, devices)
    compiled = common.compile_jax(fn, state.train, state.runner, state.key)
    latest = [state]  # threaded from one timed call to the next, as training does

    def call():
        now = latest[0]
        train_state, runner, key, outs = compiled.fn(now.train, now.runner, now.key)
        latest[0] = now.replace(train=train_state, runner=runner, key=key)
        return train_state.params, outs

    timing = common.time_jax(call, options)
    row = common.measured(
        NAME, JAX, timing, work=num_envs * SEQ_LEN, unit="env-step", device=f"{devices} x {common.jax_device()}",
        matmul_precision=common.jax_matmul_precision(), envs=num_envs, slots=config.num_slots, seq_len=SEQ_LEN,
        compile_s=compiled.lower_s + compiled.compile_s,
    )
    scaling = ""
    if baseline:
        speedup = row.throughput / baseline
        scaling = f"; {speedup:.2f}x the 1-device throughput, weak-scaling efficiency {100 * speedup / devices:.0f}%"
    row.note = (f"devices={devices}, {envs_per_device} envs/device, sim env, collect + ppo.update per interval"
                f"{scaling}; {fixtures.describe(config, params)}{note}")
    return row


def run_here(options: Options, note: str = "") -> list[Measurement]:
    """Measure every device count over this process's devices."""
    per_device = QUICK_ENVS_PER_DEVICE if options.quick else ENVS_PER_DEVICE
    cap = options.env_cap(NAME)
    rows: list[Measurement] = []
    baseline = None
    for devices in device_counts(len(jax.devices())):
        num_envs = devices * per_device
        if cap is not None and num_envs > cap:
            rows.append(common.emit(common.skipped(NAME, JAX, f"devices={devices}: envs > cap {cap} (--max-envs/--cap)",
                                                   envs=num_envs)))
            continue
        row = common.emit(measure(devices, per_device, options, baseline, note))
        baseline = baseline or (row.throughput if devices == 1 else None)
        rows.append(row)
    return rows


def run_simulated(options: Options) -> list[Measurement]:
    """One CPU device here: measure in a child process that sees several simulated CPU devices."""
    count = QUICK_SIMULATED_DEVICES if options.quick else SIMULATED_DEVICES
    flags = f"--xla_force_host_platform_device_count={count}" + (f" {QUICK_XLA_FLAGS}" if options.quick else "")
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip(), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env[_CHILD] = json.dumps(dataclasses.asdict(options))
    proc = subprocess.run([sys.executable, "-m", "bench.scaling"], cwd=ROOT, env=env, capture_output=True, text=True)
    rows = [common.emit(Measurement(**json.loads(line))) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        reason = f"child process with {count} simulated devices failed: {proc.stderr.strip()[-500:]}"
        rows.append(common.emit(common.skipped(NAME, JAX, reason)))
    return rows


def run(options: Options, standalone: bool = False) -> list[Measurement]:
    """``standalone``: called as ``python -m bench.scaling`` rather than as part of the suite."""
    try:
        from esper_jax import distributed  # noqa: F401
        from esper_jax import env as env_pkg

        env_pkg.make("sim")
    except (ImportError, ValueError) as error:
        return [common.emit(common.skipped(NAME, JAX, f"scaling unavailable: {error}"))]
    if len(jax.devices()) == 1 and jax.devices()[0].platform == "cpu":
        if options.quick and not standalone:
            reason = "one CPU device: --quick does not simulate devices (run python -m bench.scaling --quick)"
            return [common.emit(common.skipped(NAME, JAX, reason, envs=QUICK_ENVS_PER_DEVICE))]
        return run_simulated(options)
    return run_here(options)


def _child_main() -> None:
    fields = json.loads(os.environ[_CHILD])
    fields["caps"] = tuple(tuple(c) for c in fields["caps"])
    options = Options(**fields)
    note = f"; {len(jax.devices())} simulated CPU devices sharing the host's cores (not a speed-up)"
    if options.quick:
        note += "; quick: XLA backend optimisation off"
    run_here(options, note)


if __name__ == "__main__":
    if _CHILD in os.environ:
        _child_main()
    else:
        import argparse

        parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
        common.add_arguments(parser)
        args = parser.parse_args(sys.argv[1:])
        print(f"# host: {common.host_info()}", flush=True)
        rows = run(common.options_from_args(args), standalone=True)
        print()
        print(common.markdown_table(rows))
        if args.out is not None:
            print(f"\nwrote {common.write_results(args.out, rows, common.host_info(), common.options_from_args(args))}")
