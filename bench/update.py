"""update: one PPO update over [envs × 150] sequences (GAE, factored loss, full-sequence BPTT, Adam).

esper_jax: ``ppo.update`` (one jitted call: obs-normaliser update, GAE scan, forward + backward through the LSTM
over 150 steps, global-norm clip, Adam). torch reference: ``reference_torch.ppo.update`` (upstream: GAE in Python
loops over envs and steps, ``evaluate_actions`` with torch's fused LSTM (cuDNN on a GPU), backward,
``clip_grad_norm_``, ``Adam(foreach=False)``). Both run one full-batch gradient step (upstream's default).

The KL early stop is disabled on both sides (``target_kl=None``): the torch network changes with every timed
repetition and a stop would skip the backward pass, timing less work. A second torch row times only the gradient
step (``compute_loss`` + backward + clip + Adam, GAE done beforehand) to show how much of torch's time is its
Python GAE loop.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import jax

from bench import common, fixtures
from bench.common import TORCH, Measurement, Options

NAME = "update"
ENVS = (4, 64, 256)
SEQ_LEN = fixtures.SEQ_LEN


def _modules():
    """(esper_jax.ppo, reason) - the reason says why the benchmark cannot run when the import fails."""
    try:
        from esper_jax import ppo
    except ImportError as error:  # the PPO module is optional while it is being written
        return None, f"esper_jax.ppo unavailable: {error}"
    return ppo, ""


def build_jax(num_envs: int, torch_net: Any = None, num_steps: int = SEQ_LEN, matmul_dtype: str | None = None):
    """(jitted update, args, kwargs, network config, params) for one update on [num_envs × num_steps]."""
    ppo, reason = _modules()
    if ppo is None:
        raise ImportError(reason)
    from esper_jax import normalization

    config = fixtures.network_config(matmul_dtype=matmul_dtype)
    params = fixtures.jax_params(config, torch_net)
    ppo_config = ppo.PPOConfig(target_kl=None, compat=fixtures.COMPAT)
    state = ppo.TrainState(
        params=params,
        opt_state=ppo.make_optimizer(ppo_config).init(params),
        obs_stats=normalization.init(config.state_dim),
        train_steps=jax.numpy.zeros((), jax.numpy.int32),
    )
    trajectory = fixtures.update_buffer(config, num_envs, num_steps).trajectory()
    args = (state, trajectory, jax.random.PRNGKey(0))
    return ppo.update, args, {"config": ppo_config, "network_config": config}, config, params


def measure_jax(num_envs: int, options: Options, torch_net: Any = None, matmul_dtype: str | None = None) -> Measurement:
    jitted, args, kwargs, config, params = build_jax(num_envs, torch_net, matmul_dtype=matmul_dtype)
    bf16 = matmul_dtype == fixtures.BF16
    return common.jax_row(
        NAME,
        jitted,
        args,
        options,
        static=kwargs,
        label=None if bf16 else ("update", num_envs),
        **fixtures.jax_variant(matmul_dtype),
        work=num_envs * SEQ_LEN,
        unit="sample",
        envs=num_envs,
        slots=config.num_slots,
        seq_len=SEQ_LEN,
        note=f"ppo.update (GAE + fwd + bwd + Adam, 1 step), {fixtures.describe(config, params)}"
        + (", bf16 matmuls (float32 params and Adam)" if bf16 else ""),
    )


def torch_gradient_step(torch: Any, torch_net: Any, num_envs: int, optimizer: Any = None, autocast: Any = None):
    """torch's least work for the same update, as a no-argument callable: ``compute_loss`` + backward +
    ``clip_grad_norm_`` + Adam over the full [num_envs × SEQ_LEN] batch, GAE done beforehand. ``optimizer``: an Adam
    of ``reference_torch.ppo.make_optimizer`` to continue (default: a new one); ``autocast``: a torch dtype to run the
    forward under autocast (the bf16 rows)."""
    from reference_torch import ppo as ref_ppo

    device = next(torch_net.parameters()).device
    buf = fixtures.update_buffer(fixtures.network_config(), num_envs, SEQ_LEN)
    ref_config = ref_ppo.ReferenceConfig(target_kl=None)
    optimizer = ref_ppo.make_optimizer(torch_net, ref_config) if optimizer is None else optimizer
    prepared = ref_ppo.prepare_data(buf.torch_data(torch, device), buf.step_counts, ref_config)
    rows = list(range(num_envs))
    torch_net.train()

    def step() -> None:
        forward = contextlib.nullcontext() if autocast is None else torch.autocast(device.type, dtype=autocast)
        with forward:
            loss, _ = ref_ppo.compute_loss(torch_net, prepared, rows, ref_config)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(torch_net.parameters(), ref_config.max_grad_norm)
        optimizer.step()

    return step


def measure_torch(torch: Any, torch_net: Any, num_envs: int, options: Options) -> list[Measurement]:
    from reference_torch import ppo as ref_ppo

    config = fixtures.network_config()
    buf = fixtures.update_buffer(config, num_envs, SEQ_LEN)
    data = buf.torch_data(torch, next(torch_net.parameters()).device)
    step_counts = buf.step_counts
    ref_config = ref_ppo.ReferenceConfig(target_kl=None)
    optimizer = ref_ppo.make_optimizer(torch_net, ref_config)
    torch_net.train()

    full = common.time_torch(lambda: ref_ppo.update(torch_net, optimizer, data, step_counts, ref_config), options, torch)

    gradient_step = torch_gradient_step(torch, torch_net, num_envs, optimizer=optimizer)
    step = common.time_torch(gradient_step, options, torch)
    common_fields = dict(
        work=num_envs * SEQ_LEN,
        unit="sample",
        device=common.torch_device_name(torch),
        matmul_precision=common.torch_matmul_precision(torch),
        envs=num_envs,
        slots=config.num_slots,
        seq_len=SEQ_LEN,
    )
    return [
        common.measured(NAME, TORCH, full, note="reference_torch.ppo.update (Python GAE + fwd + bwd + Adam)", **common_fields),
        common.measured(
            NAME, f"{TORCH}_step", step, note="fwd + bwd + clip + Adam only (GAE precomputed)", **common_fields
        ),
    ]


def run(options: Options) -> list[Measurement]:
    ppo, reason = _modules()
    envs, dropped = common.within(ENVS[:1] if options.quick else ENVS, options.env_cap(NAME))
    if ppo is None:
        return [common.emit(common.skipped(NAME, "both", reason, envs=n)) for n in envs]
    torch = common.setup_torch()
    torch_net = fixtures.torch_network(torch, fixtures.network_config()) if torch is not None else None
    rows: list[Measurement] = []
    for num_envs in envs:
        # JAX params are copied from the torch net before torch trains it, so both start from the same weights.
        jax_row = measure_jax(num_envs, options, torch_net)
        # bf16 costs a second update compile (~15 s on a 2-core CPU), so --quick keeps to float32 here
        jax_rows = [jax_row] + ([] if options.quick else [measure_jax(num_envs, options, torch_net, fixtures.BF16)])
        if torch is None:
            torch_rows = [common.skipped(NAME, TORCH, "torch is not installed", envs=num_envs)]
        else:
            torch_rows = measure_torch(torch, torch_net, num_envs, options)
            for row in jax_rows:
                common.pair_ratio(row, torch_rows[0])
            step_row = torch_rows[1]
            if jax_row.throughput and step_row.throughput:
                step_row.note += f"; esper_jax is {jax_row.throughput / step_row.throughput:.2f}× this"
        rows += [common.emit(r) for r in jax_rows] + [common.emit(r) for r in torch_rows]
    for num_envs in dropped:
        rows.append(common.emit(common.skipped(NAME, "both", f"envs > cap {options.env_cap(NAME)} (--max-envs/--cap)", envs=num_envs)))
    return rows


if __name__ == "__main__":
    from bench.__main__ import main

    main([*sys.argv[1:], "--only", NAME])
