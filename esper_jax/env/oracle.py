"""Oracles: everything that needs real training (docs/environment.md#oracles) behind one small interface.

The lifecycle, signals and reward are exact; what a real host network would *measure* — one epoch of training
(gradient statistics) followed by the fused validation pass over K alpha configurations
(docs/environment.md#counterfactual-validation) — comes from an oracle:

* ``init(key) -> state`` — a fresh host (a new episode);
* ``measure(state, view, configs, epoch, key) -> (state, Measurement)`` — train one epoch with the slots as
  ``view`` describes them, then validate under each row of ``configs`` (alphas ``[K, S]``; row 0 is the
  current alphas). Accuracies are in percentage points.

``SimulatorOracle`` fakes those numbers cheaply (docs/environment.md#oracles): a saturating host curve, a latent gain
per blueprint per slot realised with maturity and alpha, a host-dependency drift (the host leans on its seeds, so total
improvement falls short of the contribution), pairwise interaction terms, paired validation noise and synthetic gradient
statistics. It is for pipeline throughput and lifecycle testing; it says nothing about policy quality.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esper_jax.contracts import NUM_BLUEPRINTS, SeedStage
from esper_jax.env.config import EnvConfig, SimulatorConfig

GRADIENT_TENSORS = 4  # per seed, for the vanishing/exploding fractions
VANISHING_NORM = 1e-7
EXPLODING_NORM = 10.0


@struct.dataclass
class SlotView:
    """What an oracle may know about the slots when training an epoch (all ``[S]``)."""

    stage: jnp.ndarray  # int32
    blueprint: jnp.ndarray  # int32, -1 when empty
    seed_id: jnp.ndarray  # int32: changes when a new seed is germinated into the slot
    algorithm: jnp.ndarray  # int32 AlphaAlgorithm
    alpha: jnp.ndarray  # float32 controller alpha
    epochs_total: jnp.ndarray  # int32 seed age before this epoch
    has_module: jnp.ndarray  # bool
    frozen: jnp.ndarray  # bool: seed parameters frozen (alpha ramping down)


@struct.dataclass
class Measurement:
    val_accuracy: jnp.ndarray  # float32 [K], 0–100
    val_loss: jnp.ndarray  # float32 [K], the true mean loss (the env applies upstream's 1/B quirk itself)
    gradient_norm: jnp.ndarray  # float32 [S]
    gradient_health: jnp.ndarray  # float32 [S]
    has_vanishing: jnp.ndarray  # bool [S]
    has_exploding: jnp.ndarray  # bool [S]
    gradient_ratio: jnp.ndarray  # float32 [S]: seed/host gradient ratio (docs/environment.md#signals-and-observation)
    # float32 scalar: the accuracy the same host reaches without any seed (docs/compat.md quirk 15; the simulator's seedless curve,
    # the host env's seedless twin under ``fixed``). Where it cannot be measured (host env, ``upstream``) it is
    # val_accuracy[0]; only the ``fixed`` reward reads it.
    reference_accuracy: jnp.ndarray


class Oracle(Protocol):
    def init(self, key: jax.Array) -> Any: ...

    def measure(
        self, state: Any, view: SlotView, configs: jnp.ndarray, epoch: jnp.ndarray, key: jax.Array
    ) -> tuple[Any, Measurement]: ...


@struct.dataclass
class SimulatorState:
    final_acc: jnp.ndarray  # a∞
    initial_acc: jnp.ndarray  # a0
    tau: jnp.ndarray
    dependency: jnp.ndarray  # λ
    gains: jnp.ndarray  # float32 [S, 13] latent gain of each blueprint at each slot (pp)
    seed_tau: jnp.ndarray  # float32 [S, 13]
    interactions: jnp.ndarray  # float32 [S, S], symmetric, zero diagonal
    gradient_scale: jnp.ndarray  # float32 [S, 13]


@dataclasses.dataclass(frozen=True)
class SimulatorOracle:
    """The cheap accuracy/gradient model of docs/environment.md#oracles (hashable: part of the static env)."""

    num_slots: int
    sim: SimulatorConfig
    log_num_classes: float

    @classmethod
    def from_config(cls, cfg: EnvConfig) -> SimulatorOracle:
        return cls(num_slots=cfg.num_slots, sim=cfg.simulator, log_num_classes=cfg.log_num_classes)

    def init(self, key: jax.Array) -> SimulatorState:
        sim = self.sim
        s = self.num_slots
        keys = jax.random.split(key, 8)

        def uniform(k, bounds, shape=()):
            return jax.random.uniform(k, shape, jnp.float32, bounds[0], bounds[1])

        means = jnp.asarray(sim.gain_mean_table())
        gains = means[None, :] + sim.gain_spread * jax.random.normal(keys[4], (s, NUM_BLUEPRINTS), jnp.float32)
        pair = sim.interaction_spread * jax.random.normal(keys[6], (s, s), jnp.float32)
        pair = jnp.triu(pair, 1)
        return SimulatorState(
            final_acc=uniform(keys[0], sim.host_final_acc),
            initial_acc=uniform(keys[1], sim.host_initial_acc),
            tau=uniform(keys[2], sim.host_tau),
            dependency=uniform(keys[3], sim.host_dependency),
            gains=gains,
            seed_tau=uniform(keys[5], sim.seed_tau, (s, NUM_BLUEPRINTS)),
            interactions=pair + pair.T,
            gradient_scale=sim.gradient_scale
            * jnp.exp(0.5 * jax.random.normal(keys[7], (s, NUM_BLUEPRINTS), jnp.float32)),
        )

    def measure(
        self, state: SimulatorState, view: SlotView, configs: jnp.ndarray, epoch: jnp.ndarray, key: jax.Array
    ) -> tuple[SimulatorState, Measurement]:
        sim = self.sim
        k_shared, k_pair, k_loss, k_grad, k_flag = jax.random.split(key, 5)
        t = jnp.asarray(epoch, jnp.float32)
        host = state.final_acc - (state.final_acc - state.initial_acc) * jnp.exp(-t / state.tau)

        bp = jnp.clip(view.blueprint, 0, NUM_BLUEPRINTS - 1)
        rows = jnp.arange(self.num_slots)
        # Seeds learn from TRAINING on; age after this epoch's training sets their maturity.
        learning = view.has_module & (view.stage != SeedStage.GERMINATED)
        age = (view.epochs_total + 1).astype(jnp.float32)
        maturity = jnp.where(learning, 1.0 - jnp.exp(-age / state.seed_tau[rows, bp]), 0.0)
        gain = jnp.where(view.has_module, state.gains[rows, bp] * maturity, 0.0)  # [S]

        # The host's own weights lean on the seeds at their current alphas: ablating a seed (a config row) does not
        # give that back, so total improvement trails the counterfactual contribution.
        dependency = state.dependency * jnp.sum(view.alpha * gain)
        alphas = configs  # [K, S]
        seed_term = alphas @ gain  # [K]
        mature = jnp.where(view.has_module, maturity, 0.0)
        pair_weight = state.interactions * (mature[:, None] * mature[None, :])  # [S, S]
        pair_term = 0.5 * jnp.einsum("ks,st,kt->k", alphas, pair_weight, alphas)
        shared = sim.host_noise * jax.random.normal(k_shared, ())
        paired = sim.paired_noise * jax.random.normal(k_pair, (configs.shape[0],))
        acc = jnp.clip(host - dependency + seed_term + pair_term + shared + paired, 0.0, 100.0)
        # The seedless host on the same epoch and the same noise as row 0: no dependency, no seed or pair terms.
        reference = jnp.clip(host + shared + paired[0], 0.0, 100.0)

        # A loss that falls as accuracy rises, ln(C) at chance level.
        err = 1.0 - acc / 100.0
        loss = self.log_num_classes * err**1.5 + sim.loss_noise * jnp.abs(jax.random.normal(k_loss, acc.shape))

        sampled = view.has_module & ((view.stage == SeedStage.TRAINING) | (view.stage == SeedStage.BLENDING))
        scale = state.gradient_scale[rows, bp] * (0.5 + 0.5 * jnp.exp(-age / 20.0))
        norms = scale[:, None] * jnp.exp(0.3 * jax.random.normal(k_grad, (self.num_slots, GRADIENT_TENSORS)))
        flags = jax.random.uniform(k_flag, (self.num_slots, GRADIENT_TENSORS, 2))
        norms = jnp.where(flags[..., 0] < sim.p_exploding, norms * 50.0, norms)
        norms = jnp.where(flags[..., 1] < sim.p_vanishing, 1e-9, norms)
        norms = jnp.where(view.frozen[:, None], 0.0, norms)
        vanishing = norms < VANISHING_NORM
        exploding = norms > EXPLODING_NORM
        f_vanish = jnp.mean(vanishing.astype(jnp.float32), axis=-1)
        f_explode = jnp.mean(exploding.astype(jnp.float32), axis=-1)
        total = jnp.sqrt(jnp.sum(norms**2, axis=-1))
        per_param = total / GRADIENT_TENSORS
        health = jnp.clip(1.0 - 0.5 * f_vanish - 0.8 * f_explode, 0.0, 1.0)
        ratio = jnp.where(sampled, per_param / (sim.gradient_scale + 1e-8), 0.0)
        return state, Measurement(
            val_accuracy=acc,
            val_loss=loss,
            gradient_norm=jnp.where(sampled, per_param, 0.0),
            gradient_health=jnp.where(sampled, health, 1.0),
            has_vanishing=sampled & jnp.any(vanishing, axis=-1),
            has_exploding=sampled & jnp.any(exploding, axis=-1),
            gradient_ratio=ratio,
            reference_accuracy=reference,
        )


# ----------------------------------------------------------------------------------------------------------------
# Fused-validation configurations (docs/environment.md#counterfactual-validation)
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConfigLayout:
    """Static row layout of the alpha-configuration matrix: ``keep[K, S]`` multiplies the current alphas.

    Rows: 0 main; 1..S solo-off (slot i at 0 → leave-one-out baseline); all-off; one row per pair (i<j) keeping
    only i and j; and, fixed mode only, one row per slot keeping only that slot (textbook interactions need f({i})).
    """

    num_slots: int
    with_singletons: bool

    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        s = self.num_slots
        return tuple((i, j) for i in range(s) for j in range(i + 1, s))

    @property
    def solo_rows(self) -> np.ndarray:
        return 1 + np.arange(self.num_slots)

    @property
    def all_off_row(self) -> int:
        return 1 + self.num_slots

    @property
    def pair_rows(self) -> np.ndarray:
        return self.all_off_row + 1 + np.arange(len(self.pairs))

    @property
    def singleton_rows(self) -> np.ndarray:
        return self.all_off_row + 1 + len(self.pairs) + np.arange(self.num_slots)

    def keep(self) -> np.ndarray:
        s = self.num_slots
        rows = [np.ones(s)]
        rows += [1.0 - np.eye(s)[i] for i in range(s)]
        rows.append(np.zeros(s))
        for i, j in self.pairs:
            r = np.zeros(s)
            r[[i, j]] = 1.0
            rows.append(r)
        if self.with_singletons:
            rows += [np.eye(s)[i] for i in range(s)]
        return np.asarray(rows, np.float32)
