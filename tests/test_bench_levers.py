"""bench.levers' time-major update: the same update as the default one (so its timing compares like with like),
and every patch undone afterwards. The timings themselves are measurements, run by hand (bench/README.md)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from bench import common, levers
from bench import update as update_bench
from esper_jax import lstm, policy, ppo


def test_time_major_update_matches_the_default_and_restores_the_library():
    jitted, args, kwargs, *_ = update_bench.build_jax(2, num_steps=6)
    original = (ppo.prepare_batch, lstm._lstm_layer, policy._check_carry)
    default = jax.device_get(common.fresh_jit(jitted, kwargs)(*args, **kwargs))
    with levers._time_major_update():
        assert lstm._lstm_layer is levers._time_major_lstm_layer
        time_major = jax.device_get(common.fresh_jit(jitted, kwargs)(*args, **kwargs))
    assert (ppo.prepare_batch, lstm._lstm_layer, policy._check_carry) == original
    new_state, metrics = time_major
    assert levers._max_abs_diff(default[0].params, new_state.params) < 1e-6
    assert float(metrics.loss) == pytest.approx(float(default[1].loss), rel=1e-5, abs=1e-6)
    moved = levers._max_abs_diff(args[0].params, new_state.params)
    assert moved > 0  # the update did change the parameters, so the comparison above is not vacuous


def test_max_abs_diff_reads_float_leaves_only():
    a = {"x": np.array([1.0, 2.0]), "n": np.array([3])}
    b = {"x": np.array([1.0, 2.5]), "n": np.array([7])}
    assert levers._max_abs_diff(a, b) == 0.5


def test_unknown_experiment_is_refused(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["python -m bench.levers", "--only", "update_variants,nope"])
    with pytest.raises(SystemExit) as raised:
        levers.main()
    assert raised.value.code == 2
    assert "nope" in capsys.readouterr().err
