"""Smoke test of the benchmark suite: ``python -m bench --quick`` runs once and reports (docs/benchmarks.md).

Not a speed check: it asserts that every benchmark produced parseable JSON lines carrying the fields every figure
must state, that the markdown table was printed and that ``--out`` wrote results.json. The suite compares against
the torch reference, so without torch the test is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the benchmark suite compares against the torch reference: torch is not installed")

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("features", "rollout", "update", "train", "scaling", "compile")
REQUIRED = ("bench", "impl", "status", "device", "dtype", "matmul_precision", "envs", "warmup", "reps", "median_s",
            "throughput", "compile_s", "ratio", "note")
# Generous: --quick targets < 2 min on an idle 2-core CPU, but the test suite may share the machine.
TIMEOUT_S = 900


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return proc, out


def test_quick_suite_runs_and_reports(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, f"python -m bench --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows, "no JSON lines printed"
    for row in rows:
        missing = [k for k in REQUIRED if k not in row]
        assert not missing, f"row {row} lacks {missing}"
        assert row["status"] in ("ok", "skipped")
        if row["status"] == "skipped":
            assert row["note"], f"a skipped row must say why: {row}"
    assert {r["bench"] for r in rows} == set(BENCHMARKS)
    # The comparisons that exist must have been measured, not skipped.
    for bench in ("features", "rollout", "update"):
        impls = {r["impl"] for r in rows if r["bench"] == bench and r["status"] == "ok"}
        assert {"esper_jax", "torch_ref"} <= impls, f"{bench}: measured {impls}"
    bf16 = [r for r in rows if r["bench"] == "rollout" and r["impl"] == "esper_jax_bf16"]
    assert bf16 and bf16[0]["status"] == "ok" and "bfloat16" in bf16[0]["dtype"], bf16
    ok = [r for r in rows if r["status"] == "ok" and r["bench"] != "compile"]
    assert all(r["median_s"] > 0 and r["throughput"] > 0 and r["reps"] >= 1 for r in ok)
    assert "| bench | impl |" in proc.stdout, "markdown table not printed"


def test_quick_suite_writes_results(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["rows"] and payload["host"]["jax_device"]
    # matplotlib is a dependency of esper-jax: the plot is always written
    assert (out / "throughput.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_keeps_sim_and_host_train_rows_on_separate_lines():
    from bench.common import Measurement, _series_label

    sim = Measurement(bench="train", impl="esper_jax", status="ok", envs=64, note="env=sim, collect + ppo.update")
    host = Measurement(bench="train", impl="esper_jax", status="ok", envs=4, note="env=host, collect + ppo.update")
    features = Measurement(bench="features", impl="esper_jax", status="ok", envs=4, slots=25)
    assert _series_label(sim) == "esper_jax, env=sim" and _series_label(host) == "esper_jax, env=host"
    assert _series_label(features) == "esper_jax, 25 slots"
    assert _series_label(Measurement(bench="rollout", impl="esper_jax_bf16", status="ok")) == "esper_jax_bf16"
