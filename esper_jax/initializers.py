"""Parameter initialisers of the actor-critic that Flax does not provide in the form we need.

``orthogonal`` draws from the distribution of ``nn.initializers.orthogonal`` but runs its QR on the host (see its
docstring for why).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

__all__ = ["orthogonal"]


def _host_orthogonal_matrix(seed: np.ndarray, shape: tuple[int, ...], gain: float, dtype: Any) -> np.ndarray:
    """``nn.initializers.orthogonal(gain)`` (column axis last) computed in NumPy from a key's bits."""
    rows, cols = math.prod(shape[:-1]), shape[-1]
    rng = np.random.default_rng(np.asarray(seed, np.uint32).ravel().tolist())
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    # One BLAS thread: OpenBLAS threads spin-wait on a busy CPU, and a 2-thread QR of [2048, 512] then took 19 s
    # instead of 0.3 s on a shared 2-core machine; at these sizes a second thread gains nothing anyway.
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))  # the sign fix makes the draw uniform over orthogonal matrices (Haar)
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(dtype)


def orthogonal(gain: float = 1.0):
    """Orthogonal initialiser with the distribution of ``nn.initializers.orthogonal(gain)``, but computed on the
    host: a QR inside the compiled init added seconds of XLA compile per matrix, ~20 s per network config on a
    2-core CPU, for a function that runs once. Deterministic in the key (its bits seed NumPy's generator), and
    usable inside ``jit``, ``eval_shape`` and ``vmap``."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        if len(shape) < 2:
            raise ValueError(f"orthogonal init needs a matrix (rank >= 2), got shape {shape}")
        shape, dtype = tuple(shape), np.dtype(dtype)
        # The matrix crosses the callback boundary as raw bits: JAX canonicalises a callback's float64 result to
        # float32 on the callback thread when x64 is enabled only in the caller's (thread-local) context.
        words = max(dtype.itemsize // 4, 1)
        bits_dtype = np.dtype(f"uint{8 * dtype.itemsize // words}")
        bits_shape = shape + ((words,) if words > 1 else ())

        def host(seed_bits: np.ndarray) -> np.ndarray:
            matrix = np.ascontiguousarray(_host_orthogonal_matrix(seed_bits, shape, gain, dtype))
            return matrix.view(bits_dtype).reshape(bits_shape)

        bits = jax.pure_callback(
            host, jax.ShapeDtypeStruct(bits_shape, bits_dtype), jax.random.key_data(key), vmap_method="sequential"
        )
        return jax.lax.bitcast_convert_type(bits, dtype)

    return init
