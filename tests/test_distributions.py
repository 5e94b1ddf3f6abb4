"""Masked categorical (docs/policy-and-ppo.md#distributions): fill value, exact zeros for single-valid rows, normalised
entropy, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax import distributions as D
from esper_jax.contracts import HEAD_NAMES, MASKED_LOGIT_VALUE, PerHead


def _rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def test_mask_fill_in_own_dtype_never_inf():
    mask = jnp.array([True, False, True])
    for dtype, expected in ((jnp.float32, -1e4), (jnp.float16, -1e4), (jnp.bfloat16, -9984.0)):
        out = D.mask_logits(jnp.array([0.5, 2.0, -1.0], dtype), mask)
        assert out.dtype == dtype
        assert float(out[1]) == expected
        assert bool(jnp.all(jnp.isfinite(out)))
        probs = jax.nn.softmax(out.astype(jnp.float32))
        assert float(probs[1]) == 0.0


def test_single_valid_row_gives_exact_zero_log_prob_and_entropy():
    logits = jnp.asarray(_rand((5, 6)) * 5)
    mask = jnp.zeros((5, 6), bool).at[jnp.arange(5), jnp.array([0, 3, 5, 2, 1])].set(True)
    action = jnp.array([0, 3, 5, 2, 1])
    lp = D.log_prob(logits, mask, action)
    ent = D.entropy(logits, mask)
    assert np.all(np.asarray(lp) == 0.0)
    assert np.all(np.asarray(ent) == 0.0)


def test_log_prob_matches_reference_math_and_masked_action_is_about_minus_1e4():
    logits = _rand((4, 5), seed=1).astype(np.float64)
    mask = np.array([[1, 1, 0, 1, 0]] * 4, bool)
    masked = np.where(mask, logits, MASKED_LOGIT_VALUE)
    ref = masked - np.log(np.exp(masked - masked.max(-1, keepdims=True)).sum(-1, keepdims=True)) - masked.max(-1, keepdims=True)
    action = np.array([0, 1, 3, 2])
    lp = np.asarray(D.log_prob(jnp.asarray(logits, jnp.float32), jnp.asarray(mask), jnp.asarray(action)))
    np.testing.assert_allclose(lp[:3], ref[np.arange(3), action[:3]], atol=1e-5)
    assert -10010 < lp[3] < -9990


def test_entropy_uniform_is_one_and_masked_entries_contribute_zero():
    logits = jnp.zeros((2, 4))
    mask = jnp.array([[True, True, True, False], [True, True, True, True]])
    np.testing.assert_allclose(np.asarray(D.entropy(logits, mask)), [1.0, 1.0], atol=1e-6)
    # Changing a masked logit does not move the entropy by a single bit.
    logits2 = logits.at[0, 3].set(7.5)
    assert np.asarray(D.entropy(logits2, mask))[0] == np.asarray(D.entropy(logits, mask))[0]


def test_entropy_in_unit_interval_and_matches_formula():
    logits = _rand((64, 7), seed=2) * 3
    rng = np.random.default_rng(3)
    mask = rng.random((64, 7)) < 0.6
    mask[np.arange(64), rng.integers(0, 7, 64)] = True
    ent = np.asarray(D.entropy(jnp.asarray(logits), jnp.asarray(mask)))
    assert np.all(ent >= 0) and np.all(ent <= 1 + 1e-6)
    z = np.where(mask, logits.astype(np.float64), -np.inf)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    h = -np.where(mask, p * np.log(np.where(mask, p, 1.0)), 0.0).sum(-1)
    n = mask.sum(-1)
    expected = np.where(n == 1, 0.0, h / np.log(np.maximum(n, 2)))
    np.testing.assert_allclose(ent, expected, atol=1e-5)


def test_empty_row_is_finite_in_jit_and_flagged():
    logits = jnp.asarray(_rand((3, 4), seed=4))
    mask = jnp.array([[False] * 4, [True, False, False, True], [False] * 4])

    @jax.jit
    def f(key, logits, mask):
        return (D.log_prob(logits, mask, jnp.zeros(3, jnp.int32)), D.entropy(logits, mask),
                D.sample(key, logits, mask), D.empty_rows(mask))

    lp, ent, s, empty = f(jax.random.key(0), logits, mask)
    assert np.all(np.isfinite(lp)) and np.all(np.isfinite(ent))
    assert np.asarray(empty).tolist() == [True, False, True]
    assert float(ent[0]) == 0.0
    np.testing.assert_allclose(float(lp[0]), -math.log(4), atol=2e-3)  # uniform over all n, as upstream unvalidated
    assert int(s[1]) in (0, 3)


def test_sample_respects_mask_and_frequencies():
    logits = jnp.log(jnp.array([0.5, 0.3, 0.2, 0.9]))
    mask = jnp.array([True, True, True, False])
    draws = D.sample(jax.random.key(7), jnp.broadcast_to(logits, (20000, 4)), jnp.broadcast_to(mask, (20000, 4)))
    counts = np.bincount(np.asarray(draws), minlength=4) / 20000
    assert counts[3] == 0
    np.testing.assert_allclose(counts[:3], [0.5, 0.3, 0.2], atol=0.02)
    assert draws.dtype == jnp.int32


def test_mode_first_index_on_ties_and_ignores_masked():
    logits = jnp.array([[1.0, 3.0, 3.0, 0.0], [5.0, 1.0, 1.0, 0.0]])
    mask = jnp.array([[True, True, True, True], [False, True, True, True]])
    assert np.asarray(D.mode(logits, mask)).tolist() == [1, 1]


def test_shape_polymorphic_leading_axes():
    logits = jnp.asarray(_rand((2, 3, 5, 4), seed=5))
    mask = jnp.ones((2, 3, 5, 4), bool)
    assert D.log_prob(logits, mask, jnp.zeros((2, 3, 5), jnp.int32)).shape == (2, 3, 5)
    assert D.entropy(logits, mask).shape == (2, 3, 5)
    assert D.sample(jax.random.key(0), logits, mask).shape == (2, 3, 5)


def test_check_masks_raises_naming_head_and_rows():
    masks = {h: np.ones((4, 3), bool) for h in HEAD_NAMES}
    D.check_masks(PerHead.from_dict(masks))
    masks["slot"] = masks["slot"].copy()
    masks["slot"][[1, 2]] = False
    with pytest.raises(D.InvalidStateMachineError, match=r"'slot'.*2 of 4"):
        D.check_masks(PerHead.from_dict(masks))
    assert issubclass(D.InvalidStateMachineError, RuntimeError)


def test_check_masks_skips_tracers():
    @jax.jit
    def f(m):
        D.check_masks(PerHead(*([m] * 8)))
        return D.empty_rows(m)

    assert bool(f(jnp.zeros((1, 3), bool))[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_logits_nonfinite(bad):
    logits = np.zeros((2, 3), np.float32)
    logits[1, 2] = bad
    with pytest.raises(ValueError, match="inf/nan") as info:
        D.check_logits(logits, "op")
    assert "network instability" in str(info.value)
    assert "nan_count" in str(info.value) and "inf_count" in str(info.value)
    assert bool(D.nonfinite_rows(jnp.asarray(logits))[1])
    D.check_logits(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_finite(dtype):
    logits = jnp.asarray(_rand((8, 5), seed=6), dtype)
    mask = jnp.asarray(np.random.default_rng(0).random((8, 5)) < 0.7).at[:, 0].set(True)
    assert bool(jnp.all(jnp.isfinite(D.entropy(logits, mask))))
    assert bool(jnp.all(jnp.isfinite(D.log_prob(logits, mask, jnp.zeros(8, jnp.int32)))))
