"""Run configuration: ``TrainingConfig``, a tree of the configs the trainer's parts take (``training``); strict
JSON for it (``strict``); the one reader of flat upstream / pre-tree configs (``upstream``); presets."""

from esper_jax.config.presets import PRESET_DESCRIPTIONS, PRESET_NAMES, PRESETS, preset
from esper_jax.config.strict import ConfigError, read_json, to_dict
from esper_jax.config.training import (
    COMPATIBLE_OVERRIDES,
    HOST_TASKS,
    CheckpointConfig,
    DistributedConfig,
    RunTelemetryConfig,
    TrainingConfig,
)
from esper_jax.config.upstream import (
    FLAT_FIELDS,
    INERT_FIELDS,
    from_flat_dict,
    is_flat,
    load_dict,
)

__all__ = [
    "COMPATIBLE_OVERRIDES",
    "FLAT_FIELDS",
    "HOST_TASKS",
    "INERT_FIELDS",
    "PRESETS",
    "PRESET_DESCRIPTIONS",
    "PRESET_NAMES",
    "CheckpointConfig",
    "ConfigError",
    "DistributedConfig",
    "RunTelemetryConfig",
    "TrainingConfig",
    "from_flat_dict",
    "is_flat",
    "load_dict",
    "load_json",
    "preset",
    "read_json",
    "to_dict",
]


def load_json(path, base: TrainingConfig | None = None) -> TrainingConfig:
    """A config file in either format (``load_dict``)."""
    return load_dict(read_json(path), base)
