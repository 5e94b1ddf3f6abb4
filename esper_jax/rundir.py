"""Run-directory safety: a new run never writes into an existing run's files, and a bad ``--out`` is an error line.

A new run (no ``--resume``) needs ``--out`` to be absent or an empty directory. ``--overwrite`` first removes what a
previous run wrote there (the names below) and refuses if anything else is present, so a mistyped ``--out`` cannot
delete unrelated files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from esper_jax.checkpoint import CORRUPT_DIR
from esper_jax.config import ConfigError

__all__ = ["RUN_ARTEFACTS", "RunDirError", "prepare_new_run_dir"]

# Everything the trainer writes into a run directory.
RUN_ARTEFACTS: frozenset[str] = frozenset({"config.json", "metrics.jsonl", "eval.json", "learning_curves.png",
                                           "learning_curves.tmp.png", "tb", "checkpoints", CORRUPT_DIR})


class RunDirError(ConfigError):
    """The run directory cannot be used as asked (exists with files, not a directory, not writable)."""


def prepare_new_run_dir(run_dir: Path, overwrite: bool = False) -> None:
    """Create ``run_dir`` for a new run, or refuse with a one-line reason; with ``overwrite`` clear a previous run."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} exists and is not a directory")
    if run_dir.is_dir():
        entries = sorted(p.name for p in run_dir.iterdir())
        if entries and not overwrite:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise RunDirError(
                f"--out {run_dir} is not empty ({shown}); use --resume {run_dir} to continue that run, "
                f"--overwrite to replace it, or another --out"
            )
        foreign = [name for name in entries if name not in RUN_ARTEFACTS]
        if foreign:
            raise RunDirError(f"--overwrite refused: {run_dir} holds files a run does not write ({', '.join(foreign[:5])})")
        for name in entries:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"--out {run_dir} cannot be created: {exc.strerror or exc}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"--out {run_dir} is not writable")
