"""The Tamiyo policy bundle as pure functions (upstream's ``LSTMPolicyBundle`` + network methods;
docs/policy-and-ppo.md#policy-functions).

Each public function validates on the host what can be validated (shapes always; values of concrete arrays:
empty mask rows → ``InvalidStateMachineError``, blueprint index >= 14 → ``ValueError``, NaN/inf logits →
``ValueError``) and calls a module-level ``jax.jit`` function with the config (and ``deterministic``) static.
Inside an outer jit the value checks are skipped (the arrays are tracers) and the returned flags
(``mask_error``, ``index_error``, ``nonfinite_error``) carry the same information; outputs stay finite.
``validate=False`` skips the host checks (no device sync), like upstream's ``MaskedCategorical.validate``.

Which op feeds Q: ``get_action`` stochastic → the sampled op; deterministic → argmax op;
``evaluate_actions`` → the stored op; ``value`` → the op you pass. Upstream's bundle ``get_value`` instead samples
the op from the *unmasked* op softmax (stochastic, a debug-only path unused by training); it is not
reproduced — use ``value`` with an explicit op, or ``q_values`` for all six.
"""

from __future__ import annotations

import collections
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esper_jax import distributions as dist
from esper_jax.contracts import CANONICAL_STYLE, HEAD_NAMES, NUM_HEADS, NUM_OPS, LifecycleOp, PerHead
from esper_jax.network import FactoredRecurrentActorCritic, LSTMCarry, NetworkConfig, is_kernel, validate_inputs
from esper_jax.tracing import is_concrete

__all__ = [
    "ActionOutput",
    "Evaluation",
    "init",
    "cast_kernels",
    "initial_carry",
    "all_valid_masks",
    "style_mask_for_op",
    "get_action",
    "evaluate_actions",
    "value",
    "q_values",
    "get_action_jit",
    "evaluate_actions_jit",
    "value_jit",
    "q_values_jit",
    "TRACE_COUNTS",
]

# Incremented once per trace of each jitted function (a Python side effect only runs while tracing): lets tests
# prove that a second call with the same shapes reuses the compiled executable.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


@struct.dataclass
class ActionOutput:
    """One step of acting. ``actions``/``log_probs``: PerHead of ``[E]``; ``value`` = Q(s, chosen op) ``[E]``;
    ``op_logits`` ``[E, 6]`` masked with the env op mask; flags ``[E]`` bool."""

    actions: PerHead
    log_probs: PerHead
    value: jax.Array
    carry: LSTMCarry
    op_logits: jax.Array
    mask_error: jax.Array
    index_error: jax.Array
    nonfinite_error: jax.Array


@struct.dataclass
class Evaluation:
    """Sequence evaluation for the PPO update: PerHead ``[E, T]`` log-probs and normalised entropies,
    ``value`` = Q(s, stored op) ``[E, T]``, the final carry, and flags ``[E, T]``."""

    log_probs: PerHead
    entropies: PerHead
    value: jax.Array
    carry: LSTMCarry
    mask_error: jax.Array
    index_error: jax.Array
    nonfinite_error: jax.Array


def _network(config: NetworkConfig) -> FactoredRecurrentActorCritic:
    return FactoredRecurrentActorCritic(config)


def initial_carry(config: NetworkConfig, batch_shape: tuple[int, ...] | int = ()) -> LSTMCarry:
    """Zero LSTM state ``[*batch_shape, L, H]`` in the config dtype."""
    shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
    zeros = jnp.zeros((*shape, config.lstm_layers, config.hidden_dim), config.resolved_dtype)
    return LSTMCarry(h=zeros, c=zeros)


@partial(jax.jit, static_argnames=("config",))
def init(key: jax.Array, config: NetworkConfig) -> dict[str, Any]:
    """Fresh parameters (init scheme: docs/policy-and-ppo.md#network): a nested dict, see ``esper_jax.interop`` for the
    torch names.

    Jitted: eager initialisation dispatches hundreds of small ops and is several times slower on CPU."""
    features = jnp.zeros((1, 1, config.state_dim), config.resolved_dtype)
    indices = jnp.full((1, 1, config.num_slots), -1, jnp.int32)
    op = jnp.zeros((1, 1), jnp.int32)
    variables = _network(config).init(key, features, indices, initial_carry(config, (1,)), op)
    return variables["params"]


def cast_kernels(params: Any, config: NetworkConfig) -> Any:
    """The params with every matmul kernel stored in ``config.resolved_matmul_dtype`` (the rest unchanged): for acting.

    A rollout step at small batch streams every kernel from memory once; cast once before the step loop, the
    loop reads the narrow copy (3.63M float32 params are 14.5 MB, 7.3 MB in bf16). The result computes exactly
    what ``params`` computes under ``config`` (the network rounds kernels to ``matmul_dtype`` anyway); gradients
    are taken with respect to the full-width params, never this copy. At full width it returns ``params``.
    """
    matmul = config.resolved_matmul_dtype
    if np.dtype(matmul) == np.dtype(config.resolved_dtype):
        return params
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf.astype(matmul) if is_kernel(path) else leaf, params
    )


def all_valid_masks(config: NetworkConfig, batch_shape: tuple[int, ...] = ()) -> PerHead:
    """Every action valid (upstream's ``mask=None``)."""
    sizes = config.head_sizes
    return PerHead(**{h: jnp.ones((*batch_shape, sizes[h]), bool) for h in HEAD_NAMES})


def style_mask_for_op(style_mask: jax.Array, op: jax.Array) -> jax.Array:
    """Style forcing (docs/policy-and-ppo.md#masks): rows whose op is neither GERMINATE nor SET_ALPHA_TARGET get a
    one-hot on SIGMOID_ADD."""
    irrelevant = (op != LifecycleOp.GERMINATE) & (op != LifecycleOp.SET_ALPHA_TARGET)
    canonical = jnp.arange(style_mask.shape[-1]) == int(CANONICAL_STYLE)
    return jnp.where(irrelevant[..., None], canonical, style_mask)


def _check_mask_shapes(config: NetworkConfig, masks: PerHead, lead: tuple[int, ...], field: str) -> None:
    if not isinstance(masks, PerHead):
        raise TypeError(f"{field} must be a PerHead, got {type(masks).__name__}")
    sizes = config.head_sizes
    for head in HEAD_NAMES:
        shape = tuple(np.shape(getattr(masks, head)))
        expected = (*lead, sizes[head])
        if shape != expected:
            raise ValueError(f"{field}.{head} must have shape {expected}, got {shape}")
        dtype = jnp.result_type(getattr(masks, head))
        if dtype != jnp.bool_:
            raise ValueError(f"{field}.{head} must be bool, got dtype {dtype}")


def _check_carry(config: NetworkConfig, carry: LSTMCarry, lead: tuple[int, ...]) -> None:
    expected = (*lead, config.lstm_layers, config.hidden_dim)
    for name in ("h", "c"):
        shape = tuple(np.shape(getattr(carry, name)))
        if shape != expected:
            raise ValueError(f"carry.{name} must have shape {expected} ([..., lstm_layers, hidden_dim]), got {shape}")


def _env_masked(logits: PerHead, masks: PerHead) -> PerHead:
    # forward() masks every head with its env mask first; the distribution then masks again with the effective
    # (style-overridden) mask. Keeping both steps matters only if an env style mask excluded SIGMOID_ADD.
    return jax.tree.map(dist.mask_logits, logits, masks)


_OP_ROW = HEAD_NAMES.index("op")


def _stacked_heads(env_masked: PerHead, effective: PerHead) -> tuple[jax.Array, jax.Array]:
    """The logits as the distribution sees them (env-masked, then masked again with the effective masks) and
    the effective masks, both stacked ``[..., 8, n_max]``: every head's log-prob, entropy and draw is then one
    array op (see ``dist.stack_heads``)."""
    masked = jax.tree.map(dist.mask_logits, env_masked, effective)
    return dist.stack_heads(masked, dist.PADDED_LOGIT_VALUE), dist.stack_heads(effective, False)


def _nonfinite_rows(raw_logits: PerHead) -> jax.Array:
    return jnp.any(dist.nonfinite_rows(dist.stack_heads(raw_logits, 0.0)), axis=-1)


def _check_finite_inputs(features: Any, carry: LSTMCarry) -> None:
    """NaN/Inf fed in is the caller's to fix: name the input rather than let it surface as non-finite logits."""
    for name, value in (("features", features), ("carry.h", carry.h), ("carry.c", carry.c)):
        if dist.is_concrete(value):
            x = np.asarray(value)
            bad = ~np.isfinite(x)
            if bad.any():
                raise ValueError(f"the input {name} {x.shape} holds NaN/Inf in {int(bad.sum())} of {x.size} values")


def _raise_on_flags(out: ActionOutput | Evaluation, effective_masks: PerHead | None) -> None:
    if effective_masks is not None:
        dist.check_masks(effective_masks)
    if is_concrete(out.nonfinite_error):
        bad = np.asarray(out.nonfinite_error)
        if bad.any():
            raise ValueError(
                f"Policy logits contain inf/nan in {int(bad.sum())} of {bad.size} row(s). This indicates network "
                "instability (gradient explosion, numerical overflow)."
            )


# ---------------------------------------------------------------------------------------------------------------
# get_action
# ---------------------------------------------------------------------------------------------------------------


def _get_action_impl(
    params: Any,
    config: NetworkConfig,
    carry: LSTMCarry,
    features: jax.Array,
    blueprint_indices: jax.Array,
    masks: PerHead,
    key: jax.Array,
    deterministic: bool,
) -> ActionOutput:
    TRACE_COUNTS["get_action"] += 1
    net = _network(config)
    out = net.apply(
        {"params": params}, features[..., None, :], blueprint_indices[..., None, :], carry, method=net.trunk
    )
    raw = out.logits.map(lambda x: x[..., 0, :])
    lstm_out = out.lstm_out[..., 0, :]
    logits = _env_masked(raw, masks)
    width = max(config.head_sizes.values())
    noise = None
    if deterministic:
        op = dist.mode(logits.op, masks.op)
    else:
        # Gumbel-max sampling of all heads from one noise draw: argmax(logits + Gumbel) is a categorical draw, and
        # one RNG computation instead of eight keeps the compiled step small. The op is drawn first: the style
        # head's mask depends on it.
        noise = jax.random.gumbel(key, (*lstm_out.shape[:-1], NUM_HEADS, width), logits.op.dtype)
        op_noise = noise[..., _OP_ROW, : logits.op.shape[-1]]
        op = jnp.argmax(dist.mask_logits(logits.op, masks.op) + op_noise, axis=-1).astype(jnp.int32)
    effective = masks.replace(style=style_mask_for_op(masks.style, op))
    stacked, stacked_mask = _stacked_heads(logits, effective)
    scores = stacked if noise is None else stacked + noise
    chosen = jnp.argmax(scores, axis=-1).astype(jnp.int32)  # [..., 8]; the op row repeats the op drawn above
    actions = PerHead.unstack(chosen, axis=-1).replace(op=op)
    log_probs = PerHead.unstack(dist.masked_log_prob(stacked, actions.stack(axis=-1)), axis=-1)
    q = net.apply({"params": params}, lstm_out, op, method=net.q_value)
    return ActionOutput(
        actions=actions,
        log_probs=log_probs,
        value=q,
        carry=out.carry,
        op_logits=logits.op,
        mask_error=jnp.any(dist.empty_rows(stacked_mask), axis=-1),
        index_error=out.index_error[..., 0],
        nonfinite_error=_nonfinite_rows(raw) | ~jnp.isfinite(q),
    )


get_action_jit = jax.jit(_get_action_impl, static_argnames=("config", "deterministic"))


def get_action(
    params: Any,
    config: NetworkConfig,
    carry: LSTMCarry,
    features: jax.Array,
    blueprint_indices: jax.Array,
    masks: PerHead,
    key: jax.Array,
    deterministic: bool = False,
    *,
    validate: bool = True,
) -> ActionOutput:
    """Act for one step. ``features [E, D]``, ``blueprint_indices [E, S]``, ``masks`` PerHead of bool ``[E, n]``,
    ``carry [E, L, H]`` (any leading axes work as long as they agree).

    The op is sampled (argmax if ``deterministic``) from the env-masked op logits; style is drawn under the
    op-conditioned mask; the other heads from their env masks; value = Q(s, chosen op).
    """
    validate_inputs(config, features, blueprint_indices, time_axis=False)
    lead = tuple(np.shape(features)[:-1])
    _check_mask_shapes(config, masks, lead, "masks")
    _check_carry(config, carry, lead)
    if validate:
        _check_finite_inputs(features, carry)
    out = get_action_jit(params, config, carry, features, blueprint_indices, masks, key, deterministic)
    if validate and is_concrete(masks, out.actions.op):
        _raise_on_flags(out, masks.replace(style=style_mask_for_op(masks.style, out.actions.op)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# evaluate_actions
# ---------------------------------------------------------------------------------------------------------------


def _evaluate_actions_impl(
    params: Any,
    config: NetworkConfig,
    carry: LSTMCarry,
    features: jax.Array,
    blueprint_indices: jax.Array,
    actions: PerHead,
    masks: PerHead,
) -> Evaluation:
    TRACE_COUNTS["evaluate_actions"] += 1
    net = _network(config)
    out = net.apply({"params": params}, features, blueprint_indices, carry, method=net.trunk)
    logits = _env_masked(out.logits, masks)
    effective = masks.replace(style=style_mask_for_op(masks.style, actions.op))
    stacked, stacked_mask = _stacked_heads(logits, effective)
    q = net.apply({"params": params}, out.lstm_out, actions.op, method=net.q_value)
    return Evaluation(
        log_probs=PerHead.unstack(dist.masked_log_prob(stacked, actions.stack(axis=-1)), axis=-1),
        entropies=PerHead.unstack(dist.masked_entropy(stacked, stacked_mask), axis=-1),
        value=q,
        carry=out.carry,
        mask_error=jnp.any(dist.empty_rows(stacked_mask), axis=-1),
        index_error=out.index_error,
        nonfinite_error=_nonfinite_rows(out.logits) | ~jnp.isfinite(q),
    )


evaluate_actions_jit = jax.jit(_evaluate_actions_impl, static_argnames=("config",))


def _check_actions(config: NetworkConfig, actions: PerHead, lead: tuple[int, ...]) -> None:
    if not isinstance(actions, PerHead):
        raise TypeError(f"actions must be a PerHead, got {type(actions).__name__}")
    sizes = config.head_sizes
    for head in HEAD_NAMES:
        value_ = getattr(actions, head)
        shape = tuple(np.shape(value_))
        if shape != lead:
            raise ValueError(f"actions.{head} must have shape {lead}, got {shape}")
        if not jnp.issubdtype(jnp.result_type(value_), jnp.integer):
            raise ValueError(f"actions.{head} must be integers, got dtype {jnp.result_type(value_)}")
        if is_concrete(value_):
            values = np.asarray(value_)
            if values.size and (values.min() < 0 or values.max() >= sizes[head]):
                raise ValueError(
                    f"actions.{head} must lie in [0, {sizes[head] - 1}], got values in [{values.min()}, {values.max()}]"
                )


def evaluate_actions(
    params: Any,
    config: NetworkConfig,
    carry: LSTMCarry,
    features: jax.Array,
    blueprint_indices: jax.Array,
    actions: PerHead,
    masks: PerHead,
    *,
    validate: bool = True,
) -> Evaluation:
    """Re-evaluate stored actions over sequences: ``carry [E, L, H]`` is the state before step 0,
    ``features [E, T, D]``, ``blueprint_indices [E, T, S]``, ``actions`` PerHead ``[E, T]``, ``masks`` PerHead
    ``[E, T, n]``. The style mask is op-conditioned with the stored op; value = Q(s, stored op)."""
    validate_inputs(config, features, blueprint_indices, time_axis=True)
    lead = tuple(np.shape(features)[:-1])
    _check_mask_shapes(config, masks, lead, "masks")
    _check_actions(config, actions, lead)
    _check_carry(config, carry, lead[:-1])
    if validate:
        _check_finite_inputs(features, carry)
    out = evaluate_actions_jit(params, config, carry, features, blueprint_indices, actions, masks)
    if validate and is_concrete(masks, actions.op):
        _raise_on_flags(out, masks.replace(style=style_mask_for_op(masks.style, actions.op)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# value / q_values
# ---------------------------------------------------------------------------------------------------------------


def _q_values_impl(
    params: Any, config: NetworkConfig, carry: LSTMCarry, features: jax.Array, blueprint_indices: jax.Array
) -> jax.Array:
    TRACE_COUNTS["q_values"] += 1
    net = _network(config)
    out = net.apply(
        {"params": params}, features[..., None, :], blueprint_indices[..., None, :], carry, method=net.trunk
    )
    lstm_out = out.lstm_out[..., 0, :]
    ops = jnp.arange(NUM_OPS, dtype=jnp.int32)
    broadcast = jnp.broadcast_to(lstm_out[..., None, :], (*lstm_out.shape[:-1], NUM_OPS, lstm_out.shape[-1]))
    return net.apply({"params": params}, broadcast, jnp.broadcast_to(ops, broadcast.shape[:-1]), method=net.q_value)


def _value_impl(
    params: Any,
    config: NetworkConfig,
    carry: LSTMCarry,
    features: jax.Array,
    blueprint_indices: jax.Array,
    op: jax.Array,
) -> jax.Array:
    TRACE_COUNTS["value"] += 1
    net = _network(config)
    out = net.apply(
        {"params": params}, features[..., None, :], blueprint_indices[..., None, :], carry, method=net.trunk
    )
    return net.apply({"params": params}, out.lstm_out[..., 0, :], op, method=net.q_value)


q_values_jit = jax.jit(_q_values_impl, static_argnames=("config",))
value_jit = jax.jit(_value_impl, static_argnames=("config",))


def value(
    params: Any,
    config: NetworkConfig,
    carry: LSTMCarry,
    features: jax.Array,
    blueprint_indices: jax.Array,
    op: jax.Array,
) -> jax.Array:
    """Q(s, op) ``[E]`` for one step and a given op ``[E]`` (e.g. the argmax op for a bootstrap).

    Not upstream's bundle ``get_value``, which draws the op from the unmasked op distribution (a debug-only
    path); choosing the op explicitly keeps this deterministic.
    """
    validate_inputs(config, features, blueprint_indices, time_axis=False)
    lead = tuple(np.shape(features)[:-1])
    _check_carry(config, carry, lead)
    if tuple(np.shape(op)) != lead:
        raise ValueError(f"op must have shape {lead}, got {tuple(np.shape(op))}")
    if is_concrete(op):
        ops = np.asarray(op)
        if ops.size and (ops.min() < 0 or ops.max() >= NUM_OPS):
            raise ValueError(f"op must lie in [0, {NUM_OPS - 1}], got values in [{ops.min()}, {ops.max()}]")
    return value_jit(params, config, carry, features, blueprint_indices, op)


def q_values(
    params: Any, config: NetworkConfig, carry: LSTMCarry, features: jax.Array, blueprint_indices: jax.Array
) -> jax.Array:
    """Q(s, op) for all six ops, ``[E, 6]`` (LifecycleOp order)."""
    validate_inputs(config, features, blueprint_indices, time_axis=False)
    _check_carry(config, carry, tuple(np.shape(features)[:-1]))
    return q_values_jit(params, config, carry, features, blueprint_indices)
