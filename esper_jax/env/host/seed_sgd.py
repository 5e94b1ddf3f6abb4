"""What the CNN and the transformer host oracles share about their seeds (docs/environment.md#blending,
#signals-and-observation), as pure functions over their pytrees: the per-slot parameters, the stage flags, the
bookkeeping of seeds born/fossilised since the last measurement, the gradient statistics and the SGD steps.

The two oracles differ only in their networks, data and validation; keeping this in one place keeps their
optimisation (and the quirks it carries, 7 and 15) from drifting apart.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esper_jax.contracts import AlphaAlgorithm, SeedStage
from esper_jax.env.config import HostConfig
from esper_jax.env.oracle import EXPLODING_NORM, VANISHING_NORM, Measurement, SlotView

BLENDED_STAGES = (SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED)
LEARNING_STAGES = (SeedStage.TRAINING,) + BLENDED_STAGES


def in_stages(stage: jnp.ndarray, stages) -> jnp.ndarray:
    return jnp.any(stage[..., None] == jnp.asarray([int(s) for s in stages], jnp.int32), axis=-1)


@struct.dataclass
class SlotParams:
    """One slot's seed parameter union, its gate network and their SGD momenta."""

    seed: jnp.ndarray  # [U]
    seed_momentum: jnp.ndarray  # [U]
    gate: jnp.ndarray  # [G]
    gate_momentum: jnp.ndarray  # [G]


@struct.dataclass
class SlotControl:
    """How the forward pass treats each slot ([S] each)."""

    branch: jnp.ndarray  # int32 blueprint branch
    blended: jnp.ndarray  # bool: BLENDING/HOLDING/FOSSILIZED with a module
    straight_through: jnp.ndarray  # bool: TRAINING (only matters for gradients)
    alpha: jnp.ndarray  # float32
    algorithm: jnp.ndarray  # int32 AlphaAlgorithm


@struct.dataclass
class GradientStats:
    """Gradient statistics (docs/environment.md#signals-and-observation) of one sampled minibatch, [S] each."""

    norm: jnp.ndarray
    health: jnp.ndarray
    vanishing: jnp.ndarray
    exploding: jnp.ndarray
    ratio: jnp.ndarray

    @classmethod
    def empty(cls, num_slots: int) -> GradientStats:
        zeros = jnp.zeros((num_slots,), jnp.float32)
        no_flags = jnp.zeros((num_slots,), jnp.bool_)
        return cls(norm=zeros, health=zeros + 1.0, vanishing=no_flags, exploding=no_flags, ratio=zeros)

    def measurement(
        self, val_accuracy: jnp.ndarray, val_loss: jnp.ndarray, reference_accuracy: jnp.ndarray
    ) -> Measurement:
        """The oracle's ``Measurement`` of an epoch: the fused validation's rows, these statistics, and the accuracy
        of the seedless reference."""
        return Measurement(
            val_accuracy=val_accuracy,
            val_loss=val_loss,
            gradient_norm=self.norm,
            gradient_health=self.health,
            has_vanishing=self.vanishing,
            has_exploding=self.exploding,
            gradient_ratio=self.ratio,
            reference_accuracy=reference_accuracy,
        )


@struct.dataclass
class SeedFlags:
    """Which slots' seeds step and which are sampled for statistics this measurement ([S] bool each)."""

    learning: jnp.ndarray  # the seed steps: TRAINING onwards, not frozen
    gate_learning: jnp.ndarray  # the gate network steps (quirk 7: never under ``upstream``)
    sampled: jnp.ndarray  # TRAINING/BLENDING, not frozen


class SeedLayout(Protocol):
    size: int

    def init(self, key: jax.Array, branch: jnp.ndarray, multiply: jnp.ndarray) -> jnp.ndarray: ...


class GateInit(Protocol):
    size: int

    def init(self, key: jax.Array) -> jnp.ndarray: ...


class SeedBook(Protocol):
    """The oracle states' seed bookkeeping fields (``HostState``, ``LMHostState``)."""

    slots: tuple[SlotParams, ...]
    seed_id: jnp.ndarray
    stage: jnp.ndarray
    gate_live: jnp.ndarray

    def replace(self, **changes): ...


State = TypeVar("State", bound=SeedBook)


def slot_control(view: SlotView, branch_of_blueprint, alpha: jnp.ndarray | None = None) -> SlotControl:
    return SlotControl(
        branch=jnp.asarray(branch_of_blueprint)[jnp.clip(view.blueprint, 0, len(branch_of_blueprint) - 1)],
        blended=view.has_module & in_stages(view.stage, BLENDED_STAGES),
        straight_through=view.has_module & (view.stage == SeedStage.TRAINING),
        alpha=view.alpha if alpha is None else alpha,
        algorithm=view.algorithm,
    )


def empty_slots(layouts, gates) -> tuple[SlotParams, ...]:
    """Zero parameters and momenta; seeds get their parameters when germinated (``sync_seeds``)."""
    return tuple(
        SlotParams(
            seed=jnp.zeros((lay.size,), jnp.float32),
            seed_momentum=jnp.zeros((lay.size,), jnp.float32),
            gate=jnp.zeros((g.size,), jnp.float32),
            gate_momentum=jnp.zeros((g.size,), jnp.float32),
        )
        for lay, g in zip(layouts, gates)
    )


def sync_seeds(
    state: State,
    view: SlotView,
    branch: jnp.ndarray,
    layouts: tuple[SeedLayout, ...],
    gates: tuple[GateInit, ...],
    key: jax.Array,
) -> State:
    """Fresh parameters for newly germinated seeds and newly built gates; fresh optimizers on fossilisation."""
    born = view.has_module & (view.seed_id != state.seed_id)
    fossilised = (view.stage == SeedStage.FOSSILIZED) & (state.stage != SeedStage.FOSSILIZED)
    gate_live = view.has_module & (view.algorithm == AlphaAlgorithm.GATE) & in_stages(view.stage, BLENDED_STAGES)
    gate_new = gate_live & (~state.gate_live | born)
    multiply = view.algorithm == AlphaAlgorithm.MULTIPLY
    keys = jax.random.split(key, 2 * len(layouts))
    slots = []
    for i, (lay, gl, p) in enumerate(zip(layouts, gates, state.slots)):
        reset = born[i] | fossilised[i]
        slots.append(SlotParams(
            seed=jnp.where(born[i], lay.init(keys[2 * i], branch[i], multiply[i]), p.seed),
            seed_momentum=jnp.where(reset, 0.0, p.seed_momentum),
            gate=jnp.where(gate_new[i], gl.init(keys[2 * i + 1]), p.gate),
            gate_momentum=jnp.where(reset | gate_new[i], 0.0, p.gate_momentum),
        ))
    return state.replace(
        slots=tuple(slots),
        seed_id=jnp.where(view.has_module, view.seed_id, state.seed_id),
        stage=view.stage,
        gate_live=gate_live,
    )


def seed_flags(view: SlotView, gate_live: jnp.ndarray, compat: str) -> SeedFlags:
    learning = view.has_module & in_stages(view.stage, LEARNING_STAGES) & ~view.frozen
    return SeedFlags(
        learning=learning,
        gate_learning=learning & gate_live & jnp.asarray(compat != "upstream"),
        # Statistics of frozen seeds: upstream's frozen parameters carry no gradients, so there is nothing to sample.
        sampled=(
            view.has_module & ((view.stage == SeedStage.TRAINING) | (view.stage == SeedStage.BLENDING)) & ~view.frozen
        ),
    )


def global_norm(tree) -> jnp.ndarray:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def clip(tree, max_norm: float):
    norm = global_norm(tree)
    # torch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
    factor = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * factor, tree)


def gradient_stats(
    host_grads, host_param_count: int, layouts, seed_grads: tuple[jnp.ndarray, ...], branch: jnp.ndarray,
    sampled: jnp.ndarray,
) -> GradientStats:
    """Per-slot statistics of the seeds' gradients against the host's (``layouts``: ``blueprints.SlotLayout``-like
    tables with ``segments``, ``tensors``, ``max_tensors``, ``param_counts``)."""
    host_norm = global_norm(host_grads)
    host_per = host_norm / np.sqrt(host_param_count)
    norms, healths, vans, exps, ratios = [], [], [], [], []
    for i, (lay, g) in enumerate(zip(layouts, seed_grads)):
        b = branch[i]
        t = lay.max_tensors
        per_tensor = jnp.sqrt(jax.ops.segment_sum(jnp.square(g), jnp.asarray(lay.segments)[b], t + 1)[:t])
        n_tensors = jnp.asarray([len(ts) for ts in lay.tensors])[b]
        real = jnp.arange(t) < n_tensors
        f_vanish = jnp.sum(real & (per_tensor < VANISHING_NORM)) / n_tensors
        f_explode = jnp.sum(real & (per_tensor > EXPLODING_NORM)) / n_tensors
        total = jnp.sqrt(jnp.sum(jnp.square(g)))
        n_seed = jnp.asarray(lay.param_counts, jnp.float32)[b]
        ratio = (total / jnp.sqrt(n_seed)) / (host_per + 1e-8)
        norms.append(total / n_tensors)
        healths.append(jnp.clip(1.0 - 0.5 * f_vanish - 0.8 * f_explode, 0.0, 1.0))
        vans.append(f_vanish > 0)
        exps.append(f_explode > 0)
        ratios.append(jnp.where((total < 1e-8) | (host_norm < 1e-8), 0.0, ratio))
    stack = jnp.stack
    return GradientStats(
        norm=jnp.where(sampled, stack(norms), 0.0),
        health=jnp.where(sampled, stack(healths), 1.0),
        vanishing=sampled & stack(vans),
        exploding=sampled & stack(exps),
        ratio=jnp.where(sampled, stack(ratios), 0.0),
    )


def keep_sampled(index: jnp.ndarray, stride: int, fresh: GradientStats, stats: GradientStats) -> GradientStats:
    """The statistics of every ``stride``-th minibatch of the step."""
    take = index % stride == 0
    return jax.tree.map(lambda new, old: jnp.where(take, new, old), fresh, stats)


def host_sgd(params, momentum, grads, hc: HostConfig):
    """The host's step: clipped gradient, weight decay, SGD with momentum (torch.optim.SGD's order)."""
    g = clip(grads, hc.max_grad_norm)
    g = jax.tree.map(lambda g, p: g + hc.host_weight_decay * p, g, params)
    buf = jax.tree.map(lambda b, g: hc.host_momentum * b + g, momentum, g)
    return jax.tree.map(lambda p, b: p - hc.host_lr * b, params, buf), buf


def _sgd(p, buf, g, lr, momentum, on):
    new_buf = momentum * buf + g
    return jnp.where(on, p - lr * new_buf, p), jnp.where(on, new_buf, buf)


def slot_sgd(p: SlotParams, g: SlotParams, learning: jnp.ndarray, gate_learning: jnp.ndarray, hc: HostConfig):
    """One slot's step: seed (and gate, where it trains) clipped as one group, SGD with momentum, no weight decay."""
    # The gate joins its seed's group only where it trains (fixed mode), so upstream's clip ignores it.
    gate_g = jnp.where(gate_learning, g.gate, 0.0)
    seed_g, gate_g = clip((g.seed, gate_g), hc.max_grad_norm)
    seed, seed_m = _sgd(p.seed, p.seed_momentum, seed_g, hc.seed_lr, hc.seed_momentum, learning)
    gate, gate_m = _sgd(p.gate, p.gate_momentum, gate_g, hc.seed_lr, hc.seed_momentum, gate_learning)
    return SlotParams(seed=seed, seed_momentum=seed_m, gate=gate, gate_momentum=gate_m)
