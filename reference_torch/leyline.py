"""The reference's own copy of the upstream contracts it needs (``src/esper/leyline``: stages.py,
stage_schema.py, alpha.py, factored_actions.py, slot_config.py, __init__.py), written as upstream writes them.

Deliberately independent of the JAX port: a wrong value on the JAX side must show up as a parity failure, not be
shared by both sides. Parity tests and benchmarks build this module's ``SlotConfig`` at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# leyline/__init__.py
MIN_PRUNE_AGE = 1
DEFAULT_GAMMA = 0.995
MASKED_LOGIT_VALUE: float = -1e4
DEFAULT_BLUEPRINT_EMBED_DIM = 4

# Compat modes of this port (not upstream's): "upstream" reproduces upstream, "fixed" applies the corrections.
COMPAT_MODES: tuple[str, ...] = ("upstream", "fixed")


def check_compat(compat: str) -> str:
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat must be one of {COMPAT_MODES}, got {compat!r}")
    return compat


# leyline/stages.py
class SeedStage(IntEnum):
    UNKNOWN = 0
    DORMANT = 1
    GERMINATED = 2
    TRAINING = 3
    BLENDING = 4
    # Value 5 intentionally skipped (was SHADOWING, removed)
    HOLDING = 6
    FOSSILIZED = 7
    PRUNED = 8
    EMBARGOED = 9
    RESETTING = 10


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

# leyline/stage_schema.py
VALID_STAGES: tuple[SeedStage, ...] = (
    SeedStage.UNKNOWN,
    SeedStage.DORMANT,
    SeedStage.GERMINATED,
    SeedStage.TRAINING,
    SeedStage.BLENDING,
    SeedStage.HOLDING,
    SeedStage.FOSSILIZED,
    SeedStage.PRUNED,
    SeedStage.EMBARGOED,
    SeedStage.RESETTING,
)
NUM_STAGES: int = len(VALID_STAGES)
STAGE_TO_INDEX: dict[int, int] = {stage.value: idx for idx, stage in enumerate(VALID_STAGES)}


# leyline/alpha.py
class AlphaMode(IntEnum):
    HOLD = 0
    UP = 1
    DOWN = 2


class AlphaAlgorithm(IntEnum):
    ADD = 1
    MULTIPLY = 2
    GATE = 3


# leyline/factored_actions.py
class BlueprintAction(IntEnum):
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


class GerminationStyle(IntEnum):
    LINEAR_ADD = 0
    LINEAR_MULTIPLY = 1
    SIGMOID_ADD = 2
    GATED_GATE = 3


class TempoAction(IntEnum):
    FAST = 0
    STANDARD = 1
    SLOW = 2


class LifecycleOp(IntEnum):
    WAIT = 0
    GERMINATE = 1
    SET_ALPHA_TARGET = 2
    PRUNE = 3
    FOSSILIZE = 4
    ADVANCE = 5


class AlphaTargetAction(IntEnum):
    HALF = 0
    SEVENTY = 1
    FULL = 2


class AlphaSpeedAction(IntEnum):
    INSTANT = 0
    FAST = 1
    MEDIUM = 2
    SLOW = 3


class AlphaCurveAction(IntEnum):
    LINEAR = 0
    COSINE = 1
    SIGMOID_GENTLE = 2
    SIGMOID = 3
    SIGMOID_SHARP = 4


NUM_BLUEPRINTS = len(BlueprintAction)
NUM_STYLES = len(GerminationStyle)
NUM_TEMPO = len(TempoAction)
NUM_OPS = len(LifecycleOp)
NUM_ALPHA_TARGETS = len(AlphaTargetAction)
NUM_ALPHA_SPEEDS = len(AlphaSpeedAction)
NUM_ALPHA_CURVES = len(AlphaCurveAction)

# tamiyo/networks/factored_lstm.py: the embedding's extra row for "no seed in this slot".
BLUEPRINT_NULL_INDEX = NUM_BLUEPRINTS

HEAD_NAMES: tuple[str, ...] = ("slot", "blueprint", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "op")

CNN_BLUEPRINTS = frozenset({
    BlueprintAction.NOOP,
    BlueprintAction.NORM,
    BlueprintAction.ATTENTION,
    BlueprintAction.CONV_LIGHT,
    BlueprintAction.DEPTHWISE,
    BlueprintAction.BOTTLENECK,
    BlueprintAction.CONV_SMALL,
    BlueprintAction.CONV_HEAVY,
})
TRANSFORMER_BLUEPRINTS = frozenset({
    BlueprintAction.NOOP,
    BlueprintAction.NORM,
    BlueprintAction.ATTENTION,
    BlueprintAction.LORA,
    BlueprintAction.LORA_LARGE,
    BlueprintAction.MLP_SMALL,
    BlueprintAction.MLP,
    BlueprintAction.FLEX_ATTENTION,
})


# leyline/slot_config.py (the channel map and from_specs, which nothing here reads, are left out)
@dataclass(frozen=True)
class SlotConfig:
    slot_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.slot_ids:
            raise ValueError("SlotConfig requires at least one slot")
        if len(self.slot_ids) != len(set(self.slot_ids)):
            duplicates = [s for s in self.slot_ids if self.slot_ids.count(s) > 1]
            raise ValueError(f"SlotConfig slot_ids must be unique, found duplicates: {set(duplicates)}")

    @property
    def num_slots(self) -> int:
        return len(self.slot_ids)

    def index_for_slot_id(self, slot_id: str) -> int:
        return self.slot_ids.index(slot_id)

    @classmethod
    def default(cls) -> SlotConfig:
        return cls(slot_ids=("r0c0", "r0c1", "r0c2"))

    @classmethod
    def for_grid(cls, rows: int, cols: int) -> SlotConfig:
        return cls(slot_ids=tuple(f"r{r}c{c}" for r in range(rows) for c in range(cols)))


def get_action_head_sizes(slot_config: SlotConfig) -> dict[str, int]:
    return {
        "slot": slot_config.num_slots,
        "blueprint": NUM_BLUEPRINTS,
        "style": NUM_STYLES,
        "tempo": NUM_TEMPO,
        "alpha_target": NUM_ALPHA_TARGETS,
        "alpha_speed": NUM_ALPHA_SPEEDS,
        "alpha_curve": NUM_ALPHA_CURVES,
        "op": NUM_OPS,
    }


# tamiyo/policy/features.py
HISTORY_LENGTH = 5
SLOT_FEATURE_SIZE = 30
MAX_EPOCHS_NORM = 150.0
STAGE_COUNT_DIVISOR = 3.0
MAX_EPOCHS_DEN = 25.0
