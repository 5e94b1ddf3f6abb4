"""Stop a training run at the first interval that went non-finite, naming what did.

The compiled interval returns, per PPO iteration, flags the update computed from its own loss, gradients and new
parameters (``ppo.UpdateMetrics.loss_nonfinite / grad_nonfinite / param_nonfinite``) and the rollout's flag for
non-finite logits or values. This module reads them on the host after the interval: no second gradient pass, and
the run stops at the interval where the first NaN/Inf appeared, before that state is checkpointed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["NonFiniteError", "check_interval"]


class NonFiniteError(FloatingPointError):
    """A training interval produced NaN/Inf in its loss, gradients, parameters or policy outputs."""


def _leaves(flags: np.ndarray, paths: Sequence[str], every: bool) -> str:
    names = [paths[i] for i in np.flatnonzero(flags)]
    if every or len(names) == 1:
        return ", ".join(names)
    return f"{names[0]} (and {len(names) - 1} more leaves; --debug-nans lists them all)"


def check_interval(outs: dict[str, Any], param_paths: Sequence[str], *, interval: int, first_iteration: int,
                   every_leaf: bool = False) -> None:
    """Raise ``NonFiniteError`` naming the first iteration of the interval whose rollout, loss, gradients or updated
    parameters held NaN/Inf (and the first offending leaf of each, or every one with ``every_leaf``)."""
    rm, um = outs["rollout"], outs["update"]
    rollout_bad = np.atleast_1d(np.asarray(rm.nonfinite_error))
    loss_bad = np.atleast_1d(np.asarray(um.loss_nonfinite))
    grad_bad = np.atleast_2d(np.asarray(um.grad_nonfinite))  # [iterations, leaves]
    param_bad = np.atleast_2d(np.asarray(um.param_nonfinite))
    any_bad = rollout_bad | loss_bad | grad_bad.any(axis=1) | param_bad.any(axis=1)
    if not any_bad.any():
        return
    it = int(np.flatnonzero(any_bad)[0])
    what = []
    if rollout_bad[it]:
        what.append("the policy's logits or values in the rollout")
    if loss_bad[it]:
        what.append("the PPO loss")
    if grad_bad[it].any():
        what.append(f"the gradient of {_leaves(grad_bad[it], param_paths, every_leaf)}")
    if param_bad[it].any():
        what.append(f"the updated parameter {_leaves(param_bad[it], param_paths, every_leaf)}")
    raise NonFiniteError(
        f"interval {interval} went non-finite at iteration {first_iteration + it}: NaN/Inf in " + "; ".join(what)
    )
