"""JAX's persistent compilation cache for the trainer: a rerun or a ``--resume`` loads the compiled interval
instead of compiling it again.

On by default in ``$XDG_CACHE_HOME/esper_jax`` (``~/.cache/esper_jax`` without XDG_CACHE_HOME). The environment
variable ``ESPER_JAX_COMPILATION_CACHE`` overrides it: a directory to use instead, or ``off`` (also ``0``, ``false``,
``no``, empty) to disable it. JAX's own ``JAX_COMPILATION_CACHE_DIR``, when set, wins over the default directory.
Only the CLI (``python -m esper_jax.train``) turns it on; importing the library never does.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "OFF_VALUES", "cache_dir", "enable"]

ENV_VAR = "ESPER_JAX_COMPILATION_CACHE"
OFF_VALUES = frozenset({"off", "0", "false", "no", ""})


def cache_dir(environ: dict[str, str] | None = None) -> Path | None:
    """The cache directory the environment asks for, or None when the cache is switched off."""
    env = os.environ if environ is None else environ
    if ENV_VAR in env:
        value = env[ENV_VAR].strip()
        return None if value.lower() in OFF_VALUES else Path(value).expanduser()
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(env["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path("~").expanduser() / ".cache")
    return Path(base) / "esper_jax"


def enable(environ: dict[str, str] | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at ``cache_dir()`` (creating it); return it, or None when off or
    when the directory cannot be created (the run then compiles as without a cache)."""
    import jax

    path = cache_dir(environ)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every compile that takes a noticeable time (the interval, the eval); skip the many tiny ones.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
