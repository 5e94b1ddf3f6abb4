"""rollout: the policy acting for T = 150 steps (sampling every head under its masks, LSTM state carried).

Both sides consume the same precomputed per-step inputs ``[T, E, ...]`` (features, blueprint indices and env masks
from random valid observations, computed once outside the timed region), so this isolates the policy step:
esper_jax runs ``policy.get_action`` inside one ``lax.scan`` over the 150 steps (one compiled call per rollout);
the torch reference calls ``get_action`` once per step from Python under ``torch.inference_mode``, with upstream's
mask/logit validation on, as upstream's collection loop does. Env stepping is not included (see ``train``).

The torch loop's cost per step does not depend on the step index, so at large env counts (where one rollout of
150 steps would take minutes on a CPU) it is timed over fewer steps and reported per env-step; the row's ``seq_len``
says how many steps were timed.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import jax
import numpy as np

from bench import common, fixtures
from bench.common import TORCH, Measurement, Options
from esper_jax import policy
from esper_jax.contracts import HEAD_NAMES

NAME = "rollout"
ENVS = (4, 64, 1024, 4096)
SEQ_LEN = fixtures.SEQ_LEN
# Torch steps timed per size: the full 150 where a rollout takes seconds, fewer where it would take minutes.
TORCH_STEPS = {4: 150, 64: 150, 1024: 30, 4096: 10}
QUICK_TORCH_STEPS = 30


@functools.partial(jax.jit, static_argnames=("config", "unroll"))
def policy_scan(params, carry, features, blueprint_indices, masks, key, *, config, unroll: int = 1):
    """T policy steps in one ``lax.scan``: returns the final carry and per-step actions, log-probs and values."""
    keys = jax.random.split(key, features.shape[0])
    params = policy.cast_kernels(params, config)  # as rollout.collect does: the scan reads the matmul-dtype copy

    def step(carry, xs):
        feats, bp, step_masks, step_key = xs
        out = policy.get_action(params, config, carry, feats, bp, step_masks, step_key, validate=False)
        return out.carry, (out.actions, out.log_probs, out.value)

    return jax.lax.scan(step, carry, (features, blueprint_indices, masks, keys), unroll=unroll)


def build_jax(num_envs: int, num_steps: int = SEQ_LEN, torch_net: Any = None, matmul_dtype: str | None = None):
    """(jitted fn, args, kwargs, config, params) for one rollout of ``num_envs`` envs."""
    config = fixtures.network_config(matmul_dtype=matmul_dtype)
    params = fixtures.jax_params(config, torch_net)
    features, bp, masks = fixtures.step_inputs(num_envs, num_steps)
    carry = policy.initial_carry(config, (num_envs,))
    args = (params, carry, features, bp, masks, jax.random.PRNGKey(0))
    return policy_scan, args, {"config": config}, config, params


def measure_jax(
    num_envs: int, options: Options, torch_net: Any = None, unroll: int = 1, matmul_dtype: str | None = None
) -> Measurement:
    jitted, args, kwargs, config, params = build_jax(num_envs, torch_net=torch_net, matmul_dtype=matmul_dtype)
    bf16 = matmul_dtype == fixtures.BF16
    return common.jax_row(
        NAME,
        jitted,
        args,
        options,
        static=dict(kwargs, unroll=unroll),
        label=("rollout", num_envs) if unroll == 1 and not bf16 else None,
        **fixtures.jax_variant(matmul_dtype),
        work=num_envs * SEQ_LEN,
        unit="env-step",
        envs=num_envs,
        slots=config.num_slots,
        seq_len=SEQ_LEN,
        note=f"lax.scan of get_action, precomputed per-step inputs, {fixtures.describe(config, params)}"
        + (f", unroll={unroll}" if unroll != 1 else "")
        + (", bf16 matmuls (kernels cast once before the scan)" if bf16 else ""),
    )


def measure_torch(torch: Any, torch_net: Any, num_envs: int, options: Options) -> Measurement:
    num_steps = min(TORCH_STEPS.get(num_envs, 10), QUICK_TORCH_STEPS if options.quick else SEQ_LEN)
    config = fixtures.network_config()
    features, bp, masks = fixtures.step_inputs(num_envs, num_steps)
    device = next(torch_net.parameters()).device
    states = torch.as_tensor(np.array(features), device=device)  # np.array: a writable copy for torch
    indices = torch.as_tensor(np.array(bp), device=device).long()
    step_masks = {h: torch.as_tensor(np.array(getattr(masks, h)), device=device) for h in HEAD_NAMES}
    torch_net.eval()

    def call():
        hidden = torch_net.get_initial_hidden(num_envs, device)
        buffer = []
        with torch.inference_mode():
            for t in range(num_steps):
                result = torch_net.get_action(
                    states[t], indices[t], hidden, **{f"{h}_mask": step_masks[h][t] for h in HEAD_NAMES}
                )
                hidden = result.hidden
                buffer.append((result.actions, result.log_probs, result.values))
        return buffer

    timing = common.time_torch(call, options, torch)
    return common.measured(
        NAME,
        TORCH,
        timing,
        work=num_envs * num_steps,
        unit="env-step",
        device=common.torch_device_name(torch),
        matmul_precision=common.torch_matmul_precision(torch),
        envs=num_envs,
        slots=config.num_slots,
        seq_len=num_steps,
        note="get_action once per step from Python, inference_mode, validation on"
        + ("" if num_steps == SEQ_LEN else f"; {num_steps} of {SEQ_LEN} steps timed (per-step cost is constant)"),
    )


def run(options: Options) -> list[Measurement]:
    torch = common.setup_torch()
    envs, dropped = common.within(ENVS[:1] if options.quick else ENVS, options.env_cap(NAME))
    torch_net = fixtures.torch_network(torch, fixtures.network_config()) if torch is not None else None
    rows: list[Measurement] = []
    for num_envs in envs:
        jax_row = measure_jax(num_envs, options, torch_net)
        bf16_row = measure_jax(num_envs, options, torch_net, matmul_dtype=fixtures.BF16)
        if torch is None:
            torch_row = common.skipped(NAME, TORCH, "torch is not installed", envs=num_envs)
        else:
            torch_row = measure_torch(torch, torch_net, num_envs, options)
            common.pair_ratio(jax_row, torch_row)
            common.pair_ratio(bf16_row, torch_row)
        rows += [common.emit(jax_row), common.emit(bf16_row), common.emit(torch_row)]
    for num_envs in dropped:
        rows.append(common.emit(common.skipped(NAME, "both", f"envs > cap {options.env_cap(NAME)} (--max-envs/--cap)", envs=num_envs)))
    return rows


if __name__ == "__main__":
    from bench.__main__ import main

    main([*sys.argv[1:], "--only", NAME])
