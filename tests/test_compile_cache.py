"""The trainer's persistent compilation cache: where it goes, how it is switched off, and that tests keep it off."""

from pathlib import Path

import jax
import pytest

from esper_jax import compile_cache
from esper_jax.compile_cache import ENV_VAR, cache_dir


def test_default_is_the_user_cache_directory():
    assert cache_dir({"XDG_CACHE_HOME": "/x/cache"}) == Path("/x/cache/esper_jax")
    assert cache_dir({}) == Path("~/.cache/esper_jax").expanduser()
    assert cache_dir({"JAX_COMPILATION_CACHE_DIR": "/j"}) == Path("/j")


def test_env_var_moves_it_or_switches_it_off():
    assert cache_dir({ENV_VAR: "/elsewhere", "JAX_COMPILATION_CACHE_DIR": "/j"}) == Path("/elsewhere")
    for off in ("off", "OFF", "0", "false", "no", ""):
        assert cache_dir({ENV_VAR: off, "XDG_CACHE_HOME": "/x"}) is None


def test_the_test_session_keeps_it_off():
    assert cache_dir() is None  # tests/conftest.py: nothing is written to the user's home


@pytest.fixture
def restore_cache_config():
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    saved = {k: getattr(jax.config, k) for k in keys}
    yield
    for k, v in saved.items():
        jax.config.update(k, v)


def test_enable_points_jax_at_the_directory(tmp_path, restore_cache_config):
    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.enable({ENV_VAR: "off"}) is None
    assert jax.config.jax_compilation_cache_dir == before
    target = tmp_path / "cache"
    assert compile_cache.enable({ENV_VAR: str(target)}) == target
    assert target.is_dir() and jax.config.jax_compilation_cache_dir == str(target)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert compile_cache.enable({ENV_VAR: str(a_file / "cache")}) is None  # cannot be created: run without it


def test_matmul_precision_is_the_default_outside_the_parity_tests():
    """parity_tests/conftest.py scopes 'highest' to its package: run in one process after the parity tests
    (`pytest parity_tests/test_precision_scope.py tests/test_compile_cache.py`), this still sees the default."""
    assert jax.config.jax_default_matmul_precision is None
