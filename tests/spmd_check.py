"""1-device vs N-device equivalence checks, run as a script in a fresh process (``tests/test_distributed.py``).

Simulated CPU devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX starts, which a
pytest worker that already imported JAX cannot do, so the test starts this script with the flag set and reads the
one JSON object it prints last:

* ``update``: the same trajectory (the update benchmark's synthetic one) fed to ``ppo.update`` jitted with the
  1-device and the N-device layout (2 epochs × 2 minibatches, so the minibatch selection is exercised).
* ``interval``: the trainer's compiled interval (``trainer._interval_fn``: rollout + update, one iteration per call)
  run 3 times on each layout from the same state, with a small replay env that compiles in seconds: the params
  after the first call are one update (on each layout's own rollout), after the third a short training run.
* ``train``: ``esper_jax.train.train`` on the lifecycle simulator, same seed, ``--devices 1`` and ``--devices N``:
  metrics.jsonl records, final parameters and the runner state the rollouts left behind.
* ``hlo``: ``ppo.update`` with several minibatches compiled for the N-device layout: the all-gathers in its HLO
  (none may gather the batch onto every device).
* ``errors``: the messages for an env count that does not split and for more devices than exist.
* ``process``: one process of a multi-host run (``--coordinator``, ``--num-processes``, ``--process-id``; without
  them a single process on all its devices): trains TRAIN_CONFIG into ``OUT_DIR/multihost`` and reports its
  records and final parameters.

Usage: ``python tests/spmd_check.py OUT_DIR [--devices N]`` (N defaults to every device).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esper_jax import distributed, ppo, rollout, telemetry, testing, train, trainer
from esper_jax.config import CheckpointConfig, ConfigError, DistributedConfig, RunTelemetryConfig, TrainingConfig
from esper_jax.contracts import LifecycleOp, SlotConfig
from esper_jax.env import EnvConfig
from esper_jax.network import NetworkConfig

HIDDEN = 32  # the SPMD behaviour does not depend on width; small nets keep the compiles short
TRAIN_CONFIG = TrainingConfig(
    env_kind="sim", n_episodes=24, n_envs=8, iterations_per_interval=1, seed=5,
    env=EnvConfig(slots=SlotConfig(("r0c1",)), episode_length=12),
    rollout=rollout.RolloutConfig(num_steps=12),
    network=NetworkConfig(num_slots=1, hidden_dim=HIDDEN, feature_dim=HIDDEN),
    checkpoints=CheckpointConfig(every=2),
    telemetry=RunTelemetryConfig(progress_bar=False, tensorboard=False, plots=False),
)


# ---------------------------------------------------------------------------------------------------------------
# A small env for the update check: replays a bank of realistic observations (so masks vary), pays for ops
# ---------------------------------------------------------------------------------------------------------------


@struct.dataclass
class ReplayState:
    t: jax.Array
    index: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class ReplayEnv:
    """Each step shows a random observation from a fixed bank; reward = bank reward of (observation, op) plus
    noise; episodes end by the time limit (so the truncation bootstrap runs)."""

    bank_size: int = 16
    length: int = 6
    num_slots: int = 1

    def __post_init__(self) -> None:
        bank = jax.tree.map(jnp.asarray, testing.random_observation(0, self.num_slots, (self.bank_size,),
                                                                      edge_cases=False))
        object.__setattr__(self, "bank", bank)
        payoff = np.random.default_rng(1).normal(size=(self.bank_size, len(LifecycleOp))).astype(np.float32)
        object.__setattr__(self, "payoff", jnp.asarray(payoff))

    def _observe(self, index: jax.Array):
        return jax.tree.map(lambda x: x[index], self.bank)

    def reset(self, key):
        state = ReplayState(t=jnp.zeros((), jnp.int32), index=jax.random.randint(key, (), 0, self.bank_size))
        return state, self._observe(state.index)

    def step(self, state, actions, key):
        k_next, k_noise = jax.random.split(key)
        reward = self.payoff[state.index, actions.op] + 0.1 * jax.random.normal(k_noise)
        nxt = ReplayState(t=state.t + 1, index=jax.random.randint(k_next, (), 0, self.bank_size))
        end = nxt.t >= self.length
        return rollout.StepOutput(state=nxt, obs=self._observe(nxt.index), reward=reward.astype(jnp.float32),
                                  done=end, truncated=end)


def _max_diffs(a, b) -> dict[str, float]:
    """Max |a − b| and the largest excess over docs/parity.md's update bound (|a − b| ≤ 1e-6 + 1e-4·|b|; ≤ 0 holds);
    ``exact``: every leaf equal; ``discrete_equal``: every integer/bool leaf equal."""
    max_abs, worst, exact, discrete = 0.0, -np.inf, True, True
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind != "f":
            discrete &= bool(np.array_equal(x, y))
            continue
        finite = np.isfinite(x) & np.isfinite(y)
        exact &= bool(np.array_equal(np.isfinite(x), np.isfinite(y)))
        if not finite.any():
            continue
        d = np.abs(x[finite].astype(np.float64) - y[finite])
        exact &= bool(np.all(d == 0))
        max_abs = max(max_abs, float(d.max()))
        worst = max(worst, float(np.max(d - (1e-6 + 1e-4 * np.abs(y[finite].astype(np.float64))))))
    return {"max_abs": max_abs, "bound_excess": worst if np.isfinite(worst) else 0.0, "exact": exact and discrete,
            "discrete_equal": discrete}


def check_update(devices: int) -> dict:
    from bench import fixtures

    net = NetworkConfig(num_slots=2, feature_dim=HIDDEN, hidden_dim=HIDDEN)
    config = ppo.PPOConfig(epochs=2, minibatches=2, target_kl=None, learning_rate=1e-3)
    num_envs = 16
    state = ppo.create_train_state(jax.random.PRNGKey(0), config, net)
    trajectory = jax.tree.map(np.asarray, fixtures.update_buffer(net, num_envs, 10).trajectory())

    results = {}
    for n in (1, devices):
        layout = distributed.make_layout(num_envs, n)
        update = jax.jit(
            functools.partial(ppo.update, config=config, network_config=net),
            in_shardings=(layout.replicated, layout.trajectory(), layout.replicated),
            out_shardings=layout.replicated,
        )
        placed = jax.device_put(state, layout.replicated)
        # Both layouts update the SAME trajectory, split by env over their own devices.
        traj = jax.tree.map(lambda s, x: jax.device_put(x, s), layout.trajectory(), trajectory)
        new_state, metrics = update(placed, traj, jax.random.PRNGKey(3))
        results[n] = (jax.tree.map(np.asarray, new_state), jax.tree.map(np.asarray, metrics))
        results[f"sharding_{n}"] = str(traj.features.sharding.spec)
    (state_1, metrics_1), (state_n, metrics_n) = results[1], results[devices]
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(state_1.params), jax.tree.leaves(state.params)))
    return {
        "params": _max_diffs(state_n.params, state_1.params),
        "opt_state": _max_diffs(state_n.opt_state, state_1.opt_state),
        "metrics": _max_diffs(metrics_n, metrics_1),
        "params_moved": moved,
        "steps_applied": int(metrics_1.steps_applied),
        "trajectory_sharding": results[f"sharding_{devices}"],
    }


COLLECTIVE = re.compile(r"\b(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(-start)?\(")


def _collectives(hlo: str) -> list[tuple[str, list[list[int]]]]:
    """(op, result shapes) of every collective in a compiled module's text, async starts included; a tuple result
    (``(f32[8,7]{1,0}, pred[8,7,5]{2,1,0}) all-reduce(``) lists each element's shape."""
    found = []
    for line in hlo.splitlines():
        match = COLLECTIVE.search(line)
        if match and "=" in line:
            result = line.split("=", 1)[1][: match.start() - len(line.split("=", 1)[0]) - 1]
            shapes = [[int(d) for d in dims.split(",") if d] for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", result)]
            found.append((match.group(1), shapes))
    return found


def check_hlo(devices: int) -> dict:
    """Compile ``ppo.update`` (2 epochs × 2 minibatches, so the minibatch selection runs) for the N-device layout
    and list the collectives that move batch data: any with a time axis (``num_steps``, a size no parameter has) or
    the batch's or a minibatch's global env count as an axis. Only the gradients' and the scalars' all-reduces may
    remain."""
    from bench import fixtures

    net = NetworkConfig(num_slots=2, feature_dim=HIDDEN, hidden_dim=HIDDEN)
    config = ppo.PPOConfig(epochs=2, minibatches=2, target_kl=None)
    num_envs, num_steps = 6 * devices, 7
    state = ppo.create_train_state(jax.random.PRNGKey(0), config, net)
    trajectory = jax.tree.map(np.asarray, fixtures.update_buffer(net, num_envs, num_steps).trajectory())
    layout = distributed.make_layout(num_envs, devices)
    update = jax.jit(functools.partial(ppo.update, config=config, network_config=net),
                     in_shardings=(layout.replicated, layout.trajectory(), layout.replicated),
                     out_shardings=layout.replicated)
    hlo = update.lower(state, trajectory, jax.random.PRNGKey(3)).compile().as_text()
    batch_sizes = {num_steps, num_envs, num_envs // config.minibatches, num_envs * num_steps}
    collectives = _collectives(hlo)
    moving_batch = [f"{op} {shapes}" for op, shapes in collectives
                    if any(batch_sizes & set(shape) for shape in shapes)]
    return {"num_envs": num_envs, "num_steps": num_steps, "collectives": len(collectives),
            "all_gathers": sum(op == "all-gather" for op, _ in collectives), "batch_collectives": moving_batch}


def check_interval(devices: int) -> dict:
    env = ReplayEnv()
    net = NetworkConfig(num_slots=env.num_slots, feature_dim=HIDDEN, hidden_dim=HIDDEN)
    static = trainer.Static(env=env, network=net, ppo=ppo.PPOConfig(epochs=2, minibatches=2, learning_rate=1e-3),
                          rollout=rollout.RolloutConfig(num_steps=2 * env.length))
    num_envs = 16
    fresh = trainer.TrainerState(train=ppo.create_train_state(jax.random.PRNGKey(0), static.ppo, net),
                                 runner=rollout.init_runner(env, net, num_envs, jax.random.PRNGKey(1)),
                                 key=jax.random.PRNGKey(2), counters=trainer.Counters.of())
    results = {}
    for n in (1, devices):
        layout = distributed.make_layout(num_envs, n)
        state = layout.place(fresh)
        fn = trainer._interval_fn(static, 1, layout)
        outs, first = [], None
        for _ in range(3):
            train_state, runner, key, out = fn(state.train, state.runner, state.key)
            state = state.replace(train=train_state, runner=runner, key=key)
            outs.append(out)
            first = first or jax.tree.map(np.asarray, train_state.params)
        results[n] = jax.tree.map(np.asarray, (state, outs, first))
        results[f"carry_sharding_{n}"] = str(runner.carry.h.sharding.spec)
    (state_1, outs_1, first_1), (state_n, outs_n, first_n) = results[1], results[devices]
    return {
        "first_update_params": _max_diffs(first_n, first_1),
        "metrics": _max_diffs(outs_n, outs_1),
        "params": _max_diffs(state_n.train.params, state_1.train.params),
        "runner": _max_diffs(state_n.runner, state_1.runner),
        "key_equal": bool(np.array_equal(state_n.key, state_1.key)),
        "episodes": int(sum(o["rollout"].episodes_completed.sum() for o in outs_1)),
        "carry_sharding": results[f"carry_sharding_{devices}"],
    }


def check_train(devices: int, out: Path) -> dict:
    runs = {}
    for n in (1, devices):
        started = time.perf_counter()
        result = train.train(TRAIN_CONFIG, out / f"devices{n}", evaluate=False,
                             distributed=DistributedConfig(devices=n))
        runs[n] = {"records": [telemetry.deterministic(r) for r in result.records], "params": jax.tree.map(np.asarray, result.state.train.params),
                   "runner": jax.tree.map(np.asarray, result.state.runner), "seconds": time.perf_counter() - started,
                   "carry_sharding": str(result.state.runner.carry.h.sharding.spec),
                   "num_devices": len(result.state.runner.carry.h.sharding.device_set)}
    one, many = runs[1], runs[devices]
    keys = sorted({k for r in one["records"] for k in r})
    return {
        "records_identical": one["records"] == many["records"],
        "records": _max_diffs([[r[k] for k in keys if isinstance(r[k], (int, float)) and r[k] is not None]
                               for r in many["records"]],
                              [[r[k] for k in keys if isinstance(r[k], (int, float)) and r[k] is not None]
                               for r in one["records"]]) if len(one["records"]) == len(many["records"]) else None,
        "counts_identical": [(r["env_steps"], r["episodes"], r["op_counts"], r["seed_outcomes"], r["early_stopped"]) for r in one["records"]]
        == [(r["env_steps"], r["episodes"], r["op_counts"], r["seed_outcomes"], r["early_stopped"]) for r in many["records"]],
        "num_records": len(one["records"]),
        "params": _max_diffs(many["params"], one["params"]),
        "runner": _max_diffs(many["runner"], one["runner"]),
        "seconds": {str(n): r["seconds"] for n, r in runs.items()},
        "carry_sharding": many["carry_sharding"],
        "carry_devices": many["num_devices"],
        "checkpoints": sorted(p.name for p in (out / f"devices{devices}" / "checkpoints").iterdir()),
    }


def check_errors(devices: int, out: Path) -> dict:
    import contextlib
    import io

    messages = {}
    for name, call in {
        "uneven_envs": lambda: distributed.make_layout(devices + 2, devices),
        "too_many_devices": lambda: distributed.make_layout(8, len(jax.devices()) + 1),
        "cli_uneven": lambda: train.main(["--n-envs", str(devices + 2), "--devices", str(devices), "--out",
                                          str(out / "refused"), "--telemetry.no-progress-bar"]),
    }.items():
        try:
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                returned = call()
            messages[name] = f"returned {returned!r}; stderr: {stderr.getvalue().strip()}"
        except ConfigError as exc:
            messages[name] = f"{type(exc).__name__}: {exc}"
    messages["cli_wrote_nothing"] = not (out / "refused").exists()
    return messages


def run_process(out: Path, coordinator: str, num_processes: int, process_id: int) -> dict:
    result = train.train(TRAIN_CONFIG, out / "multihost", evaluate=False,
                         distributed=DistributedConfig(coordinator=coordinator, num_processes=num_processes,
                                                       process_id=process_id))
    carry = result.state.runner.carry.h
    return {
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "global_devices": len(jax.devices()), "local_envs": sum(s.data.shape[0] for s in carry.addressable_shards),
        "records": [telemetry.deterministic(r) for r in result.records],
        "params": jax.tree.map(lambda x: np.asarray(x).tolist(), result.state.train.params),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--only", default="errors,update,interval,train")
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    args = parser.parse_args(argv)
    if args.only == "process":
        report = run_process(args.out, args.coordinator, args.num_processes, args.process_id)
        print(json.dumps(report, default=str))
        return
    devices = args.devices or len(jax.devices())
    report = {"devices": devices, "available": len(jax.devices()), "seconds": {}}
    for name in args.only.split(","):
        started = time.perf_counter()
        if name == "update":
            report[name] = check_update(devices)
        elif name == "hlo":
            report[name] = check_hlo(devices)
        elif name == "interval":
            report[name] = check_interval(devices)
        elif name == "train":
            report[name] = check_train(devices, args.out)
        elif name == "errors":
            report[name] = check_errors(devices, args.out)
        report["seconds"][name] = round(time.perf_counter() - started, 1)
        print(f"# {name}: {report['seconds'][name]} s", file=sys.stderr, flush=True)
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
