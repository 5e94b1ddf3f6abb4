"""Reward-components telemetry (kept in sync with its fields), writers, plot and NaN finder."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp

from esper_jax.env import RewardComponents
from esper_jax.telemetry import (
    ENV_COMPONENT_TO_TELEMETRY,
    TIMING_KEYS,
    MetricsLog,
    RewardComponentsTelemetry,
    Timing,
    deterministic,
    find_nonfinite_leaf,
    plot_learning_curves,
)


def test_to_dict_includes_all_fields():
    telemetry = RewardComponentsTelemetry()
    dict_keys = set(telemetry.to_dict().keys())
    field_names = {f.name for f in dataclasses.fields(RewardComponentsTelemetry)}
    assert dict_keys == field_names | {"shaped_reward_ratio"}


def test_to_dict_values_follow_fields_and_round_trip():
    names = [f.name for f in dataclasses.fields(RewardComponentsTelemetry)]
    values = {}
    for i, f in enumerate(dataclasses.fields(RewardComponentsTelemetry)):
        values[f.name] = f"s{i}" if f.name == "action_name" else (i % 2 == 0 if f.name == "action_success" else float(i + 1))
    t = RewardComponentsTelemetry(**values)
    d = t.to_dict()
    assert all(d[n] == values[n] for n in names)
    assert RewardComponentsTelemetry.from_dict(d) == t


def test_every_env_reward_component_is_mapped():
    env_fields = {f.name for f in dataclasses.fields(RewardComponents)}
    assert set(ENV_COMPONENT_TO_TELEMETRY) == env_fields
    tele_fields = {f.name for f in dataclasses.fields(RewardComponentsTelemetry)}
    assert set(ENV_COMPONENT_TO_TELEMETRY.values()) <= tele_fields


def test_from_env_components_total_and_ratio():
    comps = {k: 0.0 for k in ENV_COMPONENT_TO_TELEMETRY}
    comps.update(attribution=1.0, pbrs=0.5, compute_rent=-0.25)
    t = RewardComponentsTelemetry.from_env_components(comps)
    assert t.total_reward == 1.25 and t.bounded_attribution == 1.0 and t.pbrs_bonus == 0.5
    assert abs(t.shaped_reward_ratio - 0.25 / 1.25) < 1e-9
    assert RewardComponentsTelemetry().shaped_reward_ratio == 0.0


def test_find_nonfinite_leaf_names_first_path():
    tree = {"a": {"w": jnp.ones(3)}, "b": {"w": jnp.array([1.0, jnp.nan])}, "c": jnp.array([jnp.inf])}
    assert find_nonfinite_leaf(tree) == "['b']['w']"
    assert find_nonfinite_leaf({"a": jnp.ones(2), "i": jnp.arange(3)}) is None


def _record(i):
    return {"interval": i, "env_steps": 10 * (i + 1), "mean_episode_return": float(i), "policy_loss": 0.1, "value_loss": 1.0,
            "loss": 1.1, "entropy_per_head": {"op": 0.9, "slot": 0.5},
            "seed_outcomes": {"germinated": 2, "fossilized": 0, "pruned": 1},
            "reward_components": {"pbrs_bonus": 0.1, "compute_rent": 0.0, "total_reward": 0.1},
            "invalid_action_rate": 0.25, "action_success_rate": 0.5,
            "nan_value": float("nan")}


def test_metrics_log_jsonl_tensorboard_and_resume_truncation(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=True)
    for i in range(3):
        log.append({**_record(i), "interval_seconds": 1.0, "env_steps_per_second": 10.0, "compile_seconds": 0.0})
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["nan_value"] is None
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    # a torn last line (killed writer) and intervals past the checkpoint are dropped on resume
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"interval": 3, "env_st')
    resumed = MetricsLog(tmp_path, tensorboard=False, keep_intervals=2)
    assert [r["interval"] for r in resumed.records] == [0, 1]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_timing_keys_are_named_once_and_dropped_for_comparisons():
    timing = Timing(interval_seconds=2.0, env_steps_per_second=40.0, compile_seconds=0.0)
    assert tuple(timing.as_dict()) == TIMING_KEYS == ("interval_seconds", "env_steps_per_second", "compile_seconds")
    record = {**_record(0), **timing.as_dict()}
    assert set(deterministic(record)) == set(_record(0))  # (values compared by key: _record holds a NaN)
    assert deterministic(record)["mean_episode_return"] == 0.0 and set(record) - set(deterministic(record)) == set(TIMING_KEYS)


def test_plot_writes_png(tmp_path):
    path = tmp_path / "curves.png"
    plot_learning_curves([_record(i) for i in range(4)], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
