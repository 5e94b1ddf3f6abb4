"""FactoredRecurrentActorCritic (docs/policy-and-ppo.md#network): parameter count, init scheme, shapes, embedding, input
checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax import policy as P
from esper_jax.contracts import HEAD_NAMES, feature_size, head_sizes
from esper_jax.network import FactoredRecurrentActorCritic, NetworkConfig, param_count
from tests.conftest import NET_3_SLOTS as SMALL


def _param_shapes(config):
    return jax.eval_shape(lambda k: P.init(k, config), jax.random.key(0))


@pytest.mark.parametrize(
    "num_slots, expected", [(1, 3_589_984), (2, 3_607_649), (3, 3_625_314), (5, 3_660_644), (25, 4_013_944)]
)
def test_param_count_matches_upstream(num_slots, expected):
    shapes = _param_shapes(NetworkConfig(num_slots=num_slots))
    assert param_count(shapes) == expected == 3_572_319 + 17_665 * num_slots


@pytest.fixture(scope="module")
def full_params():
    return P.init(jax.random.key(1), NetworkConfig(num_slots=3))


def test_param_count_default_is_3625314_when_materialised(full_params):
    assert param_count(full_params) == 3_625_314
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(full_params))


def test_init_scheme(full_params):
    p = full_params
    h = 512
    for name in ("bias_ih_l0", "bias_hh_l0"):
        b = np.asarray(p["lstm"][name])
        assert np.all(b[h : 2 * h] == 1.0) and np.all(b[:h] == 0) and np.all(b[2 * h :] == 0)
    effective = np.asarray(p["lstm"]["bias_ih_l0"]) + np.asarray(p["lstm"]["bias_hh_l0"])
    assert np.all(effective[h : 2 * h] == 2.0)
    # Orthogonal over the whole [in, 4H] matrix: rows orthonormal (torch: columns of [4H, in]).
    for name in ("kernel_ih_l0", "kernel_hh_l0"):
        k = np.asarray(p["lstm"][name], np.float64)
        np.testing.assert_allclose(k @ k.T, np.eye(k.shape[0]), atol=1e-4)

    def gain(kernel):
        k = np.asarray(kernel, np.float64)
        small = k.T @ k if k.shape[0] >= k.shape[1] else k @ k.T
        return math.sqrt(np.mean(np.diag(small)))

    assert gain(p["feature_net"]["l0"]["kernel"]) == pytest.approx(math.sqrt(2), rel=1e-4)
    assert gain(p["blueprint_head"]["l2"]["kernel"]) == pytest.approx(math.sqrt(2), rel=1e-4)
    for head in HEAD_NAMES:
        last = "l4" if head == "blueprint" else "l2"
        assert gain(p[f"{head}_head"][last]["kernel"]) == pytest.approx(0.01, rel=1e-4)
        assert np.all(np.asarray(p[f"{head}_head"][last]["bias"]) == 0)
    assert gain(p["value_head"]["l2"]["kernel"]) == pytest.approx(1.0, rel=1e-4)
    assert gain(p["value_head"]["l0"]["kernel"]) == pytest.approx(math.sqrt(2), rel=1e-4)
    emb = np.asarray(p["blueprint_embedding"]["embedding"])
    assert emb.shape == (14, 4) and 0.01 < emb.std() < 0.03
    assert np.all(np.asarray(p["lstm_ln"]["scale"]) == 1) and np.all(np.asarray(p["feature_net"]["l1"]["bias"]) == 0)


def _trunk_eager(params, config, features, indices, carry):
    net = FactoredRecurrentActorCritic(config)
    return net.apply({"params": params}, features, indices, carry, method=net.trunk)


_trunk = jax.jit(_trunk_eager, static_argnames=("config",))


@pytest.fixture(scope="module")
def small_params():
    return P.init(jax.random.key(2), SMALL)


def test_shapes_and_dtypes(small_params):
    cfg = SMALL
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, cfg.state_dim))
    idx = jnp.full((2, 5, 7, 3), -1, jnp.int32)
    out = _trunk(small_params, cfg, x, idx, P.initial_carry(cfg, (2, 5)))
    sizes = head_sizes(3)
    for head in HEAD_NAMES:
        assert getattr(out.logits, head).shape == (2, 5, 7, sizes[head])
        assert getattr(out.logits, head).dtype == jnp.float32
    assert out.lstm_out.shape == (2, 5, 7, 64)
    assert out.carry.h.shape == (2, 5, 1, 64) and out.carry.c.shape == (2, 5, 1, 64)
    assert out.index_error.shape == (2, 5, 7) and not bool(out.index_error.any())
    # LayerNorm on the output sequence, not on the carried state.
    np.testing.assert_allclose(np.asarray(out.lstm_out.mean(-1)), 0, atol=1e-5)
    assert np.asarray(out.lstm_out[:, :, -1]).tolist() != np.asarray(out.carry.h[:, :, 0]).tolist()


def test_carry_threading_equals_one_long_sequence(small_params):
    cfg = SMALL
    x = jax.random.normal(jax.random.key(1), (3, 10, cfg.state_dim))
    idx = jax.random.randint(jax.random.key(2), (3, 10, 3), -1, 13)
    carry = P.initial_carry(cfg, (3,))
    whole = _trunk(small_params, cfg, x, idx, carry)
    first = _trunk(small_params, cfg, x[:, :4], idx[:, :4], carry)
    second = _trunk(small_params, cfg, x[:, 4:], idx[:, 4:], first.carry)
    np.testing.assert_allclose(np.asarray(second.lstm_out), np.asarray(whole.lstm_out[:, 4:]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(second.carry.c), np.asarray(whole.carry.c), atol=1e-5)
    assert not np.allclose(np.asarray(first.carry.h), 0)


def test_multi_layer_lstm_shapes():
    cfg = NetworkConfig(num_slots=2, feature_dim=32, hidden_dim=16, lstm_layers=2)
    params = P.init(jax.random.key(0), cfg)
    assert params["lstm"]["kernel_ih_l1"].shape == (16, 64)
    out = _trunk(params, cfg, jnp.ones((4, 3, cfg.state_dim)), jnp.zeros((4, 3, 2), jnp.int32), P.initial_carry(cfg, (4,)))
    assert out.carry.h.shape == (4, 2, 16)
    assert not np.allclose(np.asarray(out.carry.h[:, 0]), np.asarray(out.carry.h[:, 1]))


def test_negative_indices_use_null_row(small_params):
    cfg = SMALL
    x = jnp.zeros((5, 1, cfg.state_dim))
    idx = jnp.array([[[-1, -1, -1]], [[-7, -2, -100]], [[13, 13, 13]], [[-1, 13, -5]], [[0, 0, 0]]])
    out = _trunk(small_params, cfg, x, idx, P.initial_carry(cfg, (5,)))
    z = np.asarray(out.lstm_out)
    for row in (1, 2, 3):
        np.testing.assert_array_equal(z[row], z[0])
    assert not np.allclose(z[4], z[0])
    # The null row is a real (trainable, non-zero) row: zeroing it moves the output.
    p2 = jax.tree.map(lambda a: a, small_params)
    p2["blueprint_embedding"] = {"embedding": small_params["blueprint_embedding"]["embedding"].at[13].set(0.0)}
    z2 = np.asarray(_trunk(p2, cfg, x, idx, P.initial_carry(cfg, (5,))).lstm_out)
    assert not np.allclose(z2[0], z[0]) and np.allclose(z2[4], z[4])


def test_index_out_of_range_errors_when_concrete_and_flags_in_jit(small_params):
    cfg = SMALL
    x = jnp.zeros((2, 1, cfg.state_dim))
    idx = jnp.array([[[0, 14, 1]], [[0, 1, 2]]])
    with pytest.raises(ValueError, match="blueprint_indices.*< 14"):
        _trunk_eager(small_params, cfg, x, idx, P.initial_carry(cfg, (2,)))
    out = jax.jit(lambda p, x, i, c: _trunk(p, cfg, x, i, c))(small_params, x, idx, P.initial_carry(cfg, (2,)))
    assert np.asarray(out.index_error).tolist() == [[True], [False]]
    assert bool(jnp.all(jnp.isfinite(out.lstm_out)))


def test_wrong_shapes_name_the_field(small_params):
    cfg = SMALL
    carry = P.initial_carry(cfg, (2,))
    with pytest.raises(ValueError, match=r"features must have shape \[\.\.\., T, 114\]"):
        _trunk(small_params, cfg, jnp.zeros((2, 1, 113)), jnp.zeros((2, 1, 3), jnp.int32), carry)
    with pytest.raises(ValueError, match=r"blueprint_indices must have shape \[\.\.\., T, 3\]"):
        _trunk(small_params, cfg, jnp.zeros((2, 1, 114)), jnp.zeros((2, 1, 4), jnp.int32), carry)
    with pytest.raises(ValueError, match="blueprint_indices must be integers"):
        _trunk(small_params, cfg, jnp.zeros((2, 1, 114)), jnp.zeros((2, 1, 3)), carry)


def test_config_is_hashable_and_validated():
    assert hash(NetworkConfig(num_slots=3)) == hash(NetworkConfig(num_slots=3, dtype=np.float32))
    assert NetworkConfig(num_slots=5).state_dim == feature_size(5) == 174
    assert NetworkConfig(num_slots=3).input_dim == 126
    with pytest.raises(ValueError, match="num_slots"):
        NetworkConfig(num_slots=0)
    with pytest.raises(ValueError, match="hidden_dim"):
        NetworkConfig(num_slots=1, hidden_dim=63)


def test_float64_params_when_x64():
    with jax.enable_x64(True):
        cfg = NetworkConfig(num_slots=1, feature_dim=16, hidden_dim=8, dtype=jnp.float64)
        params = P.init(jax.random.key(0), cfg)
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))
        out = _trunk(params, cfg, jnp.ones((1, 2, cfg.state_dim)), jnp.zeros((1, 2, 1), jnp.int32), P.initial_carry(cfg, (1,)))
        assert out.logits.op.dtype == jnp.float64


def _scan_lstm(x, hc, kernel_ih, kernel_hh, bias_ih, bias_hh):
    """The LSTM layer as a plain lax.scan, differentiated by JAX's own autodiff (the custom backward's oracle)."""
    from esper_jax.lstm import _cell

    gates_x = jnp.moveaxis(x @ kernel_ih + bias_ih, -2, 0)

    def step(state, gx):
        h, c, _ = _cell(*state, gx, kernel_hh, bias_hh, x.dtype)
        return (h, c), h

    (h_t, c_t), ys = jax.lax.scan(step, hc, gates_x)
    return jnp.moveaxis(ys, 0, -2), (h_t, c_t)


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)], ids=["unbatched", "B3", "2x3"])
def test_lstm_custom_backward_equals_autodiff_of_the_scan(batch):
    """The recurrence's own VJP (kernel gradient as one matmul after the reverse loop) against JAX's autodiff of
    the same forward as a plain scan, in float64: every input's gradient, through outputs, h_T and c_T."""
    from esper_jax.lstm import _lstm_layer

    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        hidden, width, steps = 5, 7, 6

        def draw(*shape, scale=0.5):
            return jnp.asarray(rng.standard_normal(shape) * scale, jnp.float64)

        inputs = (
            draw(*batch, steps, width),
            (draw(*batch, hidden), draw(*batch, hidden)),
            draw(width, 4 * hidden),
            draw(hidden, 4 * hidden),
            draw(4 * hidden),
            draw(4 * hidden),
        )
        weights = (draw(*batch, steps, hidden, scale=1.0), draw(*batch, hidden), draw(*batch, hidden))

        def loss(layer):
            def f(*args):
                ys, (h_t, c_t) = layer(*args)
                return jnp.sum(ys * weights[0]) + jnp.sum(h_t * weights[1]) + jnp.sum(jnp.sin(c_t) * weights[2])

            return f

        argnums = tuple(range(6))
        ours = jax.grad(loss(_lstm_layer), argnums)(*inputs)
        oracle = jax.grad(loss(_scan_lstm), argnums)(*inputs)
        np.testing.assert_allclose(loss(_lstm_layer)(*inputs), loss(_scan_lstm)(*inputs), rtol=1e-14)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(oracle)):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-13)
