"""The host CNN (upstream's ``CNNHost``, docs/environment.md#interface) and the small layers the seeds share with it.

Block ``i`` = k×k conv (no bias) → norm → ReLU with ``channels[i]`` outputs, 2×2 max-pool after it while
``i < pool_layers``, then global average pool and a linear classifier. The norm is BatchNorm with batch
statistics only (no running statistics, so the env state stays small; docs/environment.md#oracles); validation
normalises with the validation batch's own statistics. One injection point per block, after its pooling (slot
``r0c{i}``).

Convolutions are written as shifted views times a matmul: under ``vmap`` over envs (every env has its own
weights) that is a batched matmul, which XLA runs well on CPU and accelerators alike, where a batched convolution
becomes a grouped convolution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def patches(x: jnp.ndarray, kernel_size: int) -> jnp.ndarray:
    """[N, H, W, C] → [N, H, W, k·k, C]: the k×k neighbourhood of every pixel, zero-padded ('same')."""
    if kernel_size == 1:
        return x[:, :, :, None, :]
    pad = kernel_size // 2
    h, w = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    views = [padded[:, dy : dy + h, dx : dx + w, :] for dy in range(kernel_size) for dx in range(kernel_size)]
    return jnp.stack(views, axis=3)


def conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """'same' convolution without bias; kernel [k, k, C_in, C_out]."""
    k = kernel.shape[0]
    return jnp.einsum("nhwpc,pcd->nhwd", patches(x, k), kernel.reshape(k * k, kernel.shape[2], kernel.shape[3]))


def depthwise_conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """'same' depthwise 3×3 convolution without bias; kernel [3, 3, C]."""
    return jnp.einsum("nhwpc,pc->nhwc", patches(x, 3), kernel.reshape(9, kernel.shape[-1]))


def group_norm(x: jnp.ndarray, groups: int, scale: jnp.ndarray, bias: jnp.ndarray, eps: float) -> jnp.ndarray:
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
    return ((g - mean) * jax.lax.rsqrt(var + eps)).reshape(n, h, w, c) * scale + bias


def batch_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, eps: float) -> jnp.ndarray:
    """BatchNorm2d in training mode (biased batch variance), without running statistics."""
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def max_pool(x: jnp.ndarray) -> jnp.ndarray:
    n, h, w, c = x.shape
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def torch_uniform_bound(fan_in: int) -> float:
    """PyTorch's default Conv/Linear init bound (kaiming_uniform with a = √5): 1/√fan_in."""
    return 1.0 / float(np.sqrt(fan_in))


@struct.dataclass
class Block:
    kernel: jnp.ndarray  # [k, k, C_in, C_out]
    scale: jnp.ndarray  # [C_out] norm affine
    bias: jnp.ndarray  # [C_out]


@struct.dataclass
class HostParams:
    blocks: tuple[Block, ...]  # one per block, in network order
    head_kernel: jnp.ndarray  # [C_last, classes]
    head_bias: jnp.ndarray  # [classes]


@dataclasses.dataclass(frozen=True)
class HostSpec:
    """Static shape of a host (hashable, part of the static oracle)."""

    input_channels: int
    channels: tuple[int, ...]
    pool_layers: int
    kernel_size: int
    num_classes: int
    eps: float

    def param_count(self) -> int:
        k2 = self.kernel_size**2
        ins = (self.input_channels,) + self.channels[:-1]
        blocks = sum(k2 * i * o + 2 * o for i, o in zip(ins, self.channels))
        return blocks + self.channels[-1] * self.num_classes + self.num_classes

    def slot_size(self, image_hw: tuple[int, int], block: int) -> tuple[int, int]:
        """Spatial size at injection point ``block`` (after its pooling)."""
        pools = min(block + 1, self.pool_layers)
        return image_hw[0] >> pools, image_hw[1] >> pools


def init_host(spec: HostSpec, key: jax.Array) -> HostParams:
    keys = jax.random.split(key, len(spec.channels) + 2)
    k = spec.kernel_size
    blocks = []
    c_in = spec.input_channels
    for i, c_out in enumerate(spec.channels):
        bound = torch_uniform_bound(c_in * k * k)
        blocks.append(Block(
            kernel=jax.random.uniform(keys[i], (k, k, c_in, c_out), jnp.float32, -bound, bound),
            scale=jnp.ones((c_out,), jnp.float32),
            bias=jnp.zeros((c_out,), jnp.float32),
        ))
        c_in = c_out
    bound = torch_uniform_bound(c_in)
    return HostParams(
        blocks=tuple(blocks),
        head_kernel=jax.random.uniform(keys[-2], (c_in, spec.num_classes), jnp.float32, -bound, bound),
        head_bias=jax.random.uniform(keys[-1], (spec.num_classes,), jnp.float32, -bound, bound),
    )


Inject = Callable[[int, jnp.ndarray], jnp.ndarray]


def forward(spec: HostSpec, params: HostParams, images: jnp.ndarray, inject: Inject) -> jnp.ndarray:
    """Logits [N, classes]; ``inject(block, h)`` replaces the features at each injection point (the blocks unroll:
    their shapes differ, this is the network's depth, not a loop over envs or data)."""
    h = images
    for i, block in enumerate(params.blocks):
        h = jax.nn.relu(batch_norm(conv(h, block.kernel), block.scale, block.bias, spec.eps))
        if i < spec.pool_layers:
            h = max_pool(h)
        h = inject(i, h)
    return jnp.mean(h, axis=(1, 2)) @ params.head_kernel + params.head_bias


def forward_many(spec: HostSpec, params: HostParams, images: jnp.ndarray, inject: Inject) -> jnp.ndarray:
    """Like ``forward`` over a leading axis of feature variants: ``h`` starts as ``images[None]`` ([1, N, ...]), every
    host layer is vmapped over the variants (each normalises with its own batch statistics), and ``inject(block, h)``
    may change how many variants there are. Returns logits [P, N, classes]."""
    h = images[None]
    for i, block in enumerate(params.blocks):

        def layer(x, block=block, pool=i < spec.pool_layers):
            x = jax.nn.relu(batch_norm(conv(x, block.kernel), block.scale, block.bias, spec.eps))
            return max_pool(x) if pool else x

        h = inject(i, jax.vmap(layer)(h))
    return jnp.mean(h, axis=(2, 3)) @ params.head_kernel + params.head_bias


def no_injection(block: int, h: jnp.ndarray) -> jnp.ndarray:
    return h
