"""The training loop: the trainer's state, the compiled interval, and ``train()``.

Python runs only the outer loop. Each *interval* is ONE compiled call (``_interval_fn``): ``lax.scan`` over
``iterations_per_interval`` PPO iterations, each a full rollout (``rollout.collect``: ``env.episode_length`` steps
of ``n_envs`` envs) followed by one ``ppo.update``. After each interval the trainer appends one line to
``metrics.jsonl`` (the interval's deterministic values plus its timing, ``telemetry.TIMING_KEYS``), writes
TensorBoard scalars, and every ``checkpoints.every`` intervals
(and at the end) an orbax checkpoint of the ``TrainerState`` plus the learning-curve PNG. A record holds the PPO
losses and per-head entropies and what the env did over the interval (``esper_jax.outcomes``, reduced inside the
compiled call). At the end the trained policy is compared with baselines (``esper_jax.evaluation``).

The CLI around it (config resolution, the progress line, exit codes) is ``esper_jax.train``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

from flax import struct

from esper_jax.config import ConfigError, DistributedConfig, TrainingConfig, to_dict
from esper_jax.env.interface import bind_data, data_of
from esper_jax.evaluation import evaluate_baselines

__all__ = ["Counters", "TrainerState", "Static", "TrainResult", "build_static", "initial_state", "train",
           "progress_bar"]

COUNTER_NAMES = ("interval", "iteration", "env_steps", "episodes")


@struct.dataclass
class Counters:
    """Progress of a run, as host int64 scalars (every process reads them whole; they are never placed on the
    mesh). ``interval``: completed intervals; ``iteration``: completed PPO iterations; ``env_steps`` and
    ``episodes``: env steps taken and episodes completed over them."""

    interval: Any
    iteration: Any
    env_steps: Any
    episodes: Any

    @classmethod
    def of(cls, interval: int = 0, iteration: int = 0, env_steps: int = 0, episodes: int = 0) -> Counters:
        import numpy as np

        return cls(*(np.asarray(v, np.int64) for v in (interval, iteration, env_steps, episodes)))

    def ints(self) -> dict[str, int]:
        """The counters as Python ints, keyed by name (the metrics record's keys)."""
        import numpy as np

        return {name: int(np.asarray(getattr(self, name))) for name in COUNTER_NAMES}


@struct.dataclass
class TrainerState:
    """Everything a run needs to continue bit-for-bit, and what a checkpoint stores. Orbax keeps it as nested
    dicts keyed by these field names, so the names are the checkpoint layout: renaming one breaks every
    checkpoint written before (``esper_jax.checkpoint``)."""

    train: Any  # ppo.TrainState: params, optimiser state, obs normaliser, train steps
    runner: Any  # rollout.RunnerState: env states, observations, LSTM carries, reward normaliser, episode returns
    key: Any  # the loop's PRNG key
    counters: Counters


# ---------------------------------------------------------------------------------------------------------------
# Static parts, the initial state, the compiled interval
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Static:
    env: Any
    network: Any
    ppo: Any
    rollout: Any


def build_static(cfg: TrainingConfig) -> Static:
    from esper_jax import env as env_mod
    from esper_jax import outcomes

    try:
        env = env_mod.make(cfg.env_kind, cfg.env)
    except (TypeError, ValueError) as exc:  # e.g. slots the task does not have: an error line, not a traceback
        raise ConfigError(str(exc)) from None
    # The rollout reduces the env's StepInfo to per-interval totals inside the compiled call (esper_jax.outcomes).
    rollout_config = dataclasses.replace(cfg.rollout, info_totals=outcomes.step_totals)
    return Static(env=env, network=cfg.network, ppo=cfg.ppo, rollout=rollout_config)


def initial_state(cfg: TrainingConfig, static: Static) -> TrainerState:
    import jax

    from esper_jax import ppo, rollout

    key = jax.random.PRNGKey(cfg.seed)
    k_params, k_env, k_loop = jax.random.split(key, 3)
    return strong_types(TrainerState(
        train=ppo.create_train_state(k_params, static.ppo, static.network),
        runner=rollout.init_runner(static.env, static.network, cfg.n_envs, k_env),
        key=k_loop,
        counters=Counters.of(),
    ))


def strong_types(tree: Any) -> Any:
    """Drop weak types so the interval function sees identical avals on every call (else it recompiles)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    return jax.tree.map(lambda x: x if isinstance(x, np.ndarray) else jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


@functools.cache
def _interval_jit(static: Static, num_iterations: int, layout):
    """``(jitted, env_data)``: the jitted ``run(train_state, runner, key, env_data)`` and the env's data arrays."""
    import jax

    from esper_jax import ppo, rollout

    def run(train_state, runner, key, env_data):
        env = bind_data(static.env, env_data)  # the env's data arrive as an argument, not as compiled-in constants

        def body(carry, key):
            train_state, runner = carry
            k_collect, k_update = jax.random.split(key)
            runner, traj, rm = rollout.collect(
                env, train_state.params, runner, train_state.obs_stats, k_collect,
                network_config=static.network, config=static.rollout,
            )
            traj = layout.constrain_trajectory(traj)
            new_state, um = ppo.update(train_state, traj, k_update, config=static.ppo, network_config=static.network)
            return (new_state, runner), {"rollout": rm, "update": um}

        key, sub = jax.random.split(key)
        (train_state, runner), outs = jax.lax.scan(body, (train_state, runner), jax.random.split(sub, num_iterations))
        return train_state, runner, key, outs

    return layout.jit_interval(run), data_of(static.env)


def _with_data(fn, env_data):
    """``fn(train_state, runner, key, env_data)`` as ``call(train_state, runner, key)``."""
    return lambda train_state, runner, key: fn(train_state, runner, key, env_data)


def _interval_fn(static: Static, num_iterations: int, layout):
    """The interval as ``call(train_state, runner, key)``, the env's data supplied as the jitted argument."""
    return _with_data(*_interval_jit(static, num_iterations, layout))


def _compiled_interval(static: Static, num_iterations: int, layout, state: TrainerState) -> tuple[Any, float]:
    """The interval compiled ahead of time for ``state``'s shapes and placement, and the seconds that took (tracing,
    lowering, XLA compile, or loading it from the persistent cache): the run's compile time, recorded apart from
    the intervals' wall time so a record's env-steps/s is the compiled program's own rate."""
    started = time.perf_counter()
    jitted, env_data = _interval_jit(static, num_iterations, layout)
    compiled = jitted.lower(state.train, state.runner, state.key, env_data).compile()
    return _with_data(compiled, env_data), time.perf_counter() - started



# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    state: TrainerState
    records: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    finished: bool
    interrupted: bool = False  # stopped by Ctrl-C after checkpointing the last completed interval
    skipped_checkpoints: tuple[str, ...] = ()  # newer checkpoints found corrupt when resuming (one line each)


def _interval_record(interval: int, counters: dict[str, int], outs: dict[str, Any]) -> dict[str, Any]:
    import jax
    import numpy as np

    from esper_jax import outcomes

    rm, um = outs["rollout"], outs["update"]
    episodes = np.asarray(rm.episodes_completed)
    returns = np.asarray(rm.mean_episode_return)
    total_eps = int(episodes.sum())
    mean_return = float(np.nansum(np.where(episodes > 0, returns * episodes, 0.0)) / total_eps) if total_eps else None

    def mean(x):
        x = np.asarray(x, np.float64)
        return float(np.nanmean(x)) if np.any(np.isfinite(x)) else None

    rec = {
        "interval": interval,
        "iteration": counters["iteration"],
        "env_steps": counters["env_steps"],
        "episodes": counters["episodes"],
        "train_steps": counters["iteration"],  # completed PPO updates (early-stopped ones included)
        "mean_episode_return": mean_return,
        "mean_raw_reward": mean(rm.mean_raw_reward),
        "policy_loss": mean(um.policy_loss),
        "value_loss": mean(um.value_loss),
        "entropy": mean(um.entropy),
        "loss": mean(um.loss),
        "approx_kl": mean(um.approx_kl),
        "clip_fraction": mean(um.clip_fraction),
        "explained_variance": mean(um.explained_variance),
        "grad_norm": mean(um.grad_norm),
        "entropy_coef": mean(um.entropy_coef),
        "early_stopped": int(np.asarray(um.early_stopped).sum()),
        "entropy_per_head": {h: mean(v) for h, v in um.entropy_per_head.as_dict().items()},
        "policy_loss_per_head": {h: mean(v) for h, v in um.policy_loss_per_head.as_dict().items()},
        "mask_error": bool(np.asarray(rm.mask_error).any() or np.asarray(um.mask_error).any()),
        "nonfinite_error": bool(np.asarray(rm.nonfinite_error).any()),
    }
    # What the env did over the interval's iterations (leading axis): op histograms, rates, seed outcomes.
    over_interval = functools.partial(np.sum, axis=0)
    rec.update(outcomes.interval_summary(jax.tree.map(over_interval, rm.info_totals), over_interval(rm.op_counts)))
    return rec


def train(
    cfg: TrainingConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    debug_nans: bool = False,
    max_intervals: int | None = None,
    evaluate: bool = True,
    console=None,
    distributed: DistributedConfig = DistributedConfig(),
) -> TrainResult:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from esper_jax import distributed as dist
    from esper_jax import nonfinite, rundir, telemetry
    from esper_jax.checkpoint import Checkpointer
    from esper_jax.interrupt import StopRequest

    run_dir = Path(run_dir)
    dist.initialize(distributed.coordinator, distributed.num_processes, distributed.process_id)
    layout = dist.make_layout(cfg.n_envs, distributed.devices)  # refuses bad device/env counts up front
    static = build_static(cfg)  # refuses unavailable envs before touching the disk
    config_dict = to_dict(cfg)

    if resume:
        ckpt = Checkpointer(run_dir, cfg.checkpoints.keep, create=False)
        reference = initial_state(cfg, static)
        # A corrupt newest checkpoint falls back to the newest intact one; a config mismatch is refused outright.
        state, meta, skipped = ckpt.restore_newest_intact(layout.abstract(reference), config_dict)
        # Same avals (dtype, weak type) and placement as a fresh state, so the compiled interval is reused.
        state = jax.tree.map(
            lambda ref, x: np.asarray(x, dtype=ref.dtype) if isinstance(ref, np.ndarray)
            else x.astype(ref.dtype) if isinstance(x, jax.Array) else jnp.asarray(np.asarray(x), dtype=ref.dtype),
            reference, state,
        )
    else:
        skipped = []
        if layout.is_primary:
            rundir.prepare_new_run_dir(run_dir, overwrite=overwrite)
        ckpt = Checkpointer(run_dir, cfg.checkpoints.keep, create=True)
        state = initial_state(cfg, static)
    state = layout.place(state)
    if layout.is_primary:
        (run_dir / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")

    counters = state.counters.ints()
    tele = cfg.telemetry
    log = telemetry.MetricsLog(run_dir, tensorboard=tele.tensorboard and tele.level != "off",
                               keep_intervals=counters["interval"]) if layout.is_primary else telemetry.UnwrittenLog()
    plots = tele.plots and tele.level != "off" and layout.is_primary
    steps_per_iteration = cfg.n_envs * cfg.episode_length
    total_steps = cfg.num_iterations * steps_per_iteration
    param_paths = telemetry.leaf_paths(state.train.params)
    if skipped:
        print(f"warning: resuming from checkpoint {meta['interval']}; skipped newer corrupt checkpoint(s), their "
              "intervals will be run again:\n  " + "\n  ".join(skipped), file=sys.stderr)

    def save(interval: int) -> None:
        ckpt.save(interval, state, {"config": config_dict})
        if plots:
            telemetry.plot_learning_curves(log.records, run_dir / "learning_curves.png")

    progress = task = None
    if tele.progress_bar and layout.is_primary:
        progress, task = progress_bar(total_steps, counters["env_steps"], counters["iteration"], cfg.num_iterations,
                                      console)
        progress.start()

    ran = 0
    compiled: dict[int, Any] = {}  # iterations per interval -> the compiled interval
    finished = counters["interval"] >= cfg.num_intervals
    interrupted = False
    saved_interval = counters["interval"] if resume else None
    with StopRequest() as stop:  # Ctrl-C: finish the interval, checkpoint it (esper_jax/interrupt.py)
        try:
            while counters["interval"] < cfg.num_intervals:
                if max_intervals is not None and ran >= max_intervals:
                    break
                if stop.requested:
                    interrupted = True
                    break
                interval = counters["interval"]
                n_it = cfg.interval_iterations(interval)
                compile_seconds = 0.0
                if n_it not in compiled:  # the last interval may run fewer iterations: a second program
                    compiled[n_it], compile_seconds = _compiled_interval(static, n_it, layout, state)
                fn = compiled[n_it]
                t0 = time.perf_counter()
                train_state, runner, key, outs = fn(state.train, state.runner, state.key)
                jax.block_until_ready(train_state.params)
                elapsed = time.perf_counter() - t0
                counters["interval"] = interval + 1
                counters["iteration"] += n_it
                counters["env_steps"] += n_it * steps_per_iteration
                counters["episodes"] += int(np.asarray(outs["rollout"].episodes_completed).sum())
                state = TrainerState(train=train_state, runner=runner, key=key, counters=Counters.of(**counters))
                rec = _interval_record(interval, counters, outs)
                sps = n_it * steps_per_iteration / max(elapsed, 1e-9)
                timing = telemetry.Timing(interval_seconds=elapsed, env_steps_per_second=sps,
                                          compile_seconds=compile_seconds)
                rec.update(timing.as_dict())
                log.append(rec)
                try:  # the record above shows the bad interval; its state is never checkpointed
                    nonfinite.check_interval(outs, param_paths, interval=interval,
                                             first_iteration=counters["iteration"] - n_it, every_leaf=debug_nans)
                except nonfinite.NonFiniteError as exc:
                    last = ("no checkpoint was written yet" if saved_interval is None else
                            f"the last good checkpoint is {run_dir / 'checkpoints' / str(saved_interval)} "
                            f"(after {saved_interval} interval(s))")
                    raise nonfinite.NonFiniteError(f"{exc}. Stopped without checkpointing it; {last}.") from None
                ran += 1
                if progress is not None:
                    ret = rec["mean_episode_return"]
                    progress.update(task, completed=counters["env_steps"], it=counters["iteration"], sps=sps,
                                    ret="-" if ret is None else f"{ret:+.3f}")
                done = counters["interval"] >= cfg.num_intervals
                if done or stop.requested or counters["interval"] % cfg.checkpoints.every == 0 or (
                        max_intervals is not None and ran >= max_intervals):
                    save(counters["interval"])
                    saved_interval = counters["interval"]
                finished = done
        except KeyboardInterrupt:  # a second Ctrl-C, mid-interval: keep the last completed interval
            interrupted = True
            if saved_interval != counters["interval"]:
                save(counters["interval"])
        finally:
            if progress is not None:
                progress.stop()
            ckpt.close()

    evaluation = None
    if interrupted:
        finished = False
    if finished and evaluate:
        evaluation = evaluate_baselines(cfg, static, state.train)
        if layout.is_primary:
            (run_dir / "eval.json").write_text(json.dumps(evaluation, indent=2, sort_keys=True) + "\n")
        log.add_scalars("eval", evaluation, counters["env_steps"])
        if plots:
            telemetry.plot_learning_curves(log.records, run_dir / "learning_curves.png")
    log.close()
    return TrainResult(run_dir=run_dir, state=state, records=log.records, evaluation=evaluation, finished=finished,
                       interrupted=interrupted, skipped_checkpoints=tuple(skipped))


def progress_bar(total_steps: int, env_steps: int, iteration: int, iterations: int, console=None, get_time=None):
    """A rich progress bar (not started) showing iteration, env-steps, env-steps/s of the last interval, mean
    episode return of the last interval and the ETA; returns (progress, task id). Update the task's ``completed``
    (env steps) and its fields ``it``, ``sps``, ``ret`` after each interval."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("it {task.fields[it]}/{task.fields[its]}  steps {task.completed:,.0f}/{task.total:,.0f}  "
                   "{task.fields[sps]:,.0f} steps/s  return {task.fields[ret]}  ETA"),
        TimeRemainingColumn(),
        # Off a terminal rich assumes 80 columns and cuts the ETA off the end of the line.
        console=console or Console(stderr=True, width=None if sys.stderr.isatty() else 140),
        transient=False, get_time=get_time,
        # rich estimates speed from the samples of the last speed_estimate_period seconds (30 by default), and an
        # interval can take longer than that: the ETA would then never show. Keep every sample; the first one (the
        # interval that paid the compile) only anchors the clock, so the rate is the compiled intervals' rate.
        speed_estimate_period=365 * 24 * 3600.0,
    )
    task = progress.add_task("train", total=total_steps, completed=env_steps, it=iteration, its=iterations, sps=0.0,
                             ret="-")
    return progress, task


