"""Train the Esper seed-slot controller with recurrent factored PPO: ``python -m esper_jax.train``.

This module is the command line; the loop is ``esper_jax.trainer`` (one compiled call per interval of PPO
iterations, each a rollout then an update) and the final comparison ``esper_jax.evaluation``. After each interval
the trainer appends one line to ``metrics.jsonl`` (PPO losses, per-head entropies, and what the env did: op counts,
invalid-action and action-success rates, reward components under ``RewardComponentsTelemetry``'s names, seed
outcomes), writes TensorBoard scalars, and every ``checkpoints.every`` intervals (and at the end) an orbax
checkpoint plus the learning-curve PNG. At the end the trained policy is compared with a random-masked-action policy
and an always-WAIT policy on the same env seeds.

``train``, ``TrainResult``, ``evaluate_baselines`` and ``comparison_line`` are re-exported here for callers of the
library (``from esper_jax import train; train.train(cfg, run_dir)``).

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
import sys
import time
from pathlib import Path
from typing import Annotated

from esper_jax.config import PRESETS, ConfigError, DistributedConfig, TrainingConfig
from esper_jax.config.cli import Preset, Sources
from esper_jax.evaluation import comparison_line, evaluate_baselines
from esper_jax.trainer import TrainerState, TrainResult, progress_bar, train

__all__ = ["Args", "parse_args", "main", "train", "evaluate_baselines", "comparison_line", "TrainResult",
           "TrainerState", "progress_bar"]


@dataclasses.dataclass(frozen=True)
class Args:
    """Train the Esper seed-slot controller (Tamiyo policy, Simic PPO) in JAX.

    Config resolution: preset (or the run dir of --resume) → --config FILE.json → the flags below.
    Envs: --env-kind sim (lifecycle simulator; the default), host (real CNN hosts trained with their seeds: task
    digits, or cifar10 from local files with --env.host.data-dir DIR).
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


def _default_run_dir(preset_name: str, cfg: TrainingConfig) -> Path:
    return Path("runs") / f"{preset_name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


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
        interval = int(result.state.counters.interval)
        print(f"interrupted after {wall:.1f}s: checkpoint saved after {interval} interval(s); resume with\n"
              f"  python -m esper_jax.train --resume {run_dir}", file=sys.stderr)
        return INTERRUPTED
    if result.evaluation is not None:
        print(comparison_line(result.evaluation, cfg.eval_episodes))
    print(f"{'finished' if result.finished else 'stopped'} after {wall:.1f}s; run dir {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
