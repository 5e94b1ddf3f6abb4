"""compile: first-call cost (trace + lower, then XLA compile) of get_action, evaluate_actions, the policy rollout
scan, the PPO update and the full train interval, each at its smallest benchmark size.

Each function is wrapped in a fresh ``jax.jit`` so nothing compiled earlier in the process is reused. When the
rollout, update or train benchmark already ran in this process at the same size, its ahead-of-time compile of
the very same function is reported instead of compiling again (the row's note says so): compiling the train
interval twice would double the suite's longest step for the same number.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import jax

from bench import common, fixtures
from bench.common import JAX, Measurement, Options
from esper_jax import policy
from esper_jax.contracts import HEAD_NAMES, PerHead

NAME = "compile"
TARGET_TRAIN_INTERVAL_S = 60.0  # docs/benchmarks.md: full train interval compiles in <= 60 s on CPU


@functools.lru_cache(maxsize=1)
def _params():
    """One set of weights for every target here. Converted from the torch reference's init when torch is present
    (no compile at all, where ``policy.init`` compiles for seconds); computing them is not part of any measured
    compile either way."""
    config = fixtures.network_config()
    torch = common.setup_torch()
    return fixtures.jax_params(config, fixtures.torch_network(torch, config) if torch is not None else None)


def _get_action(num_envs: int):
    config = fixtures.network_config()
    params = _params()
    features, bp, masks = fixtures.step_inputs(num_envs, 1)
    fn = jax.jit(policy._get_action_impl, static_argnames=("config", "deterministic"))  # fresh cache
    args = (params, config, policy.initial_carry(config, (num_envs,)), features[0], bp[0])
    return fn, (*args, jax.tree.map(lambda m: m[0], masks), jax.random.PRNGKey(0), False), {}


def _evaluate_actions(num_envs: int):
    config = fixtures.network_config()
    params = _params()
    features, bp, masks = fixtures.step_inputs(num_envs, fixtures.SEQ_LEN)
    env_major = lambda x: jax.numpy.swapaxes(x, 0, 1)  # noqa: E731
    actions = PerHead(**{h: jax.numpy.zeros((num_envs, fixtures.SEQ_LEN), jax.numpy.int32) for h in HEAD_NAMES})
    fn = jax.jit(policy._evaluate_actions_impl, static_argnames=("config",))
    carry = policy.initial_carry(config, (num_envs,))
    return fn, (params, config, carry, env_major(features), env_major(bp), actions, jax.tree.map(env_major, masks)), {}


def _fresh(builder: Callable[[], tuple]) -> Callable[[], tuple]:
    """Rebuild a benchmark's jitted function around its undecorated body, so its compile is a first compile."""

    def build():
        jitted, args, kwargs, *_ = builder()
        return common.fresh_jit(jitted, kwargs), args, kwargs

    return build


def _targets(num_envs: int, train_envs: int) -> list[tuple[str, int, Callable[[], tuple], str]]:
    from bench import rollout, train, update

    return [
        ("get_action", num_envs, lambda: _get_action(num_envs), "one policy step"),
        ("evaluate_actions", num_envs, lambda: _evaluate_actions(num_envs), f"[E × {fixtures.SEQ_LEN}] sequences"),
        ("rollout", num_envs, _fresh(lambda: rollout.build_jax(num_envs)), "policy scan over 150 steps"),
        ("update", num_envs, _fresh(lambda: update.build_jax(num_envs)), "ppo.update"),
        ("train_interval", train_envs, _fresh(lambda: train.build_jax(train_envs)), "collect (sim env) + ppo.update"),
    ]


def run(options: Options) -> list[Measurement]:
    from bench import train

    rows: list[Measurement] = []
    for name, envs, build, what in _targets(num_envs=4, train_envs=train.ENVS[0]):
        earlier = common.COMPILE_LOG.get((name, envs))
        try:
            if earlier is not None:
                lower_s, compile_s = earlier
                origin = f"measured by the {name.split('_')[0]} benchmark in this run"
            else:
                fn, args, kwargs = build()
                # After building the inputs (their helpers, e.g. the features, stay compiled), before the target:
                # nothing traced or compiled earlier in this process may be reused for it.
                jax.clear_caches()
                compiled = common.compile_jax(fn, *args, **kwargs)
                lower_s, compile_s = compiled.lower_s, compiled.compile_s
                origin = "fresh jax.jit"
        except ImportError as error:
            rows.append(common.emit(common.skipped(NAME, JAX, f"{name}: {error}", envs=envs)))
            continue
        note = f"{name} ({what}): trace+lower {lower_s:.1f} s + XLA compile {compile_s:.1f} s; {origin}"
        if name == "train_interval":
            total = lower_s + compile_s
            verdict = "meets" if total <= TARGET_TRAIN_INTERVAL_S else "misses"
            note += f"; {verdict} the <= {TARGET_TRAIN_INTERVAL_S:.0f} s target"
        row = Measurement(
            bench=NAME,
            impl=JAX,
            status="ok",
            device=common.jax_device(),
            matmul_precision=common.jax_matmul_precision(),
            envs=envs,
            slots=fixtures.NUM_SLOTS,
            seq_len=1 if name == "get_action" else fixtures.SEQ_LEN,
            warmup=0,
            reps=1,
            compile_s=lower_s + compile_s,
            note=note,
        )
        rows.append(common.emit(row))
    return rows


if __name__ == "__main__":
    from bench.__main__ import main

    main([*sys.argv[1:], "--only", NAME])
