"""bfloat16 matmuls (``NetworkConfig.matmul_dtype``): config checks, the kernel cast for acting, agreement with
float32 within the bf16 band, and that a rollout's step loop reads the narrow kernels."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax import normalization, policy, rollout
from esper_jax.config import ConfigError, TrainingConfig, from_flat_dict
from esper_jax.env import make as make_env
from esper_jax.network import NetworkConfig, is_kernel
from esper_jax.testing import random_policy_batch
from tests.conftest import NET_3_SLOTS_WIDE as F32

BF16 = dataclasses.replace(F32, matmul_dtype="bfloat16")
# The bf16 band: bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3 per operand); through the feature
# net, 150 LSTM steps and two head layers the errors measured 0.3–1.4 % of the output scale. The band is 3 % of
# the scale: wide enough for bf16, far below what a dropped layer, a wrong cast or a swapped kernel would do.
BAND = 3e-2


@pytest.fixture(scope="module")
def params():
    p = policy.init(jax.random.PRNGKey(0), F32)
    # Policy heads start at gain 0.01 (logits ~1e-2); scaled up, the log-probs are O(1) and the band means something.
    def scale(path, leaf):
        names = [str(getattr(k, "key", k)) for k in path]
        return leaf * 50.0 if names[-2:] == ["l2", "kernel"] and names[0] != "value_head" else leaf

    return jax.tree_util.tree_map_with_path(scale, p)


def _batch(num_envs: int, num_steps: int):
    batch = random_policy_batch(np.random.default_rng(1), F32.num_slots, (num_envs, num_steps), compat="fixed")
    return (
        policy.initial_carry(F32, (num_envs,)),
        jnp.asarray(batch.features),
        jnp.asarray(batch.blueprint_indices),
        batch.actions.map(jnp.asarray),
        batch.masks.map(jnp.asarray),
    )


def test_config_normalises_and_rejects_bad_matmul_dtypes():
    assert np.dtype(F32.resolved_matmul_dtype) == np.float32 and np.dtype(BF16.resolved_matmul_dtype) == jnp.bfloat16
    assert NetworkConfig(num_slots=3, matmul_dtype=np.float32) == NetworkConfig(num_slots=3)
    assert np.dtype(NetworkConfig(num_slots=3, dtype=jnp.float64).resolved_matmul_dtype) == np.float64
    with pytest.raises(ValueError, match="matmul_dtype must be a float dtype.*int8"):
        NetworkConfig(num_slots=3, matmul_dtype="int8")
    with pytest.raises(ValueError, match="matmul_dtype must be a float dtype"):
        NetworkConfig(num_slots=3, matmul_dtype="bfloat17")
    with pytest.raises(ValueError, match="matmul_dtype .float64. must not be wider than dtype .float32."):
        NetworkConfig(num_slots=3, matmul_dtype="float64")
    assert np.dtype(from_flat_dict({"matmul_dtype": "bfloat16"}).network.resolved_matmul_dtype) == jnp.bfloat16
    assert np.dtype(TrainingConfig().network.resolved_matmul_dtype) == np.float32
    with pytest.raises(ConfigError, match="matmul_dtype"):
        from_flat_dict({"matmul_dtype": "float16"})


def test_cast_kernels_narrows_exactly_the_matmul_kernels(params):
    assert policy.cast_kernels(params, F32) is params
    cast = policy.cast_kernels(params, BF16)
    flat = jax.tree_util.tree_flatten_with_path(cast)[0]
    kernels = [(path, leaf) for path, leaf in flat if is_kernel(path)]
    others = [(path, leaf) for path, leaf in flat if not is_kernel(path)]
    # feature net 1 + LSTM 2 + heads (7 × 2 + blueprint 3 + value 2)
    assert len(kernels) == 1 + 2 + 7 * 2 + 3 + 2
    assert all(leaf.dtype == jnp.bfloat16 and leaf.ndim == 2 for _, leaf in kernels)
    assert all(leaf.dtype == jnp.float32 for _, leaf in others)  # biases, LayerNorm, embedding table
    assert any("embedding" in jax.tree_util.keystr(path) for path, _ in others)


def test_cast_kernels_computes_what_the_full_width_params_compute(params):
    """The network rounds kernels to bf16 itself, so acting with the pre-cast copy is bit-identical."""
    carry, features, indices, _, masks = _batch(4, 1)
    args = (carry, features[:, 0], indices[:, 0], masks.map(lambda m: m[:, 0]), jax.random.PRNGKey(3))
    full = policy.get_action(params, BF16, *args)
    cast = policy.get_action(policy.cast_kernels(params, BF16), BF16, *args)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(cast)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bf16_evaluation_stays_within_the_band_of_float32(params):
    carry, features, indices, actions, masks = _batch(4, 150)
    ref = policy.evaluate_actions(params, F32, carry, features, indices, actions, masks)
    low = policy.evaluate_actions(params, BF16, carry, features, indices, actions, masks)

    def gap(a, b) -> tuple[float, float]:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b))), max(1.0, float(np.max(np.abs(a))))

    report = {
        "log_prob": gap(np.stack(jax.tree.leaves(ref.log_probs)), np.stack(jax.tree.leaves(low.log_probs))),
        "entropy": gap(np.stack(jax.tree.leaves(ref.entropies)), np.stack(jax.tree.leaves(low.entropies))),
        "value": gap(ref.value, low.value),
        "h_T": gap(ref.carry.h, low.carry.h),
        "c_T": gap(ref.carry.c, low.carry.c),
    }
    print({k: f"{err:.2e} of scale {scale:.2f}" for k, (err, scale) in report.items()})
    for name, (err, scale) in report.items():
        assert err <= BAND * scale, f"{name}: bf16 differs from float32 by {err:.3e} (band {BAND * scale:.3e})"
    # and bf16 is really in effect: float32 and bf16 are not the same computation
    assert report["log_prob"][0] > 1e-5 and report["value"][0] > 1e-5


def _scan_operand_dtypes(jaxpr, length: int) -> list[tuple[tuple[int, ...], jnp.dtype]]:
    """Shapes and dtypes of the operands of the first scan of ``length`` steps, searched through nested jaxprs."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan" and eqn.params["length"] == length:
            return [(tuple(v.aval.shape), v.aval.dtype) for v in eqn.invars]
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr wraps its Jaxpr
                if hasattr(sub, "eqns"):
                    found = _scan_operand_dtypes(sub, length)
                    if found:
                        return found
    return []


def test_rollout_step_loop_reads_kernels_in_the_matmul_dtype():
    """The cast happens once before the step scan: the loop's operands hold the kernels in ``matmul_dtype``,
    and no full-width copy of the LSTM kernels goes in with them (that copy would be streamed every step)."""
    net = BF16
    env = make_env("sim")  # traced only (make_jaxpr), never compiled
    num_steps = 7
    params = policy.init(jax.random.PRNGKey(0), net)
    runner = rollout.init_runner(env, net, 2, jax.random.PRNGKey(1))
    stats = normalization.init(net.state_dim)
    config = rollout.RolloutConfig(num_steps=num_steps, compat="fixed")
    jaxpr = jax.make_jaxpr(
        lambda p, r, s, k: rollout.collect(env, p, r, s, k, network_config=net, config=config)
    )(params, runner, stats, jax.random.PRNGKey(2)).jaxpr
    operands = _scan_operand_dtypes(jaxpr, num_steps)
    assert operands, "no step scan found in rollout.collect"
    lstm_kernel = (net.hidden_dim, 4 * net.hidden_dim)  # kernel_ih and kernel_hh (feature_dim == hidden_dim)
    dtypes = [dtype for shape, dtype in operands if shape == lstm_kernel]
    assert dtypes == [np.dtype(jnp.bfloat16)] * 2, dtypes
