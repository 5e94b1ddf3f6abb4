"""``python -m bench.host_speed``: env-steps/s of the host env (a bare scan of ``env.step``, no policy).

Each env count runs one jitted, vmapped ``lax.scan`` of ``--steps`` steps of ``env.step`` driven by a scripted
controller (``grow_light`` by default: it germinates, blends and fossilises conv_light seeds in every slot, so the
fused validation branches as in training). The first call compiles; the median of ``--reps`` further calls is
timed. env-steps/s = envs × steps / seconds.

``--data digits`` (default) is the ``digits`` task on scikit-learn's digits; ``--data synthetic-cifar`` is the
``cifar10`` task with the ``cifar10`` preset's host settings (24 minibatches of 512 per step, a 2,048-image
validation window, augmentation) on generated uint8 32×32×3 images (50k train / 10k test unless
``--train``/``--val``), the real-size smoke run of the CIFAR-10 path (CIFAR-10's cost; the images are noise).
The data are passed to the compiled scan as an argument (``EsperEnv.bind``), as the trainer does.

Prints one JSON line per env count. ``bench/results/host-speed-*/`` holds recorded runs and how they were made.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import numpy as np

from bench import scripted
from esper_jax.env import EnvConfig, HostConfig, make


def build_env(data: str, compat: str, train: int, val: int, augment: bool | None, minibatches: int = 24,
              val_subset: int | None = 2048):
    if data == "digits":
        return make("host", EnvConfig.create(3, task="digits", compat=compat, host=HostConfig()))
    from esper_jax.env.host import data as host_data

    rng = np.random.default_rng(0)
    dataset = host_data.from_uint8(
        rng.integers(0, 256, (train, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, train),
        rng.integers(0, 256, (val, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, val),
        mean=host_data.CIFAR10_MEAN, std=host_data.CIFAR10_STD,
    )
    # The cifar10 preset's host settings (esper_jax/config/presets.py) unless overridden.
    host = HostConfig(minibatches_per_step=minibatches, val_subset=val_subset,
                      augment=True if augment is None else augment)
    return make("host", EnvConfig.create(3, task="cifar10", compat=compat, host=host), dataset=dataset)


def scan_fn(env, steps: int, controller: str):
    (act,) = scripted.act_fns((controller,))
    bind = getattr(env, "bind", None)  # older checkouts (the 'before' runs) close over their data

    def one(key, data):
        env_ = env if bind is None else env.bind(data)
        k_reset, k_run = jax.random.split(key)
        state, obs = env_.reset(k_reset)

        def body(carry, k):
            state, obs, memory = carry
            k_step, k_act = jax.random.split(k)
            memory, actions = act(memory, obs, k_act)
            out = env_.step(state, actions, k_step)
            return (out.state, out.obs, memory), out.reward

        _, rewards = jax.lax.scan(body, (state, obs, scripted.initial_memory(env.num_slots)),
                                  jax.random.split(k_run, steps))
        return rewards

    data = env.data() if bind is not None else None
    vmapped = jax.jit(jax.vmap(one, in_axes=(0, None)))
    return lambda keys: vmapped(keys, data)


def measure(env, envs: int, steps: int, reps: int, controller: str) -> dict:
    fn = scan_fn(env, steps, controller)
    keys = jax.random.split(jax.random.PRNGKey(0), envs)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(keys))
    compile_and_first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(keys))
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    return {"envs": envs, "steps": steps, "reps": reps, "seconds": seconds, "env_steps_per_s": envs * steps / seconds,
            "first_call_s": compile_and_first}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.host_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, nargs="+", default=[4, 64, 256])
    parser.add_argument("--steps", type=int, default=8, help="env steps per timed scan")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--data", choices=("digits", "synthetic-cifar"), default="digits")
    parser.add_argument("--compat", choices=("fixed", "upstream"), default="fixed")
    parser.add_argument("--controller", default="grow_light")
    parser.add_argument("--train", type=int, default=50_000, help="synthetic-cifar: training images")
    parser.add_argument("--val", type=int, default=10_000, help="synthetic-cifar: validation images")
    parser.add_argument("--augment", choices=("on", "off"), default=None, help="synthetic-cifar: augmentation (on)")
    parser.add_argument("--minibatches", type=int, default=24, help="synthetic-cifar: minibatches of 512 per step")
    parser.add_argument("--val-subset", type=int, default=2048, help="synthetic-cifar: validation images per env")
    parser.add_argument("--label", default="", help="recorded in every line (e.g. before/after)")
    args = parser.parse_args(argv)
    augment = None if args.augment is None else args.augment == "on"
    env = build_env(args.data, args.compat, args.train, args.val, augment, args.minibatches, args.val_subset)
    info = {"label": args.label, "data": args.data, "compat": args.compat, "controller": args.controller,
            "jax": jax.__version__, "backend": jax.default_backend(), "machine": platform.machine()}
    for envs in args.envs:
        print(json.dumps({**info, **measure(env, envs, args.steps, args.reps, args.controller)}), flush=True)


if __name__ == "__main__":
    main()
