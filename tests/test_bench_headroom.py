"""bench.headroom's accounting: the FLOP count it divides by and the bf16 detection it reports (the timed
side-by-side itself is a measurement, run by hand: bench/README.md)."""

from __future__ import annotations

import jax
import numpy as np

from bench import headroom
from esper_jax import policy
from esper_jax.network import NetworkConfig, is_kernel


def test_update_flops_count_six_per_kernel_weight_per_sample():
    config = NetworkConfig(num_slots=1, feature_dim=16, hidden_dim=16)
    params = policy.init(jax.random.PRNGKey(0), config)
    kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(params) if is_kernel(path)]
    weights = sum(np.size(x) for x in kernels)
    # the LSTM's two kernels, the feature net, and every head layer; biases, LayerNorm and the embedding are not
    assert len(kernels) == 2 + 1 + sum(2 if h != "blueprint" else 3 for h in config.head_sizes) + 2
    assert headroom.update_flops(params, samples=600) == 6.0 * weights * 600


def test_cpu_features_are_read_not_assumed():
    flags = headroom.cpu_features()
    assert set(flags) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert all(isinstance(v, bool) for v in flags.values())
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        assert not any(flags.values())
        return
    first = next((line for line in text.splitlines() if line.startswith("flags")), "")
    assert flags["avx512_bf16"] == ("avx512_bf16" in first.split())


def test_gemm_shapes_cover_every_kernel_in_three_orientations():
    config = NetworkConfig(num_slots=1, feature_dim=16, hidden_dim=16)
    params = policy.init(jax.random.PRNGKey(0), config)
    shapes = headroom.gemm_shapes(params, rows=30)
    kernels = {np.shape(x) for path, x in jax.tree_util.tree_leaves_with_path(params) if is_kernel(path)}
    assert {(k, n) for kind, m, k, n in shapes if kind == "forward" and m == 30} == kernels
    assert {(n, k) for kind, m, k, n in shapes if kind == "input grad" and m == 30} == kernels
    assert {(m, n) for kind, m, k, n in shapes if kind == "weight grad" and k == 30} == kernels
    assert len(shapes) == len(set(shapes)) == 3 * len(kernels)


def test_time_gemms_reports_both_rates():
    import pytest

    torch = pytest.importorskip("torch")
    (row,) = headroom.time_gemms([("forward", 8, 4, 6)], torch, rounds=2, settle_s=0.0)
    assert (row["kind"], row["m"], row["k"], row["n"]) == ("forward", 8, 4, 6)
    assert row["xla_gflops"] > 0 and row["torch_gflops"] > 0
