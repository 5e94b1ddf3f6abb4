"""The random baseline's action: every head uniform over what its mask allows, the style head conditioned on the
sampled op (docs/policy-and-ppo.md#masks). One function, so the trainer's final comparison
(``esper_jax.evaluation``) and the controllers benchmark (``bench/scripted.py``) play the same random policy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from esper_jax.contracts import HEAD_NAMES, PerHead
from esper_jax.policy import style_mask_for_op

__all__ = ["random_masked_actions"]


def random_masked_actions(masks: PerHead, key: jax.Array) -> PerHead:
    """int32 actions with the masks' leading axes (``[..., n]`` masks → ``[...]`` actions).

    The op is drawn first; the style mask is then the op-conditional one the policy samples under
    (``style_mask_for_op``: a one-hot on SIGMOID_ADD unless the op is GERMINATE or SET_ALPHA_TARGET), so an action
    never carries a style its op would not use. Every other head is uniform over its own mask."""
    keys = jax.random.split(key, len(HEAD_NAMES))

    def draw(k: jax.Array, mask: jnp.ndarray) -> jnp.ndarray:
        return jax.random.categorical(k, jnp.where(mask, 0.0, -jnp.inf), axis=-1).astype(jnp.int32)

    op = draw(keys[HEAD_NAMES.index("op")], masks.op)
    acts = {}
    for i, head in enumerate(HEAD_NAMES):
        if head == "op":
            acts[head] = op
            continue
        mask = getattr(masks, head)
        if head == "style":
            mask = style_mask_for_op(mask, op)
        acts[head] = draw(keys[i], mask)
    return PerHead(**acts)
