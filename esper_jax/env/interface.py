"""The functional environment interface the rollout drives, written for ONE env (the rollout vmaps over envs).

It lives with the environments, not with the rollout, so that the environment package sits below the
rollout module in the import graph: an environment only needs to know what it returns, never who collects it.

* ``env.reset(key) -> (state, Observation)``
* ``env.step(state, actions: PerHead[int32 scalar], key) -> StepOutput(state, obs, reward, done, truncated, info)``

``step`` must NOT auto-reset: ``obs`` is the true post-step observation, which the truncation bootstrap needs.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
from flax import struct

from esper_jax.contracts import PerHead
from esper_jax.observation import Observation

__all__ = ["Environment", "StepOutput", "bind_data", "data_of"]


@struct.dataclass
class StepOutput:
    """What ``Environment.step`` returns for ONE env (no batch axes; the rollout vmaps)."""

    state: Any  # next env state (a pytree), NOT reset when done
    obs: Observation  # post-step observation, NOT the reset one
    reward: jax.Array  # float32 scalar, raw (before reward normalisation)
    done: jax.Array  # bool scalar: the episode ended here (time limit included)
    truncated: jax.Array  # bool scalar: it ended by the time limit (then done is True too)
    # Any pytree of per-env diagnostics; the rollout's RolloutConfig.info_totals sums them.
    info: Any = struct.field(default_factory=dict)


class Environment(Protocol):
    """The functional env interface the rollout drives. Written per env, pure, traceable."""

    def reset(self, key: jax.Array) -> tuple[Any, Observation]: ...

    def step(self, state: Any, actions: PerHead, key: jax.Array) -> StepOutput: ...


def data_of(env: Any) -> Any:
    """The arrays ``env`` reads (``env.data()``), to be passed into compiled code as an argument so a large dataset
    is not compiled in as constants; None for an env without data (the simulator, any env that lacks ``data``)."""
    data = getattr(env, "data", None)
    return None if data is None else data()


def bind_data(env: Any, data: Any) -> Any:
    """``env`` reading ``data`` (from ``data_of``, possibly traced); ``env`` itself when there are none."""
    return env if data is None else env.bind(data)
