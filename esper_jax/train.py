"""Train the Esper seed-slot controller with recurrent factored PPO: ``python -m esper_jax.train``.

Python runs only the outer loop. Each *interval* is ONE compiled call: ``lax.scan`` over
``iterations_per_interval`` PPO iterations, each a full rollout (``rollout.collect``: ``env.episode_length`` steps
of ``n_envs`` envs) followed by one ``ppo.update``. After each interval the trainer appends one line to
``metrics.jsonl`` (deterministic values only), writes TensorBoard scalars, and every ``checkpoints.every`` intervals
(and at the end) an orbax checkpoint plus the learning-curve PNG. A record holds the PPO losses and per-head
entropies and what the env did over the interval (``esper_jax.outcomes``, reduced inside the compiled call): sampled
and effective op counts, invalid-action and action-success rates, mean reward components per env-step under
``RewardComponentsTelemetry``'s names, and seed outcomes (seeds germinated, fossilized, pruned). At the end the
trained policy is compared with a random-masked-action policy and an always-WAIT policy on the same env seeds.

Run directory (``--out``, default ``runs/<preset>-seed<seed>-<time>``): ``config.json`` (resolved config),
``metrics.jsonl``, ``tb/`` (TensorBoard), ``checkpoints/<interval>/`` (orbax), ``learning_curves.png``,
``eval.json`` (final comparison, reward-component breakdown and seed outcomes).

Config resolution: a preset subcommand (``default`` unless named) or ``--resume RUN_DIR`` (its config.json, flat
ones migrated) → ``--config FILE.json`` (strict; keys given replace the preset's) → per-field flags
(``esper_jax.config.cli``). A resumed run may change only the budget and recording settings (``n_episodes``,
``eval_episodes``, ``checkpoints``, ``telemetry``); anything else is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

from esper_jax.config import PRESETS, ConfigError, DistributedConfig, TrainingConfig, to_dict
from esper_jax.config.cli import Preset, Sources

__all__ = ["Args", "main", "train", "evaluate_baselines", "TrainResult"]


@dataclasses.dataclass(frozen=True)
class Args:
    """Train the Esper seed-slot controller (Tamiyo policy, Simic PPO) in JAX.

    Config resolution: preset (or the run dir of --resume) → --config FILE.json → the flags below.
    Envs: --env-kind sim (lifecycle simulator; the default), host (real CNN hosts trained on digits with their seeds).
    Values two parts share are stored in each and must agree; --compat and --episode-length set every copy."""

    train: Preset = Preset("default", PRESETS["default"])
    """The preset and its overrides (tyro subcommands; ``default`` is implied)."""
    distributed: Annotated[DistributedConfig, __import__("tyro").conf.arg(name="")] = DistributedConfig()
    sources: Annotated[Sources, __import__("tyro").conf.arg(name="")] = Sources()
    out: Path | None = None
    """Run directory (default runs/<preset>-seed<seed>-<time>). Must be absent or empty (see --overwrite)."""
    overwrite: bool = False
    """Replace the previous run in --out (its config, metrics, TensorBoard events, checkpoints, plots, eval)."""
    debug_nans: bool = False
    """A run always stops at the first interval with NaN/Inf, naming the first offending gradient/parameter leaf;
    with this flag the error lists every offending leaf."""
    max_intervals: int | None = None
    """Stop (with a checkpoint) after this many intervals in this invocation; resume later with --resume."""

    @property
    def preset(self) -> str:
        return self.train.name

    @property
    def config(self) -> TrainingConfig:
        return self.train.train

    @property
    def resume(self) -> Path | None:
        return self.sources.resume


# ---------------------------------------------------------------------------------------------------------------
# Compiled pieces
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


def initial_state(cfg: TrainingConfig, static: Static) -> dict[str, Any]:
    import jax
    import numpy as np

    from esper_jax import ppo, rollout

    key = jax.random.PRNGKey(cfg.seed)
    k_params, k_env, k_loop = jax.random.split(key, 3)
    return strong_types({
        "train": ppo.create_train_state(k_params, static.ppo, static.network),
        "runner": rollout.init_runner(static.env, static.network, cfg.n_envs, k_env),
        "key": k_loop,
        "counters": {name: np.asarray(0, np.int64) for name in ("interval", "iteration", "env_steps", "episodes")},
    })


def strong_types(tree: Any) -> Any:
    """Drop weak types so the interval function sees identical avals on every call (else it recompiles)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    return jax.tree.map(lambda x: x if isinstance(x, np.ndarray) else jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


@functools.cache
def _interval_fn(static: Static, num_iterations: int, layout):
    import jax

    from esper_jax import ppo, rollout

    def body(carry, key):
        train_state, runner = carry
        k_collect, k_update = jax.random.split(key)
        runner, traj, rm = rollout.collect(
            static.env, train_state.params, runner, train_state.obs_stats, k_collect,
            network_config=static.network, config=static.rollout,
        )
        traj = layout.constrain_trajectory(traj)
        new_state, um = ppo.update(train_state, traj, k_update, config=static.ppo, network_config=static.network)
        return (new_state, runner), {"rollout": rm, "update": um}

    def run(train_state, runner, key):
        key, sub = jax.random.split(key)
        (train_state, runner), outs = jax.lax.scan(body, (train_state, runner), jax.random.split(sub, num_iterations))
        return train_state, runner, key, outs

    return layout.jit_interval(run)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: trained vs random-masked vs always-WAIT, same env seeds
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def _eval_fn(static: Static, num_envs: int, num_steps: int, compat: str):
    import jax
    import jax.numpy as jnp

    from esper_jax import features as features_mod
    from esper_jax import masks as masks_mod
    from esper_jax import normalization, policy
    from esper_jax.contracts import HEAD_NAMES, PerHead

    env, net = static.env, static.network

    kinds = ("sampled", "greedy", "random", "wait")

    def choose(kind_index, params, obs_stats, carry, obs, key):
        feats = features_mod.extract(obs, compat=compat, validate=False)
        masks = masks_mod.compute(obs, static.rollout.mask_config)

        def by_policy(deterministic):
            def f(_):
                normed = normalization.normalize(obs_stats, feats.features)
                out = policy.get_action(params, net, carry, normed, feats.blueprint_indices, masks, key,
                                        deterministic, validate=False)
                return out.actions.map(lambda a: a.astype(jnp.int32)), out.carry
            return f

        def wait(_):
            acts = {h: jnp.argmax(getattr(masks, h), axis=-1).astype(jnp.int32) for h in HEAD_NAMES}
            acts["op"] = jnp.zeros_like(acts["op"])
            return PerHead(**acts), carry

        def random(_):
            keys = jax.random.split(key, len(HEAD_NAMES))
            op = jax.random.categorical(keys[0], jnp.where(masks.op, 0.0, -jnp.inf)).astype(jnp.int32)
            acts = {}
            for i, h in enumerate(HEAD_NAMES):
                m = getattr(masks, h)
                if h == "style":
                    m = policy.style_mask_for_op(m, op)
                acts[h] = op if h == "op" else jax.random.categorical(keys[i], jnp.where(m, 0.0, -jnp.inf)).astype(jnp.int32)
            return PerHead(**acts), carry

        return jax.lax.switch(kind_index, [by_policy(False), by_policy(True), random, wait], None)

    def run(kind, params, obs_stats, key):
        k_reset, k_steps = jax.random.split(key)
        env_keys = jax.random.split(k_reset, num_envs)
        state, obs = jax.vmap(env.reset)(env_keys)
        carry = policy.initial_carry(net, (num_envs,))

        def step(c, k):
            state, obs, carry, ret = c
            k_act, k_env = jax.random.split(k)
            actions, carry = choose(kind, params, obs_stats, carry, obs, k_act)
            out = jax.vmap(env.step)(state, actions, jax.random.split(k_env, num_envs))
            info = out.info
            comp = jax.tree.map(jnp.sum, dataclasses.asdict(info.reward_components)) if dataclasses.is_dataclass(
                info.reward_components) else {}
            outcomes = {
                "germinated": jnp.sum(info.seeds_germinated), "fossilized": jnp.sum(info.seeds_fossilized),
                "pruned": jnp.sum(info.seeds_pruned),
            }
            return (out.state, out.obs, carry, ret + out.reward), (comp, outcomes)

        (_, _, _, ret), (comp, outcomes) = jax.lax.scan(
            step, (state, obs, carry, jnp.zeros((num_envs,), jnp.float32)), jax.random.split(k_steps, num_steps)
        )
        return ret, jax.tree.map(lambda x: jnp.sum(x) / num_envs, comp), jax.tree.map(
            lambda x: jnp.sum(x) / num_envs, outcomes)

    return kinds, jax.jit(run)


def evaluate_baselines(cfg: TrainingConfig, static: Static, train_state, seed: int | None = None) -> dict[str, Any]:
    """Mean episode return (raw reward) of the trained policy (sampled and greedy), a random-masked-action policy
    and an always-WAIT policy, each over ``eval_episodes`` envs with the same reset and step keys."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from esper_jax.telemetry import RewardComponentsTelemetry

    kinds, fn = _eval_fn(static, cfg.eval_episodes, cfg.episode_length, cfg.compat)
    key = jax.random.PRNGKey(10_000_019 + (cfg.seed if seed is None else seed))
    result: dict[str, Any] = {}
    for index, kind in enumerate(kinds):
        ret, comp, outcomes = fn(jnp.asarray(index, jnp.int32), train_state.params, train_state.obs_stats, key)
        ret = np.asarray(ret)
        result[kind] = {
            "mean_return": float(ret.mean()),
            "std_return": float(ret.std()),
            "reward_components_per_episode": {k: float(v) for k, v in comp.items()},
            "seed_outcomes_per_episode": {k: float(v) for k, v in outcomes.items()},
            # the same per-episode sums under upstream's RewardComponentsTelemetry names (docs/environment.md#log-names)
            "reward_telemetry": RewardComponentsTelemetry.from_env_components(
                {k: float(v) for k, v in comp.items()}, num_fossilized_seeds=int(round(float(outcomes["fossilized"])))
            ).to_dict(),
        }
    return result


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    state: dict[str, Any]
    records: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    finished: bool
    interrupted: bool = False  # stopped by Ctrl-C after checkpointing the last completed interval
    skipped_checkpoints: tuple[str, ...] = ()  # newer checkpoints found corrupt when resuming (one line each)


def _scalar(x) -> float:
    import numpy as np

    return float(np.asarray(x))


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


def _default_run_dir(preset_name: str, cfg: TrainingConfig) -> Path:
    return Path("runs") / f"{preset_name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


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

    counters = {k: int(np.asarray(v)) for k, v in state["counters"].items()}
    tele = cfg.telemetry
    log = telemetry.MetricsLog(run_dir, tensorboard=tele.tensorboard and tele.level != "off",
                               keep_intervals=counters["interval"]) if layout.is_primary else telemetry.UnwrittenLog()
    plots = tele.plots and tele.level != "off" and layout.is_primary
    steps_per_iteration = cfg.n_envs * cfg.episode_length
    total_steps = cfg.num_iterations * steps_per_iteration
    param_paths = telemetry.leaf_paths(state["train"].params)
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
    finished = counters["interval"] >= cfg.num_intervals
    interrupted = False
    saved_interval = counters["interval"] if resume else None
    stop = StopRequest()
    try:
        stop.__enter__()
        while counters["interval"] < cfg.num_intervals:
            if max_intervals is not None and ran >= max_intervals:
                break
            if stop.requested:
                interrupted = True
                break
            interval = counters["interval"]
            n_it = cfg.interval_iterations(interval)
            fn = _interval_fn(static, n_it, layout)
            t0 = time.perf_counter()
            train_state, runner, key, outs = fn(state["train"], state["runner"], state["key"])
            jax.block_until_ready(train_state.params)
            elapsed = time.perf_counter() - t0
            counters["interval"] = interval + 1
            counters["iteration"] += n_it
            counters["env_steps"] += n_it * steps_per_iteration
            counters["episodes"] += int(np.asarray(outs["rollout"].episodes_completed).sum())
            state = {"train": train_state, "runner": runner, "key": key,
                     "counters": {k: np.asarray(v, np.int64) for k, v in counters.items()}}
            rec = _interval_record(interval, counters, outs)
            sps = n_it * steps_per_iteration / max(elapsed, 1e-9)
            log.append(rec, timing={"interval_seconds": elapsed, "env_steps_per_second": sps})
            try:  # the record above shows the bad interval; its state is never checkpointed
                nonfinite.check_interval(outs, param_paths, interval=interval, first_iteration=counters["iteration"] - n_it,
                                         every_leaf=debug_nans)
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
        stop.__exit__(None, None, None)
        if progress is not None:
            progress.stop()
        ckpt.close()

    evaluation = None
    if interrupted:
        finished = False
    if finished and evaluate:
        evaluation = evaluate_baselines(cfg, static, state["train"])
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


def comparison_line(evaluation: dict[str, Any], episodes: int) -> str:
    """The final comparison. "trained" is the policy as PPO trains it, sampling its actions; the greedy (argmax)
    policy is shown beside it, flagged when it germinated no seed: while every slot is empty only WAIT and
    GERMINATE are allowed, so it then chose WAIT at every step and scores exactly always-WAIT's return."""
    s, g, r, w = (evaluation[k]["mean_return"] for k in ("sampled", "greedy", "random", "wait"))
    verdict = "beats" if s > r and s > w else "does NOT beat"
    greedy_note = ", germinated no seed: WAIT at every step" if (
        evaluation["greedy"]["seed_outcomes_per_episode"]["germinated"] == 0.0) else ""
    return (f"mean return over {episodes} eval episodes (same seeds): trained, sampled actions {s:+.3f} "
            f"(greedy {g:+.3f}{greedy_note}) | random-masked {r:+.3f} | always-WAIT {w:+.3f} "
            f"→ trained policy {verdict} both baselines")


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> Args:
    import tyro

    from esper_jax.config import cli

    cli.check_shared_flags(argv)
    # --config / --resume choose the base values the preset subcommands offer, so tyro reads them first.
    sources, _ = tyro.cli(Sources, args=argv, return_unknown_args=True, add_help=False, console_outputs=False)
    choice, default = cli.preset_choice(cli.base_configs(sources))
    spec = dataclasses.make_dataclass("Args", [("train", choice, dataclasses.field(default=default))], bases=(Args,),
                                      frozen=True)
    spec.__doc__ = Args.__doc__
    parse = functools.partial(tyro.cli, tyro.conf.CascadeSubcommandArgs[spec], args=argv, registry=cli.registry(),
                              description=__doc__.split("\n\n")[0])
    try:
        if sources.resume is not None:
            # A resumed run offers only its own config; a preset named beside --resume is refused in one line
            # rather than as tyro's "invalid choice" box.
            named = [a for a in argv if a in PRESETS]
            try:
                parse(console_outputs=False)
            except SystemExit:
                if named:
                    raise ConfigError(f"a preset ({named[0]}) cannot be combined with --resume: a resumed run keeps "
                                      "the config in its config.json (change the budget with --n-episodes)") from None
        return parse()
    except (TypeError, ValueError) as exc:  # a section's own validation (PPOConfig, EnvConfig, ...)
        raise ConfigError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    from esper_jax import compile_cache
    from esper_jax.checkpoint import CheckpointError
    from esper_jax.interrupt import EXIT_CODE as INTERRUPTED

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        cfg = args.config
        if args.resume is not None:
            run_dir = args.resume
            if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
                raise ConfigError("--out and --resume name different directories; a resumed run stays in its own")
        else:
            run_dir = args.out or _default_run_dir(args.preset, cfg)
        print(f"run dir: {run_dir}  (env {cfg.env_kind}, task {cfg.env.task}, slots {list(cfg.env.slots.slot_ids)}, "
              f"{cfg.n_episodes} episodes = {cfg.num_iterations} iterations x {cfg.n_envs} envs x "
              f"{cfg.episode_length} steps, hidden {cfg.network.hidden_dim})", file=sys.stderr)
        if args.overwrite and args.resume is not None:
            raise ConfigError("--overwrite cannot be combined with --resume")
        compile_cache.enable()
        t0 = time.perf_counter()
        result = train(cfg, run_dir, resume=args.resume is not None, overwrite=args.overwrite,
                       debug_nans=args.debug_nans, max_intervals=args.max_intervals, distributed=args.distributed)
    except (ConfigError, CheckpointError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    if result.interrupted:
        interval = int(result.state["counters"]["interval"])
        print(f"interrupted after {wall:.1f}s: checkpoint saved after {interval} interval(s); resume with\n"
              f"  python -m esper_jax.train --resume {run_dir}", file=sys.stderr)
        return INTERRUPTED
    if result.evaluation is not None:
        print(comparison_line(result.evaluation, cfg.eval_episodes))
    print(f"{'finished' if result.finished else 'stopped'} after {wall:.1f}s; run dir {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
