"""Bundle API (docs/policy-and-ppo.md#policy-functions): get_action / evaluate_actions / value / q_values semantics and
no retrace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax import policy as P
from esper_jax.contracts import HEAD_NAMES, GerminationStyle, LifecycleOp, PerHead
from esper_jax.distributions import InvalidStateMachineError
from tests.conftest import NET_3_SLOTS as CFG

E, T = 6, 5


@pytest.fixture(scope="module")
def params():
    p = P.init(jax.random.key(0), CFG)
    # Larger last-layer weights than the 0.01 init, so heads have distinct preferences (argmax is not a tie).
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x * 50.0 if any(getattr(k, "key", None) in ("l2", "l4") for k in path) and "value_head" not in str(path) else x, p
    )


def _inputs(seed, lead):
    rng = np.random.default_rng(seed)
    feats = jnp.asarray(rng.normal(size=(*lead, CFG.state_dim)).astype(np.float32))
    idx = jnp.asarray(rng.integers(-1, 13, size=(*lead, CFG.num_slots)))
    return feats, idx


def _random_masks(seed, lead):
    rng = np.random.default_rng(seed)
    out = {}
    for head, n in CFG.head_sizes.items():
        m = rng.random((*lead, n)) < 0.6
        first = rng.integers(0, n, size=lead)
        np.put_along_axis(m, first[..., None], True, axis=-1)
        if head == "style":
            # Real masks always allow SIGMOID_ADD; without it the env-masked canonical logit is -1e4 too and the
            # "free" style row becomes uniform (-ln 4), exactly as upstream's double masking does.
            m[..., int(GerminationStyle.SIGMOID_ADD)] = True
        out[head] = jnp.asarray(m)
    return PerHead.from_dict(out)


def test_get_action_shapes_dtypes_and_determinism(params):
    f, idx = _inputs(1, (E,))
    masks = _random_masks(2, (E,))
    carry = P.initial_carry(CFG, (E,))
    a = P.get_action(params, CFG, carry, f, idx, masks, jax.random.key(3), deterministic=True)
    b = P.get_action(params, CFG, carry, f, idx, masks, jax.random.key(99), deterministic=True)
    sizes = CFG.head_sizes
    for head in HEAD_NAMES:
        act = np.asarray(getattr(a.actions, head))
        assert act.shape == (E,) and act.dtype == np.int32
        np.testing.assert_array_equal(act, np.asarray(getattr(b.actions, head)))
        assert np.all((act >= 0) & (act < sizes[head]))
        # Deterministic = argmax of the masked logits and the chosen action is valid.
        assert np.all(np.asarray(getattr(masks, head))[np.arange(E), act] | (head == "style"))
        assert getattr(a.log_probs, head).shape == (E,)
        assert np.all(np.asarray(getattr(a.log_probs, head)) <= 0)
    assert a.value.shape == (E,) and a.op_logits.shape == (E, 6)
    assert a.carry.h.shape == (E, 1, 64)
    assert not np.any(np.asarray(a.mask_error)) and not np.any(np.asarray(a.index_error))
    # op_logits are masked with the env op mask.
    assert np.all(np.asarray(a.op_logits)[~np.asarray(masks.op)] == -1e4)


def test_stochastic_respects_masks_and_key(params):
    f, idx = _inputs(4, (64,))
    masks = _random_masks(5, (64,))
    carry = P.initial_carry(CFG, (64,))
    a = P.get_action(params, CFG, carry, f, idx, masks, jax.random.key(1))
    b = P.get_action(params, CFG, carry, f, idx, masks, jax.random.key(1))
    c = P.get_action(params, CFG, carry, f, idx, masks, jax.random.key(2))
    same = [np.array_equal(getattr(a.actions, h), getattr(b.actions, h)) for h in HEAD_NAMES]
    assert all(same)
    assert any(not np.array_equal(getattr(a.actions, h), getattr(c.actions, h)) for h in HEAD_NAMES)
    for head in HEAD_NAMES:
        if head == "style":
            continue
        act = np.asarray(getattr(a.actions, head))
        assert np.all(np.asarray(getattr(masks, head))[np.arange(64), act])
    # value is Q(s, sampled op)
    q = P.q_values(params, CFG, carry, f, idx)
    np.testing.assert_allclose(np.asarray(a.value), np.asarray(q)[np.arange(64), np.asarray(a.actions.op)], atol=1e-5)


def test_style_forced_to_sigmoid_add_unless_germinate_or_set_alpha(params):
    f, idx = _inputs(6, (E,))
    carry = P.initial_carry(CFG, (E,))
    for op in LifecycleOp:
        masks = P.all_valid_masks(CFG, (E,))
        masks = masks.replace(op=jnp.zeros((E, 6), bool).at[:, int(op)].set(True))
        out = P.get_action(params, CFG, carry, f, idx, masks, jax.random.key(int(op)))
        assert np.all(np.asarray(out.actions.op) == int(op))
        assert np.all(np.asarray(out.log_probs.op) == 0.0)
        style = np.asarray(out.actions.style)
        if op in (LifecycleOp.GERMINATE, LifecycleOp.SET_ALPHA_TARGET):
            assert not np.all(np.asarray(out.log_probs.style) == 0.0)
        else:
            assert np.all(style == int(GerminationStyle.SIGMOID_ADD))
            assert np.all(np.asarray(out.log_probs.style) == 0.0)


def test_deterministic_value_equals_q_values_at_argmax(params):
    f, idx = _inputs(7, (E,))
    masks = _random_masks(8, (E,))
    carry = P.initial_carry(CFG, (E,))
    out = P.get_action(params, CFG, carry, f, idx, masks, jax.random.key(0), deterministic=True)
    q = np.asarray(P.q_values(params, CFG, carry, f, idx))
    op = np.asarray(out.actions.op)
    np.testing.assert_array_equal(op, np.argmax(np.where(np.asarray(masks.op), np.asarray(out.op_logits), -np.inf), -1))
    np.testing.assert_allclose(np.asarray(out.value), q[np.arange(E), op], rtol=1e-6, atol=1e-6)
    v = P.value(params, CFG, carry, f, idx, out.actions.op)
    np.testing.assert_allclose(np.asarray(v), np.asarray(out.value), rtol=1e-6, atol=1e-6)
    assert q.shape == (E, 6) and len(np.unique(q[0])) > 1


def test_evaluate_actions_equals_stepping(params):
    f, idx = _inputs(9, (E, T))
    masks = _random_masks(10, (E, T))
    carry0 = P.initial_carry(CFG, (E,))
    carry = carry0
    steps = []
    for t in range(T):
        m = masks.map(lambda x: x[:, t])
        out = P.get_action(params, CFG, carry, f[:, t], idx[:, t], m, jax.random.key(t))
        steps.append(out)
        carry = out.carry
    actions = PerHead(**{h: jnp.stack([getattr(s.actions, h) for s in steps], 1) for h in HEAD_NAMES})
    ev = P.evaluate_actions(params, CFG, carry0, f, idx, actions, masks)
    for h in HEAD_NAMES:
        step_lp = np.stack([np.asarray(getattr(s.log_probs, h)) for s in steps], 1)
        np.testing.assert_allclose(np.asarray(getattr(ev.log_probs, h)), step_lp, atol=1e-5)
        ent = np.asarray(getattr(ev.entropies, h))
        assert ent.shape == (E, T) and np.all(ent >= 0) and np.all(ent <= 1 + 1e-6)
    np.testing.assert_allclose(np.asarray(ev.value), np.stack([np.asarray(s.value) for s in steps], 1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ev.carry.h), np.asarray(carry.h), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ev.carry.c), np.asarray(carry.c), atol=1e-5)
    # style on rows whose op is not GERMINATE/SET_ALPHA_TARGET is free: log-prob 0 and entropy 0
    ops = np.asarray(actions.op)
    free = (ops != 1) & (ops != 2)
    assert free.any()
    assert np.all(np.asarray(ev.log_probs.style)[free] == 0.0) and np.all(np.asarray(ev.entropies.style)[free] == 0.0)


def test_single_valid_rows_give_exact_zeros_in_evaluate(params):
    f, idx = _inputs(11, (2, 3))
    masks = P.all_valid_masks(CFG, (2, 3)).replace(tempo=jnp.zeros((2, 3, 3), bool).at[..., 1].set(True))
    actions = PerHead(**{h: jnp.ones((2, 3), jnp.int32) for h in HEAD_NAMES})
    ev = P.evaluate_actions(params, CFG, P.initial_carry(CFG, (2,)), f, idx, actions, masks)
    assert np.all(np.asarray(ev.log_probs.tempo) == 0.0) and np.all(np.asarray(ev.entropies.tempo) == 0.0)


def test_empty_mask_raises_outside_jit_and_flags_inside(params):
    f, idx = _inputs(12, (E,))
    carry = P.initial_carry(CFG, (E,))
    masks = P.all_valid_masks(CFG, (E,))
    bad = masks.replace(slot=masks.slot.at[2].set(False))
    with pytest.raises(InvalidStateMachineError, match=r"'slot'.*1 of 6"):
        P.get_action(params, CFG, carry, f, idx, bad, jax.random.key(0))
    bad_op = masks.replace(op=masks.op.at[0].set(False))
    with pytest.raises(InvalidStateMachineError, match="'op'"):
        P.get_action(params, CFG, carry, f, idx, bad_op, jax.random.key(0), deterministic=True)

    @jax.jit
    def inside(m):
        return P.get_action(params, CFG, carry, f, idx, m, jax.random.key(0))

    out = inside(bad)
    assert np.asarray(out.mask_error).tolist() == [False, False, True, False, False, False]
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(out) if np.issubdtype(np.asarray(x).dtype, np.floating))
    out = P.get_action(params, CFG, carry, f, idx, bad, jax.random.key(0), validate=False)
    assert bool(out.mask_error[2])
    # A style mask that is empty only matters when the chosen op makes style relevant (as upstream).
    wait_only = masks.replace(op=jnp.zeros((E, 6), bool).at[:, 0].set(True), style=jnp.zeros((E, 4), bool))
    P.get_action(params, CFG, carry, f, idx, wait_only, jax.random.key(0))
    with pytest.raises(InvalidStateMachineError, match="'style'"):
        P.get_action(params, CFG, carry, f, idx, wait_only.replace(op=jnp.zeros((E, 6), bool).at[:, 1].set(True)), jax.random.key(0))


def test_nonfinite_inputs_raise(params):
    f, idx = _inputs(13, (E,))
    f = f.at[1, 0].set(jnp.nan)
    carry, masks, key = P.initial_carry(CFG, (E,)), P.all_valid_masks(CFG, (E,)), jax.random.key(0)
    # NaN fed in is named as the input's, not blamed on the network
    with pytest.raises(ValueError, match=r"input features \(6, 114\) holds NaN/Inf in 1 of"):
        P.get_action(params, CFG, carry, f, idx, masks, key)
    with pytest.raises(ValueError, match=r"input carry\.c .* holds NaN/Inf"):
        P.get_action(params, CFG, carry.replace(c=carry.c.at[0].set(jnp.inf)), f.at[1, 0].set(0.0), idx, masks, key)
    # finite inputs through non-finite weights: that is the network's doing
    poisoned = jax.tree.map(lambda x: x * jnp.nan, params)
    with pytest.raises(ValueError, match="inf/nan.*6 of 6.*network instability"):
        P.get_action(poisoned, CFG, carry, f.at[1, 0].set(0.0), idx, masks, key)


def test_bad_inputs_name_the_field(params):
    f, idx = _inputs(14, (E,))
    carry = P.initial_carry(CFG, (E,))
    masks = P.all_valid_masks(CFG, (E,))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"features must have shape \[\.\.\., 114\]"):
        P.get_action(params, CFG, carry, f[:, :-1], idx, masks, key)
    with pytest.raises(ValueError, match=r"blueprint_indices must have shape \[\.\.\., 3\]"):
        P.get_action(params, CFG, carry, f, idx[:, :2], masks, key)
    with pytest.raises(ValueError, match=r"blueprint_indices must be < 14"):
        P.get_action(params, CFG, carry, f, idx.at[0, 0].set(14), masks, key)
    with pytest.raises(ValueError, match=r"masks\.slot must have shape \(6, 3\)"):
        P.get_action(params, CFG, carry, f, idx, masks.replace(slot=jnp.ones((E, 4), bool)), key)
    with pytest.raises(ValueError, match=r"masks\.op must be bool"):
        P.get_action(params, CFG, carry, f, idx, masks.replace(op=jnp.ones((E, 6), jnp.int32)), key)
    with pytest.raises(ValueError, match=r"carry\.h must have shape \(6, 1, 64\)"):
        P.get_action(params, CFG, P.initial_carry(CFG, (E + 1,)), f, idx, masks, key)
    fs, idxs = _inputs(15, (E, T))
    acts = PerHead(**{h: jnp.zeros((E, T), jnp.int32) for h in HEAD_NAMES})
    mseq = P.all_valid_masks(CFG, (E, T))
    with pytest.raises(ValueError, match=r"actions\.tempo must lie in \[0, 2\]"):
        P.evaluate_actions(params, CFG, carry, fs, idxs, acts.replace(tempo=acts.tempo.at[0, 0].set(3)), mseq)
    with pytest.raises(ValueError, match=r"actions\.op must have shape \(6, 5\)"):
        P.evaluate_actions(params, CFG, carry, fs, idxs, acts.replace(op=jnp.zeros((E,), jnp.int32)), mseq)
    with pytest.raises(ValueError, match=r"op must lie in \[0, 5\]"):
        P.value(params, CFG, carry, f, idx, jnp.full((E,), 6))


def test_no_retrace_on_second_call(params):
    f, idx = _inputs(16, (3,))
    masks = P.all_valid_masks(CFG, (3,))
    carry = P.initial_carry(CFG, (3,))
    P.get_action(params, CFG, carry, f, idx, masks, jax.random.key(0))
    before = P.TRACE_COUNTS["get_action"]
    size = P.get_action_jit._cache_size()
    f2, idx2 = _inputs(17, (3,))
    P.get_action(params, CFG, carry, f2, idx2, masks, jax.random.key(1))
    assert P.TRACE_COUNTS["get_action"] == before
    assert P.get_action_jit._cache_size() == size
    # A new batch shape does retrace (the counter is live).
    f3, idx3 = _inputs(18, (4,))
    P.get_action(params, CFG, P.initial_carry(CFG, (4,)), f3, idx3, P.all_valid_masks(CFG, (4,)), jax.random.key(1))
    assert P.TRACE_COUNTS["get_action"] == before + 1

    fs, idxs = _inputs(19, (2, T))
    acts = PerHead(**{h: jnp.zeros((2, T), jnp.int32) for h in HEAD_NAMES})
    mseq = P.all_valid_masks(CFG, (2, T))
    P.evaluate_actions(params, CFG, P.initial_carry(CFG, (2,)), fs, idxs, acts, mseq)
    before = P.TRACE_COUNTS["evaluate_actions"]
    P.evaluate_actions(params, CFG, P.initial_carry(CFG, (2,)), fs * 2, idxs, acts, mseq)
    assert P.TRACE_COUNTS["evaluate_actions"] == before


def test_style_mask_for_op_table():
    env = jnp.array([[True, False, True, True]] * 6)
    out = np.asarray(P.style_mask_for_op(env, jnp.arange(6)))
    for op in range(6):
        if op in (1, 2):
            assert out[op].tolist() == [True, False, True, True]
        else:
            assert out[op].tolist() == [False, False, True, False]
