"""The shared vocabulary of esper-jax: enums, sizes, slot ordering and the observation layout (the last two live in
``esper_jax.slots`` and ``esper_jax.feature_layout`` and are re-exported here).

Everything here mirrors upstream esper-lite (``leyline``) value for value, so that integer codes stored in
observations, actions and checkpoints mean the same thing on both sides. See docs/policy-and-ppo.md#masks.
"""

from __future__ import annotations

import enum
from typing import Generic, Literal, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Re-exported: the slot ordering and the observation layout live in their own modules.
from esper_jax.feature_layout import (
    BASE_FEATURE_SIZE,
    CAP25,
    DEFAULT_BLUEPRINT_EMBED_DIM,
    DEFAULT_GAMMA,
    EPOCH_NORMALISER,
    HISTORY_LENGTH,
    LOG_LOSS_BASE,
    SLOT_FEATURE_SIZE,
    STAGE_COUNT_DIVISOR,
    BaseFeature,
    SlotFeature,
    feature_size,
    network_input_size,
    slot_feature_offset,
)
from esper_jax.slots import (
    SLOT_ALIASES,
    SlotConfig,
    canonical_slot_id,
)

# --------------------------------------------------------------------------------------------------------------
# Project-wide compatibility switch
# --------------------------------------------------------------------------------------------------------------

Compat = Literal["upstream", "fixed"]
"""``upstream`` reproduces esper-lite 0872525b exactly, quirks included (parity and replay tests use it);
``fixed`` corrects the quirks listed in the README and is the training default."""

COMPAT_MODES: tuple[str, ...] = ("upstream", "fixed")
DEFAULT_COMPAT: Compat = "fixed"


def check_compat(compat: str) -> Compat:
    """Return ``compat`` if it names a known mode, else raise a ValueError that lists the valid ones."""
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat must be one of {COMPAT_MODES}, got {compat!r}")
    return compat  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------
# Lifecycle stages (leyline/stages.py, stage_schema.py)
# --------------------------------------------------------------------------------------------------------------


class SeedStage(enum.IntEnum):
    UNKNOWN = 0
    DORMANT = 1
    GERMINATED = 2
    TRAINING = 3
    BLENDING = 4
    # 5 is retired (was SHADOWING) and is rejected everywhere.
    HOLDING = 6
    FOSSILIZED = 7
    PRUNED = 8
    EMBARGOED = 9
    RESETTING = 10


VALID_STAGES: tuple[SeedStage, ...] = tuple(SeedStage)
NUM_STAGES = len(VALID_STAGES)  # 10: the width of the stage one-hot
MAX_STAGE_VALUE = max(VALID_STAGES)

# stage value -> one-hot position; -1 for values that are not valid stages (5, and anything out of range).
STAGE_TO_INDEX: np.ndarray = np.full(MAX_STAGE_VALUE + 1, -1, dtype=np.int32)
for _position, _stage in enumerate(VALID_STAGES):
    STAGE_TO_INDEX[_stage.value] = _position

VALID_TRANSITIONS: dict[SeedStage, tuple[SeedStage, ...]] = {
    SeedStage.UNKNOWN: (SeedStage.DORMANT,),
    SeedStage.DORMANT: (SeedStage.GERMINATED,),
    SeedStage.GERMINATED: (SeedStage.TRAINING, SeedStage.PRUNED),
    SeedStage.TRAINING: (SeedStage.BLENDING, SeedStage.PRUNED),
    SeedStage.BLENDING: (SeedStage.HOLDING, SeedStage.PRUNED),
    SeedStage.HOLDING: (SeedStage.FOSSILIZED, SeedStage.BLENDING, SeedStage.PRUNED),
    SeedStage.FOSSILIZED: (),
    SeedStage.PRUNED: (SeedStage.EMBARGOED,),
    SeedStage.EMBARGOED: (SeedStage.RESETTING,),
    SeedStage.RESETTING: (SeedStage.DORMANT,),
}

# Derived the way upstream derives them: a stage is prunable / fossilizable if PRUNED / FOSSILIZED is reachable.
PRUNABLE_STAGES: tuple[SeedStage, ...] = tuple(s for s, nxt in VALID_TRANSITIONS.items() if SeedStage.PRUNED in nxt)
FOSSILIZABLE_STAGES: tuple[SeedStage, ...] = tuple(
    s for s, nxt in VALID_TRANSITIONS.items() if SeedStage.FOSSILIZED in nxt
)
ADVANCEABLE_STAGES: tuple[SeedStage, ...] = (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING)
ALPHA_SETTABLE_STAGES: tuple[SeedStage, ...] = (SeedStage.BLENDING, SeedStage.HOLDING)
MIN_PRUNE_AGE = 1  # upstream uses 1 (later esper-lite uses 5).

# --------------------------------------------------------------------------------------------------------------
# Factored actions (leyline/factored_actions.py, leyline/alpha.py)
# --------------------------------------------------------------------------------------------------------------


class LifecycleOp(enum.IntEnum):
    WAIT = 0
    GERMINATE = 1
    SET_ALPHA_TARGET = 2
    PRUNE = 3
    FOSSILIZE = 4
    ADVANCE = 5


NUM_OPS = len(LifecycleOp)


class BlueprintAction(enum.IntEnum):
    NOOP = 0
    CONV_LIGHT = 1
    ATTENTION = 2
    NORM = 3
    DEPTHWISE = 4
    BOTTLENECK = 5
    CONV_SMALL = 6
    CONV_HEAVY = 7
    LORA = 8
    LORA_LARGE = 9
    MLP_SMALL = 10
    MLP = 11
    FLEX_ATTENTION = 12


NUM_BLUEPRINTS = len(BlueprintAction)  # 13
BLUEPRINT_NULL_INDEX = NUM_BLUEPRINTS  # row 13 of the embedding table: "no seed in this slot"
BLUEPRINT_IDS: tuple[str, ...] = tuple(b.name.lower() for b in BlueprintAction)

TOPOLOGIES: tuple[str, ...] = ("cnn", "transformer")
CNN_BLUEPRINTS: tuple[BlueprintAction, ...] = (
    BlueprintAction.CONV_LIGHT,
    BlueprintAction.ATTENTION,
    BlueprintAction.NORM,
    BlueprintAction.DEPTHWISE,
    BlueprintAction.BOTTLENECK,
    BlueprintAction.CONV_SMALL,
    BlueprintAction.CONV_HEAVY,
)
TRANSFORMER_BLUEPRINTS: tuple[BlueprintAction, ...] = (
    BlueprintAction.ATTENTION,
    BlueprintAction.NORM,
    BlueprintAction.LORA,
    BlueprintAction.LORA_LARGE,
    BlueprintAction.MLP_SMALL,
    BlueprintAction.MLP,
    BlueprintAction.FLEX_ATTENTION,
)


class AlphaMode(enum.IntEnum):
    HOLD = 0
    UP = 1
    DOWN = 2


class AlphaCurve(enum.IntEnum):
    LINEAR = 1
    COSINE = 2
    SIGMOID = 3


class AlphaAlgorithm(enum.IntEnum):
    ADD = 1
    MULTIPLY = 2
    GATE = 3


class GerminationStyle(enum.IntEnum):
    LINEAR_ADD = 0
    LINEAR_MULTIPLY = 1
    SIGMOID_ADD = 2
    GATED_GATE = 3


# style -> (blend name, alpha algorithm), leyline's STYLE_TO_KASMINA.
STYLE_TO_KASMINA: dict[GerminationStyle, tuple[str, AlphaAlgorithm]] = {
    GerminationStyle.LINEAR_ADD: ("linear", AlphaAlgorithm.ADD),
    GerminationStyle.LINEAR_MULTIPLY: ("linear", AlphaAlgorithm.MULTIPLY),
    GerminationStyle.SIGMOID_ADD: ("sigmoid", AlphaAlgorithm.ADD),
    GerminationStyle.GATED_GATE: ("gated", AlphaAlgorithm.GATE),
}
# The style every op other than GERMINATE / SET_ALPHA_TARGET is forced to (docs/policy-and-ppo.md#masks).
CANONICAL_STYLE = GerminationStyle.SIGMOID_ADD


class TempoAction(enum.IntEnum):
    FAST = 0
    STANDARD = 1
    SLOW = 2


TEMPO_TO_EPOCHS: tuple[int, ...] = (3, 5, 8)


class AlphaTargetAction(enum.IntEnum):
    HALF = 0
    SEVENTY = 1
    FULL = 2


ALPHA_TARGET_VALUES: tuple[float, ...] = (0.5, 0.7, 1.0)


class AlphaSpeedAction(enum.IntEnum):
    INSTANT = 0
    FAST = 1
    MEDIUM = 2
    SLOW = 3


ALPHA_SPEED_TO_STEPS: tuple[int, ...] = (0, 3, 5, 8)


class AlphaCurveAction(enum.IntEnum):
    LINEAR = 0
    COSINE = 1
    SIGMOID_GENTLE = 2
    SIGMOID = 3
    SIGMOID_SHARP = 4


ALPHA_CURVE_TO_CURVE: tuple[AlphaCurve, ...] = (
    AlphaCurve.LINEAR,
    AlphaCurve.COSINE,
    AlphaCurve.SIGMOID,
    AlphaCurve.SIGMOID,
    AlphaCurve.SIGMOID,
)
# LINEAR/COSINE carry 12 but never read it.
ALPHA_CURVE_STEEPNESS: tuple[float, ...] = (12.0, 12.0, 6.0, 12.0, 24.0)

# --------------------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------------------

HEAD_NAMES: tuple[str, ...] = (
    "slot",
    "blueprint",
    "style",
    "tempo",
    "alpha_target",
    "alpha_speed",
    "alpha_curve",
    "op",
)
NUM_HEADS = len(HEAD_NAMES)
MASKED_LOGIT_VALUE = -1e4  # never -inf: a masked logit must stay finite in every dtype


def head_sizes(num_slots: int) -> dict[str, int]:
    """Number of actions of each head, in HEAD_NAMES order (38 + num_slots logits in all)."""
    return {
        "slot": num_slots,
        "blueprint": NUM_BLUEPRINTS,
        "style": len(GerminationStyle),
        "tempo": len(TempoAction),
        "alpha_target": len(AlphaTargetAction),
        "alpha_speed": len(AlphaSpeedAction),
        "alpha_curve": len(AlphaCurveAction),
        "op": NUM_OPS,
    }


T = TypeVar("T")


@struct.dataclass
class PerHead(Generic[T]):
    """One value per action head: masks, actions, logits, log-probs or entropies.

    A pytree with named fields in HEAD_NAMES order, so it passes through jit, vmap and scan unchanged.
    """

    slot: T
    blueprint: T
    style: T
    tempo: T
    alpha_target: T
    alpha_speed: T
    alpha_curve: T
    op: T

    def as_dict(self) -> dict[str, T]:
        return {name: getattr(self, name) for name in HEAD_NAMES}

    @classmethod
    def from_dict(cls, values: dict[str, T]) -> PerHead[T]:
        missing = [h for h in HEAD_NAMES if h not in values]
        extra = [k for k in values if k not in HEAD_NAMES]
        if missing or extra:
            raise KeyError(f"per-head dict must have exactly the keys {HEAD_NAMES}; missing {missing}, extra {extra}")
        return cls(**{h: values[h] for h in HEAD_NAMES})

    def map(self, fn) -> PerHead:
        return jax.tree.map(fn, self)

    def stack(self, axis: int = 0) -> jax.Array:
        """The eight heads' same-shaped arrays as one array with a new head axis at ``axis`` (HEAD_NAMES order)."""
        return jnp.stack([getattr(self, h) for h in HEAD_NAMES], axis=axis)

    @classmethod
    def unstack(cls, stacked: jax.Array, axis: int = 0) -> PerHead:
        """Inverse of ``stack``: split the head axis ``axis`` (length NUM_HEADS, HEAD_NAMES order) into a PerHead."""
        if stacked.shape[axis] != NUM_HEADS:
            raise ValueError(f"PerHead.unstack: axis {axis} must have {NUM_HEADS} heads, got shape {stacked.shape}")
        return cls(**{h: jax.lax.index_in_dim(stacked, i, axis, keepdims=False) for i, h in enumerate(HEAD_NAMES)})


# Causal relevance (leyline/causal_masks.py): CAUSAL_RELEVANCE[op, head] is True when the head's choice matters
# for that op. Rows in LifecycleOp order, columns in HEAD_NAMES order.
_RELEVANT_HEADS: dict[LifecycleOp, tuple[str, ...]] = {
    LifecycleOp.WAIT: ("op",),
    LifecycleOp.GERMINATE: ("op", "slot", "blueprint", "style", "tempo", "alpha_target"),
    LifecycleOp.SET_ALPHA_TARGET: ("op", "slot", "style", "alpha_target", "alpha_speed", "alpha_curve"),
    LifecycleOp.PRUNE: ("op", "slot", "alpha_speed", "alpha_curve"),
    LifecycleOp.FOSSILIZE: ("op", "slot"),
    LifecycleOp.ADVANCE: ("op", "slot"),
}
CAUSAL_RELEVANCE: np.ndarray = np.array(
    [[head in _RELEVANT_HEADS[op] for head in HEAD_NAMES] for op in LifecycleOp], dtype=bool
)
