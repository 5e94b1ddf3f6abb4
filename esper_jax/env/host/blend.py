"""Blend operators (docs/environment.md#blending) and the GATE style's gate network (#blueprints).

With host features h, seed output s, seed input x_s and amplitude a ∈ [0, 1]:

* ADD       y = h + a·(s − h)
* MULTIPLY  y = h·(1 + a·tanh(s − x_s))
* GATE      y = h + clamp(a·g(x_s), 0, 1)·(s − h), g = σ(Linear(ReLU(Linear(GAP(x_s))))) one scalar per sample

The operator is the slot's ``AlphaAlgorithm`` (``SlotView.algorithm``; the germination style picks it through
``STYLE_TO_KASMINA`` and SET_ALPHA_TARGET may switch it). All three are computed and one selected: no branching.

Host gradient (``compat`` quirk 14, docs/compat.md). The seed reads a detached copy of h (CNN isolation), so under ADD and GATE the
host's gradient through the slot is ∂y/∂h = 1 − a: zero at a = 1, for the rest of the episode once a seed is
fossilised, and every host block before the slot stops learning. ``upstream`` keeps that. ``fixed``
(``host_gradient=True``) blends as y = h + a·(s − stop_gradient(h)): the same value, and ∂y/∂h = 1, the gradient a
residual seed s = x + f(x) would pass to the host without f's own Jacobian. MULTIPLY already passes
1 + a·tanh(s − x_s) and is the same in both modes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from esper_jax.contracts import AlphaAlgorithm
from esper_jax.env.config import gate_params
from esper_jax.env.host.cnn import torch_uniform_bound


@dataclasses.dataclass(frozen=True)
class GateLayout:
    """Gate network Linear(C, q) → ReLU → Linear(q, 1) → σ, q = max(1, C/4), as one flat vector."""

    channels: int

    @property
    def hidden(self) -> int:
        return max(1, self.channels // 4)

    @property
    def size(self) -> int:
        return gate_params(self.channels)

    def init(self, key: jax.Array) -> jnp.ndarray:
        c, q = self.channels, self.hidden
        bound = jnp.concatenate([
            jnp.full((c * q + q,), torch_uniform_bound(c)),
            jnp.full((q + 1,), torch_uniform_bound(q)),
        ])
        return jax.random.uniform(key, (self.size,), jnp.float32, -1.0, 1.0) * bound

    def apply(self, flat: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
        """g(x) [N]: one gate value per sample from the spatially pooled input."""
        c, q = self.channels, self.hidden
        w1 = flat[: c * q].reshape(c, q)
        b1 = flat[c * q : c * q + q]
        w2 = flat[c * q + q : c * q + 2 * q].reshape(q, 1)
        b2 = flat[c * q + 2 * q]
        hidden = jax.nn.relu(self.pool(x) @ w1 + b1)
        return jax.nn.sigmoid((hidden @ w2)[:, 0] + b2)

    def pool(self, x: jnp.ndarray) -> jnp.ndarray:
        """[N, H, W, C] → [N, C]: the spatial mean."""
        return jnp.mean(x, axis=(1, 2))


def blend(
    algorithm: jnp.ndarray,
    h: jnp.ndarray,
    s: jnp.ndarray,
    x_s: jnp.ndarray,
    alpha: jnp.ndarray,
    gate: jnp.ndarray,
    host_gradient: bool = False,
) -> jnp.ndarray:
    """y for one slot: ``algorithm`` int AlphaAlgorithm, ``gate`` [N] = g(x_s) (used by GATE only).

    ``host_gradient`` (static; True in ``fixed`` mode) keeps ∂y/∂h = 1 under ADD and GATE; the value is unchanged."""
    h_out = jax.lax.stop_gradient(h) if host_gradient else h
    add = h + alpha * (s - h_out)
    multiply = h * (1.0 + alpha * jnp.tanh(s - x_s))
    a_eff = jnp.clip(alpha * gate, 0.0, 1.0)[:, None, None, None]
    gated = h + a_eff * (s - h_out)
    return jnp.where(
        algorithm == AlphaAlgorithm.MULTIPLY, multiply, jnp.where(algorithm == AlphaAlgorithm.GATE, gated, add)
    )
