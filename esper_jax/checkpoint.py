"""Orbax checkpoints of a training run (docs/architecture.md#interval: save everything needed to continue bit-for-bit).

A checkpoint (``RUN_DIR/checkpoints/<interval>``, orbax ``CheckpointManager``) holds

* ``state``: the trainer's ``TrainerState`` (``esper_jax.trainer``): ``train`` (TrainState: params, optimiser
  state, obs normaliser, train_steps), ``runner`` (RunnerState: env states, observations, LSTM carries, reward
  normaliser, episode returns), ``key`` (the trainer's PRNG key) and ``counters`` (interval, iteration,
  env_steps, episodes). Orbax stores it as nested dicts keyed by field names, the same layout as the plain dict
  the trainer saved before ``TrainerState``, so those checkpoints restore into it unchanged.
* ``meta``: JSON ``{"format": FORMAT_VERSION, "interval": ..., "config": TrainingConfig.to_dict()}``. A
  checkpoint written before the config became a tree holds the flat config; it is read through
  ``esper_jax.config.load_dict`` and compared in the tree's terms.

Orbax writes each step to a temporary directory and renames it when complete, so a process killed mid-save
leaves the previous checkpoint as the latest. Restoring checks the format and the config first, then restores
arrays against the expected structure, shapes and dtypes: any mismatch or unreadable file raises
``CheckpointError`` and nothing in the run directory is touched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from esper_jax.config import COMPATIBLE_OVERRIDES, ConfigError, load_dict, to_dict
from esper_jax.contracts import AlphaMode

__all__ = ["CheckpointError", "CorruptCheckpointError", "FORMAT_VERSION", "Checkpointer", "COMPATIBLE_OVERRIDES"]

FORMAT_VERSION = 1
CORRUPT_DIR = "corrupt_checkpoints"  # beside checkpoints/: corrupt steps set aside when resuming from an older one



class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (missing, corrupt, or from a different run configuration)."""


class CorruptCheckpointError(CheckpointError):
    """One checkpoint step is unreadable (torn or overwritten files); an older step may still be intact."""


def _short(exc: BaseException, limit: int = 200) -> str:
    """First line of an orbax/TensorStore error, capped: the full text can be a 60-line dump."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


class Checkpointer:
    def __init__(self, run_dir: Path, max_to_keep: int = 2, create: bool = True):
        ocp = _ocp()
        self.directory = (Path(run_dir) / "checkpoints").absolute()
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoints in {run_dir} (expected {self.directory})")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        ocp = _ocp()
        meta = dict(meta, format=FORMAT_VERSION, interval=int(step))
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._manager.wait_until_finished()

    def check(self, config_dict: dict[str, Any], step: int | None = None) -> dict:
        """Read the metadata of the latest (or given) step and refuse it unless its config matches."""
        return self._meta(config_dict, self.latest_step() if step is None else step)

    def restore(self, abstract_state: Any, config_dict: dict[str, Any], step: int | None = None) -> tuple[Any, dict]:
        """Restore the latest (or given) step into the structure of ``abstract_state``; check ``config_dict``."""
        ocp = _ocp()
        step = self.latest_step() if step is None else step
        meta = self._meta(config_dict, step)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype) if not isinstance(x, jax.ShapeDtypeStruct) else x, abstract_state)
        try:
            state = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as exc:  # noqa: BLE001
            state = self._restore_older_layout(step, abstract, exc)
        want = jax.tree_util.tree_structure(abstract)
        got = jax.tree_util.tree_structure(state)
        if want != got:
            raise CheckpointError(f"checkpoint {self.directory / str(step)} has a different state structure")
        for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
            # b.dtype, not np.asarray(b): a leaf sharded over several hosts cannot be gathered on one.
            if tuple(a.shape) != tuple(np.shape(b)) or np.dtype(a.dtype) != np.dtype(b.dtype):
                raise CheckpointError(
                    f"checkpoint {self.directory / str(step)} leaf shape/dtype mismatch: {np.shape(b)}/{b.dtype} "
                    f"vs expected {a.shape}/{a.dtype}"
                )
        return state, meta

    def _restore_older_layout(self, step: int, abstract: Any, original: Exception) -> Any:
        """Read a checkpoint whose state predates a renamed or added field (``STATE_MIGRATIONS``): restore the
        stored tree as written and rebuild the expected structure from it. Anything else that does not match is
        refused with the original error."""
        ocp = _ocp()
        refusal = CorruptCheckpointError(
            f"checkpoint {self.directory / str(step)} is corrupt or does not match this run: {_short(original)}")
        try:
            raw = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        except Exception:  # noqa: BLE001
            raise refusal from None
        paths, treedef = jax.tree_util.tree_flatten_with_path(abstract)
        leaves, migrated = [], set()
        for path, want in paths:
            names = tuple(_key_name(k) for k in path)
            value = _lookup(raw, names)
            if value is None:
                for suffix, (label, derive) in STATE_MIGRATIONS.items():
                    if names[-len(suffix):] == suffix:
                        value = derive(_lookup(raw, names[:-1]))
                        if value is not None:
                            migrated.add(label)
                        break
            if value is None:
                raise refusal
            leaves.append(np.asarray(value, dtype=want.dtype))
        if not migrated:
            raise refusal
        return jax.tree.unflatten(treedef, leaves)

    def restore_newest_intact(self, abstract_state: Any, config_dict: dict[str, Any]) -> tuple[Any, dict, list[str]]:
        """Restore the newest step that reads back intact; also return one short line per newer step skipped as
        corrupt. A config mismatch is not skipped (every step of a run shares its config), and when no step is
        intact the error names each one."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        skipped: list[str] = []
        for step in steps:
            try:
                state, meta = self.restore(abstract_state, config_dict, step)
            except CorruptCheckpointError as exc:
                skipped.append(str(exc))
                continue
            if skipped:  # the resumed run saves these steps again: keep the corrupt ones aside, for inspection
                aside = self.directory.parent / CORRUPT_DIR
                aside.mkdir(exist_ok=True)
                for newer in (s for s in steps if s > step):
                    target = aside / f"{newer}-{len(list(aside.iterdir()))}"
                    (self.directory / str(newer)).rename(target)
                    skipped.append(f"moved {self.directory / str(newer)} to {target}")
                self._manager.reload()
            return state, meta, skipped
        raise CheckpointError("no intact checkpoint to resume from:\n  " + "\n  ".join(skipped))

    def _meta(self, config_dict: dict[str, Any], step: int | None) -> dict:
        ocp = _ocp()
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as exc:  # noqa: BLE001 — any orbax/IO failure is a refusal
            raise CorruptCheckpointError(
                f"checkpoint {self.directory / str(step)} is unreadable (metadata): {_short(exc)}"
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} has format {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                f"expected {FORMAT_VERSION}"
            )
        try:
            saved = _leaves(to_dict(load_dict(meta.get("config", {}))))  # a flat (pre-tree) config is migrated
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {self.directory / str(step)} holds an unreadable config: {exc}") from None
        run = _leaves(to_dict(load_dict(config_dict)))
        diffs = sorted(k for k in set(saved) | set(run)
                       if not k.startswith(COMPATIBLE_OVERRIDES) and saved.get(k) != run.get(k))
        if diffs:
            detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs run {run.get(k)!r}" for k in diffs)
            raise CheckpointError(f"checkpoint {self.directory / str(step)} was written by a different configuration ({detail})")
        return meta

    def close(self) -> None:
        self._manager.close()


def _key_name(key: Any) -> Any:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def _lookup(tree: Any, names: tuple) -> Any:
    for name in names:
        if isinstance(tree, dict):
            tree = tree.get(name, tree.get(str(name)))
        elif isinstance(tree, (list, tuple)) and isinstance(name, int) and name < len(tree):
            tree = tree[name]
        else:
            return None
        if tree is None:
            return None
    return tree


def _feedback_seeds_created(feedback: Any) -> Any:
    # Renamed: the germination count that numbers seed ids was ``Feedback.total_seeds`` (docs/compat.md,
    # "Made upstream-exact"); ``total_seeds`` is now derived from the slots.
    return feedback.get("total_seeds") if isinstance(feedback, dict) else None


def _slots_frozen(slots: Any) -> Any:
    # Added: the blend-out freeze is now state (decided by the tick). Older code derived it after the tick as
    # ``fixed`` still does: a pending scheduled prune or a controller ramping down.
    if not isinstance(slots, dict) or "pending_prune" not in slots:
        return None
    mode = _lookup(slots, ("controller", "mode"))
    return None if mode is None else np.asarray(slots["pending_prune"]) | (np.asarray(mode) == AlphaMode.DOWN)


def _tracker_reference_accuracy(tracker: Any) -> Any:
    # Added: the seedless reference accuracy (docs/compat.md, quirk 15). An older checkpoint has none: the env's own
    # accuracy stands in until the next measurement replaces it, so the first step after such a resume pays the fixed
    # reward as if the seeds had gained nothing. (A host-env checkpoint of that age has no seedless twin either and
    # is refused.)
    return tracker.get("val_accuracy") if isinstance(tracker, dict) else None


# Fields of the saved state added or renamed since checkpoint format 1 was first written: the trailing key path
# → (what it is, how to derive it from the parent's stored tree). Such a checkpoint resumes; the env it continues
# in is today's (so a run resumed across such a change continues under the new env rules).
STATE_MIGRATIONS: dict[tuple[str, ...], tuple[str, Any]] = {
    ("feedback", "seeds_created"): ("feedback.total_seeds renamed seeds_created", _feedback_seeds_created),
    ("slots", "frozen"): ("slots.frozen added", _slots_frozen),
    ("tracker", "reference_accuracy"): ("tracker.reference_accuracy added", _tracker_reference_accuracy),
}


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted path: value}, so a refusal names e.g. ``ppo.learning_rate``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_meta_config(run_dir: Path) -> dict[str, Any]:
    """The run directory's config.json as written (flat in runs made before the config tree: ``load_dict``
    reads both formats)."""
    path = Path(run_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot resume from {run_dir}: config.json unreadable ({exc})") from None
