"""train: end-to-end env-steps/s of one training interval = rollout of 150 steps (env + policy) + one PPO update.

The interval is one compiled call, ``rollout.collect`` (env, features, masks, policy sampling,
truncation bootstrap, auto-reset) followed by ``ppo.update`` with the default PPOConfig, as the training loop runs
it; its train state and runner state are threaded from one timed call to the next. There is no torch counterpart
(upstream has no simulator); the figure is absolute, and compared with ``--previous results.json`` when given.
The same interval is measured on the host-network env (``esper_jax.env.make("host")``), except under ``--quick``.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import jax

from bench import common, fixtures
from bench.common import JAX, Measurement, Options

NAME = "train"
ENVS = (64, 256, 1024, 4096)
# Each host env trains a CNN and validates it K times per step (~100× the simulator's work): smaller sizes, and its own
# cap name (--cap train-host=N) so a CPU run can keep the host rows small without capping the simulator's.
HOST_ENVS = (4, 64, 256)
SEQ_LEN = fixtures.SEQ_LEN
ENV_NAMES = ("sim", "host")


def _modules():
    """(modules dict, reason): everything the train interval needs, or why it cannot run."""
    try:
        from esper_jax import env as env_pkg
        from esper_jax import ppo, rollout
    except ImportError as error:
        return None, f"train interval unavailable: {error}"
    return {"env": env_pkg, "ppo": ppo, "rollout": rollout}, ""


@functools.partial(jax.jit, static_argnames=("env", "network_config", "rollout_config", "ppo_config"))
def train_interval(train_state, runner, key, *, env, network_config, rollout_config, ppo_config):
    """One interval: collect a trajectory with the current params, then update on it."""
    from esper_jax import ppo, rollout

    collect_key, update_key = jax.random.split(key)
    runner, trajectory, rollout_metrics = rollout.collect(
        env, train_state.params, runner, train_state.obs_stats, collect_key,
        network_config=network_config, config=rollout_config,
    )
    train_state, update_metrics = ppo.update(
        train_state, trajectory, update_key, config=ppo_config, network_config=network_config
    )
    return train_state, runner, (rollout_metrics, update_metrics)


def make_env(name: str):
    """(env, reason): the environment, or why it cannot be built."""
    modules, reason = _modules()
    if modules is None:
        return None, reason
    try:
        return modules["env"].make(name), ""
    except ValueError as error:
        return None, str(error)


def _train_state(ppo, ppo_config, config):
    """A fresh TrainState. The weights come from the torch reference's init when torch is present (the same
    upstream scheme, built in ~1 s, where compiling ``policy.init`` takes ~20 s on a 2-core CPU)."""
    from esper_jax import normalization

    torch = common.setup_torch()
    if torch is None:
        return ppo.create_train_state(jax.random.PRNGKey(0), ppo_config, config)
    params = fixtures.jax_params(config, fixtures.torch_network(torch, config))
    return ppo.TrainState(
        params=params,
        opt_state=ppo.make_optimizer(ppo_config).init(params),
        obs_stats=normalization.init(config.state_dim),
        train_steps=jax.numpy.zeros((), jax.numpy.int32),
    )


def build_jax(num_envs: int, env_name: str = "sim"):
    """(jitted interval, args, kwargs, network config, params) for ``num_envs`` envs of ``env_name``."""
    modules, reason = _modules()
    env, env_reason = make_env(env_name)
    if modules is None or env is None:
        raise ImportError(reason or env_reason)
    ppo, rollout = modules["ppo"], modules["rollout"]
    config = fixtures.network_config(env.num_slots)
    ppo_config = ppo.PPOConfig(compat=fixtures.COMPAT)
    rollout_config = rollout.RolloutConfig(num_steps=SEQ_LEN, compat=fixtures.COMPAT)
    state = _train_state(ppo, ppo_config, config)
    # Jitted: an eager vmap of env.reset dispatches (and compiles) op by op, twice as slow on CPU.
    runner = jax.jit(rollout.init_runner, static_argnums=(0, 1, 2))(env, config, num_envs, jax.random.PRNGKey(1))
    kwargs = dict(env=env, network_config=config, rollout_config=rollout_config, ppo_config=ppo_config)
    return train_interval, (state, runner, jax.random.PRNGKey(2)), kwargs, config, state.params


def _previous_throughput(previous: Path | None, env_name: str, num_envs: int) -> float | None:
    if previous is None or not previous.exists():
        return None
    rows = json.loads(previous.read_text()).get("rows", [])
    for row in rows:
        if row.get("bench") == NAME and row.get("envs") == num_envs and row.get("status") == "ok":
            if f"env={env_name}" in row.get("note", ""):
                return row.get("throughput")
    return None


def measure(num_envs: int, env_name: str, options: Options, previous: Path | None) -> Measurement:
    jitted, args, kwargs, config, params = build_jax(num_envs, env_name)

    def caller(interval):
        # Train state, runner state and key are threaded from one timed call to the next, as training does.
        state = {"train": args[0], "runner": args[1], "key": args[2]}

        def call():
            state["key"], key = jax.random.split(state["key"])
            train_state, runner, metrics = interval(state["train"], state["runner"], key)
            state["train"], state["runner"] = train_state, runner
            return train_state, runner, metrics

        return call

    row = common.jax_row(
        NAME,
        jitted,
        args,
        options,
        static=kwargs,
        label=("train_interval", num_envs) if env_name == "sim" else None,
        caller=caller,
        work=num_envs * SEQ_LEN,
        unit="env-step",
        envs=num_envs,
        slots=config.num_slots,
        seq_len=SEQ_LEN,
        note=f"env={env_name}, collect + ppo.update per interval, {fixtures.describe(config, params)}",
    )
    before = _previous_throughput(previous, env_name, num_envs)
    if before:
        row.note += f"; previous {before:.4g} env-step/s ({row.throughput / before:.2f}×)"
    return row


def run(options: Options, previous: Path | None = None) -> list[Measurement]:
    rows: list[Measurement] = []
    for env_name in ENV_NAMES:
        sizes, cap_name = (HOST_ENVS, f"{NAME}-host") if env_name == "host" else (ENVS, NAME)
        envs, dropped = common.within(sizes[:1] if options.quick else sizes, options.env_cap(cap_name))
        if options.quick and env_name == "host":
            # The host env's interval compiles for minutes on a CPU; --quick is the smoke run, so it keeps to the
            # simulator.
            for num_envs in envs:
                rows.append(common.emit(common.skipped(NAME, JAX, "env=host: not in --quick", envs=num_envs)))
            continue
        env, reason = make_env(env_name)
        if env is None:
            for num_envs in envs:
                rows.append(common.emit(common.skipped(NAME, JAX, f"env={env_name}: {reason}", envs=num_envs)))
            continue
        for num_envs in envs:
            rows.append(common.emit(measure(num_envs, env_name, options, previous)))
        for num_envs in dropped:
            reason = f"env={env_name}: envs > cap {options.env_cap(cap_name)} (--max-envs/--cap {cap_name}=N)"
            rows.append(common.emit(common.skipped(NAME, JAX, reason, envs=num_envs)))
    return rows

if __name__ == "__main__":
    from bench.__main__ import main

    main([*sys.argv[1:], "--only", NAME])
