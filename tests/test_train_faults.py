"""Fault injection into the trainer (issue 15): a run that goes non-finite stops with an error and keeps its last good
checkpoint; a non-empty --out is refused unless --overwrite; Ctrl-C checkpoints at the interval boundary and exits
130; --resume refuses a preset; a bad --slots or --out is an `error:` line; a corrupt newest checkpoint falls back to
the newest intact one.

Every run uses the tiny simulator config of test_train.py, so the compiled interval is shared within the process."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from esper_jax import train as train_mod
from esper_jax import trainer
from esper_jax.checkpoint import CheckpointError
from esper_jax.config import RunTelemetryConfig
from tests.test_train import TINY

QUIET = dataclasses.replace(TINY, telemetry=RunTelemetryConfig(progress_bar=False, tensorboard=False, plots=False))
# The same run from the command line (the interval compiled for QUIET is reused: same env, network, PPO, rollout).
CLI = ["--env-kind", "sim", "--n-episodes", "8", "--n-envs", "2", "--episode-length", "20", "--slots", "r0c1",
       "--network.hidden-dim", "32", "--network.feature-dim", "32", "--iterations-per-interval", "1",
       "--checkpoints.every", "2", "--eval-episodes", "4", "--seed", "3", "--telemetry.no-progress-bar",
       "--telemetry.no-tensorboard", "--telemetry.no-plots"]


def _steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _poison_from(monkeypatch, first_bad_interval: int, path_part: str = "value_head") -> None:
    """From the given interval on, the interval starts from parameters whose `path_part` leaves are NaN."""
    original = trainer._compiled_interval
    calls = [0]

    def patched(*args):
        fn, seconds = original(*args)

        def run(train_state, runner, key):
            calls[0] += 1
            if calls[0] > first_bad_interval:
                train_state = train_state.replace(params=jax.tree_util.tree_map_with_path(
                    lambda p, x: x * np.nan if path_part in jax.tree_util.keystr(p) else x, train_state.params))
            return fn(train_state, runner, key)

        return run, seconds

    monkeypatch.setattr(trainer, "_compiled_interval", patched)


# --- 1. non-finite values stop the run --------------------------------------------------------------------------


def test_nonfinite_interval_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "nan"
    _poison_from(monkeypatch, first_bad_interval=2)
    assert train_mod.main([*CLI, "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "error: interval 2 went non-finite at iteration 2" in err, err
    # NaN value-head params make the loss, hence every gradient, non-finite: the first leaf is named, the rest counted
    assert "the PPO loss" in err and "the gradient of ['" in err and "more leaves" in err, err
    assert f"the last good checkpoint is {run_dir / 'checkpoints' / '2'} (after 2 interval(s))" in err
    assert _steps(run_dir) == [2]  # the bad interval was never checkpointed
    assert not (run_dir / "eval.json").exists()
    assert [r["interval"] for r in _records(run_dir)] == [0, 1, 2]  # the bad interval's record is kept for diagnosis


def test_debug_nans_names_every_leaf_from_the_updates_own_gradients(tmp_path, monkeypatch):
    _poison_from(monkeypatch, first_bad_interval=0)
    with pytest.raises(FloatingPointError, match=r"interval 0 went non-finite") as info:
        train_mod.train(QUIET, tmp_path / "nan", debug_nans=True, evaluate=False)
    message = str(info.value)
    assert "more leaves" not in message and "no checkpoint was written yet" in message
    # every value-head leaf is listed, by its path
    assert message.count("value_head") >= 2, message


# --- 2. a non-empty --out is refused ----------------------------------------------------------------------------


def test_non_empty_out_is_refused_and_left_untouched(tmp_path, capsys):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"interval": 0}\n')
    (run_dir / "eval.json").write_text("{}\n")
    assert train_mod.main([*CLI, "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["eval.json", "metrics.jsonl"]
    assert (run_dir / "metrics.jsonl").read_text() == '{"interval": 0}\n'


def test_overwrite_replaces_a_previous_run_but_not_foreign_files(tmp_path, capsys):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"interval": 7}\n')
    (run_dir / "eval.json").write_text("{}\n")
    assert train_mod.main([*CLI, "--out", str(run_dir), "--overwrite", "--max-intervals", "1"]) == 0
    assert [r["interval"] for r in _records(run_dir)] == [0] and not (run_dir / "eval.json").exists()
    (run_dir / "notes.txt").write_text("mine")
    assert train_mod.main([*CLI, "--out", str(run_dir), "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (run_dir / "notes.txt").exists()


# --- 3. Ctrl-C ----------------------------------------------------------------------------------------------------


def test_ctrl_c_checkpoints_the_interval_boundary_and_exits_130(tmp_path, capsys):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    run_dir = tmp_path / "int"
    metrics = run_dir / "metrics.jsonl"

    def press_ctrl_c():
        deadline = time.time() + 600
        while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    previous_handler = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=press_ctrl_c, daemon=True)
    thread.start()
    code = train_mod.main([*CLI, "--n-episodes", "400", "--out", str(run_dir)])
    thread.join()
    err = capsys.readouterr().err
    assert code == 130, err
    done = len(_records(run_dir))
    assert 1 <= done < 200 and _steps(run_dir)[-1] == done  # the last completed interval is checkpointed
    assert f"--resume {run_dir}" in err
    assert signal.getsignal(signal.SIGINT) is previous_handler  # the trainer's handler was removed


# --- 4. --resume with a preset -----------------------------------------------------------------------------------


def test_resume_refuses_preset(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(QUIET.to_dict()))
    for argv in (["--resume", str(run_dir), "cifar10"], ["default", "--resume", str(run_dir)]):
        assert train_mod.main(argv) == 2
        assert "cannot be combined with --resume" in capsys.readouterr().err


# --- 5. error lines, not tracebacks -------------------------------------------------------------------------------


def test_bad_slots_and_bad_out_are_error_lines(tmp_path, capsys):
    bad = [*CLI[:CLI.index("--slots") + 1], "r9c9", *CLI[CLI.index("--slots") + 2:]]
    assert train_mod.main([*bad, "--out", str(tmp_path / "a")]) == 2
    assert "error: EnvConfig.slots ['r9c9'] do not exist" in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert train_mod.main([*CLI, "--out", str(a_file)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert train_mod.main([*CLI, "--out", str(a_file / "run")]) == 2
    assert "cannot be created" in capsys.readouterr().err
    assert a_file.read_text() == "x"


# --- 6. corrupt newest checkpoint ---------------------------------------------------------------------------------


def _corrupt(step_dir: Path) -> None:
    for p in step_dir.rglob("*"):
        if p.is_file() and "state" in str(p):
            p.write_bytes(os.urandom(64))


def test_corrupt_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, capsys):
    run_dir = tmp_path / "run"
    full = train_mod.train(QUIET, run_dir, evaluate=False)
    assert _steps(run_dir) == [2, 4]
    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin)
    _corrupt(run_dir / "checkpoints" / "4")
    resumed = train_mod.train(dataclasses.replace(QUIET, n_episodes=8), run_dir, resume=True, evaluate=False)
    err = capsys.readouterr().err
    assert "resuming from checkpoint 2" in err and "checkpoints/4" in err
    assert len(resumed.skipped_checkpoints) == 2 and all(len(line) < 400 for line in resumed.skipped_checkpoints)
    assert [p.name for p in (run_dir / "corrupt_checkpoints").iterdir()] == ["4-0"]  # kept for inspection
    # intervals 2 and 3 ran again from checkpoint 2: same end state as the uninterrupted run
    for x, y in zip(jax.tree.leaves(resumed.state.train), jax.tree.leaves(full.state.train), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [r["interval"] for r in _records(run_dir)] == [0, 1, 2, 3]

    # every checkpoint corrupt: refused, one short line per checkpoint, nothing touched
    for step in (2, 4):
        _corrupt(twin / "checkpoints" / str(step))
    with pytest.raises(CheckpointError, match="no intact checkpoint") as info:
        train_mod.train(QUIET, twin, resume=True, evaluate=False)
    lines = str(info.value).splitlines()
    assert len(lines) == 3 and all(len(line) < 400 for line in lines), str(info.value)

