"""Run telemetry: reward-component breakdown, metrics.jsonl / TensorBoard writers, learning-curve PNG and the
leaf-path helpers the trainer's non-finite stop names leaves with. Host-side only (numpy / Python); nothing here is traced.

``RewardComponentsTelemetry`` keeps upstream's field names (docs/environment.md#log-names) so dashboards built on
simic's ``to_dict`` keep working; ``to_dict`` is written out explicitly (upstream's hot-path choice) and a test keeps it
in sync with the dataclass fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RewardComponentsTelemetry",
    "ENV_COMPONENT_TO_TELEMETRY",
    "MetricsLog",
    "TIMING_KEYS",
    "Timing",
    "deterministic",
    "UnwrittenLog",
    "find_nonfinite_leaf",
    "leaf_paths",
    "plot_learning_curves",
]


@dataclasses.dataclass(slots=True)
class RewardComponentsTelemetry:
    """Reward breakdown of one step (or a mean over steps). Defaults as upstream (docs/environment.md#log-names)."""

    base_acc_delta: float = 0.0  # unused upstream
    seed_contribution: float | None = None
    bounded_attribution: float | None = None
    progress_since_germination: float | None = None
    attribution_discount: float = 1.0
    ratio_penalty: float = 0.0
    compute_rent: float = 0.0  # stored negative
    alpha_shock: float = 0.0
    blending_warning: float = 0.0
    holding_warning: float = 0.0
    stage_bonus: float = 0.0  # unused upstream
    pbrs_bonus: float = 0.0
    synergy_bonus: float = 0.0
    action_shaping: float = 0.0
    terminal_bonus: float = 0.0
    fossilize_terminal_bonus: float = 0.0
    hindsight_credit: float = 0.0
    num_fossilized_seeds: int = 0
    num_contributing_fossilized: int = 0
    action_name: str = ""
    action_success: bool = True
    seed_stage: int | None = None
    epoch: int = 0
    val_acc: float = 0.0
    acc_at_germination: float | None = None
    host_baseline_acc: float | None = None
    growth_ratio: float = 0.0
    total_reward: float = 0.0

    @property
    def shaped_reward_ratio(self) -> float:
        """|shaping terms| / |total| (0 if |total| < 1e-8); fossilize_terminal counted twice as upstream."""
        if abs(self.total_reward) < 1e-8:
            return 0.0
        shaped = (
            self.stage_bonus + self.pbrs_bonus + self.synergy_bonus + self.action_shaping + self.terminal_bonus
            + self.fossilize_terminal_bonus + self.hindsight_credit + self.compute_rent + self.alpha_shock
            + self.blending_warning + self.holding_warning + self.ratio_penalty
        )
        return abs(shaped) / abs(self.total_reward)

    def to_dict(self) -> dict[str, Any]:
        # Explicit on purpose (no asdict); tests/test_telemetry.py checks it covers every field.
        return {
            "base_acc_delta": self.base_acc_delta,
            "seed_contribution": self.seed_contribution,
            "bounded_attribution": self.bounded_attribution,
            "progress_since_germination": self.progress_since_germination,
            "attribution_discount": self.attribution_discount,
            "ratio_penalty": self.ratio_penalty,
            "compute_rent": self.compute_rent,
            "alpha_shock": self.alpha_shock,
            "blending_warning": self.blending_warning,
            "holding_warning": self.holding_warning,
            "stage_bonus": self.stage_bonus,
            "pbrs_bonus": self.pbrs_bonus,
            "synergy_bonus": self.synergy_bonus,
            "action_shaping": self.action_shaping,
            "terminal_bonus": self.terminal_bonus,
            "fossilize_terminal_bonus": self.fossilize_terminal_bonus,
            "hindsight_credit": self.hindsight_credit,
            "num_fossilized_seeds": self.num_fossilized_seeds,
            "num_contributing_fossilized": self.num_contributing_fossilized,
            "action_name": self.action_name,
            "action_success": self.action_success,
            "seed_stage": self.seed_stage,
            "epoch": self.epoch,
            "val_acc": self.val_acc,
            "acc_at_germination": self.acc_at_germination,
            "host_baseline_acc": self.host_baseline_acc,
            "growth_ratio": self.growth_ratio,
            "total_reward": self.total_reward,
            "shaped_reward_ratio": self.shaped_reward_ratio,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RewardComponentsTelemetry:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_env_components(cls, components: Mapping[str, float], **extra: Any) -> RewardComponentsTelemetry:
        """Map ``esper_jax.env.RewardComponents`` values (per step or averaged) onto upstream's names."""
        kwargs: dict[str, Any] = {ENV_COMPONENT_TO_TELEMETRY[k]: float(v) for k, v in components.items()}
        kwargs["total_reward"] = float(sum(float(v) for v in components.values()))
        kwargs.update(extra)
        return cls(**kwargs)


# esper_jax.env.RewardComponents field → RewardComponentsTelemetry field (tests check every env field is mapped).
ENV_COMPONENT_TO_TELEMETRY: dict[str, str] = {
    "attribution": "bounded_attribution",
    "blending_warning": "blending_warning",
    "holding_warning": "holding_warning",
    "pbrs": "pbrs_bonus",
    "synergy": "synergy_bonus",
    "compute_rent": "compute_rent",
    "alpha_shock": "alpha_shock",
    "action_shaping": "action_shaping",
    "terminal": "terminal_bonus",
    "hindsight_credit": "hindsight_credit",
}


# ---------------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------------


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, np.ndarray):
        return _jsonable(v.item()) if v.ndim == 0 else [_jsonable(x) for x in v.tolist()]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock figures of one interval, written into its metrics.jsonl line (keys ``TIMING_KEYS``).

    ``interval_seconds``: the compiled interval call, dispatch to results ready (no compile, logging or
    checkpointing); ``env_steps_per_second``: the interval's env steps over that; ``compile_seconds``: what this
    interval waited for its program to compile (tracing + XLA, or a load from the persistent cache) before it
    ran, 0.0 when an earlier interval's program was reused — the run's compile time, kept out of the rate."""

    interval_seconds: float
    env_steps_per_second: float
    compile_seconds: float

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}


# The only record keys that differ between two runs of the same config and seed (everything else is deterministic
# on a given machine): comparisons of runs drop these (``deterministic``); TensorBoard files them under ``time/``.
TIMING_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Timing))


def deterministic(record: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics record without its wall-clock keys (``TIMING_KEYS``): what two runs of one seed share."""
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


class MetricsLog:
    """metrics.jsonl plus optional TensorBoard scalars. A record's values are deterministic (same config and
    seed → same values on a given machine) except ``TIMING_KEYS``."""

    def __init__(self, run_dir: Path, tensorboard: bool, keep_intervals: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line torn by a kill: drop it and everything after
                self.records.append(rec)
        if keep_intervals is not None:  # resume: forget intervals after the checkpoint
            self.records = [r for r in self.records if r["interval"] < keep_intervals]
        self.path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def append(self, record: dict[str, Any]) -> None:
        record = _jsonable(record)
        self.records.append(record)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
        if self._tb is not None:
            step = int(record["env_steps"])
            for key, value in _flatten(record).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "env_steps":
                    self._tb.add_scalar(f"time/{key}" if key in TIMING_KEYS else key, value, step)
            self._tb.flush()

    def add_scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        if self._tb is None:
            return
        for key, value in _flatten(_jsonable(dict(values))).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{prefix}/{key}", value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class UnwrittenLog:
    """The metrics log of a process other than 0 in a multi-host run: keeps the records, writes nothing (process
    0's ``MetricsLog`` writes the run's one metrics.jsonl and TensorBoard files)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def add_scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, name + "/"))
        else:
            out[name] = v
    return out


# ---------------------------------------------------------------------------------------------------------------
# Leaf paths (the non-finite stop in esper_jax/nonfinite.py names leaves by these)
# ---------------------------------------------------------------------------------------------------------------


def leaf_paths(tree: Any) -> list[str]:
    import jax

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(path) for path, _ in flat]


def find_nonfinite_leaf(tree: Any) -> str | None:
    """Path of the first leaf (flatten order) holding a NaN or Inf, else None."""
    import jax

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            return jax.tree_util.keystr(path)
    return None


# ---------------------------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------------------------


def plot_learning_curves(records: Iterable[Mapping[str, Any]], path: Path) -> None:
    """Learning curves against env steps → PNG (matplotlib Agg): return, losses, per-head entropy, seed outcomes
    per interval, reward components and action rates. Panels whose keys the records lack stay empty."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    records = list(records)
    if not records:
        return
    x = [r["env_steps"] for r in records]

    def series(key: str, sub: str | None = None) -> list[float]:
        out = []
        for r in records:
            v = r.get(key) if sub is None else (r.get(key) or {}).get(sub)
            out.append(float("nan") if v is None else float(v))
        return out

    def subkeys(key: str) -> list[str]:
        return list((records[-1].get(key) or {}).keys())

    def finish(ax, title: str) -> None:
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)

    fig, axes = plt.subplots(3, 2, figsize=(12, 11))
    ax = axes[0, 0]
    ax.plot(x, series("mean_episode_return"), label="mean episode return (raw)")
    finish(ax, "return")
    ax = axes[0, 1]
    for key in ("policy_loss", "value_loss", "loss"):
        ax.plot(x, series(key), label=key)
    finish(ax, "losses")
    ax = axes[1, 0]
    for h in subkeys("entropy_per_head"):
        ax.plot(x, series("entropy_per_head", h), label=h)
    finish(ax, "normalised entropy per head")
    ax = axes[1, 1]
    for k in subkeys("seed_outcomes"):
        ax.plot(x, series("seed_outcomes", k), marker="o", markersize=3, label=k)
    finish(ax, "seed outcomes per interval (seeds that entered the stage)")
    ax = axes[2, 0]
    for k in subkeys("reward_components"):
        values = series("reward_components", k)
        if any(v != 0.0 for v in values):  # components the env never paid would only clutter the legend
            ax.plot(x, values, label=k, linewidth=2.0 if k == "total_reward" else 1.0)
    finish(ax, "reward components (mean per env-step)")
    ax = axes[2, 1]
    for key in ("invalid_action_rate", "action_success_rate"):
        if any(key in r for r in records):
            ax.plot(x, series(key), label=key)
    finish(ax, "action rates (per env-step)")
    for a in axes.flat:
        a.set_xlabel("env steps")
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
