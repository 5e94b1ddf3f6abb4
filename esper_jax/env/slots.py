"""Per-slot seed state (docs/environment.md#stages, #signals-and-observation): the ``Slots`` struct of ``[S]`` arrays
and its elementwise helpers.

An empty slot (upstream: no state object at all) is stage DORMANT; ``has_state`` is ``stage != DORMANT``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from esper_jax.contracts import AlphaAlgorithm, AlphaCurve, SeedStage
from esper_jax.env import alpha as alpha_mod

MODULE_STAGES = (
    SeedStage.GERMINATED,
    SeedStage.TRAINING,
    SeedStage.BLENDING,
    SeedStage.HOLDING,
    SeedStage.FOSSILIZED,
)

@struct.dataclass
class Slots:
    """Per-slot seed state, every leaf ``[S]``."""

    stage: jnp.ndarray  # int32 SeedStage; DORMANT = empty slot
    previous_stage: jnp.ndarray  # int32
    previous_epochs_in_stage: jnp.ndarray  # int32
    epochs_in_stage: jnp.ndarray  # int32 k
    epochs_total: jnp.ndarray  # int32 seed age
    blueprint: jnp.ndarray  # int32 BlueprintAction, -1 when empty
    seed_id: jnp.ndarray  # int32 serial of the seed in the episode (germination count), -1 when empty
    algorithm: jnp.ndarray  # int32 AlphaAlgorithm (blend operator)
    blend_curve: jnp.ndarray  # int32 AlphaCurve used when BLENDING starts
    tempo: jnp.ndarray  # int32 blend tempo in epochs
    initial_target: jnp.ndarray  # float32 target used when BLENDING starts
    controller: alpha_mod.Controller
    pending_prune: jnp.ndarray  # bool: a scheduled prune completes when alpha reaches 0
    has_gate: jnp.ndarray  # bool: a GATE network exists (counted in rent)
    # seed metrics (SeedMetrics)
    initial_acc: jnp.ndarray  # float32 val acc at the first epoch after germination
    current_acc: jnp.ndarray
    best_acc: jnp.ndarray
    stage_start_acc: jnp.ndarray
    contribution: jnp.ndarray  # float32 last counterfactual contribution (stale once alpha is 0 again)
    has_contribution: jnp.ndarray  # bool
    contribution_fresh: jnp.ndarray  # bool: measured in this epoch's validation (the reward's seed_contribution)
    previous_contribution: jnp.ndarray
    has_previous_contribution: jnp.ndarray
    contribution_velocity: jnp.ndarray
    interaction_sum: jnp.ndarray
    boost_received: jnp.ndarray
    # gradient telemetry (last sample; persists outside TRAINING/BLENDING)
    gradient_norm: jnp.ndarray
    gradient_health: jnp.ndarray
    has_vanishing: jnp.ndarray
    has_exploding: jnp.ndarray
    gradient_ratio_ema: jnp.ndarray
    has_gradient_ratio: jnp.ndarray  # bool: upstream's EMA dict has this slot's key
    frozen: jnp.ndarray  # bool: seed (and gate) parameters frozen for the next epoch's training (blend-out)

    @property
    def has_state(self) -> jnp.ndarray:
        return self.stage != SeedStage.DORMANT

    @property
    def has_module(self) -> jnp.ndarray:
        return in_stages(self.stage, MODULE_STAGES)

    @property
    def alpha(self) -> jnp.ndarray:
        return self.controller.alpha

    @property
    def total_improvement(self) -> jnp.ndarray:
        return self.current_acc - self.initial_acc

    @property
    def improvement_since_stage_start(self) -> jnp.ndarray:
        return self.current_acc - self.stage_start_acc


def in_stages(stage: jnp.ndarray, stages) -> jnp.ndarray:
    return jnp.any(stage[..., None] == jnp.asarray([int(s) for s in stages], jnp.int32), axis=-1)


def empty_slots(num_slots: int) -> Slots:
    shape = (num_slots,)
    f0 = jnp.zeros(shape, jnp.float32)
    i0 = jnp.zeros(shape, jnp.int32)
    b0 = jnp.zeros(shape, jnp.bool_)
    return Slots(
        stage=jnp.full(shape, int(SeedStage.DORMANT), jnp.int32),
        previous_stage=jnp.full(shape, int(SeedStage.DORMANT), jnp.int32),
        previous_epochs_in_stage=i0,
        epochs_in_stage=i0,
        epochs_total=i0,
        blueprint=jnp.full(shape, -1, jnp.int32),
        seed_id=jnp.full(shape, -1, jnp.int32),
        algorithm=jnp.full(shape, int(AlphaAlgorithm.ADD), jnp.int32),
        blend_curve=jnp.full(shape, int(AlphaCurve.LINEAR), jnp.int32),
        tempo=i0,
        initial_target=f0,
        controller=alpha_mod.fresh(shape),
        pending_prune=b0,
        has_gate=b0,
        initial_acc=f0,
        current_acc=f0,
        best_acc=f0,
        stage_start_acc=f0,
        contribution=f0,
        has_contribution=b0,
        contribution_fresh=b0,
        previous_contribution=f0,
        has_previous_contribution=b0,
        contribution_velocity=f0,
        interaction_sum=f0,
        boost_received=f0,
        gradient_norm=f0,
        gradient_health=jnp.ones(shape, jnp.float32),
        has_vanishing=b0,
        has_exploding=b0,
        gradient_ratio_ema=f0,
        has_gradient_ratio=jnp.ones(shape, jnp.bool_),  # upstream's EMA starts at 0 for every slot at reset
        frozen=b0,
    )


def select(where: jnp.ndarray, new: Slots, old: Slots) -> Slots:
    """Per-slot select over the whole struct (``where`` is bool [S]).

    Leaves that ``new`` shares with ``old`` (``replace`` keeps untouched fields as the same array) are passed
    through: most ops touch a handful of the ~35 fields, and skipping the rest keeps the compiled step small."""
    return jax.tree.map(lambda n, o: o if n is o else jnp.where(where, n, o), new, old)


def transition(slots: Slots, where: jnp.ndarray, new_stage) -> Slots:
    """Move to ``new_stage`` where ``where`` holds, remembering where the seed came from (PBRS needs it)."""
    moved = slots.replace(
        previous_stage=slots.stage,
        previous_epochs_in_stage=slots.epochs_in_stage,
        stage=jnp.broadcast_to(jnp.asarray(new_stage, jnp.int32), slots.stage.shape),
        epochs_in_stage=jnp.zeros_like(slots.epochs_in_stage),
        stage_start_acc=slots.current_acc,
    )
    return select(where, moved, slots)


def live_seed_count(slots: Slots) -> jnp.ndarray:
    """Upstream's ``MorphogeneticModel.total_seeds()``: seeds holding a module that are not FOSSILIZED
    (``count_active_seeds``) plus FOSSILIZED ones, i.e. every slot with a seed module. A pruned seed stops counting
    as soon as its module is gone; this is what the ``max_seeds`` rule compares against (not the germination
    count, which only numbers seed ids)."""
    return jnp.sum(slots.has_module, dtype=jnp.int32)
