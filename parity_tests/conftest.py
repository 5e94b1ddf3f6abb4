"""Parity-test setup only (never a library side effect, nor a setting leaking into tests/ when both run in one
process, e.g. a pytest-xdist worker): exact f32 matmuls in JAX for the parity package, a fixed torch thread count."""

import jax
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="module", autouse=True)
def _highest_matmul_precision():
    # Module scope (autouse fixtures come first within a scope, so it wraps the modules' own module fixtures too). Not
    # "package": parity_tests/ has no __init__.py, and pytest then keeps a package fixture for the whole session.
    with jax.default_matmul_precision("highest"):
        yield
