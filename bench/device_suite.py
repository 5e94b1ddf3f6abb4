"""``python -m bench --device-suite`` (``make bench-device``): the rows that decide the accelerator targets, in one run.

The rows of ../shared/spec/bench.md's device suite, each with the benchmark modules' own measurement code:

* rollout at 4 and 4096 envs (float32 and bf16 matmuls) against upstream's per-step ``get_action`` loop;
* update [256 × 150] against torch with cuDNN: a parity-type pair with TF32 off and the highest float32 matmul
  precision on both sides, then a bf16 pair (esper_jax bf16 matmuls; torch's step under bf16 autocast);
* features + masks at 25 slots × 4096 envs against the loop version;
* the train interval (rollout + update) on the lifecycle simulator at 4096 envs and on the host-network env at
  64 and 1024 envs;
* compile times: every row's compile, gathered into one table.

Sized for under 6 minutes on one H100/H200 including compiles (an estimate: no accelerator was available where it
was written; see bench/README.md). It writes ``results.json``, ``results.md`` (targets with verdicts, the compile
table and every row) and ``throughput.png`` under ``bench/results/<device>-<date>/`` (``--out`` overrides).
``--tiny`` runs the same rows at the smallest sizes: the CPU test of the whole path (``tests/test_device_suite.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import re
import time
from pathlib import Path
from typing import Any

import jax

from bench import common, fixtures
from bench import features as features_bench
from bench import rollout as rollout_bench
from bench import train as train_bench
from bench import update as update_bench
from bench.common import JAX, TORCH, Measurement, Options

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
BUDGET_S = 360.0  # the suite's wall-clock target on one H100/H200, compiles included


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The sizes of every row (the full suite, or ``TINY`` for the CPU test)."""

    rollout_envs: tuple[int, ...] = (4, 4096)
    update_envs: int = 256
    feature_slots: int = 25
    feature_envs: int = 4096
    train_sim_envs: int = 4096
    train_host_envs: tuple[int, ...] = (64, 1024)


FULL = Sizes()
TINY = Sizes(rollout_envs=(2,), update_envs=2, feature_slots=25, feature_envs=4, train_sim_envs=2, train_host_envs=(2,))
# Timed repetitions: a few per row keep the suite inside its budget; every row still says how many it ran.
FULL_OPTIONS = Options(warmup=1, reps=5, min_reps=2, budget_s=4.0)
TINY_OPTIONS = Options.for_quick()


@dataclasses.dataclass(frozen=True)
class Target:
    """One line of the targets table: which row, what it must reach, and how the row is read."""

    measure: str
    target: str
    bench: str
    impl: str
    envs: int | None
    read: str  # "ratio": the row's ratio vs torch; "throughput"; "compile_s"
    threshold: float
    slots: int | None = None
    note_prefix: str = ""


def targets(sizes: Sizes) -> list[Target]:
    small, large = sizes.rollout_envs[0], sizes.rollout_envs[-1]
    return [
        Target(f"rollout, {small} envs", "≥ 200× the torch step loop", "rollout", JAX, small, "ratio", 200.0),
        Target(f"rollout, {small} envs, µs per step", "≤ 8 µs per step on an H100", "rollout", JAX, small,
               "us_per_step", 8.0),
        Target(f"rollout, {large} envs", "≥ 30M steps/s on an H100", "rollout", JAX, large, "throughput", 30e6),
        Target(f"update [{sizes.update_envs} × 150], highest precision", "≥ 2× torch with cuDNN (same precision)",
               "update", JAX, sizes.update_envs, "ratio", 2.0),
        Target(f"update [{sizes.update_envs} × 150], bf16", "≥ 2× torch with cuDNN (bf16 autocast)", "update",
               fixtures.JAX_BF16, sizes.update_envs, "ratio", 2.0),
        Target(f"features, {sizes.feature_slots} slots × {sizes.feature_envs} envs", "≥ 1000× the loop version",
               "features", JAX, sizes.feature_envs, "ratio", 1000.0, slots=sizes.feature_slots),
        Target(f"train, simulator, {sizes.train_sim_envs} envs", "≥ 1M env-steps/s on one H100", "train", JAX,
               sizes.train_sim_envs, "throughput", 1e6, note_prefix="env=sim"),
        *[Target(f"train, host-net env, {n} envs", "≥ 10k env-steps/s on one H100", "train", JAX, n, "throughput",
                 1e4, note_prefix="env=host") for n in sizes.train_host_envs],
    ]


def device_slug(device: str, today: datetime.date | None = None) -> str:
    """``bench/results``' folder name for a device label: ``gpu:NVIDIA H200`` → ``nvidia-h200-2026-11-29``."""
    name = device.split(":", 1)[1] if ":" in device else device
    name = re.sub(r"\(.*?\)", "", name) if not name.startswith("cpu") else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"
    return f"{slug}-{(today or datetime.date.today()).isoformat()}"


@contextlib.contextmanager
def highest_precision(torch: Any):
    """TF32 off and full float32 matmuls on both sides for the parity-type rows; restored afterwards."""
    saved = None
    if torch is not None:
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                 torch.get_float32_matmul_precision())
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
            torch.set_float32_matmul_precision(saved[2])


def _torch_bf16_step(torch: Any, torch_net: Any, num_envs: int, options: Options) -> Measurement:
    """torch's gradient step (loss + backward + clip + Adam, GAE done beforehand) with the forward under bf16
    autocast: the bf16 counterpart of esper_jax's bf16-matmul update."""
    step = update_bench.torch_gradient_step(torch, torch_net, num_envs, autocast=torch.bfloat16)
    timing = common.time_torch(step, options, torch)
    return common.measured(
        "update", f"{TORCH}_step_bf16", timing, work=num_envs * update_bench.SEQ_LEN, unit="sample",
        device=common.torch_device_name(torch), matmul_precision="bf16 autocast", dtype="bfloat16 autocast",
        envs=num_envs, slots=fixtures.NUM_SLOTS, seq_len=update_bench.SEQ_LEN,
        note="fwd (bf16 autocast) + bwd + clip + Adam, GAE precomputed",
    )


def _rollout_rows(sizes: Sizes, options: Options, torch: Any, torch_net: Any) -> list[Measurement]:
    rows = []
    for n in sizes.rollout_envs:
        pair = [rollout_bench.measure_jax(n, options, torch_net),
                rollout_bench.measure_jax(n, options, torch_net, matmul_dtype=fixtures.BF16)]
        if torch is not None:
            reference = rollout_bench.measure_torch(torch, torch_net, n, options)
            for row in pair:
                common.pair_ratio(row, reference)
            pair.append(reference)
        rows += pair
    return rows


def _update_rows(sizes: Sizes, options: Options, torch: Any, torch_net: Any) -> list[Measurement]:
    n = sizes.update_envs
    with highest_precision(torch):
        exact = update_bench.measure_jax(n, options, torch_net)
        exact.note += "; highest matmul precision"
        rows = [exact]
        if torch is not None:
            full, step = update_bench.measure_torch(torch, torch_net, n, options)
            for row in (full, step):
                row.note += "; TF32 off, highest precision"
            common.pair_ratio(exact, full)
            step.note += f"; esper_jax is {exact.throughput / step.throughput:.2f}× this"
            rows += [full, step]
    bf16 = update_bench.measure_jax(n, options, torch_net, fixtures.BF16)
    rows.append(bf16)
    if torch is not None:
        reference = _torch_bf16_step(torch, torch_net, n, options)
        common.pair_ratio(bf16, reference)
        rows.append(reference)
    return rows


def _feature_rows(sizes: Sizes, options: Options, torch: Any) -> list[Measurement]:
    from esper_jax.testing import random_observation

    s, n = sizes.feature_slots, sizes.feature_envs
    obs = random_observation(1000 + n + s, s, (n,))
    row = features_bench._measure_jax(obs, n, s, options)
    if torch is None:
        return [row]
    reference = features_bench._measure_torch(torch, obs, n, s, options)
    common.pair_ratio(row, reference)
    return [row, reference]


def _train_rows(sizes: Sizes, options: Options) -> list[Measurement]:
    rows = [train_bench.measure(sizes.train_sim_envs, "sim", options, None)]
    env, reason = train_bench.make_env("host")
    for n in sizes.train_host_envs:
        rows.append(train_bench.measure(n, "host", options, None) if env is not None
                    else common.skipped(train_bench.NAME, JAX, f"env=host: {reason}", envs=n))
    return rows


SECTIONS = ("rollout", "update", "features", "train")


def run(sizes: Sizes, options: Options) -> tuple[list[Measurement], dict[str, float]]:
    """Every row of the suite, printed as it completes; also the wall seconds of each section."""
    torch = common.setup_torch()
    torch_net = fixtures.torch_network(torch, fixtures.network_config()) if torch is not None else None
    rows: list[Measurement] = []
    seconds: dict[str, float] = {}
    for section in SECTIONS:
        started = time.perf_counter()
        if section == "rollout":
            new = _rollout_rows(sizes, options, torch, torch_net)
        elif section == "update":
            new = _update_rows(sizes, options, torch, torch_net)
        elif section == "features":
            new = _feature_rows(sizes, options, torch)
        else:
            new = _train_rows(sizes, options)
        rows += [common.emit(r) for r in new]
        seconds[section] = time.perf_counter() - started
        print(f"# {section}: {seconds[section]:.1f} s", flush=True)
    return rows, seconds


def _find(rows: list[Measurement], t: Target) -> Measurement | None:
    for r in rows:
        if (r.bench == t.bench and r.impl == t.impl and r.envs == t.envs and r.status == "ok"
                and (t.slots is None or r.slots == t.slots) and r.note.startswith(t.note_prefix)):
            return r
    return None


def verdicts(rows: list[Measurement], sizes: Sizes, on_accelerator: bool) -> list[dict[str, Any]]:
    """The targets table: each target's row, the figure it is read on, and whether it is met. Absolute targets
    (throughput, µs per step) are only judged on an accelerator; on a CPU they say so."""
    out = []
    for t in targets(sizes):
        row = _find(rows, t)
        if row is None:
            out.append({"measure": t.measure, "target": t.target, "value": None, "met": None, "why": "row missing"})
            continue
        if t.read == "ratio":
            value, met = row.ratio, None if row.ratio is None else row.ratio >= t.threshold
            shown = "—" if value is None else f"{value:.2f}×"
        elif t.read == "us_per_step":
            value = row.median_s / (row.seq_len or fixtures.SEQ_LEN) * 1e6
            met, shown = value <= t.threshold, f"{value:.1f} µs"
        else:
            value, met = row.throughput, row.throughput >= t.threshold
            shown = f"{row.throughput:,.0f} {row.unit}/s"
        absolute = t.read != "ratio"
        why = "" if on_accelerator or not absolute else "absolute target: judged on an accelerator only"
        out.append({"measure": t.measure, "target": t.target, "value": value, "shown": shown,
                    "met": None if why else met, "why": why})
    return out


def markdown(rows: list[Measurement], sizes: Sizes, info: dict[str, Any], seconds: dict[str, float],
             on_accelerator: bool) -> str:
    total = sum(seconds.values())
    lines = [f"# Device suite: {info['jax_device']} / torch {info.get('torch_device', 'absent')}, {info['date']}", "",
             f"`python -m bench --device-suite`{' --tiny' if sizes == TINY else ''}: {total:.0f} s in all "
             f"(target ≤ {BUDGET_S:.0f} s on one H100/H200; "
             + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ").", "",
             "## Targets", "", "| measure | target | measured | met? |", "|---|---|---|---|"]
    for v in verdicts(rows, sizes, on_accelerator):
        met = v["why"] or ("**yes**" if v["met"] else "no" if v["met"] is not None else "—")
        lines.append(f"| {v['measure']} | {v['target']} | {v.get('shown', '—')} | {met} |")
    lines += ["", "## Compile times (trace + lower + XLA compile of each esper_jax row)", "",
              "| bench | impl | envs | slots | compile |", "|---|---|---|---|---|"]
    for r in rows:
        if r.status == "ok" and r.compile_s is not None:
            what = f"{r.bench} ({r.note.split(',', 1)[0]})" if r.note.startswith("env=") else r.bench
            lines.append(f"| {what} | {r.impl} | {r.envs} | {r.slots or ''} | {r.compile_s:.1f} s |")
    lines += ["", "## Every row", "", common.markdown_table(rows), ""]
    return "\n".join(lines)


def main(tiny: bool, out: Path | None, torch_threads: int | None = None) -> Path:
    sizes, options = (TINY, TINY_OPTIONS) if tiny else (FULL, FULL_OPTIONS)
    common.configure_torch_threads(torch_threads)
    info = common.host_info()
    out = out or RESULTS_ROOT / device_slug(info["jax_device"])
    print(f"# host: {info}", flush=True)
    print(f"# device suite ({'tiny' if tiny else 'full'} sizes) -> {out}", flush=True)
    rows, seconds = run(sizes, options)
    on_accelerator = jax.default_backend() != "cpu"
    text = markdown(rows, sizes, info, seconds, on_accelerator)
    print(text)
    common.write_results(out, rows, dict(info, suite_seconds=seconds, sizes=dataclasses.asdict(sizes)), options)
    (out / "results.md").write_text(text)
    title = f"device suite - {info['jax_device']} / torch {info.get('torch_device', 'absent')}, {info['date']}"
    if common.plot(out, rows, title) is not None:
        print(f"wrote {out / 'throughput.png'}")
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return out
