"""The shared vocabulary of esper-jax: enums, sizes, slot ordering and the observation layout.

Everything here mirrors esper-lite 0872525b (``leyline``) value for value, so that integer codes stored in
observations, actions and checkpoints mean the same thing on both sides. See ``shared/spec/policy.md`` §0–§3.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Generic, Iterable, Literal, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

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
STAGE_SCHEMA_VERSION = 1
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
MIN_PRUNE_AGE = 1  # esper-lite HEAD uses 5; 0872525b uses 1.

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
DEFAULT_BLUEPRINT_EMBED_DIM = 4
BLUEPRINT_IDS: tuple[str, ...] = tuple(b.name.lower() for b in BlueprintAction)
BLUEPRINT_ID_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(BLUEPRINT_IDS)}

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
# The style every op other than GERMINATE / SET_ALPHA_TARGET is forced to (policy.md §3.5).
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
    def from_dict(cls, values: dict[str, T]) -> "PerHead[T]":
        missing = [h for h in HEAD_NAMES if h not in values]
        extra = [k for k in values if k not in HEAD_NAMES]
        if missing or extra:
            raise KeyError(f"per-head dict must have exactly the keys {HEAD_NAMES}; missing {missing}, extra {extra}")
        return cls(**{h: values[h] for h in HEAD_NAMES})

    def map(self, fn) -> "PerHead":
        return jax.tree.map(fn, self)

    def stack(self, axis: int = 0) -> jax.Array:
        """The eight heads' same-shaped arrays as one array with a new head axis at ``axis`` (HEAD_NAMES order)."""
        return jnp.stack([getattr(self, h) for h in HEAD_NAMES], axis=axis)

    @classmethod
    def unstack(cls, stacked: jax.Array, axis: int = 0) -> "PerHead":
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

# --------------------------------------------------------------------------------------------------------------
# Slots
# --------------------------------------------------------------------------------------------------------------

# Names of seed 004's first layout, accepted as aliases of upstream's grid ids.
SLOT_ALIASES: dict[str, str] = {"early": "r0c0", "mid": "r0c1", "late": "r0c2"}


def _parse_slot_id(slot_id: str) -> tuple[int, int]:
    """``"r{row}c{col}"`` -> (row, col); raises ValueError naming the id for anything else."""
    text = slot_id.strip().lower()
    if text.startswith("r") and "c" in text:
        row_text, col_text = text[1:].split("c", 1)
        if row_text.isdigit() and col_text.isdigit():
            return int(row_text), int(col_text)
    raise ValueError(
        f"slot id {slot_id!r} is not of the form 'r<row>c<col>' (e.g. 'r0c1') nor one of the aliases "
        f"{sorted(SLOT_ALIASES)}"
    )


def canonical_slot_id(slot_id: str) -> str:
    """Resolve an alias (early/mid/late) and validate the form; returns e.g. ``"r0c1"``."""
    if not isinstance(slot_id, str):
        raise TypeError(f"slot id must be a string, got {type(slot_id).__name__}")
    resolved = SLOT_ALIASES.get(slot_id.strip().lower(), slot_id)
    row, col = _parse_slot_id(resolved)
    return f"r{row}c{col}"


@dataclasses.dataclass(frozen=True)
class SlotConfig:
    """The ordered slots of a host. The order (network order: row-major over r<row>c<col>) is the slot axis of
    every per-slot array: observation, features, masks, slot head and blueprint indices."""

    slot_ids: tuple[str, ...] = ("r0c0", "r0c1", "r0c2")

    def __post_init__(self) -> None:
        if isinstance(self.slot_ids, str) or not isinstance(self.slot_ids, Iterable):
            raise TypeError(f"slot_ids must be a sequence of slot id strings, got {self.slot_ids!r}")
        ids = tuple(canonical_slot_id(s) for s in self.slot_ids)
        if not ids:
            raise ValueError("slot_ids must name at least one slot (got an empty sequence)")
        if len(set(ids)) != len(ids):
            raise ValueError(f"slot_ids contains duplicates after resolving aliases: {ids}")
        ordered = tuple(sorted(ids, key=_parse_slot_id))
        object.__setattr__(self, "slot_ids", ordered)

    @property
    def num_slots(self) -> int:
        return len(self.slot_ids)

    @classmethod
    def default(cls) -> "SlotConfig":
        return cls(("r0c0", "r0c1", "r0c2"))

    @classmethod
    def for_grid(cls, rows: int, cols: int) -> "SlotConfig":
        if rows < 1 or cols < 1:
            raise ValueError(f"for_grid needs rows >= 1 and cols >= 1, got rows={rows}, cols={cols}")
        return cls(tuple(f"r{r}c{c}" for r in range(rows) for c in range(cols)))

    @classmethod
    def with_num_slots(cls, num_slots: int) -> "SlotConfig":
        """One row of ``num_slots`` slots (r0c0 … r0c{n-1}), the layout used for slot-count sweeps."""
        if not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f"num_slots must be an integer >= 1, got {num_slots!r}")
        return cls.for_grid(1, num_slots)

    def index(self, slot_id: str) -> int:
        """Position of a slot id (or alias) on the slot axis."""
        canonical = canonical_slot_id(slot_id)
        try:
            return self.slot_ids.index(canonical)
        except ValueError:
            raise KeyError(f"slot {slot_id!r} is not in this SlotConfig {self.slot_ids}") from None

    def ordered(self, enabled: Iterable[str]) -> tuple[str, ...]:
        """The enabled ids in slot-axis order; unknown ids raise (upstream silently drops them)."""
        wanted = {canonical_slot_id(s) for s in enabled}
        unknown = wanted - set(self.slot_ids)
        if unknown:
            raise KeyError(f"slots {sorted(unknown)} are not in this SlotConfig {self.slot_ids}")
        return tuple(s for s in self.slot_ids if s in wanted)


# --------------------------------------------------------------------------------------------------------------
# Observation layout ("Obs V3", policy.md §1)
# --------------------------------------------------------------------------------------------------------------

BASE_FEATURE_SIZE = 24
SLOT_FEATURE_SIZE = 30
HISTORY_LENGTH = 5
EPOCH_NORMALISER = 150.0  # fixed at this commit, whatever the episode length
STAGE_COUNT_DIVISOR = 3.0  # upstream divides the stage counts by 3 for any slot count
LOG_LOSS_BASE = math.log(16.0)
CAP25 = 25.0
DEFAULT_GAMMA = 0.995


class BaseFeature(enum.IntEnum):
    """Index of each base feature (0–23)."""

    EPOCH = 0
    VAL_LOSS = 1
    VAL_ACCURACY = 2
    LOSS_HISTORY = 3  # 3..7, oldest first
    ACCURACY_HISTORY = 8  # 8..12
    NUM_TRAINING = 13
    NUM_BLENDING = 14
    NUM_HOLDING = 15
    HOST_STABILIZED = 16
    LAST_ACTION_SUCCESS = 17
    LAST_ACTION_OP = 18  # 18..23, one-hot over NUM_OPS


class SlotFeature(enum.IntEnum):
    """Index of each per-slot feature inside the slot's block of 30."""

    IS_ACTIVE = 0
    STAGE_ONE_HOT = 1  # 1..10
    CURRENT_ALPHA = 11
    CONTRIBUTION = 12
    CONTRIBUTION_VELOCITY = 13
    BLEND_TEMPO = 14
    ALPHA_TARGET = 15
    ALPHA_MODE = 16
    ALPHA_STEPS_TOTAL = 17
    ALPHA_STEPS_DONE = 18
    TIME_TO_TARGET = 19
    ALPHA_VELOCITY = 20
    ALPHA_ALGORITHM = 21
    INTERACTION_SUM = 22
    GRADIENT_NORM = 23
    GRADIENT_HEALTH = 24
    HAS_VANISHING = 25
    HAS_EXPLODING = 26
    GRADIENT_HEALTH_PREV = 27
    EPOCHS_IN_STAGE = 28
    COUNTERFACTUAL_FRESH = 29


def feature_size(num_slots: int) -> int:
    """Observation width D = 24 + 30·S (114 at three slots)."""
    return BASE_FEATURE_SIZE + SLOT_FEATURE_SIZE * num_slots


def slot_feature_offset(slot_index: int) -> int:
    """Global index of the first feature of slot ``slot_index``."""
    return BASE_FEATURE_SIZE + SLOT_FEATURE_SIZE * slot_index


def network_input_size(num_slots: int, embed_dim: int = DEFAULT_BLUEPRINT_EMBED_DIM) -> int:
    """Width of the feature net's input: observation plus one blueprint embedding per slot (126 at three slots)."""
    return feature_size(num_slots) + embed_dim * num_slots
