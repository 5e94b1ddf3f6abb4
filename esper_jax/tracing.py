"""Tracing helpers shared by the network, distributions and policy: whether values are concrete (not tracers), so a
host-side check can look at them outside jit and skip itself inside."""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["is_concrete"]


def is_concrete(*arrays: Any) -> bool:
    """Whether every array holds values (not a tracer), so a host-side check can look at them."""
    return not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(arrays))
