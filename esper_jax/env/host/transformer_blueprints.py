"""The 7 transformer seed blueprints (docs/environment.md#blueprints), the GATE network on sequences and the blend
operators without isolation, as pure functions over one flat parameter vector per slot.

The parameter union and its table-driven init are the CNN seeds' (``blueprints.SlotLayout``): one float vector as
long as the largest blueprint at width D (mlp, 8D² + 5D), every blueprint reading its tensors at static offsets,
``lax.switch`` on the branch. Only the tensor table and the seed functions differ. x: [N, T, D]; every seed is a
residual x + f(x) with f's last Linear zero-initialised, so all seven are the identity at birth:

* norm            x + tanh(s)·(LN(x) − x), s = 0
* lora            x + up(down(x)), rank 8, no biases, up = 0
* lora_large      rank 32
* attention       x + proj(causal 4-head SDPA(qkv(x))), proj = 0 (weight and bias)
* flex_attention  the same maths (upstream's FlexAttention and its SDPA fallback agree)
* mlp_small       x + fc2(GELU(fc1(x))), 2× expansion, fc2 = 0
* mlp             4× expansion

MULTIPLY's zero-init of the last affine layer is therefore a no-op here (LayerNorm is not affine in upstream's
sense, so norm keeps its init); ``compat`` changes nothing in these seeds.

Blending (docs/environment.md#blending, transformer row): from BLENDING on the seed reads the host's hidden states
*without* detaching them (upstream drops isolation on transformers), so the host's gradient through a slot is
∂y/∂h = (1 − a) + a·∂s/∂h, the residual seed's own path included; there is no quirk 14 to fix and both modes blend
alike. In TRAINING the seed input is detached as on CNN hosts (the incubator).
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from esper_jax.contracts import NUM_BLUEPRINTS, TRANSFORMER_BLUEPRINTS, AlphaAlgorithm, BlueprintAction
from esper_jax.env.host.blend import GateLayout
from esper_jax.env.host.blueprints import SlotLayout, Tensor
from esper_jax.env.host.transformer import causal_attention, gelu, layer_norm
from esper_jax.env.lm_config import LORA_LARGE_RANK, LORA_RANK, SEED_ATTENTION_HEADS

# Branch index of every BlueprintAction (the CNN-only ones are masked out by the policy and never germinated here).
BRANCH_OF_BLUEPRINT = np.zeros(NUM_BLUEPRINTS, np.int32)
for _i, _bp in enumerate(TRANSFORMER_BLUEPRINTS):
    BRANCH_OF_BLUEPRINT[_bp] = _i


def _tensors(blueprint: BlueprintAction, d: int) -> tuple[Tensor, ...]:
    def linear(tag: str, d_in: int, d_out: int, zero: bool = False) -> tuple[Tensor, Tensor]:
        init = "zeros" if zero else "uniform"
        return (Tensor(f"{tag}_w", (d_in, d_out), init, d_in, last=zero),
                Tensor(f"{tag}_b", (d_out,), init, d_in, last=zero))

    def lora(rank: int) -> tuple[Tensor, ...]:
        return Tensor("down", (d, rank), "uniform", d), Tensor("up", (rank, d), "zeros", rank, last=True)

    def mlp(expansion: int) -> tuple[Tensor, ...]:
        return (*linear("fc1", d, expansion * d), *linear("fc2", expansion * d, d, zero=True))

    attention = (*linear("qkv", d, 3 * d), *linear("proj", d, d, zero=True))
    table = {
        BlueprintAction.NORM: (Tensor("ln_scale", (d,), "ones"), Tensor("ln_bias", (d,), "zeros"),
                               Tensor("s", (1,), "zeros")),
        BlueprintAction.LORA: lora(LORA_RANK),
        BlueprintAction.LORA_LARGE: lora(LORA_LARGE_RANK),
        BlueprintAction.ATTENTION: attention,
        BlueprintAction.FLEX_ATTENTION: attention,
        BlueprintAction.MLP_SMALL: mlp(2),
        BlueprintAction.MLP: mlp(4),
    }
    return table[blueprint]


@dataclasses.dataclass(frozen=True)
class TransformerSlotLayout(SlotLayout):
    """One slot's parameter union at width ``channels`` = D (hashable; branch order ``TRANSFORMER_BLUEPRINTS``)."""

    @functools.cached_property
    def tensors(self) -> tuple[tuple[Tensor, ...], ...]:
        if self.channels % SEED_ATTENTION_HEADS:
            raise ValueError(f"transformer seeds need a width divisible by {SEED_ATTENTION_HEADS}, got {self.channels}")
        return tuple(_tensors(bp, self.channels) for bp in TRANSFORMER_BLUEPRINTS)

    def _apply_one(self, branch: int, flat: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
        p = self.unpack(branch, flat)
        bp = TRANSFORMER_BLUEPRINTS[branch]
        if bp == BlueprintAction.NORM:
            return x + jnp.tanh(p["s"][0]) * (layer_norm(x, p["ln_scale"], p["ln_bias"], self.eps) - x)
        if bp in (BlueprintAction.LORA, BlueprintAction.LORA_LARGE):
            return x + (x @ p["down"]) @ p["up"]
        if bp in (BlueprintAction.ATTENTION, BlueprintAction.FLEX_ATTENTION):
            heads = causal_attention(x @ p["qkv_w"] + p["qkv_b"], SEED_ATTENTION_HEADS)
            return x + heads @ p["proj_w"] + p["proj_b"]
        return x + gelu(x @ p["fc1_w"] + p["fc1_b"]) @ p["fc2_w"] + p["fc2_b"]


@dataclasses.dataclass(frozen=True)
class SequenceGateLayout(GateLayout):
    """The CNN GATE network (``blend.GateLayout``: Linear(D, q) → ReLU → Linear(q, 1) → σ, q = max(1, D/4), the same
    flat layout and init) on the time-averaged seed input x [N, T, D]: one gate value per sequence (37,057
    parameters at D = 384)."""

    def pool(self, x: jnp.ndarray) -> jnp.ndarray:
        return jnp.mean(x, axis=1)


def blend(
    algorithm: jnp.ndarray, h: jnp.ndarray, s: jnp.ndarray, x_s: jnp.ndarray, alpha: jnp.ndarray, gate: jnp.ndarray
) -> jnp.ndarray:
    """y for one slot on [N, T, D]: ADD h + a(s − h), MULTIPLY h(1 + a·tanh(s − x_s)), GATE h + clamp(a·g)(s − h)."""
    add = h + alpha * (s - h)
    multiply = h * (1.0 + alpha * jnp.tanh(s - x_s))
    gated = h + jnp.clip(alpha * gate, 0.0, 1.0)[:, None, None] * (s - h)
    return jnp.where(
        algorithm == AlphaAlgorithm.MULTIPLY, multiply, jnp.where(algorithm == AlphaAlgorithm.GATE, gated, add)
    )
