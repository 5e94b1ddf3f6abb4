"""Action masks and causal relevance (docs/policy-and-ppo.md#masks), as pure functions of an Observation.

Upstream (``tamiyo/policy/action_masks.py``) builds each env's masks with Python loops over slots and stacks envs
one by one. Here the rules are written once for a single env as array expressions over the slot axis, then vmapped
over however many leading axes the observation carries ([E], [T, E], ...), and compiled with the config static. The
cost of a call therefore does not grow with the slot count in Python, only in the (tiny) array work.

Masks are True where an action is valid. Every head always has at least one valid action, except ``slot`` for an
env with no enabled slot (the policy raises on that row, as upstream does).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from esper_jax.contracts import (
    ADVANCEABLE_STAGES,
    ALPHA_SETTABLE_STAGES,
    CANONICAL_STYLE,
    CAUSAL_RELEVANCE,
    CNN_BLUEPRINTS,
    FOSSILIZABLE_STAGES,
    HEAD_NAMES,
    MIN_PRUNE_AGE,
    NUM_BLUEPRINTS,
    NUM_OPS,
    PRUNABLE_STAGES,
    TOPOLOGIES,
    TRANSFORMER_BLUEPRINTS,
    AlphaCurveAction,
    AlphaMode,
    AlphaSpeedAction,
    AlphaTargetAction,
    BlueprintAction,
    GerminationStyle,
    LifecycleOp,
    PerHead,
    TempoAction,
)
from esper_jax.observation import Observation

__all__ = ["MaskConfig", "compute", "compute_env", "causal_relevance", "expand_time"]


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """Run-level settings of the mask rules. Frozen and hashable: it is a static argument of the jitted ``compute``.

    ``max_seeds`` 0 means no seed limit. ``allow_governor_override`` relaxes only PRUNE's alpha-mode condition.
    """

    max_seeds: int = 0
    topology: str = "cnn"
    allow_governor_override: bool = False

    def __post_init__(self) -> None:
        # Upstream maps any topology string other than "transformer" to the CNN set without a word; a typo there
        # silently trains on the wrong blueprints, so an unknown name is an error here.
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {TOPOLOGIES}, got {self.topology!r}")
        # Python scalars only: the config is hashed as a jit static argument and written to config.json.
        if type(self.max_seeds) is not int:
            raise TypeError(f"MaskConfig.max_seeds must be a Python int (0 = unlimited), got {self.max_seeds!r}")
        if self.max_seeds < 0:
            raise ValueError(f"MaskConfig.max_seeds must be >= 0 (0 = unlimited), got {self.max_seeds}")
        if type(self.allow_governor_override) is not bool:
            raise TypeError(f"MaskConfig.allow_governor_override must be a bool, got {self.allow_governor_override!r}")


def _blueprint_mask(topology: str) -> np.ndarray:
    valid = TRANSFORMER_BLUEPRINTS if topology == "transformer" else CNN_BLUEPRINTS
    mask = np.zeros(NUM_BLUEPRINTS, dtype=bool)
    mask[[int(b) for b in valid]] = True
    # NOOP germinates a seed with no parameters; upstream forces it off whatever the topology set says.
    mask[BlueprintAction.NOOP] = False
    return mask


def _in_stages(stage: jnp.ndarray, stages: tuple[int, ...]) -> jnp.ndarray:
    """Elementwise ``stage in stages``; one comparison per listed stage, independent of the slot count."""
    return jnp.any(stage[..., None] == jnp.asarray([int(s) for s in stages], dtype=stage.dtype), axis=-1)


def _only(index: int, size: int) -> jnp.ndarray:
    return jnp.arange(size) == index


def _env_masks(
    enabled: jnp.ndarray,
    has_report: jnp.ndarray,
    stage: jnp.ndarray,
    seed_age: jnp.ndarray,
    alpha_mode: jnp.ndarray,
    total_seeds: jnp.ndarray,
    config: MaskConfig,
) -> PerHead:
    """The rules of docs/policy-and-ppo.md#masks for one env: slot fields are [S], ``total_seeds`` is a scalar."""
    enabled = enabled.astype(bool)
    has_report = has_report.astype(bool)
    stage = stage.astype(jnp.int32)
    occupied = enabled & has_report  # any present report (DORMANT included) blocks germination into the slot
    in_hold = alpha_mode == AlphaMode.HOLD

    limit_reached = jnp.asarray(config.max_seeds > 0) & (total_seeds >= config.max_seeds)
    can_germinate = jnp.any(enabled & ~has_report) & ~limit_reached

    # Per-slot permissions, then an optimistic OR over slots: an op is offered if any enabled slot allows it; the
    # slot head is not conditioned on the op, so a bad slot/op pairing fails at execution time, as upstream.
    can_advance = occupied & _in_stages(stage, ADVANCEABLE_STAGES)
    can_fossilize = occupied & _in_stages(stage, FOSSILIZABLE_STAGES)
    prune_mode_ok = in_hold | config.allow_governor_override
    can_prune = occupied & _in_stages(stage, PRUNABLE_STAGES) & (seed_age >= MIN_PRUNE_AGE) & prune_mode_ok
    retargetable = occupied & _in_stages(stage, ALPHA_SETTABLE_STAGES) & in_hold

    op_bits = {
        LifecycleOp.WAIT: jnp.asarray(True),
        LifecycleOp.GERMINATE: can_germinate,
        LifecycleOp.SET_ALPHA_TARGET: jnp.any(retargetable),
        LifecycleOp.PRUNE: jnp.any(can_prune),
        LifecycleOp.FOSSILIZE: jnp.any(can_fossilize),
        LifecycleOp.ADVANCE: jnp.any(can_advance),
    }
    op = jnp.stack([op_bits[o] for o in LifecycleOp])

    # Style and alpha target only matter for GERMINATE and SET_ALPHA_TARGET; when neither is possible the heads
    # collapse onto one fixed choice so they carry no spurious entropy.
    free_choice = can_germinate | jnp.any(retargetable)
    style = free_choice | _only(CANONICAL_STYLE, len(GerminationStyle))
    alpha_target = free_choice | _only(AlphaTargetAction.FULL, len(AlphaTargetAction))

    return PerHead(
        slot=enabled,
        blueprint=jnp.asarray(_blueprint_mask(config.topology)),
        style=style,
        tempo=jnp.ones(len(TempoAction), dtype=bool),
        alpha_target=alpha_target,
        alpha_speed=jnp.ones(len(AlphaSpeedAction), dtype=bool),
        alpha_curve=jnp.ones(len(AlphaCurveAction), dtype=bool),
        op=op,
    )


def _mask_inputs(obs: Observation) -> tuple[jnp.ndarray, ...]:
    s = obs.slots
    return (s.enabled, s.has_report, s.stage, s.seed_age, s.alpha_mode, obs.signals.total_seeds)


def compute_env(obs: Observation, config: MaskConfig = MaskConfig()) -> PerHead:
    """Masks of ONE env (slot leaves [S], signals scalars): ``PerHead`` of bool [n] per head. Not jitted, so it
    can be traced inside a caller's own jit/vmap/scan."""
    return _env_masks(*_mask_inputs(obs), config=config)


@functools.partial(jax.jit, static_argnames=("config",))
def compute(obs: Observation, config: MaskConfig = MaskConfig()) -> PerHead:
    """Masks for an observation with any leading axes ``[...]``: ``PerHead`` of bool ``[..., n]`` per head
    (slot [..., S], blueprint 13, style 4, tempo 3, alpha_target 3, alpha_speed 4, alpha_curve 5, op 6)."""
    inputs = _mask_inputs(obs)
    batch_ndim = jnp.ndim(inputs[0]) - 1
    if batch_ndim < 0:
        raise ValueError("obs.slots.enabled must have a slot axis (shape [..., S])")
    batch_shape = jnp.shape(inputs[0])[:-1]
    if jnp.shape(inputs[-1]) != batch_shape:
        raise ValueError(
            f"obs.signals.total_seeds has shape {jnp.shape(inputs[-1])}, expected the slot leaves' leading shape "
            f"{batch_shape}"
        )
    fn = functools.partial(_env_masks, config=config)
    for _ in range(batch_ndim):
        fn = jax.vmap(fn)
    return fn(*inputs)


_CAUSAL_TABLE = np.asarray(CAUSAL_RELEVANCE, dtype=bool)  # [op, head]


def causal_relevance(op: jnp.ndarray) -> PerHead:
    """Which heads' choices mattered for each op (docs/policy-and-ppo.md#masks): ``PerHead`` of bool arrays shaped like
    ``op``.

    Read from ``CAUSAL_RELEVANCE``. The op head is always relevant. An op value outside LifecycleOp makes no
    other head relevant (upstream's formula would mark ``slot`` relevant for it, being ``op != WAIT``); sampled
    ops are always in range, so the two never differ in practice.
    """
    op = jnp.asarray(op)
    one_hot = op[..., None] == jnp.arange(NUM_OPS, dtype=op.dtype)  # [..., ops]
    relevant = jnp.any(one_hot[..., :, None] & jnp.asarray(_CAUSAL_TABLE), axis=-2)  # [..., heads]
    heads = {name: relevant[..., i] for i, name in enumerate(HEAD_NAMES)}
    heads["op"] = jnp.ones(op.shape, dtype=bool)
    return PerHead.from_dict(heads)


@functools.partial(jax.jit, static_argnames=("num_steps",))
def expand_time(masks: PerHead, num_steps: int = 1) -> PerHead:
    """Give single-step masks a time axis: each ``[..., n]`` leaf becomes ``[..., num_steps, n]`` (a broadcast).

    The counterpart of upstream's ``expand_mask``, which ``LSTMPolicyBundle.forward`` re-created as a closure on
    every call: this is one module-level function, traced once per input shape. Heads set to None stay
    None (they are not pytree leaves).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return jax.tree.map(functools.partial(_add_time_axis, num_steps=num_steps), masks)


def _add_time_axis(mask: jnp.ndarray, num_steps: int) -> jnp.ndarray:
    if mask.ndim < 1:
        raise ValueError(f"a mask needs an action axis, got shape {mask.shape}")
    shape = mask.shape[:-1] + (num_steps,) + mask.shape[-1:]
    return jnp.broadcast_to(jnp.expand_dims(mask, -2), shape)
