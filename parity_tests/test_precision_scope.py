"""The parity package runs at exact-f32 matmul precision (parity_tests/conftest.py), and only while it runs."""

import jax


def test_parity_tests_run_at_highest_matmul_precision():
    assert jax.config.jax_default_matmul_precision == "highest"
