"""The observation layout ("Obs V3", docs/policy-and-ppo.md#features): feature widths, the index of every base and
per-slot feature, and the normalisation constants the feature extraction uses, value for value as upstream.

Part of the shared vocabulary (re-exported by ``esper_jax.contracts``); imports nothing from the package.
"""

from __future__ import annotations

import enum
import math

DEFAULT_BLUEPRINT_EMBED_DIM = 4  # width of one slot's blueprint embedding in the network input

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
