"""The torch-layout LSTM: ``TorchLSTM`` with torch's parameterisation (two bias vectors, gate order i, f, g, o) and
a recurrence with its own VJP (``_recurrence``), so that the kernel gradient is one matmul after the reverse loop
instead of a read-modify-write per step.

Shapes: ``x [..., T, in]``; the carry is ``LSTMCarry(h, c)`` with ``[..., L, H]`` (batch axes leading, unlike
torch's ``[L, B, H]``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esper_jax.initializers import orthogonal

__all__ = ["FORGET_BIAS", "LSTMCarry", "TorchLSTM", "matmul"]

FORGET_BIAS = 1.0  # in each of bias_ih and bias_hh: effective 2.0


@struct.dataclass
class LSTMCarry:
    """LSTM state, each ``[..., L, H]`` with the batch axes leading. Torch's hidden tuple is (h, c) too."""

    h: jax.Array
    c: jax.Array


def matmul(x: jax.Array, kernel: jax.Array, matmul_dtype: Any) -> jax.Array:
    """``x @ kernel`` with both operands rounded to ``matmul_dtype`` and the result in ``x``'s dtype.

    With ``matmul_dtype`` equal to ``x``'s dtype this is exactly ``x @ kernel``. A kernel already stored in
    ``matmul_dtype`` (``policy.cast_kernels``) is used as is, so a scan over steps reads the narrow copy.
    """
    if jnp.dtype(matmul_dtype) == x.dtype and kernel.dtype == x.dtype:
        return x @ kernel
    return jnp.matmul(x.astype(matmul_dtype), kernel.astype(matmul_dtype), preferred_element_type=x.dtype)


def _forget_bias_init(hidden: int):
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        del key
        return jnp.zeros(shape, dtype).at[hidden : 2 * hidden].set(FORGET_BIAS)

    return init


class TorchLSTM(nn.Module):
    """Stacked unidirectional LSTM with torch's parameterisation.

    Per layer: ``kernel_ih [in, 4H]`` and ``kernel_hh [H, 4H]`` (torch ``weight_*_l{k}`` transposed) and two biases
    ``bias_ih``/``bias_hh`` [4H]; gate blocks (i, f, g, o). The input projection of all T steps is one matmul
    (torch's CPU kernel precomputes it the same way); only the recurrence runs in ``lax.scan``.
    """

    hidden: int
    layers: int
    dtype: Any
    matmul_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, carry: LSTMCarry) -> tuple[jax.Array, LSTMCarry]:
        h_out, c_out = [], []
        for layer in range(self.layers):
            kernel_ih = self.param(
                f"kernel_ih_l{layer}", orthogonal(), (x.shape[-1], 4 * self.hidden), self.dtype
            )
            kernel_hh = self.param(
                f"kernel_hh_l{layer}", orthogonal(), (self.hidden, 4 * self.hidden), self.dtype
            )
            bias_ih = self.param(f"bias_ih_l{layer}", _forget_bias_init(self.hidden), (4 * self.hidden,), self.dtype)
            bias_hh = self.param(f"bias_hh_l{layer}", _forget_bias_init(self.hidden), (4 * self.hidden,), self.dtype)
            x, (h_t, c_t) = _lstm_layer(
                x.astype(self.dtype),
                (carry.h[..., layer, :], carry.c[..., layer, :]),
                kernel_ih,
                kernel_hh,
                bias_ih,
                bias_hh,
                matmul_dtype=self.matmul_dtype,
            )
            h_out.append(h_t)
            c_out.append(c_t)
        return x, LSTMCarry(h=jnp.stack(h_out, axis=-2), c=jnp.stack(c_out, axis=-2))


def _lstm_layer(
    x: jax.Array,
    hc: tuple[jax.Array, jax.Array],
    kernel_ih: jax.Array,
    kernel_hh: jax.Array,
    bias_ih: jax.Array,
    bias_hh: jax.Array,
    unroll: int | bool = 1,
    matmul_dtype: Any = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One layer over ``x [..., T, in]`` from ``hc`` ([..., H] each); returns ([..., T, H], (h_T, c_T)).
    ``unroll``: of the recurrence scans (a speed experiment's knob, ``bench.levers``; 1 in the network)."""
    mm = x.dtype if matmul_dtype is None else matmul_dtype
    input_gates = jnp.moveaxis(matmul(x, kernel_ih, mm) + bias_ih, -2, 0)  # [T, ..., 4H]
    h0, c0 = hc[0].astype(x.dtype), hc[1].astype(x.dtype)
    ys, h_t, c_t = _recurrence(kernel_hh, bias_hh, input_gates, h0, c0, np.dtype(mm).name, unroll)
    return jnp.moveaxis(ys, 0, -2), (h_t, c_t)


def _cell(h, c, gates_x, kernel_hh, bias_hh, mm):
    """One LSTM step; returns the new (h, c) and the gate activations (i, f, g, o) the backward pass needs."""
    hidden = kernel_hh.shape[0]
    gates = (matmul(h, kernel_hh, mm) + bias_hh) + gates_x  # torch: linear_hh(hx).add_(precomputed input)
    i = jax.nn.sigmoid(gates[..., :hidden])
    f = jax.nn.sigmoid(gates[..., hidden : 2 * hidden])
    g = jnp.tanh(gates[..., 2 * hidden : 3 * hidden])
    o = jax.nn.sigmoid(gates[..., 3 * hidden :])
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return h, c, (i, f, g, o)


def _recurrence_forward(kernel_hh, bias_hh, input_gates, h0, c0, mm, unroll):
    def step(state, gates_x):
        h_prev, c_prev = state
        h, c, acts = _cell(h_prev, c_prev, gates_x, kernel_hh, bias_hh, mm)
        return (h, c), (h, (h_prev, c_prev, c, acts))

    (h_t, c_t), (ys, saved) = jax.lax.scan(step, (h0, c0), input_gates, unroll=unroll)
    return (ys, h_t, c_t), saved


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _recurrence(kernel_hh, bias_hh, input_gates, h0, c0, mm, unroll):
    """The LSTM recurrence over ``input_gates [T, ..., 4H]``: ``(ys [T, ..., H], h_T, c_T)``.

    Its own backward pass, because autodiff of the scan would add each step's ``h_{t-1}ᵀ · dgates_t`` into the
    [H, 4H] kernel gradient inside the reverse loop: T read-modify-writes of a 4 MB array (at batch 4 each is a
    rank-4 update, bandwidth-bound), and under SPMD one all-reduce per step. Here the reverse loop carries only
    (dh, dc) and emits dgates; the kernel gradient is then one [H, T·B] × [T·B, 4H] matmul, as torch's and
    cuDNN's LSTM backward compute it (contracting the leading axes in place). Same maths, different summation order (float32 rounding only).
    """
    return _recurrence_forward(kernel_hh, bias_hh, input_gates, h0, c0, mm, unroll)[0]


def _recurrence_fwd(kernel_hh, bias_hh, input_gates, h0, c0, mm, unroll):
    out, saved = _recurrence_forward(kernel_hh, bias_hh, input_gates, h0, c0, mm, unroll)
    return out, (kernel_hh, bias_hh, saved)


def _recurrence_bwd(mm, unroll, residuals, cotangents):
    kernel_hh, bias_hh, (h_prev, c_prev, c, (i, f, g, o)) = residuals
    d_ys, d_h_t, d_c_t = cotangents
    kernel_t = kernel_hh.T

    def step(carry, xs):
        dh, dc = carry
        dy, cp, c_now, i_, f_, g_, o_ = xs
        dh = dh + dy
        tanh_c = jnp.tanh(c_now)
        dc = dc + dh * o_ * (1.0 - tanh_c * tanh_c)
        dgates = jnp.concatenate(
            [
                dc * g_ * i_ * (1.0 - i_),  # input gate (sigmoid)
                dc * cp * f_ * (1.0 - f_),  # forget gate (sigmoid)
                dc * i_ * (1.0 - g_ * g_),  # cell candidate (tanh)
                dh * tanh_c * o_ * (1.0 - o_),  # output gate (sigmoid)
            ],
            axis=-1,
        )
        dh_prev = matmul(dgates, kernel_t, mm)
        return (dh_prev, dc * f_), dgates

    (dh0, dc0), dgates = jax.lax.scan(
        step, (d_h_t, d_c_t), (d_ys, c_prev, c, i, f, g, o), reverse=True, unroll=unroll
    )
    # Contract over the leading (T, batch...) axes in place, not after a reshape to [T·B, ...]: with the batch split
    # over devices, flattening T·B would gather every device's rows; contracting leaves one all-reduce of [H, 4H].
    lead = tuple(range(h_prev.ndim - 1))
    d_kernel = jax.lax.dot_general(h_prev.astype(mm), dgates.astype(mm), ((lead, lead), ((), ())),
                                   preferred_element_type=h_prev.dtype).astype(kernel_hh.dtype)
    d_bias = jnp.sum(dgates, axis=lead).astype(bias_hh.dtype)
    return d_kernel, d_bias, dgates, dh0, dc0


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
