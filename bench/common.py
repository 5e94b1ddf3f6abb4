"""Timing, device description and reporting shared by every benchmark (docs/benchmarks.md).

A benchmark module builds its inputs, hands a zero-argument callable to :func:`time_jax` or :func:`time_torch`,
and turns the :class:`Timing` into a :class:`Measurement`. Everything a reader needs to interpret a figure
(device, dtype, matmul precision, envs, slots, sequence length, warm-up count, repetitions) travels in the
Measurement itself, so a JSON line or a row of results.json is self-describing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax

# Implementation labels used in every row.
JAX = "esper_jax"
TORCH = "torch_ref"


# ----------------------------------------------------------------------------------------------------------------
# Run options
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
    """What the command line asked for. ``quick``: every benchmark at its smallest size with few repetitions.
    ``max_envs``: drop sizes above it (a CPU cannot run the 4096-env rows in reasonable time; every dropped size
    is reported as a skipped row, never silently). ``budget_s``: stop repeating a measurement once this much time
    has been spent on it (but never below ``min_reps``)."""

    quick: bool = False
    max_envs: int | None = None
    caps: tuple[tuple[str, int], ...] = ()  # per-benchmark env caps (--cap NAME=N), overriding max_envs
    torch_threads: int | None = None  # None: one per core
    warmup: int = 1
    reps: int = 5
    min_reps: int = 2
    budget_s: float = 12.0

    def env_cap(self, bench: str) -> int | None:
        """The env cap of one benchmark: its --cap if given, else --max-envs."""
        return dict(self.caps).get(bench, self.max_envs)

    @classmethod
    def for_quick(cls, **overrides: Any) -> Options:
        # No warm-up: a smoke run checks that everything runs and reports, and AOT compilation already keeps
        # compile time out of the single timed call.
        base = dict(quick=True, warmup=0, reps=1, min_reps=1, budget_s=1.0)
        base.update(overrides)
        return cls(**base)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smallest size of every benchmark, few repetitions")
    parser.add_argument("--out", type=Path, default=None, help="write results.json and throughput.png here")
    parser.add_argument("--max-envs", type=int, default=None, help="skip sizes with more envs than this")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (upper bound)")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed work per measurement")
    parser.add_argument(
        "--cap", action="append", default=[], metavar="NAME=N", help="env cap for one benchmark (repeatable)"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch intra-op threads (default: one per core)"
    )
    parser.add_argument("--previous", type=Path, default=None, help="an earlier results.json to compare train with")


def options_from_args(args: argparse.Namespace) -> Options:
    overrides: dict[str, Any] = {
        "max_envs": args.max_envs,
        "caps": tuple((name, int(n)) for name, n in (c.split("=", 1) for c in args.cap)),
        "torch_threads": args.torch_threads,
    }
    if args.reps is not None:
        overrides["reps"] = args.reps
    if args.budget is not None:
        overrides["budget_s"] = args.budget
    return Options.for_quick(**overrides) if args.quick else Options(**overrides)


# ----------------------------------------------------------------------------------------------------------------
# Environment description
# ----------------------------------------------------------------------------------------------------------------


_TORCH_THREADS: int | None = None


def configure_torch_threads(threads: int | None) -> None:
    """Remember the thread count for :func:`setup_torch` (set once from the command line)."""
    global _TORCH_THREADS
    _TORCH_THREADS = threads


def setup_torch() -> Any | None:
    """Import torch with one intra-op thread per core unless ``--torch-threads`` says otherwise; None if absent.

    On a CPU shared with other busy processes, torch's OpenMP threads spin-wait for each other and a 2-thread
    small-batch forward can run tens of times slower than with 1 thread: the reported thread count matters."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(_TORCH_THREADS or os.cpu_count() or 1)
    return torch


def jax_device() -> str:
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", "") or ""
    return f"{device.platform}:{kind}".rstrip(":") if device.platform != "cpu" else f"cpu ({os.cpu_count()} cores)"


def torch_device_name(torch: Any) -> str:
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def jax_matmul_precision() -> str:
    """The configured default (``None`` means XLA's default: full float32 on CPU, TF32-class on recent GPUs)."""
    value = jax.config.jax_default_matmul_precision
    if value is None:
        return "default (fp32 on cpu)" if jax.devices()[0].platform == "cpu" else "default"
    return str(value)


def torch_matmul_precision(torch: Any) -> str:
    return f"{torch.get_float32_matmul_precision()}"


def host_info() -> dict[str, Any]:
    torch = setup_torch()
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_device": jax_device(),
        "jax_matmul_precision": jax_matmul_precision(),
    }
    if torch is not None:
        info.update(
            torch=torch.__version__,
            torch_device=torch_device_name(torch),
            torch_threads=torch.get_num_threads(),
            omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "unset (active spin)"),
        )
    else:
        info["torch"] = None
    info["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return info


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timing:
    times_s: tuple[float, ...]
    warmup: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def reps(self) -> int:
        return len(self.times_s)


def _repeat(call: Callable[[], Any], finish: Callable[[Any], Any], options: Options) -> Timing:
    for _ in range(options.warmup):
        finish(call())
    times: list[float] = []
    spent = 0.0
    while len(times) < options.reps and (len(times) < options.min_reps or spent < options.budget_s):
        start = time.perf_counter()
        finish(call())
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    return Timing(tuple(times), options.warmup)


def time_jax(call: Callable[[], Any], options: Options) -> Timing:
    """Median-able wall times of ``call()`` with every output leaf ready (``block_until_ready``): JAX dispatch is
    asynchronous, so without it we would time the enqueue, not the work."""
    return _repeat(call, jax.block_until_ready, options)


def time_torch(call: Callable[[], Any], options: Options, torch: Any) -> Timing:
    """Wall times of ``call()``; on a GPU every repetition ends with ``torch.cuda.synchronize`` so queued kernels
    are counted."""

    def finish(_: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return _repeat(call, finish, options)


@dataclasses.dataclass(frozen=True)
class Compiled:
    fn: Callable[..., Any]
    lower_s: float  # tracing + lowering to StableHLO
    compile_s: float  # XLA compilation


# (function name, envs) -> (lower_s, compile_s) of every labelled compile in this process, for the compile bench.
COMPILE_LOG: dict[tuple[str, int], tuple[float, float]] = {}


def fresh_jit(jitted: Any, kwargs: dict[str, Any]) -> Any:
    """A new ``jax.jit`` of a benchmark's undecorated function, its keyword arguments static: it traces anew (so a
    patch applied since the first jit takes effect) and its first call or lowering is a first compile."""
    return jax.jit(jitted.__wrapped__, static_argnames=tuple(kwargs))


def compile_jax(jitted: Any, *args: Any, label: tuple[str, int] | None = None, **kwargs: Any) -> Compiled:
    """Ahead-of-time lower + compile, so the timed calls never include compilation and its cost is known exactly.
    ``label`` records the cost in COMPILE_LOG under (function name, envs)."""
    start = time.perf_counter()
    lowered = jitted.lower(*args, **kwargs)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    if label is not None:
        COMPILE_LOG[label] = (lowered_at - start, done - lowered_at)
    return Compiled(compiled, lowered_at - start, done - lowered_at)


# ----------------------------------------------------------------------------------------------------------------
# Measurements and reporting
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Measurement:
    """One row. ``throughput`` is in ``unit`` per second; ``ratio`` (set on the esper_jax row of a pair) is
    esper_jax throughput / torch throughput, i.e. how many times faster esper_jax is (> 1: faster)."""

    bench: str
    impl: str
    status: str  # "ok" or "skipped"
    device: str = ""
    dtype: str = "float32"
    matmul_precision: str = ""
    envs: int | None = None
    slots: int | None = None
    seq_len: int | None = None
    warmup: int | None = None
    reps: int | None = None
    median_s: float | None = None
    throughput: float | None = None
    unit: str = ""
    compile_s: float | None = None
    ratio: float | None = None
    note: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=False)


def measured(
    bench: str,
    impl: str,
    timing: Timing,
    *,
    work: float,
    unit: str,
    device: str,
    matmul_precision: str,
    envs: int | None = None,
    slots: int | None = None,
    seq_len: int | None = None,
    compile_s: float | None = None,
    note: str = "",
    dtype: str = "float32",
) -> Measurement:
    """A row from a timing; ``work`` is the amount of ``unit`` one call performs (env-steps, envs, ...)."""
    return Measurement(
        bench=bench,
        impl=impl,
        status="ok",
        device=device,
        dtype=dtype,
        matmul_precision=matmul_precision,
        envs=envs,
        slots=slots,
        seq_len=seq_len,
        warmup=timing.warmup,
        reps=timing.reps,
        median_s=timing.median_s,
        throughput=work / timing.median_s,
        unit=unit,
        compile_s=compile_s,
        note=note,
    )


def jax_row(
    bench: str,
    jitted: Any,
    args: Sequence[Any],
    options: Options,
    *,
    work: float,
    unit: str,
    envs: int,
    slots: int,
    note: str,
    seq_len: int | None = None,
    static: dict[str, Any] | None = None,
    label: tuple[str, int] | None = None,
    caller: Callable[[Callable[..., Any]], Callable[[], Any]] | None = None,
    impl: str = JAX,
    dtype: str = "float32",
) -> Measurement:
    """The esper_jax row of a benchmark: compile ``jitted`` ahead of time on ``args`` (``static``: its static
    keyword arguments; ``label``: record the cost for the compile benchmark), time it, describe the device.

    ``caller`` turns the compiled function into the zero-argument call that is timed; by default every call
    reuses ``args`` (a benchmark that threads state from one call to the next, like ``train``, passes its own)."""
    compiled = compile_jax(jitted, *args, label=label, **(static or {}))
    call = caller(compiled.fn) if caller is not None else (lambda: compiled.fn(*args))
    return measured(
        bench,
        impl,
        time_jax(call, options),
        work=work,
        unit=unit,
        device=jax_device(),
        matmul_precision=jax_matmul_precision(),
        envs=envs,
        slots=slots,
        seq_len=seq_len,
        compile_s=compiled.compile_s,
        note=note,
        dtype=dtype,
    )


def skipped(bench: str, impl: str, reason: str, **fields: Any) -> Measurement:
    return Measurement(bench=bench, impl=impl, status="skipped", note=reason, **fields)


def pair_ratio(jax_row: Measurement, torch_row: Measurement) -> None:
    """Set the esper_jax row's ratio from a torch row measured on the same sizes."""
    if jax_row.throughput and torch_row.throughput:
        jax_row.ratio = jax_row.throughput / torch_row.throughput


def emit(row: Measurement) -> Measurement:
    print(row.to_json(), flush=True)
    return row


def within(sizes: Iterable[int], limit: int | None) -> tuple[list[int], list[int]]:
    """Split env counts into (run, dropped because above ``limit``)."""
    keep, drop = [], []
    for n in sizes:
        (drop if limit is not None and n > limit else keep).append(n)
    return keep, drop


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _fmt_number(x: float | None) -> str:
    if x is None:
        return ""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{suffix}"
    return f"{x:.3g}"


def markdown_table(rows: Sequence[Measurement]) -> str:
    header = "| bench | impl | envs | slots | T | median | throughput | compile | ratio jax/torch | reps | note |"
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        if r.status != "ok":
            lines.append(
                f"| {r.bench} | {r.impl} | {r.envs or ''} | {r.slots or ''} | {r.seq_len or ''} | skipped | | | | | "
                f"{r.note} |"
            )
            continue
        throughput = f"{_fmt_number(r.throughput)} {r.unit}/s" if r.throughput is not None else ""
        ratio = f"{r.ratio:.1f}×" if r.ratio is not None else ""
        lines.append(
            f"| {r.bench} | {r.impl} | {r.envs or ''} | {r.slots or ''} | {r.seq_len or ''} | "
            f"{_fmt_time(r.median_s)} | {throughput} | {_fmt_time(r.compile_s)} | {ratio} | {r.reps} | {r.note} |"
        )
    return "\n".join(lines)


def write_results(out: Path, rows: Sequence[Measurement], info: dict[str, Any], options: Options) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    payload = {"host": info, "options": dataclasses.asdict(options), "rows": [dataclasses.asdict(r) for r in rows]}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def _series_label(row: Measurement) -> str:
    """One plotted line per implementation, and per slot count (features) or environment (train: its note starts
    with ``env=sim``/``env=host``, and a sim row and a host row must not be joined into one line)."""
    if row.bench == "features":
        return f"{row.impl}, {row.slots} slots"
    if row.bench == "train" and row.note.startswith("env="):
        return f"{row.impl}, {row.note.split(',', 1)[0]}"
    return row.impl


def plot(out: Path, rows: Sequence[Measurement], title: str) -> Path | None:
    """throughput.png: throughput vs envs (log-log), one panel per benchmark, one line per implementation (and
    per slot count for features). Returns None, with a message, when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a benchmark box
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return None
    ok = [r for r in rows if r.status == "ok" and r.envs and r.throughput and r.bench != "compile"]
    benches = list(dict.fromkeys(r.bench for r in ok))
    if not benches:
        return None
    fig, axes = plt.subplots(1, len(benches), figsize=(4.5 * len(benches), 4), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        series: dict[str, list[Measurement]] = {}
        for r in ok:
            if r.bench == bench:
                series.setdefault(_series_label(r), []).append(r)
        for label, points in series.items():
            points.sort(key=lambda r: r.envs)
            style = "-o" if label.startswith(JAX) else "--s"
            ax.plot([p.envs for p in points], [p.throughput for p in points], style, label=label, markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("envs")
        ax.set_ylabel(f"{points[0].unit} / s")
        ax.set_title(bench)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = out / "throughput.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
