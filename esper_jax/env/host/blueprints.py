"""The 7 CNN seed blueprints of docs/environment.md#blueprints as pure functions over one flat parameter vector per
slot.

A slot's seed parameters are a *union*: one float vector as long as the largest blueprint at the slot's channel
count C (conv_heavy, 18C² + 4C), which every blueprint reads its tensors from at static offsets. Selecting the
blueprint is ``lax.switch`` on its branch index (under ``vmap`` over envs XLA evaluates every branch and selects;
at these sizes that is cheap). Initialisation is table-driven, so a newly germinated seed costs one uniform draw:
``flat = u · bound[bp] + const[bp]``, with MULTIPLY's zero-init of the last layer (docs/environment.md#blueprints) a
mask on top.

Blueprints (x: [N, H, W, C], GN = GroupNorm with ``num_groups(C)`` groups, convs without bias):

* norm        x + tanh(s)·(GN(x) − x), s = 0                                   identity at birth
* attention   SE: x · σ(W₂ ReLU(W₁ GAP(x)) + b₂), W₂ = 0, b₂ = 3              x·0.953 at birth (quirk 7, see below)
* depthwise   x + ReLU(GN(pw1×1(dw3×3(x))))                                     not identity
* bottleneck  x + GN(up1×1(ReLU(conv3×3(ReLU(down1×1(x)))))), b = max(8, C/4), up = 0     identity
* conv_small  x + ReLU(GN(conv1×1(x))), conv = 0                                identity
* conv_light  x + ReLU(GN(conv3×3(x)))                                          not identity
* conv_heavy  x + two stacked [conv3×3 → GN → ReLU]                             not identity

Quirk 7 (``compat``): ``upstream`` keeps the SE gate σ(·) with b₂ = 3 and MULTIPLY's zero-init also zeroes b₂
(gate 0.5: MULTIPLY+attention is not identity at birth); ``fixed`` uses the gate 2σ(·) with b₂ = 0, the same
parameter count, identity at birth under every blend style.

Quirk 16 (``compat``, docs/compat.md): ``upstream`` keeps the three residual branches above that are not the
identity at birth. ``fixed`` ends each of them in its last GroupNorm with scale 0 and drops the ReLU after it —
depthwise x + GN(pw(dw(x))), conv_light x + GN(conv(x)), conv_heavy x + GN₂(conv₂(ReLU(GN₁(conv₁(x))))) — the
zero-γ init of residual branches: every blueprint is the identity at birth, the branch still gets a gradient
(through the scale), and the parameter counts are unchanged. MULTIPLY's last-layer zero-init then falls on that
scale.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from esper_jax.contracts import CNN_BLUEPRINTS, NUM_BLUEPRINTS, BlueprintAction, Compat
from esper_jax.env.host.cnn import conv, depthwise_conv, group_norm, torch_uniform_bound

SE_BIRTH_BIAS = 3.0  # upstream's SE gate bias: σ(3) = 0.953
NUM_SEEDS = len(CNN_BLUEPRINTS)
# Branch index of every BlueprintAction (the non-CNN ones are masked out by the policy and never germinated here).
BRANCH_OF_BLUEPRINT = np.zeros(NUM_BLUEPRINTS, np.int32)
for _i, _bp in enumerate(CNN_BLUEPRINTS):
    BRANCH_OF_BLUEPRINT[_bp] = _i


def num_groups(channels: int) -> int:
    """Upstream's ``get_num_groups``: the largest of 32/16/8/4/2/1 leaving ≥ 16 channels per group, else the
    largest of them dividing C (C = 8 → 8, 16 → 1, 32 → 2, 64 → 4, 128 → 8)."""
    candidates = (32, 16, 8, 4, 2, 1)
    for g in candidates:
        if channels % g == 0 and channels // g >= 16:
            return g
    return next(g for g in candidates if channels % g == 0)


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    init: str  # "uniform" (bound 1/√fan_in), "zeros", "ones", "se_bias"
    fan_in: int = 1
    last: bool = False  # zero-initialised under the MULTIPLY style

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _tensors(blueprint: BlueprintAction, c: int, compat: Compat = "upstream") -> tuple[Tensor, ...]:
    b = max(8, c // 4)
    q = max(1, c // 4)
    zero_gamma = compat != "upstream"  # quirk 16: the branch's last norm starts at scale 0 (fixed)

    def gn(tag: str) -> tuple[Tensor, Tensor]:
        return Tensor(f"{tag}_scale", (c,), "ones"), Tensor(f"{tag}_bias", (c,), "zeros")

    def last_gn(tag: str) -> tuple[Tensor, Tensor]:
        # Under fixed the zero scale is what makes the branch 0 at birth, so MULTIPLY's last-layer zero-init lands
        # on it (a no-op) instead of on the conv before it, which would leave the branch without any gradient.
        if zero_gamma:
            return Tensor(f"{tag}_scale", (c,), "zeros", last=True), Tensor(f"{tag}_bias", (c,), "zeros")
        return gn(tag)

    table = {
        BlueprintAction.NORM: (*gn("gn"), Tensor("s", (1,), "zeros")),
        BlueprintAction.ATTENTION: (
            Tensor("w1", (c, q), "uniform", c),
            Tensor("w2", (q, c), "zeros", q, last=True),
            Tensor("b2", (c,), "se_bias", q, last=True),
        ),
        BlueprintAction.DEPTHWISE: (
            Tensor("dw", (3, 3, c), "uniform", 9),
            Tensor("pw", (1, 1, c, c), "uniform", c, last=not zero_gamma),
            *last_gn("gn"),
        ),
        BlueprintAction.BOTTLENECK: (
            Tensor("down", (1, 1, c, b), "uniform", c),
            Tensor("conv", (3, 3, b, b), "uniform", 9 * b),
            Tensor("up", (1, 1, b, c), "zeros", b, last=True),
            *gn("gn"),
        ),
        BlueprintAction.CONV_SMALL: (Tensor("conv", (1, 1, c, c), "zeros", c, last=True), *gn("gn")),
        BlueprintAction.CONV_LIGHT: (Tensor("conv", (3, 3, c, c), "uniform", 9 * c, last=not zero_gamma), *last_gn("gn")),
        BlueprintAction.CONV_HEAVY: (
            Tensor("conv1", (3, 3, c, c), "uniform", 9 * c),
            *gn("gn1"),
            Tensor("conv2", (3, 3, c, c), "uniform", 9 * c, last=not zero_gamma),
            *last_gn("gn2"),
        ),
    }
    return table[blueprint]


@dataclasses.dataclass(frozen=True)
class SlotLayout:
    """Static layout of one slot's parameter union at ``channels`` (hashable)."""

    channels: int
    compat: Compat
    eps: float = 1e-5

    @functools.cached_property
    def tensors(self) -> tuple[tuple[Tensor, ...], ...]:
        return tuple(_tensors(bp, self.channels, self.compat) for bp in CNN_BLUEPRINTS)

    @property
    def param_counts(self) -> np.ndarray:
        """int [7]: parameters of each blueprint (branch order)."""
        return np.asarray([sum(t.size for t in ts) for ts in self.tensors], np.int64)

    @property
    def size(self) -> int:
        return int(self.param_counts.max())

    @property
    def max_tensors(self) -> int:
        return max(len(ts) for ts in self.tensors)

    def unpack(self, branch: int, flat: jnp.ndarray) -> dict[str, jnp.ndarray]:
        out, offset = {}, 0
        for t in self.tensors[branch]:
            out[t.name] = flat[offset : offset + t.size].reshape(t.shape)
            offset += t.size
        return out

    def _table(self, fill: Callable[[Tensor], tuple[float, float, bool]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        bound = np.zeros((NUM_SEEDS, self.size), np.float32)
        const = np.zeros((NUM_SEEDS, self.size), np.float32)
        last = np.zeros((NUM_SEEDS, self.size), bool)
        for i, ts in enumerate(self.tensors):
            offset = 0
            for t in ts:
                b, c, is_last = fill(t)
                bound[i, offset : offset + t.size] = b
                const[i, offset : offset + t.size] = c
                last[i, offset : offset + t.size] = is_last
                offset += t.size
        return bound, const, last

    @functools.cached_property
    def init_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bound, const, last) [7, U]: init = u·bound + const with u ~ U(−1, 1); ``last`` zeroed under MULTIPLY."""
        se_bias = SE_BIRTH_BIAS if self.compat == "upstream" else 0.0

        def fill(t: Tensor) -> tuple[float, float, bool]:
            if t.init == "uniform":
                return torch_uniform_bound(t.fan_in), 0.0, t.last
            if t.init == "ones":
                return 0.0, 1.0, t.last
            if t.init == "se_bias":
                return 0.0, se_bias, t.last
            return 0.0, 0.0, t.last

        return self._table(fill)

    @functools.cached_property
    def segments(self) -> np.ndarray:
        """int32 [7, U]: tensor index of every union entry per blueprint (``max_tensors`` past the end)."""
        seg = np.full((NUM_SEEDS, self.size), self.max_tensors, np.int32)
        for i, ts in enumerate(self.tensors):
            offset = 0
            for j, t in enumerate(ts):
                seg[i, offset : offset + t.size] = j
                offset += t.size
        return seg

    # ---- init and apply ------------------------------------------------------------------------------------

    def init(self, key: jax.Array, branch: jnp.ndarray, multiply: jnp.ndarray) -> jnp.ndarray:
        """A fresh union vector [U] for blueprint ``branch``; ``multiply`` applies MULTIPLY's last-layer zero-init."""
        bound, const, last = (jnp.asarray(t) for t in self.init_tables)
        u = jax.random.uniform(key, (self.size,), jnp.float32, -1.0, 1.0)
        flat = u * bound[branch] + const[branch]
        return jnp.where(multiply & last[branch], 0.0, flat)

    def apply(self, branch: jnp.ndarray, flat: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
        """Seed output s = seed(x), same shape as x."""
        fns = [functools.partial(self._apply_one, i) for i in range(NUM_SEEDS)]
        return jax.lax.switch(branch, fns, flat, x)

    def _gn(self, p: dict, tag: str, x: jnp.ndarray) -> jnp.ndarray:
        return group_norm(x, num_groups(x.shape[-1]), p[f"{tag}_scale"], p[f"{tag}_bias"], self.eps)

    def _apply_one(self, branch: int, flat: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
        p = self.unpack(branch, flat)
        bp = CNN_BLUEPRINTS[branch]
        relu = jax.nn.relu
        if bp == BlueprintAction.NORM:
            return x + jnp.tanh(p["s"][0]) * (self._gn(p, "gn", x) - x)
        if bp == BlueprintAction.ATTENTION:
            z = relu(jnp.mean(x, axis=(1, 2)) @ p["w1"]) @ p["w2"] + p["b2"]
            gate = jax.nn.sigmoid(z) if self.compat == "upstream" else 2.0 * jax.nn.sigmoid(z)
            return x * gate[:, None, None, :]
        # Quirk 16: under fixed the residual branches that are not 0 at birth end in their zero-scale norm, without
        # the ReLU after it (relu'(0) = 0 would stop every gradient into a branch that starts at 0).
        last = (lambda z: z) if self.compat != "upstream" else relu
        if bp == BlueprintAction.DEPTHWISE:
            return x + last(self._gn(p, "gn", conv(depthwise_conv(x, p["dw"]), p["pw"])))
        if bp == BlueprintAction.BOTTLENECK:
            inner = relu(conv(relu(conv(x, p["down"])), p["conv"]))
            return x + self._gn(p, "gn", conv(inner, p["up"]))
        if bp == BlueprintAction.CONV_SMALL:
            return x + relu(self._gn(p, "gn", conv(x, p["conv"])))
        if bp == BlueprintAction.CONV_LIGHT:
            return x + last(self._gn(p, "gn", conv(x, p["conv"])))
        h = relu(self._gn(p, "gn1", conv(x, p["conv1"])))
        return x + last(self._gn(p, "gn2", conv(h, p["conv2"])))
