"""The host CNN's fast layers equal their plain definitions (issue 18: dense conv matrices on small maps, GroupNorm
reduced pixels-first, max-pool as strided maxima) in value and gradient, up to float rounding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax.env.host import cnn


@pytest.mark.parametrize(("hw", "c_in", "c_out", "k"), [(2, 32, 32, 3), (8, 1, 8, 3), (16, 8, 8, 3), (4, 16, 4, 1)])
def test_conv_forms_equal_im2col_in_value_and_gradient(hw, c_in, c_out, k):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, hw, hw, c_in))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, c_in, c_out)) / np.sqrt(k * k * c_in)
    np.testing.assert_allclose(cnn.conv(x, kernel), cnn.conv_im2col(x, kernel), rtol=1e-5, atol=1e-5)

    def loss(f):
        return lambda kern, x: jnp.sum(jnp.sin(f(x, kern)))

    fast = jax.jit(jax.grad(loss(cnn.conv), argnums=(0, 1)))(kernel, x)
    ref = jax.jit(jax.grad(loss(cnn.conv_im2col), argnums=(0, 1)))(kernel, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), fast, ref)


def test_dense_conv_matrix_is_used_only_where_it_is_small():
    assert cnn._dense_fits(2, 2, 32, 32) and cnn._dense_fits(8, 8, 1, 8)
    assert not cnn._dense_fits(32, 32, 3, 8) and not cnn._dense_fits(8, 8, 16, 16)


@pytest.mark.parametrize("hw", [2, 16])
def test_depthwise_conv_equals_its_definition(hw):
    x = jax.random.normal(jax.random.PRNGKey(2), (2, hw, hw, 16))
    kernel = jax.random.normal(jax.random.PRNGKey(3), (3, 3, 16))
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = sum(padded[:, dy:dy + hw, dx:dx + hw, :] * np.asarray(kernel)[dy, dx] for dy in range(3) for dx in range(3))
    np.testing.assert_allclose(cnn.depthwise_conv(x, kernel), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("c", "groups"), [(8, 8), (16, 1), (32, 2)])
def test_group_norm_equals_its_definition(c, groups):
    x = jax.random.normal(jax.random.PRNGKey(4), (3, 4, 4, c)) * 3.0 + 1.0
    scale = jax.random.normal(jax.random.PRNGKey(5), (c,))
    bias = jax.random.normal(jax.random.PRNGKey(6), (c,))
    g = np.asarray(x, np.float64).reshape(3, 4, 4, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    want = ((g - mean) / np.sqrt(var + 1e-5)).reshape(3, 4, 4, c) * np.asarray(scale) + np.asarray(bias)
    np.testing.assert_allclose(cnn.group_norm(x, groups, scale, bias, 1e-5), want, rtol=1e-4, atol=1e-5)


def test_max_pool_is_the_2x2_window_maximum():
    x = jax.random.normal(jax.random.PRNGKey(7), (2, 8, 6, 3))
    want = np.asarray(x).reshape(2, 4, 2, 3, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(cnn.max_pool(x), want)
