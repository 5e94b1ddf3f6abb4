"""Orbax checkpointer: round trip, and refusal (never overwriting) of corrupt or mismatched checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from esper_jax.checkpoint import Checkpointer, CheckpointError
from esper_jax.config import TrainingConfig, from_flat_dict

CONFIG = TrainingConfig(n_envs=2, n_episodes=8).to_dict()
FLAT = {"n_envs": 2, "lr": 3e-4, "n_episodes": 8}  # a checkpoint's config before the config tree


def _state(scale: float = 1.0, width: int = 3):
    return {
        "train": {"w": np.arange(width * 2, dtype=np.float32).reshape(2, width) * scale, "steps": np.asarray(3, np.int32)},
        "key": np.asarray([1, 2], np.uint32),
        "counters": {"interval": np.asarray(2, np.int64)},
    }


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _save(tmp_path: Path, step: int = 2) -> Checkpointer:
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    ckpt.save(step, _state(), {"config": CONFIG})
    return ckpt


def test_round_trip(tmp_path):
    _save(tmp_path).close()
    ckpt = Checkpointer(tmp_path, create=False)
    assert ckpt.latest_step() == 2
    state, meta = ckpt.restore(_state(scale=0.0), CONFIG)
    np.testing.assert_array_equal(state["train"]["w"], _state()["train"]["w"])
    assert int(state["counters"]["interval"]) == 2 and meta["interval"] == 2


def test_budget_change_is_compatible(tmp_path):
    _save(tmp_path).close()
    state, meta = Checkpointer(tmp_path, create=False).restore(_state(scale=0.0), dict(CONFIG, n_episodes=16))
    saved = _state()
    np.testing.assert_array_equal(state["train"]["w"], saved["train"]["w"])  # the saved values, not the template's
    assert int(state["train"]["steps"]) == 3 and int(state["counters"]["interval"]) == 2
    np.testing.assert_array_equal(state["key"], saved["key"])
    assert meta["interval"] == 2 and meta["config"]["n_episodes"] == 8  # the checkpoint's own config, as written


def test_flat_config_of_an_older_checkpoint_is_migrated(tmp_path):
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    ckpt.save(2, _state(), {"config": FLAT})
    ckpt.close()
    ckpt = Checkpointer(tmp_path, create=False)
    assert from_flat_dict(FLAT).to_dict() == CONFIG
    ckpt.check(CONFIG)  # the same run in the tree's terms
    with pytest.raises(CheckpointError, match=r"ppo\.learning_rate: checkpoint 0\.0003 vs run 0\.001"):
        ckpt.check(from_flat_dict(dict(FLAT, lr=1e-3)).to_dict())


def test_missing_checkpoint_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints"):
        Checkpointer(tmp_path / "nothing", create=False)


def test_config_mismatch_refused_and_untouched(tmp_path):
    _save(tmp_path).close()
    before = _digest(tmp_path)
    with pytest.raises(CheckpointError, match=r"ppo\.learning_rate"):
        Checkpointer(tmp_path, create=False).restore(_state(), dict(CONFIG, ppo=dict(CONFIG["ppo"], learning_rate=1e-3)))
    assert _digest(tmp_path) == before


def test_shape_mismatch_refused(tmp_path):
    _save(tmp_path).close()
    before = _digest(tmp_path)
    with pytest.raises(CheckpointError):
        Checkpointer(tmp_path, create=False).restore(_state(width=5), CONFIG)
    assert _digest(tmp_path) == before


def test_corrupt_checkpoint_refused_and_untouched(tmp_path):
    _save(tmp_path).close()
    files = [p for p in (tmp_path / "checkpoints").rglob("*") if p.is_file() and "state" in str(p)]
    assert files
    for p in files:
        p.write_bytes(b"garbage")
    before = _digest(tmp_path)
    with pytest.raises(CheckpointError, match="corrupt|unreadable"):
        Checkpointer(tmp_path, create=False).restore(_state(), CONFIG)
    assert _digest(tmp_path) == before
