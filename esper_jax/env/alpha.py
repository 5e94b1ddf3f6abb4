"""Alpha controller (docs/environment.md#alpha-controller): retarget and tick, elementwise over any array shape (here:
slots).

Upstream's ``AlphaController`` is a small per-slot object; here every field is an array and every operation takes
a boolean ``where`` that says which entries it applies to, so the lifecycle can drive all slots at once without
branching.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from esper_jax.contracts import AlphaCurve, AlphaMode


@struct.dataclass
class Controller:
    alpha: jnp.ndarray  # float32
    start: jnp.ndarray  # float32
    target: jnp.ndarray  # float32
    mode: jnp.ndarray  # int32 AlphaMode
    curve: jnp.ndarray  # int32 AlphaCurve
    steepness: jnp.ndarray  # float32
    steps_total: jnp.ndarray  # int32
    steps_done: jnp.ndarray  # int32


def fresh(shape: tuple[int, ...]) -> Controller:
    """Alpha 0 in HOLD: a new seed's controller, and what an instant prune resets to."""
    zeros = jnp.zeros(shape, jnp.float32)
    izeros = jnp.zeros(shape, jnp.int32)
    return Controller(
        alpha=zeros,
        start=zeros,
        target=zeros,
        mode=izeros,
        curve=jnp.full(shape, int(AlphaCurve.LINEAR), jnp.int32),
        steepness=jnp.full(shape, 12.0, jnp.float32),
        steps_total=izeros,
        steps_done=izeros,
    )


def curve_progress(curve: jnp.ndarray, steepness: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """p(t) for t in [0, 1]: LINEAR t; COSINE (1 − cos πt)/2; SIGMOID rescaled so p(0) = 0 and p(1) = 1."""
    linear = t
    cosine = (1.0 - jnp.cos(jnp.pi * t)) / 2.0
    k = jnp.maximum(steepness, 0.1)
    lo = jax_sigmoid(-k / 2.0)
    hi = jax_sigmoid(k / 2.0)
    sigmoid = (jax_sigmoid(k * (t - 0.5)) - lo) / (hi - lo)
    return jnp.where(curve == AlphaCurve.COSINE, cosine, jnp.where(curve == AlphaCurve.SIGMOID, sigmoid, linear))


def jax_sigmoid(x: jnp.ndarray) -> jnp.ndarray:
    return 1.0 / (1.0 + jnp.exp(-x))


def _select(where: jnp.ndarray, new: Controller, old: Controller) -> Controller:
    return Controller(*(o if n is o else jnp.where(where, n, o) for n, o in zip(_fields(new), _fields(old))))


def _fields(c: Controller) -> tuple[jnp.ndarray, ...]:
    return (c.alpha, c.start, c.target, c.mode, c.curve, c.steepness, c.steps_total, c.steps_done)


def retarget(
    ctrl: Controller,
    where: jnp.ndarray,
    target: jnp.ndarray,
    steps: jnp.ndarray,
    curve: jnp.ndarray,
    steepness: jnp.ndarray,
) -> Controller:
    """Start a ramp from the current alpha to ``target`` over ``steps`` ticks where ``where`` holds.

    The caller guarantees HOLD (upstream raises otherwise). Zero steps, or a target equal to the current alpha,
    jumps straight to the target and stays in HOLD.
    """
    target = jnp.asarray(target, jnp.float32)
    steps = jnp.asarray(steps, jnp.int32)
    mode = jnp.where(
        target > ctrl.alpha, AlphaMode.UP, jnp.where(target < ctrl.alpha, AlphaMode.DOWN, AlphaMode.HOLD)
    ).astype(jnp.int32)
    jump = (steps <= 0) | (target == ctrl.alpha)
    new = Controller(
        alpha=jnp.where(jump, target, ctrl.alpha),
        start=ctrl.alpha,
        target=target,
        mode=jnp.where(jump, AlphaMode.HOLD, mode).astype(jnp.int32),
        curve=jnp.broadcast_to(jnp.asarray(curve, jnp.int32), ctrl.curve.shape),
        steepness=jnp.broadcast_to(jnp.asarray(steepness, jnp.float32), ctrl.steepness.shape),
        steps_total=jnp.broadcast_to(steps, ctrl.steps_total.shape),
        steps_done=jnp.zeros_like(ctrl.steps_done),
    )
    return _select(where, new, ctrl)


def tick(ctrl: Controller, where: jnp.ndarray) -> Controller:
    """One controller step where ``where`` holds; a no-op in HOLD. Monotone: clamped to [start, target]."""
    moving = where & (ctrl.mode != AlphaMode.HOLD)
    done = ctrl.steps_done + 1
    finished = done >= ctrl.steps_total
    t = done.astype(jnp.float32) / jnp.maximum(ctrl.steps_total, 1).astype(jnp.float32)
    p = curve_progress(ctrl.curve, ctrl.steepness, t)
    ramp = ctrl.start + (ctrl.target - ctrl.start) * p
    lo = jnp.minimum(ctrl.start, ctrl.target)
    hi = jnp.maximum(ctrl.start, ctrl.target)
    alpha = jnp.where(finished, ctrl.target, jnp.clip(ramp, lo, hi))
    new = ctrl.replace(
        alpha=alpha,
        mode=jnp.where(finished, AlphaMode.HOLD, ctrl.mode).astype(jnp.int32),
        steps_done=done,
    )
    return _select(moving, new, ctrl)


def snap(ctrl: Controller, where: jnp.ndarray, value: float) -> Controller:
    """Fix alpha at ``value`` in HOLD (entering HOLDING or FOSSILIZED snaps to 1.0)."""
    v = jnp.full_like(ctrl.alpha, value)
    new = ctrl.replace(alpha=v, target=v, mode=jnp.zeros_like(ctrl.mode))
    return _select(where, new, ctrl)


def time_to_target(ctrl: Controller) -> jnp.ndarray:
    return ctrl.steps_total - ctrl.steps_done


def velocity(ctrl: Controller) -> jnp.ndarray:
    """(target − start)/steps_total while ramping, else 0."""
    ramping = ctrl.mode != AlphaMode.HOLD
    return jnp.where(
        ramping, (ctrl.target - ctrl.start) / jnp.maximum(ctrl.steps_total, 1).astype(jnp.float32), 0.0
    )


def reset_where(ctrl: Controller, where: jnp.ndarray) -> Controller:
    """What an instant prune does to the controller: alpha, start and target 0, no steps, HOLD. Upstream's
    ``SeedSlot.prune`` leaves the curve and steepness as they were, so they are kept here too."""
    blank = fresh(ctrl.alpha.shape).replace(curve=ctrl.curve, steepness=ctrl.steepness)
    return _select(where, blank, ctrl)


def complete_blending(ctrl: Controller, where: jnp.ndarray) -> Controller:
    """Entering HOLDING (upstream ``_on_blending_complete``): alpha, start and target 1.0, HOLD, all steps done."""
    one = jnp.ones_like(ctrl.alpha)
    new = ctrl.replace(alpha=one, start=one, target=one, mode=jnp.zeros_like(ctrl.mode), steps_done=ctrl.steps_total)
    return _select(where, new, ctrl)
