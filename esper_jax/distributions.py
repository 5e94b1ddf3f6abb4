"""Masked categorical distribution, as upstream's ``MaskedCategorical`` (docs/policy-and-ppo.md#distributions).

Pure ``jnp`` functions, shape-polymorphic over leading axes: the action axis is always the last one. Invalid
entries are filled with ``MASKED_LOGIT_VALUE`` (-1e4) in the logits' own dtype, never -inf, so an all-invalid row
stays finite. Validation (empty rows, non-finite logits) cannot raise inside jit; the functions here give both an
in-jit detector (``empty_rows``, ``nonfinite_rows``) and host-side checks (``check_masks``, ``check_logits``)
that raise the upstream exceptions when they see concrete arrays.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from esper_jax.contracts import HEAD_NAMES, MASKED_LOGIT_VALUE, PerHead
from esper_jax.tracing import is_concrete

# Fill of the padding columns of stacked heads: far enough below MASKED_LOGIT_VALUE that exp(PADDED - masked)
# underflows to exactly 0 in float32 and float64 (exp(-2e4)), so an all-masked row still spreads its mass over
# its own n actions only, as the unpadded head does.
PADDED_LOGIT_VALUE = 3.0 * MASKED_LOGIT_VALUE

__all__ = [
    "InvalidStateMachineError",
    "mask_logits",
    "normalised_logits",
    "log_prob",
    "masked_log_prob",
    "entropy",
    "masked_entropy",
    "stack_heads",
    "PADDED_LOGIT_VALUE",
    "sample",
    "mode",
    "empty_rows",
    "nonfinite_rows",
    "check_masks",
    "check_logits",
    "VALIDATION_ORDER",
]


class InvalidStateMachineError(RuntimeError):
    """A mask row with no valid action: a bug in the lifecycle state machine, never a sampling problem."""


# Upstream validates op first (inside forward), then style, then the remaining heads in get_action's order, so
# when several heads are empty the error names the same head upstream would.
VALIDATION_ORDER: tuple[str, ...] = ("op", "style", "slot", "blueprint", "tempo", "alpha_target", "alpha_speed", "alpha_curve")
assert sorted(VALIDATION_ORDER) == sorted(HEAD_NAMES)


def mask_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """``logits.masked_fill(~mask, -1e4)``: the fill is cast to the logits' dtype (bf16 rounds it to -9984)."""
    return jnp.where(mask, logits, jnp.asarray(MASKED_LOGIT_VALUE, dtype=logits.dtype))


def normalised_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """log-probabilities of every action: masked logits minus their logsumexp (torch ``Categorical.logits``)."""
    masked = mask_logits(logits, mask)
    return masked - jax.nn.logsumexp(masked, axis=-1, keepdims=True)


def log_prob(logits: jax.Array, mask: jax.Array, action: jax.Array) -> jax.Array:
    """log_softmax of the masked logits gathered at ``action`` (shape = logits.shape[:-1]).

    With one valid action the result is exactly 0.0: the other entries underflow to exp(-1e4 - z) = 0, so the
    logsumexp equals the valid logit bit for bit. An out-of-range action gives NaN (gather fill), never garbage.
    """
    return masked_log_prob(mask_logits(logits, mask), action)


def masked_log_prob(masked_logits: jax.Array, action: jax.Array) -> jax.Array:
    """``log_prob`` of logits already masked (``mask_logits``, or ``stack_heads`` output)."""
    log_p = jax.nn.log_softmax(masked_logits, axis=-1)
    idx = jnp.asarray(action)[..., None].astype(jnp.int32)
    return jnp.take_along_axis(log_p, idx, axis=-1, mode="fill", fill_value=jnp.nan)[..., 0]


def entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Normalised entropy H / ln(n_valid) over the valid actions, in [0, 1] (docs/policy-and-ppo.md#distributions).

    Masked entries contribute exactly 0 (multiplied by the mask); rows with a single valid action (or none) are
    exactly 0.0 through a ``where``, not through arithmetic.
    """
    return masked_entropy(mask_logits(logits, mask), mask)


def masked_entropy(masked_logits: jax.Array, mask: jax.Array) -> jax.Array:
    """``entropy`` of logits already masked with ``mask`` (``mask_logits``, or ``stack_heads`` output)."""
    z = masked_logits - jax.nn.logsumexp(masked_logits, axis=-1, keepdims=True)
    probs = jax.nn.softmax(z, axis=-1)
    log_p = z - jax.nn.logsumexp(z, axis=-1, keepdims=True)
    raw = -jnp.sum(probs * log_p * mask.astype(z.dtype), axis=-1)
    n_valid = jnp.maximum(jnp.sum(mask, axis=-1, dtype=jnp.int32), 1)
    # Upstream divides by torch.log(num_valid.float()): a float32 log even for float64 logits. Keep that rounding
    # (XLA's float32 log agrees with torch's for every head size; a correctly rounded table would not: ln 7).
    max_entropy = jnp.maximum(jnp.log(n_valid.astype(jnp.float32)), jnp.float32(1e-8)).astype(z.dtype)
    normalised = raw / max_entropy
    return jnp.where(n_valid == 1, jnp.zeros_like(normalised), normalised)


def sample(key: jax.Array, logits: jax.Array, mask: jax.Array) -> jax.Array:
    """One draw per row from softmax(masked logits), int32, shape logits.shape[:-1].

    Gumbel-max over the masked logits: a masked entry sits 1e4 below every valid one and Gumbel noise on float32
    uniforms spans less than 25, so it can never win while a valid entry exists; an all-invalid row draws
    uniformly, as upstream does with validation off.
    """
    return jax.random.categorical(key, mask_logits(logits, mask), axis=-1).astype(jnp.int32)


def mode(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """argmax of the masked logits, first index on ties (as torch), int32."""
    return jnp.argmax(mask_logits(logits, mask), axis=-1).astype(jnp.int32)


def stack_heads(values: PerHead, fill: Any) -> jax.Array:
    """The eight heads' ``[..., n_h]`` arrays as one ``[..., 8, n_max]`` (HEAD_NAMES order), each padded on the
    action axis with ``fill``.

    One array op over all heads instead of eight compiles to a fraction of the program (the compile time of the
    policy step and of the PPO gradient scales with the number of ops). For logits, pad with
    ``PADDED_LOGIT_VALUE``: padding then adds exact zeros to every softmax sum, even in an all-masked row, so
    log-probs, entropies, samples and argmaxes equal the per-head ones."""
    leaves = [getattr(values, h) for h in HEAD_NAMES]
    width = max(leaf.shape[-1] for leaf in leaves)
    pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])], constant_values=fill)  # noqa: E731
    return jnp.stack([pad(leaf) for leaf in leaves], axis=-2)


def empty_rows(mask: jax.Array) -> jax.Array:
    """True where a row has no valid action (usable inside jit)."""
    return ~jnp.any(mask, axis=-1)


def nonfinite_rows(logits: jax.Array) -> jax.Array:
    """True where a row of logits holds NaN or +-inf (usable inside jit)."""
    return ~jnp.all(jnp.isfinite(logits), axis=-1)


def check_masks(masks: PerHead) -> None:
    """Raise InvalidStateMachineError naming the head and the number of empty rows; no-op on tracers."""
    for head in VALIDATION_ORDER:
        mask = getattr(masks, head)
        if not is_concrete(mask):
            continue
        empty = np.asarray(empty_rows(np.asarray(mask)))
        if empty.any():
            raise InvalidStateMachineError(
                f"No valid actions available for head {head!r}: {int(empty.sum())} of {empty.size} row(s) have an "
                f"all-False mask (first at index {tuple(int(i) for i in np.argwhere(empty)[0])}). "
                "This indicates a bug in the Kasmina state machine."
            )


def check_logits(logits: jax.Array, head: str | None = None) -> None:
    """Raise ValueError if concrete logits contain NaN or +-inf (upstream ``_validate_logits``); no-op on tracers."""
    if not is_concrete(logits):
        return
    values = np.asarray(logits)
    nan_count = int(np.isnan(values).sum())
    inf_count = int(np.isinf(values).sum())
    if nan_count or inf_count:
        where = f" for head {head!r}" if head else ""
        finite = values[np.isfinite(values)]
        stats = f"min={finite.min():.4g}, max={finite.max():.4g}" if finite.size else "no finite entries"
        raise ValueError(
            f"MaskedCategorical received logits with inf/nan values{where}. This indicates network instability "
            f"(gradient explosion, numerical overflow). Logits stats: {stats}, nan_count={nan_count}, "
            f"inf_count={inf_count}"
        )
