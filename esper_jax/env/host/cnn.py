"""The host CNN (upstream's ``CNNHost``, docs/environment.md#interface) and the small layers the seeds share with it.

Block ``i`` = k×k conv (no bias) → norm → ReLU with ``channels[i]`` outputs, 2×2 max-pool after it while
``i < pool_layers``, then global average pool and a linear classifier. The norm is BatchNorm with batch
statistics only (no running statistics, so the env state stays small; docs/environment.md#oracles); validation
normalises with the validation batch's own statistics. One injection point per block, after its pooling (slot
``r0c{i}``).

Convolutions are matmuls (``conv``): under ``vmap`` over envs (every env has its own weights) a batched matmul,
which XLA runs well on CPU and accelerators alike, where a batched convolution becomes a grouped convolution.
Small maps multiply by the dense conv matrix, larger ones by shifted views (im2col).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

DENSE_MAX_ELEMENTS = 1 << 17  # largest dense conv matrix (H·W·C_in × H·W·C_out entries) ``conv`` builds


def patches(x: jnp.ndarray, kernel_size: int) -> jnp.ndarray:
    """[N, H, W, C] → [N, H, W, k·k, C]: the k×k neighbourhood of every pixel, zero-padded ('same')."""
    if kernel_size == 1:
        return x[:, :, :, None, :]
    pad = kernel_size // 2
    h, w = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    views = [padded[:, dy : dy + h, dx : dx + w, :] for dy in range(kernel_size) for dx in range(kernel_size)]
    return jnp.stack(views, axis=3)


def conv_im2col(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """Reference 'same' convolution (stacked shifted views times a matmul); ``conv`` equals it up to rounding."""
    k = kernel.shape[0]
    return jnp.einsum("nhwpc,pcd->nhwd", patches(x, k), kernel.reshape(k * k, kernel.shape[2], kernel.shape[3]))


@functools.cache
def _tap_map(h: int, w: int, k: int) -> np.ndarray:
    """float32 [H·W, H·W, k·k]: 1 where input pixel p feeds output pixel q through tap t of a 'same' k×k conv."""
    pad = k // 2
    taps = np.zeros((h * w, h * w, k * k), np.float32)
    for y in range(h):
        for x in range(w):
            for dy in range(k):
                for dx in range(k):
                    iy, ix = y + dy - pad, x + dx - pad
                    if 0 <= iy < h and 0 <= ix < w:
                        taps[iy * w + ix, y * w + x, dy * k + dx] = 1.0
    return taps


def dense_conv_matrix(kernel: jnp.ndarray, h: int, w: int) -> jnp.ndarray:
    """[H·W·C_in, H·W·C_out]: the 'same' convolution with ``kernel`` [k, k, C_in, C_out] on an H×W map, as one
    matrix (rows and columns pixel-major, channels minor: an NHWC map flattened per image)."""
    k, _, c_in, c_out = kernel.shape
    dense = jnp.einsum("pqt,tcd->pcqd", jnp.asarray(_tap_map(h, w, k)), kernel.reshape(k * k, c_in, c_out))
    return dense.reshape(h * w * c_in, h * w * c_out)


def _dense_fits(h: int, w: int, c_in: int, c_out: int) -> bool:
    return (h * w) ** 2 * c_in * c_out <= DENSE_MAX_ELEMENTS


def conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """'same' convolution without bias; kernel [k, k, C_in, C_out].

    Three forms, picked by static shape, equal to ``conv_im2col`` up to float rounding: 1×1 is a matmul over
    channels; a small map (dense conv matrix of at most ``DENSE_MAX_ELEMENTS``: every slot and host block on
    digits) is one matmul by the [H·W·C_in, H·W·C_out] conv matrix; a larger map is
    im2col. Why: on CPU under vmap over envs, im2col's stacked copies cost more than the matmul itself at 2×2 and
    4×4 (where 5/9 of a 3×3 kernel's taps read padding anyway), and XLA's convolution becomes a grouped
    convolution that is slower than im2col at every size measured (bench/results/host-speed-*)."""
    k = kernel.shape[0]
    n, h, w, c = x.shape
    if k == 1:
        return jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0])
    if _dense_fits(h, w, c, kernel.shape[3]):
        return (x.reshape(n, h * w * c) @ dense_conv_matrix(kernel, h, w)).reshape(n, h, w, kernel.shape[3])
    return conv_im2col(x, kernel)


def depthwise_conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """'same' depthwise 3×3 convolution without bias; kernel [3, 3, C]."""
    n, h, w, c = x.shape
    if _dense_fits(h, w, c, c):  # the diagonal [3, 3, C, C] kernel as a dense conv matrix
        return conv(x, kernel[:, :, :, None] * jnp.eye(c, dtype=kernel.dtype))
    return jnp.einsum("nhwpc,pc->nhwc", patches(x, 3), kernel.reshape(9, c))


def group_norm(x: jnp.ndarray, groups: int, scale: jnp.ndarray, bias: jnp.ndarray, eps: float) -> jnp.ndarray:
    """GroupNorm (biased variance). Statistics reduce the pixels first, then the group's channels: two short
    reductions over a contiguous layout, instead of one over interleaved axes that XLA's CPU backend runs slowly."""
    n, h, w, c = x.shape
    size = h * w * (c // groups)

    def group_mean(v: jnp.ndarray) -> jnp.ndarray:  # [N, H, W, C] → [N, 1, 1, C]: the mean of each channel's group
        per_group = jnp.sum(jnp.sum(v, axis=(1, 2)).reshape(n, groups, c // groups), axis=-1) / size
        return jnp.repeat(per_group, c // groups, axis=1)[:, None, None, :]

    centred = x - group_mean(x)
    inv = jax.lax.rsqrt(group_mean(jnp.square(centred)) + eps)
    return centred * (inv * scale) + bias


def batch_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, eps: float) -> jnp.ndarray:
    """BatchNorm2d in training mode (biased batch variance), without running statistics."""
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def max_pool(x: jnp.ndarray) -> jnp.ndarray:
    """2×2 max-pool, stride 2: the maximum of four strided views (elementwise, so XLA fuses it; a reduce over
    the reshaped window axes is a slow strided reduction on CPU). Same values as the windowed max."""
    return jnp.maximum(
        jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]), jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2])
    )


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
