"""Training-image augmentation on device, keyed: upstream's CPU loader transform (src/esper/utils/data.py), off
by default (``HostConfig.augment``; upstream's ``--gpu-preload`` path has none)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def augment(images: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    """Upstream's training transform on a batch [B, H, W, C] (stored pixels, before normalisation):
    ``RandomCrop(H, padding=4)`` (zero padding, so a padded pixel is black, as torchvision pads the PIL image)
    then ``RandomHorizontalFlip()``, independently per image."""
    b, h, w, c = images.shape
    k_y, k_x, k_flip = jax.random.split(key, 3)
    dy = jax.random.randint(k_y, (b,), 0, 9)
    dx = jax.random.randint(k_x, (b,), 0, 9)
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    padded = jnp.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))

    def one(image, y, x, f):
        crop = jax.lax.dynamic_slice(image, (y, x, 0), (h, w, c))
        return jnp.where(f, crop[:, ::-1, :], crop)

    return jax.vmap(one)(padded, dy, dx, flip)
