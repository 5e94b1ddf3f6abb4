"""Local speed experiments (not part of the suite): ``python -m bench.levers [--envs 4]``.

Each lever is measured alone against the same baseline, on the rollout at ``--envs`` envs (T = 150) and the update
at [envs × 150], so its effect can be read off directly:

* ``rollout unroll=k``: ``lax.scan(..., unroll=k)`` of the policy scan (bench code, no library change).
* ``rollout with lstm_unroll=k``: the LSTM's own (length-1) scan inside each policy step unrolled, patched as below.
* ``update lstm_unroll=k``: the LSTM recurrence scan unrolled k steps. This patches
  ``esper_jax.lstm._lstm_layer`` *in this process only* with its ``unroll`` argument set (the network uses 1).
* ``fused heads``: the eight policy heads' first layers run as one [H, 7·H/2 + H] matmul instead of eight small
  ones (a trunk rebuilt here from the same params; the library is untouched), to estimate what a fused-heads
  network would gain. Same function: the weights are concatenated, not changed.
* breakdown: the trunk alone (feature net + LSTM + heads) vs the whole ``get_action`` (plus masking, sampling of
  eight heads, log-probs, Q), so the sampling overhead per step is visible.
* ``update_variants``: the update as compiled by default, under each XLA CPU option set of ``XLA_CPU_OPTIONS``
  (all keep float32 maths) and run time-major end to end (``_time_major_update``), timed in alternating rounds
  with a pause before every call (as ``bench.headroom``), with each variant's largest output difference from the
  default and the page faults and system time of its calls.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import common, fixtures
from bench import rollout as rollout_bench
from bench import update as update_bench
from bench.headroom import SETTLE_S
from esper_jax import lstm as lstm_mod
from esper_jax import network as network_mod
from esper_jax import policy as policy_mod
from esper_jax import ppo as ppo_mod
from esper_jax.contracts import HEAD_NAMES

SEQ_LEN = fixtures.SEQ_LEN
_ORIGINAL_LSTM_LAYER = lstm_mod._lstm_layer


def _time(fn, args, kwargs, options):
    compiled = common.compile_jax(fn, *args, **kwargs)
    timing = common.time_jax(lambda: compiled.fn(*args), options)
    return timing.median_s, compiled.lower_s + compiled.compile_s


def rollout_unroll(num_envs: int, options: common.Options, unrolls=(1, 2, 4, 8)) -> list[dict]:
    jitted, args, kwargs, *_ = rollout_bench.build_jax(num_envs)
    out = []
    for k in unrolls:
        median, compile_s = _time(jitted, args, dict(kwargs, unroll=k), options)
        out.append(dict(lever=f"rollout unroll={k}", envs=num_envs, median_s=median,
                        steps_per_s=num_envs * SEQ_LEN / median, compile_s=compile_s))
    return out


@contextlib.contextmanager
def _lstm_unrolled(unroll: int | bool):
    """Patch ``esper_jax.lstm._lstm_layer`` with ``unroll`` set, in this process only, for the ``with`` body."""
    lstm_mod._lstm_layer = functools.partial(_ORIGINAL_LSTM_LAYER, unroll=unroll)
    jax.clear_caches()  # nested jits (evaluate_actions) would otherwise reuse the unpatched trace
    try:
        yield
    finally:
        lstm_mod._lstm_layer = _ORIGINAL_LSTM_LAYER
        jax.clear_caches()


def rollout_lstm_unroll(num_envs: int, options: common.Options, unrolls=(1, True)) -> list[dict]:
    """The rollout with the LSTM's inner scan unrolled: at T = 1 per policy step, ``unroll=True`` removes the
    inner while loop (a length-1 ``lax.scan`` nested in the rollout scan) from the compiled step."""
    out = []
    for k in unrolls:
        with _lstm_unrolled(k):
            jitted, args, kwargs, *_ = rollout_bench.build_jax(num_envs)
            median, compile_s = _time(jitted, args, kwargs, options)
        out.append(dict(lever=f"rollout with lstm_unroll={k}", envs=num_envs, median_s=median,
                        steps_per_s=num_envs * SEQ_LEN / median, compile_s=compile_s))
    return out


def update_lstm_unroll(num_envs: int, options: common.Options, unrolls=(1, 2, 4, 8)) -> list[dict]:
    out = []
    for k in unrolls:
        with _lstm_unrolled(k):
            jitted, args, kwargs, *_ = update_bench.build_jax(num_envs)
            median, compile_s = _time(common.fresh_jit(jitted, kwargs), args, kwargs, options)  # patched layer
        out.append(dict(lever=f"update lstm_unroll={k}", envs=num_envs, median_s=median,
                        samples_per_s=num_envs * SEQ_LEN / median, compile_s=compile_s))
    return out


# XLA CPU compile options tried on the update; each keeps float32 maths (none enables fast math).
XLA_CPU_OPTIONS: dict[str, dict[str, object]] = {
    "oneDNN dots": {"xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "XNNPACK dots": {"xla_cpu_experimental_xnn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "dots out of YNNPACK": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"},
    "region-analysis copy insertion": {"xla_cpu_copy_insertion_use_region_analysis": True},
}


def _time_major_lstm_layer(x, hc, kernel_ih, kernel_hh, bias_ih, bias_hh, unroll=1, matmul_dtype=None):
    """``lstm._lstm_layer`` for ``x [T, B, in]``: the same maths with no axis moves around the recurrence."""
    mm = x.dtype if matmul_dtype is None else matmul_dtype
    input_gates = lstm_mod.matmul(x, kernel_ih, mm) + bias_ih
    h0, c0 = hc[0].astype(x.dtype), hc[1].astype(x.dtype)
    ys, h_t, c_t = lstm_mod._recurrence(kernel_hh, bias_hh, input_gates, h0, c0, np.dtype(mm).name, unroll)
    return ys, (h_t, c_t)


@contextlib.contextmanager
def _time_major_update():
    """Patch, in this process only, so that ``ppo.update`` runs the network on the trajectory's own ``[T, E]``
    layout: the batch keeps it (GAE still runs per env, its outputs are moved back), the LSTM layer takes
    ``[T, E, in]`` as is, and the carry check looks at the carry's [L, H] only. Single-minibatch only
    (``select_minibatch`` picks envs on the first axis)."""
    original = (ppo_mod.prepare_batch, lstm_mod._lstm_layer, policy_mod._check_carry)
    prepare, _, check_carry = original

    def time_major_batch(trajectory, config):
        batch, advantages = prepare(trajectory, config)
        swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
        batch = batch.replace(
            features=trajectory.features, blueprint_indices=trajectory.blueprint_indices,
            actions=trajectory.actions, log_probs=trajectory.log_probs, masks=trajectory.masks,
            values=trajectory.value, returns=swap(batch.returns), advantages=swap(batch.advantages),
            valid=trajectory.valid)
        return batch, swap(advantages)

    ppo_mod.prepare_batch = time_major_batch
    lstm_mod._lstm_layer = _time_major_lstm_layer
    # evaluate_actions checks the carry against the inputs' axes before time, which are now [T]: check [L, H] only.
    policy_mod._check_carry = lambda config, carry, lead: check_carry(config, carry, np.shape(carry.h)[:-2])
    jax.clear_caches()
    try:
        yield
    finally:
        ppo_mod.prepare_batch, lstm_mod._lstm_layer, policy_mod._check_carry = original
        jax.clear_caches()


def _max_abs_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in pairs if np.asarray(x).dtype.kind == "f")


def update_variants(num_envs: int, options: common.Options, rounds: int = 6) -> list[dict]:
    """The default update against each XLA option set and the time-major network, in alternating rounds."""
    jitted, args, kwargs, *_ = update_bench.build_jax(num_envs)
    lowered = common.fresh_jit(jitted, kwargs).lower(*args, **kwargs)
    variants = {"default": lowered.compile()}
    for name, flags in XLA_CPU_OPTIONS.items():
        variants[name] = lowered.compile(compiler_options=flags)
    with _time_major_update():
        variants["time-major network"] = common.fresh_jit(jitted, kwargs).lower(*args, **kwargs).compile()
    reference = jax.device_get(variants["default"](*args))
    diffs = {name: _max_abs_diff(reference, jax.device_get(fn(*args))) for name, fn in variants.items()}
    walls = {name: [] for name in variants}
    faults = {name: [] for name in variants}
    system = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:  # alternate the order so no variant always goes first
            time.sleep(SETTLE_S)
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            jax.block_until_ready(variants[name](*args))
            walls[name].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
            faults[name].append(after.ru_minflt - before.ru_minflt)
            system[name].append(after.ru_stime - before.ru_stime)
    base = statistics.median(walls["default"])
    return [dict(lever=f"update: {name}", envs=num_envs, rounds=rounds, median_s=statistics.median(walls[name]),
                 min_s=min(walls[name]), default_over_this=base / statistics.median(walls[name]),
                 max_abs_diff_vs_default=diffs[name], minor_faults_per_call=statistics.median(faults[name]),
                 system_s_per_call=statistics.median(system[name])) for name in names]


def breakdown(num_envs: int, options: common.Options) -> list[dict]:
    """Trunk only vs full get_action, both in a 150-step scan with the carry threaded."""
    _, args, kwargs, config, params = rollout_bench.build_jax(num_envs)
    params, carry, features, bp, masks, key = args
    net = network_mod.FactoredRecurrentActorCritic(config)

    @jax.jit
    def trunk_scan(params, carry, features, bp):
        def step(carry, xs):
            f, b = xs
            out = net.apply({"params": params}, f[:, None], b[:, None], carry, method=net.trunk)
            return out.carry, out.logits.map(lambda x: x[:, 0])

        return jax.lax.scan(step, carry, (features, bp))

    def feature_lstm_step(params, carry, f, b):
        def body(module, f, b, carry):
            emb, _ = module.blueprint_embedding(b)
            x = jnp.concatenate([f, emb.reshape(*emb.shape[:-2], -1)], axis=-1)
            y, new = module.lstm(module.feature_net(x), carry)
            return new, module.lstm_ln(y)

        new, y = net.apply({"params": params}, f[:, None], b[:, None], carry, method=body)
        return new, y[:, 0]

    @jax.jit
    def feature_lstm_scan(params, carry, features, bp):
        """Feature net + LSTM only: the part of the step that no head fusion can touch."""
        return jax.lax.scan(lambda c, xs: feature_lstm_step(params, c, *xs), carry, (features, bp))

    names = [f"{h}_head" for h in HEAD_NAMES]

    @jax.jit
    def fused_trunk_scan(params, carry, features, bp):
        """The trunk with the eight heads' first layers as ONE matmul (weights concatenated, same function)."""
        w1 = jnp.concatenate([params[n]["l0"]["kernel"] for n in names], axis=1)
        b1 = jnp.concatenate([params[n]["l0"]["bias"] for n in names])
        widths = [params[n]["l0"]["kernel"].shape[1] for n in names]
        splits = list(itertools.accumulate(widths))[:-1]

        def step(carry, xs):
            f, b = xs
            new, y = feature_lstm_step(params, carry, f, b)
            hidden = jax.nn.relu(y @ w1 + b1)
            logits = {}
            for n, part in zip(names, jnp.split(hidden, splits, axis=-1)):
                layers = sorted(params[n])  # l0, l2[, l4]
                for layer in layers[1:]:
                    part = part @ params[n][layer]["kernel"] + params[n][layer]["bias"]
                    if layer != layers[-1]:
                        part = jax.nn.relu(part)
                logits[n] = part
            return new, logits

        return jax.lax.scan(step, carry, (features, bp))

    full, _ = _time(rollout_bench.policy_scan, args, kwargs, options)
    trunk, _ = _time(trunk_scan, (params, carry, features, bp), {}, options)
    core, _ = _time(feature_lstm_scan, (params, carry, features, bp), {}, options)
    fused, _ = _time(fused_trunk_scan, (params, carry, features, bp), {}, options)
    per_step = lambda s: s / SEQ_LEN * 1e6  # noqa: E731
    return [
        dict(lever="breakdown: full get_action step", envs=num_envs, us_per_step=per_step(full)),
        dict(lever="breakdown: trunk (feature net + LSTM + 9 heads)", envs=num_envs, us_per_step=per_step(trunk)),
        dict(lever="breakdown: feature net + LSTM + LN only", envs=num_envs, us_per_step=per_step(core)),
        dict(lever="breakdown: heads = trunk - core", envs=num_envs, us_per_step=per_step(trunk - core)),
        dict(lever="fused heads: trunk with one first-layer matmul for all heads", envs=num_envs,
             us_per_step=per_step(fused), vs_separate_heads=trunk / fused),
        dict(lever="breakdown: masking + sampling + log-probs + Q = full - trunk", envs=num_envs,
             us_per_step=per_step(full - trunk)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.levers")
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--only", default="breakdown,rollout_unroll,update_lstm_unroll",
                        help="comma-separated experiments: breakdown, rollout_unroll, rollout_lstm_unroll, "
                             "update_lstm_unroll, update_variants")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of update_variants")
    args = parser.parse_args()
    options = common.Options(warmup=1, reps=5, min_reps=3, budget_s=10.0)
    experiments = {
        "breakdown": breakdown,
        "rollout_unroll": rollout_unroll,
        "rollout_lstm_unroll": rollout_lstm_unroll,
        "update_lstm_unroll": update_lstm_unroll,
        "update_variants": functools.partial(update_variants, rounds=args.rounds),
    }
    unknown = [name for name in args.only.split(",") if name not in experiments]
    if unknown:
        parser.error(f"--only: unknown experiment(s) {unknown}; choose from {', '.join(experiments)}")
    print(f"# host: {common.host_info()}", flush=True)
    for name in args.only.split(","):
        for row in experiments[name](args.envs, options):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
