"""``python -m bench.controllers``: scripted controllers and upstream's heuristic on the host env, both compat modes.

Each controller (``bench/scripted.py``) plays ``--episodes`` episodes of ``--epochs`` epochs on the digits host env
(``make("host")``) with the same episode keys for every controller, so the seedless host, its minibatch order and the
validation split are shared and differences are paired. The episodes run as envs of one vmapped ``lax.scan``; the
controller is chosen by ``lax.switch`` inside it, so each compat mode compiles once. Reported per controller, as
mean ± std over episodes: final validation accuracy (the observation at the last epoch), parameters (host + every
seed whose alpha is > 0 at the end, fossils included: what the final forward pass runs), fossils, the episode's raw
return (the sum of unnormalised rewards) and its reward components, and the op histogram (effective ops).

``--policy COMPAT=RUN_DIR`` (once per mode) adds a policy trained by ``python -m esper_jax.train`` on the host env
in that mode (``bench/trained.py``) as two more controllers on the same episode keys: ``trained`` (actions sampled,
as PPO trains it) and ``trained_greedy`` (argmax of every head).

Writes ``results.json``, ``results.md`` and ``controllers.png`` under ``--out`` (default
``bench/results/controllers-<UTC date>``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench import scripted, trained
from esper_jax.contracts import COMPAT_MODES, NUM_OPS, LifecycleOp, SeedStage
from esper_jax.env import EnvConfig, HostConfig, RewardComponents, make
from esper_jax.env.core import EsperEnv

_COMPONENTS = tuple(f.name for f in dataclasses.fields(RewardComponents))


def episodes_fn(env: EsperEnv, names: tuple[str, ...]):
    """jit(fn(controller_index int32, keys [N, 2]) -> dict of per-episode arrays) for ``env``."""
    acts = scripted.act_fns(names)
    return _episodes_fn(env, lambda index, memory, obs, key: jax.lax.switch(index, acts, memory, obs, key),
                        scripted.initial_memory(env.num_slots))


def _episodes_fn(env: EsperEnv, act, initial_carry):
    """jit(fn(arg, keys [N, 2]) -> dict of per-episode arrays): ``act(arg, carry, obs, key) -> (carry, actions)``
    plays every episode from ``initial_carry``. The env's keys come from the episode key alone, so any two
    controllers given the same keys meet the same hosts, minibatches and validation."""
    steps = env.config.episode_length

    def one(arg, key):
        k_reset, k_env, k_act = jax.random.split(key, 3)
        state, obs = env.reset(k_reset)

        def body(carry, keys):
            state, obs, memory = carry
            k_step, k_a = keys
            memory, actions = act(arg, memory, obs, k_a)
            out = env.step(state, actions, k_step)
            comps = out.info.reward_components
            record = {
                "reward": out.reward,
                "op": out.info.effective_op,
                "invalid": out.info.invalid_action,
                **{f"r_{n}": getattr(comps, n) for n in _COMPONENTS},
            }
            return (out.state, out.obs, memory), record

        keys = (jax.random.split(k_env, steps), jax.random.split(k_act, steps))
        (state, obs, _), rec = jax.lax.scan(body, (state, obs, initial_carry), keys)
        slots = state.slots
        live = slots.has_module & (slots.alpha > 0.0)
        seed_params = jnp.sum(jnp.where(live, env.seed_params(slots), 0.0))
        return {
            "final_acc": obs.signals.val_accuracy,
            "params": env.config.host_params + seed_params,
            "fossils": jnp.sum(slots.has_module & (slots.stage == SeedStage.FOSSILIZED)),
            "return": jnp.sum(rec["reward"]),
            "invalid": jnp.sum(rec["invalid"]),
            "ops": jnp.sum(jax.nn.one_hot(rec["op"], NUM_OPS, dtype=jnp.int32), axis=0),
            "germinated": state.feedback.seeds_created,
            **{n: jnp.sum(rec[f"r_{n}"]) for n in _COMPONENTS},
        }

    return jax.jit(jax.vmap(one, in_axes=(None, 0)))


def host_env(compat: str, epochs: int, num_slots: int = 3) -> EsperEnv:
    """The digits host env of this benchmark: the project's defaults except the episode length."""
    return make("host", EnvConfig.create(num_slots, task="digits", episode_length=epochs, compat=compat,
                                         host=HostConfig()))


def _play(fn, args: dict, keys, compat: str, log) -> dict[str, dict]:
    out = {}
    for name, arg in args.items():
        t0 = time.perf_counter()
        res = jax.device_get(fn(arg, keys))
        out[name] = {k: np.asarray(v).tolist() for k, v in res.items()}
        log(f"# {compat} {name}: acc {np.mean(res['final_acc']):.2f} return {np.mean(res['return']):.2f} "
            f"({time.perf_counter() - t0:.0f}s)")
    return out


def run(env: EsperEnv, names: tuple[str, ...], episodes: int, seed: int = 0, log=print) -> dict[str, dict]:
    """Per controller: per-episode lists of every metric (same episode keys for every controller)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), episodes)
    return _play(episodes_fn(env, names), {n: jnp.int32(i) for i, n in enumerate(names)}, keys,
                 env.config.compat, log)


def run_trained(env: EsperEnv, policy: trained.TrainedPolicy, episodes: int, seed: int = 0, log=print
                ) -> dict[str, dict]:
    """The trained policy, sampled (``trained``) and greedy (``trained_greedy``), on ``run``'s episode keys."""
    trained.check_fits(policy, env.config.compat, env.num_slots, env.config.task)
    keys = jax.random.split(jax.random.PRNGKey(seed), episodes)
    fn = _episodes_fn(env, trained.act_fn(policy), trained.initial_carry(policy))
    args = {kind: (jnp.int32(i), policy.params, policy.obs_stats) for i, kind in enumerate(trained.KINDS)}
    return _play(fn, args, keys, env.config.compat, log)


def summarise(per_episode: dict[str, list]) -> dict[str, list[float]]:
    """mean and std (population, over episodes) of every scalar metric; op histogram averaged."""
    summary = {}
    for k, v in per_episode.items():
        a = np.asarray(v, np.float64)
        summary[k] = a.mean(axis=0).tolist() if a.ndim > 1 else [float(a.mean()), float(a.std())]
    return summary


def markdown(results: dict) -> str:
    lines = []
    for compat, by_ctrl in results["modes"].items():
        wait = np.asarray(by_ctrl["wait"]["per_episode"]["final_acc"]) if "wait" in by_ctrl else None
        lines += [
            f"### compat = `{compat}`",
            "",
            ("| controller | final val acc % | Δ acc vs WAIT (paired) | params | fossils | return | attribution | "
            "pbrs | rent | terminal | ops W/G/S/P/F/A per episode |"),
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in by_ctrl.items():
            s = r["summary"]
            acc = np.asarray(r["per_episode"]["final_acc"])
            paired = acc - wait if wait is not None and name != "wait" else None
            delta = "—" if paired is None else f"{np.mean(paired):+.2f} ± {np.std(paired):.2f}"
            ops = "/".join(f"{x:.1f}" for x in s["ops"])
            lines.append(
                f"| {name} | {s['final_acc'][0]:.2f} ± {s['final_acc'][1]:.2f} | {delta} | {s['params'][0]:,.0f} | "
                f"{s['fossils'][0]:.2f} | {s['return'][0]:.1f} ± {s['return'][1]:.1f} | {s['attribution'][0]:.1f} | "
                f"{s['pbrs'][0]:.1f} | {s['compute_rent'][0]:.1f} | {s['terminal'][0]:.1f} | {ops} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib not installed: plot skipped")
        return False
    modes = list(results["modes"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, metric, label in ((axes[0], "final_acc", "final val accuracy %"), (axes[1], "return", "episode return")):
        names = list(results["modes"][modes[0]])
        width = 0.8 / len(modes)
        for j, compat in enumerate(modes):
            data = [results["modes"][compat][n]["summary"][metric] for n in names]
            ax.bar(np.arange(len(names)) + j * width, [d[0] for d in data], width, yerr=[d[1] for d in data],
                   label=compat, capsize=3)
        ax.set_xticks(np.arange(len(names)) + width * (len(modes) - 1) / 2, names, rotation=30)
        ax.set_ylabel(label)
        if metric == "final_acc":
            lo = min(min(results["modes"][m][n]["summary"][metric][0] for n in names) for m in modes)
            ax.set_ylim(max(0.0, lo - 10.0), 100.0)
        ax.legend()
    fig.suptitle(f"digits host env, {results['epochs']} epochs, {results['episodes']} episodes (mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.controllers", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=150, help="episode length (default 150)")
    parser.add_argument("--episodes", type=int, default=8, help="episodes (seeds) per controller (default 8)")
    parser.add_argument("--compat", default="both", choices=("both",) + COMPAT_MODES)
    parser.add_argument("--controllers", default=",".join(scripted.CONTROLLERS),
                        help=f"comma-separated subset of {scripted.CONTROLLERS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", action="append", default=[], metavar="COMPAT=RUN_DIR",
                        help="a run directory of python -m esper_jax.train (host env, that compat mode) to play as "
                             "the trained and trained_greedy controllers in that mode (repeat per mode)")
    parser.add_argument("--out", default=None, help="output folder (default bench/results/controllers-<date>)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.episodes < 1:
        parser.error("--epochs and --episodes must be >= 1")
    names = tuple(n.strip() for n in args.controllers.split(",") if n.strip())
    try:
        scripted.act_fns(names)
    except ValueError as e:
        parser.error(str(e))
    modes = COMPAT_MODES if args.compat == "both" else (args.compat,)
    policies = {}
    for spec in args.policy:
        compat, sep, run_dir = spec.partition("=")
        if not sep or compat not in modes or compat in policies:
            parser.error(f"--policy must be COMPAT=RUN_DIR with COMPAT one of {list(modes)}, once each; got {spec!r}")
        try:
            policies[compat] = trained.load(run_dir)
            trained.check_fits(policies[compat], compat, 3, "digits")
        except (OSError, ValueError, RuntimeError) as e:
            parser.error(f"--policy {spec}: {e}")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = Path(args.out or f"bench/results/controllers-{date}")
    results = {
        "command": "python -m bench.controllers " + " ".join(sys.argv[1:] if argv is None else argv),
        "epochs": args.epochs,
        "episodes": args.episodes,
        "seed": args.seed,
        "device": str(jax.devices()[0]),
        "ops_order": [o.name for o in LifecycleOp],
        "modes": {},
        "policies": {c: {"run_dir": str(p.run_dir), "episodes_trained": p.episodes_trained} for c, p in policies.items()},
    }
    started = time.perf_counter()
    for compat in modes:
        env = host_env(compat, args.epochs)
        per = run(env, names, args.episodes, args.seed)
        if compat in policies:
            per.update(run_trained(env, policies[compat], args.episodes, args.seed))
        results["modes"][compat] = {n: {"summary": summarise(p), "per_episode": p} for n, p in per.items()}
    results["wall_s"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out / "results.md").write_text(table)
    plot(results, out / "controllers.png")
    print(table)
    print(f"# wrote {out} in {results['wall_s']:.0f}s")
    return results


if __name__ == "__main__":
    main()
