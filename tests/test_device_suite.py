"""``python -m bench --device-suite``: where it writes, how it judges the targets, and (slow) the whole run at tiny
sizes on CPU, checking the files it writes. Not a speed check: no accelerator is needed or assumed."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import device_suite
from bench.common import Measurement

ROOT = Path(__file__).resolve().parents[1]
DAY = datetime.date(2026, 11, 29)


def test_results_folder_is_named_by_device_and_date():
    assert device_suite.device_slug("gpu:NVIDIA H200", DAY) == "nvidia-h200-2026-11-29"
    assert device_suite.device_slug("gpu:NVIDIA H100 80GB HBM3", DAY) == "nvidia-h100-80gb-hbm3-2026-11-29"
    assert device_suite.device_slug("tpu:TPU v5 lite", DAY) == "tpu-v5-lite-2026-11-29"
    assert device_suite.device_slug("cpu (2 cores)", DAY) == "cpu-2026-11-29"


def test_full_suite_covers_the_rows_that_decide_the_targets():
    sizes = device_suite.FULL
    assert sizes.rollout_envs == (4, 4096) and sizes.update_envs == 256
    assert (sizes.feature_slots, sizes.feature_envs) == (25, 4096)
    assert sizes.train_sim_envs == 4096 and sizes.train_host_envs == (64, 1024)
    measures = [t.measure for t in device_suite.targets(sizes)]
    assert any("update [256 × 150], highest precision" in m for m in measures)
    assert any("update [256 × 150], bf16" in m for m in measures)


def _row(bench, impl, envs, **fields):
    base = dict(bench=bench, impl=impl, status="ok", envs=envs, median_s=0.01, throughput=1.0, unit="env-step",
                seq_len=150, compile_s=1.0, note="")
    base.update(fields)
    return Measurement(**base)


def test_targets_are_judged_on_ratios_everywhere_and_on_absolute_figures_only_on_an_accelerator():
    sizes = device_suite.FULL
    rows = [
        _row("rollout", "esper_jax", 4, ratio=250.0, median_s=150 * 5e-6),  # 5 µs per step
        _row("rollout", "esper_jax", 4096, throughput=10e6),
        _row("update", "esper_jax", 256, ratio=1.5),
        _row("update", "esper_jax_bf16", 256, ratio=2.5),
        _row("features", "esper_jax", 4096, slots=25, ratio=1200.0),
        _row("train", "esper_jax", 4096, throughput=2e6, note="env=sim, collect"),
        _row("train", "esper_jax", 64, throughput=5e3, note="env=host, collect"),
    ]
    on_gpu = {v["measure"]: v for v in device_suite.verdicts(rows, sizes, on_accelerator=True)}
    assert on_gpu["rollout, 4 envs"]["met"] is True
    assert on_gpu["rollout, 4 envs, µs per step"]["met"] is True
    assert on_gpu["rollout, 4096 envs"]["met"] is False
    assert on_gpu["update [256 × 150], highest precision"]["met"] is False
    assert on_gpu["update [256 × 150], bf16"]["met"] is True
    assert on_gpu["features, 25 slots × 4096 envs"]["met"] is True
    assert on_gpu["train, simulator, 4096 envs"]["met"] is True
    assert on_gpu["train, host-net env, 64 envs"]["met"] is False
    assert on_gpu["train, host-net env, 1024 envs"]["why"] == "row missing"
    on_cpu = {v["measure"]: v for v in device_suite.verdicts(rows, sizes, on_accelerator=False)}
    assert on_cpu["rollout, 4096 envs"]["met"] is None and "accelerator" in on_cpu["rollout, 4096 envs"]["why"]
    assert on_cpu["update [256 × 150], highest precision"]["met"] is False  # a ratio holds on any device


def test_device_suite_flags_are_refused_with_the_per_benchmark_options():
    from bench.__main__ import main

    with pytest.raises(SystemExit):
        main(["--tiny"])
    with pytest.raises(SystemExit):
        main(["--device-suite", "--quick"])


@pytest.mark.slow  # every row's compile at tiny sizes, the host env's train interval included (minutes on 2 cores)
def test_tiny_device_suite_writes_results_markdown_and_plot(tmp_path):
    pytest.importorskip("torch", reason="the device suite compares against the torch reference")
    out = tmp_path / "suite"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "bench", "--device-suite", "--tiny", "--out", str(out),
                           "--torch-threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"device suite failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    payload = json.loads((out / "results.json").read_text())
    rows = payload["rows"]
    assert set(payload["host"]["suite_seconds"]) == {"rollout", "update", "features", "train"}
    ok = {(r["bench"], r["impl"]) for r in rows if r["status"] == "ok"}
    assert {("rollout", "esper_jax"), ("rollout", "esper_jax_bf16"), ("rollout", "torch_ref"),
            ("update", "esper_jax"), ("update", "torch_ref"), ("update", "torch_ref_step"),
            ("update", "esper_jax_bf16"), ("update", "torch_ref_step_bf16"),
            ("features", "esper_jax"), ("features", "torch_ref"), ("train", "esper_jax")} <= ok, ok
    exact = next(r for r in rows if r["bench"] == "update" and r["impl"] == "esper_jax")
    assert exact["matmul_precision"] == "highest" and exact["ratio"] > 0
    reference = next(r for r in rows if r["bench"] == "update" and r["impl"] == "torch_ref")
    assert reference["matmul_precision"] == "highest"
    hosts = [r for r in rows if r["bench"] == "train" and "env=host" in r["note"]]
    assert hosts and all(r["status"] == "ok" for r in hosts)
    text = (out / "results.md").read_text()
    assert "## Targets" in text and "## Compile times" in text and "| bench | impl |" in text
    assert (out / "throughput.png").read_bytes()[:4] == b"\x89PNG"
