"""Env-steps/s of the transformer host env (issue 19): ``python -m bench.transformer_env``.

One compiled ``vmap(env.step)`` over N envs (ahead of time: the timed calls never compile), stepped ``--steps``
times after one warm-up step. Every env takes WAIT: the compute of a step does not depend on the actions here —
under vmap the seed switch evaluates every blueprint, and the fused validation always scores the layout's K rows —
so WAIT measures what a training rollout pays per env-step (the policy excluded). Prints one JSON line per size
and, with ``--out FILE``, writes them to FILE as a JSON list.

    python -m bench.transformer_env --task tinystories_small --envs 4 64 --slots 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp

from esper_jax.contracts import HEAD_NAMES, PerHead
from esper_jax.env import EnvConfig, make


def measure(task: str, n_envs: int, slots: int, steps: int) -> dict:
    env = make("host", EnvConfig.create(slots, task=task))
    keys = jax.random.split(jax.random.PRNGKey(0), n_envs)
    t0 = time.perf_counter()
    reset = jax.jit(jax.vmap(env.reset)).lower(keys).compile()
    state, _ = reset(keys)
    wait = PerHead(**{h: jnp.zeros((n_envs,), jnp.int32) for h in HEAD_NAMES})
    step = jax.jit(jax.vmap(env.step)).lower(state, wait, keys).compile()
    compile_s = time.perf_counter() - t0
    state = jax.block_until_ready(step(state, wait, keys).state)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        state = step(state, wait, keys).state
    jax.block_until_ready(state)
    per_step = (time.perf_counter() - t0) / steps
    o = env.oracle
    return {
        "bench": "transformer_env", "task": task, "envs": n_envs, "slots": slots, "steps": steps,
        "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(), "machine": platform.processor() or "",
        "d_model": o.spec.d_model, "n_layer": o.spec.n_layer, "block_size": o.spec.block_size,
        "vocab": o.spec.vocab_size, "minibatches_per_step": o.host.minibatches_per_step, "batch": o.batch_size,
        "val_tokens": int(o.data.val_windows[:, 1:].size), "compile_s": round(compile_s, 1),
        "step_s": round(per_step, 3), "env_steps_per_s": round(n_envs / per_step, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="tinystories_small")
    parser.add_argument("--envs", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = []
    for n in args.envs:
        rows.append(measure(args.task, n, args.slots, args.steps))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
