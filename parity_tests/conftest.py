"""Parity-test setup only (never a library side effect, nor a setting leaking into tests/ when both run in one
process, e.g. a pytest-xdist worker): exact f32 matmuls in JAX for the parity package, a fixed torch thread count."""

import jax
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="package", autouse=True)
def _highest_matmul_precision():
    # Package scope: it wraps the module-scoped fixtures too, and pytest tears it down when a worker moves on to a
    # test outside parity_tests/.
    with jax.default_matmul_precision("highest"):
        yield
