"""``SeedOracle``: the oracle protocol the CNN (``oracle.HostOracle``) and the transformer (``lm_oracle.LMOracle``)
host oracles share (docs/environment.md#step-order): one measurement = bookkeeping of seeds born/fossilised since
the last call → the SGD steps → the fused validation of the K alpha rows → under ``fixed``, the seedless twin's
accuracy as the reference (quirk 15); and the fused validation's branching over the K alpha rows
(``_fused_rows``). Each oracle supplies its network: ``_train``, ``validate``, ``_twin_accuracy``,
``branch_of_blueprint`` (which seed branch each blueprint index runs) and ``blend_fn`` (its blend operator).

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
    branch_of_blueprint: Any  # class attributes of each oracle: blueprint index → seed branch,
    blend_fn: Any  # and blend(algorithm, h, s, x, alpha, gate) as a staticmethod

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

    def _fused_rows(self, state, view: SlotView, configs: jnp.ndarray, sites: tuple[int, ...], run):
        """The fused validation of the K alpha rows of ``configs`` (the env's layout; docs/environment.md
        #counterfactual-validation). Rows agreeing on which of the slots before slot j are on feed slot j the same
        hidden states, so the pass branches only where they differ (at most 2^j variants reach slot j) and every
        seed runs once per variant. ``sites``: the host site (block or segment) each enabled slot follows;
        ``run(inject)``: the host's ``forward_many`` under that injection, whose outputs (a pytree) lead with the
        variant axis. Returns those outputs in the K rows."""
        keep = self.keep_matrix(configs.shape[0])
        ctrl = self.control(view)
        slot_of = {site: i for i, site in enumerate(sites)}
        # Variants before slot j: the distinct keep-patterns of slots < j (static), each with a representative row.
        patterns = [()]

        def inject(site: int, h: jnp.ndarray) -> jnp.ndarray:
            nonlocal patterns
            if site not in slot_of:
                return h
            j = slot_of[site]
            # validation: no gradients, so the seed reads h itself (isolation is moot)
            s = jax.vmap(lambda x: self.layouts[j].apply(ctrl.branch[j], state.slots[j].seed, x))(h)
            gate = jax.vmap(lambda x: self.gates[j].apply(state.slots[j].gate, x))(h)
            new = sorted({tuple(int(v) for v in row[: j + 1]) for row in keep})
            parent = np.asarray([patterns.index(p[:-1]) for p in new])
            bit = np.asarray([p[-1] for p in new], bool)
            rep = np.asarray([next(r for r, row in enumerate(keep) if tuple(row[: j + 1]) == p) for p in new])

            def one(h_p, s_p, g_p, a, on):
                y = self.blend_fn(ctrl.algorithm[j], h_p, s_p, h_p, a, g_p)
                return jnp.where(on & ctrl.blended[j] & (a > 0.0), y, h_p)

            patterns = new
            return jax.vmap(one)(h[parent], s[parent], gate[parent], configs[rep, j], jnp.asarray(bit))

        out = run(inject)
        row_of = np.asarray([patterns.index(tuple(int(v) for v in row[: len(patterns[0])])) for row in keep])
        return jax.tree.map(lambda x: x[row_of], out)

    def measure(
        self, state, view: SlotView, configs: jnp.ndarray, epoch: jnp.ndarray, key: jax.Array
    ) -> tuple[Any, Measurement]:
        k_sync, k_train = jax.random.split(key)
        state = self._sync_seeds(state, view, k_sync)
        state, stats = self._train(state, view, k_train)
        acc, loss = self.validate(state, view, configs)
        reference = self._twin_accuracy(state) if self.has_twin else acc[0]
        return state, stats.measurement(acc, loss, reference)
