"""The transformer host (upstream's ``TransformerHost``, docs/environment.md#transformer-host) as pure functions.

Token + learned position embeddings, ``n_layer`` pre-norm blocks (LN → causal multi-head attention → residual;
LN → 4× GELU MLP → residual), final LayerNorm, LM head tied to the token embedding. The layers form
``num_segments`` = 3 equal segments; slot ``r0c{i}`` sits on the output of segment ``i`` (after layers 2/4/6 of
upstream's 6; the last slot before the final LayerNorm), and each slot's blended output is the next segment's input.

Initialisation is torch's default, as upstream leaves it: embeddings N(0, 1), Linear weights and biases
U(±1/√fan_in), LayerNorm ones/zeros. Dropout (upstream 0.1) is left out: the host env's hosts are deterministic
functions of their parameters and minibatch, as the CNN hosts are.

The layers of a segment are stacked ([L, ...] per parameter) and run with ``lax.scan``, so the compiled program
holds one layer body per segment whatever the depth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esper_jax.env.host.cnn import torch_uniform_bound
from esper_jax.env.lm_config import transformer_host_params


def layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, eps: float) -> jnp.ndarray:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def gelu(x: jnp.ndarray) -> jnp.ndarray:
    """torch's ``F.gelu`` default: the exact (erf) form, not the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


def causal_attention(qkv: jnp.ndarray, n_head: int) -> jnp.ndarray:
    """Causal scaled-dot-product attention: qkv [N, T, 3D] (q, k, v in that order, heads contiguous) → [N, T, D]."""
    n, t, three_d = qkv.shape
    d = three_d // 3
    q, k, v = (a.reshape(n, t, n_head, d // n_head) for a in jnp.split(qkv, 3, axis=-1))
    scores = jnp.einsum("nqhc,nkhc->nhqk", q, k) / np.sqrt(d // n_head).astype(np.float32)
    causal = jnp.tril(jnp.ones((t, t), bool))
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    return jnp.einsum("nhqk,nkhc->nqhc", jax.nn.softmax(scores, axis=-1), v).reshape(n, t, d)


@struct.dataclass
class Layers:
    """``n`` stacked pre-norm blocks (leading axis [n] on every field)."""

    ln1_scale: jnp.ndarray  # [n, D]
    ln1_bias: jnp.ndarray
    qkv_kernel: jnp.ndarray  # [n, D, 3D]
    qkv_bias: jnp.ndarray  # [n, 3D]
    proj_kernel: jnp.ndarray  # [n, D, D]
    proj_bias: jnp.ndarray  # [n, D]
    ln2_scale: jnp.ndarray
    ln2_bias: jnp.ndarray
    fc_kernel: jnp.ndarray  # [n, D, 4D]
    fc_bias: jnp.ndarray  # [n, 4D]
    out_kernel: jnp.ndarray  # [n, 4D, D]
    out_bias: jnp.ndarray  # [n, D]


@struct.dataclass
class TransformerParams:
    tok_emb: jnp.ndarray  # [V, D], also the LM head
    pos_emb: jnp.ndarray  # [block_size, D]
    layers: Layers  # [n_layer, ...]
    lnf_scale: jnp.ndarray  # [D]
    lnf_bias: jnp.ndarray  # [D]


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
    """Static shape of a transformer host (hashable, part of the static oracle)."""

    vocab_size: int
    d_model: int
    n_head: int
    n_layer: int
    block_size: int
    num_segments: int = 3
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"transformer width {self.d_model} must be divisible by n_head {self.n_head}")
        if self.n_layer % self.num_segments:
            raise ValueError(f"n_layer ({self.n_layer}) must be divisible by num_segments ({self.num_segments})")

    @property
    def layers_per_segment(self) -> int:
        return self.n_layer // self.num_segments

    def param_count(self) -> int:
        return transformer_host_params(self.d_model, self.n_layer, self.block_size, self.vocab_size)


def init_host(spec: TransformerSpec, key: jax.Array) -> TransformerParams:
    d, n = spec.d_model, spec.n_layer
    k_tok, k_pos, *ks = jax.random.split(key, 10)

    def uniform(k, shape, fan_in):
        bound = torch_uniform_bound(fan_in)
        return jax.random.uniform(k, (n, *shape), jnp.float32, -bound, bound)

    ones, zeros = jnp.ones((n, d), jnp.float32), jnp.zeros((n, d), jnp.float32)
    layers = Layers(
        ln1_scale=ones, ln1_bias=zeros,
        qkv_kernel=uniform(ks[0], (d, 3 * d), d), qkv_bias=uniform(ks[1], (3 * d,), d),
        proj_kernel=uniform(ks[2], (d, d), d), proj_bias=uniform(ks[3], (d,), d),
        ln2_scale=ones, ln2_bias=zeros,
        fc_kernel=uniform(ks[4], (d, 4 * d), d), fc_bias=uniform(ks[5], (4 * d,), d),
        out_kernel=uniform(ks[6], (4 * d, d), 4 * d), out_bias=uniform(ks[7], (d,), 4 * d),
    )
    return TransformerParams(
        tok_emb=jax.random.normal(k_tok, (spec.vocab_size, d), jnp.float32),
        pos_emb=jax.random.normal(k_pos, (spec.block_size, d), jnp.float32),
        layers=layers,
        lnf_scale=jnp.ones((d,), jnp.float32),
        lnf_bias=jnp.zeros((d,), jnp.float32),
    )


def block(spec: TransformerSpec, p: Layers, h: jnp.ndarray) -> jnp.ndarray:
    """One pre-norm block (``p`` holds one layer: no leading axis). h [N, T, D]."""
    a = layer_norm(h, p.ln1_scale, p.ln1_bias, spec.eps) @ p.qkv_kernel + p.qkv_bias
    h = h + causal_attention(a, spec.n_head) @ p.proj_kernel + p.proj_bias
    m = gelu(layer_norm(h, p.ln2_scale, p.ln2_bias, spec.eps) @ p.fc_kernel + p.fc_bias)
    return h + m @ p.out_kernel + p.out_bias


def embed(params: TransformerParams, tokens: jnp.ndarray) -> jnp.ndarray:
    """tokens int [N, T] → h [N, T, D]."""
    return params.tok_emb[tokens] + params.pos_emb[: tokens.shape[-1]]


def segment(spec: TransformerSpec, params: TransformerParams, index: int, h: jnp.ndarray) -> jnp.ndarray:
    """The layers of segment ``index`` (static) applied to h [N, T, D]."""
    lo = index * spec.layers_per_segment
    layers = jax.tree.map(lambda x: x[lo : lo + spec.layers_per_segment], params.layers)
    h, _ = jax.lax.scan(lambda h, p: (block(spec, p, h), None), h, layers)
    return h


def head(spec: TransformerSpec, params: TransformerParams, h: jnp.ndarray) -> jnp.ndarray:
    """Final LayerNorm and the tied LM head: [.., T, D] → logits [.., T, V]."""
    return layer_norm(h, params.lnf_scale, params.lnf_bias, spec.eps) @ params.tok_emb.T


Inject = Callable[[int, jnp.ndarray], jnp.ndarray]


def forward(spec: TransformerSpec, params: TransformerParams, tokens: jnp.ndarray, inject: Inject) -> jnp.ndarray:
    """Logits [N, T, V]; ``inject(segment, h)`` replaces the hidden states after each segment."""
    h = embed(params, tokens)
    for i in range(spec.num_segments):
        h = inject(i, segment(spec, params, i, h))
    return head(spec, params, h)


def forward_many(spec: TransformerSpec, params: TransformerParams, tokens: jnp.ndarray, inject: Inject) -> jnp.ndarray:
    """Like ``forward`` over a leading axis of hidden-state variants: h starts as [1, N, T, D], each segment is
    vmapped over the variants and ``inject(segment, h)`` may change how many there are. Returns the final hidden
    states [P, N, T, D] (the caller applies ``head``, so it can score variants without materialising all logits)."""
    h = embed(params, tokens)[None]
    for i in range(spec.num_segments):
        h = inject(i, jax.vmap(lambda x, i=i: segment(spec, params, i, x))(h))
    return h


def no_injection(index: int, h: jnp.ndarray) -> jnp.ndarray:
    return h
