"""``SeedOracle``: the oracle protocol the CNN (``oracle.HostOracle``) and the transformer (``lm_oracle.LMOracle``)
host oracles share (docs/environment.md#step-order): one measurement = bookkeeping of seeds born/fossilised since
the last call → the SGD steps → the fused validation of the K alpha rows → under ``fixed``, the seedless twin's
accuracy as the reference (quirk 15). Each oracle supplies its network: ``_train``, ``validate``,
``_twin_accuracy``, and ``branch_of_blueprint`` (which seed branch each blueprint index runs).

A mixin without fields, so the two oracles stay frozen dataclasses with their own fields; it reads the ones both
have: ``layouts``, ``gates``, ``compat`` and ``layout`` (the env's ``ConfigLayout``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from esper_jax.contracts import SeedStage
from esper_jax.env.host.seed_sgd import SlotControl, empty_slots, slot_control, sync_seeds
from esper_jax.env.oracle import Measurement, SlotView


class SeedOracle:
    branch_of_blueprint: Any  # class attribute of each oracle: blueprint index → seed branch

    @property
    def num_slots(self) -> int:
        return len(self.layouts)

    @property
    def has_twin(self) -> bool:
        return self.compat != "upstream"

    def control(self, view: SlotView, alpha: jnp.ndarray | None = None) -> SlotControl:
        return slot_control(view, self.branch_of_blueprint, alpha)

    def _fresh_state(self, state_cls, host, **extra):
        """``state_cls`` at episode start: ``host`` with zero momentum, no seeds (they get their parameters when
        germinated, ``_sync_seeds``), every slot DORMANT, and under ``fixed`` the twin starting from the same host."""
        s = self.num_slots
        return state_cls(
            host=host,
            host_momentum=jax.tree.map(jnp.zeros_like, host),
            slots=empty_slots(self.layouts, self.gates),
            seed_id=jnp.full((s,), -1, jnp.int32),
            stage=jnp.full((s,), SeedStage.DORMANT, jnp.int32),
            gate_live=jnp.zeros((s,), jnp.bool_),
            twin=host if self.has_twin else None,
            twin_momentum=jax.tree.map(jnp.zeros_like, host) if self.has_twin else None,
            **extra,
        )

    def _sync_seeds(self, state, view: SlotView, key: jax.Array):
        return sync_seeds(state, view, self.control(view).branch, self.layouts, self.gates, key)

    def keep_matrix(self, rows: int) -> np.ndarray:
        """int [K, S] static keep-pattern of the fused-validation rows (the env's ``ConfigLayout``)."""
        keep = self.layout.keep().astype(np.int32)
        if keep.shape[0] != rows:
            raise ValueError(
                f"{type(self).__name__} expects the env's {keep.shape[0]} fused-validation rows (ConfigLayout), "
                f"got {rows}"
            )
        return keep

    def measure(
        self, state, view: SlotView, configs: jnp.ndarray, epoch: jnp.ndarray, key: jax.Array
    ) -> tuple[Any, Measurement]:
        k_sync, k_train = jax.random.split(key)
        state = self._sync_seeds(state, view, k_sync)
        state, stats = self._train(state, view, k_train)
        acc, loss = self.validate(state, view, configs)
        reference = self._twin_accuracy(state) if self.has_twin else acc[0]
        return state, stats.measurement(acc, loss, reference)
