"""Scripted controllers for ``python -m bench.controllers``, and upstream's rule-based heuristic, as pure JAX policies.

Every controller is ``act(memory, obs, key) -> (memory, PerHead[int32 scalar])`` for ONE env: it reads only the
``Observation`` (what a trained policy sees) plus its own ``Memory`` carry, so the runner can vmap it over envs and
pick a controller with ``lax.switch`` inside one compiled episode scan.

Controllers (``CONTROLLERS``):

* ``wait``        — always WAIT: the seedless host.
* ``grow_heavy`` / ``grow_light`` / ``grow_small`` — from epoch 5 germinate conv_heavy / conv_light / conv_small
  (SIGMOID_ADD, STANDARD tempo, full alpha target) in every empty slot, ADVANCE each seed through the gates as soon
  as its gate can pass, FOSSILIZE in HOLDING: one op per epoch, on the first slot (in slot order) that has one ready.
* ``hold_light``  — grow_light without the FOSSILIZE: every seed stays in HOLDING to the episode's end (its seeds sit at
  alpha 1 like grow_light's fossils, so it must not out-earn grow_light).
* ``idle``        — germinate a conv_light seed in every empty slot from epoch 5, then WAIT: seeds that never change
  the forward pass (alpha 0 in GERMINATED).
* ``cycle``       — germinate conv_small in slot 0, PRUNE it (instant) as soon as the masks allow, repeat after the
  embargo: the germinate/prune farming loop.
* ``random``      — the random baseline of the trainer's final comparison (``esper_jax.random_policy``): each
  head uniform over its mask, the style head conditioned on the sampled op.
* ``heuristic``   — upstream's ``HeuristicTamiyo`` (esper-lite ``tamiyo/heuristic.py``) with its default
  thresholds (leyline ``DEFAULT_*``): germinate on a plateau (≥ 3 epochs with < 0.5 pp gain) once the loss has
  stabilised and after epoch 5, blueprints in rotation conv_light → conv_heavy → attention → norm → depthwise with
  prune penalties (+2 on prune, ×0.5 per epoch, skipped at ≥ 3); the first live seed decides: GERMINATED → ADVANCE;
  TRAINING/BLENDING → PRUNE if it has spent ≥ 5 epochs in the stage and its improvement since the stage start is
  below −2 pp, else ADVANCE (BLENDING: only once alpha holds at a full target, else WAIT); HOLDING → PRUNE a
  "ransomware" seed (counterfactual > 0.1 with a negative total improvement), FOSSILIZE when the counterfactual
  (else the total improvement) exceeds 0.5 pp, else PRUNE; a 5-epoch embargo after any prune. Re-expressed here:
  it germinates into the first empty slot (upstream's heuristic drives one slot); its PRUNE is INSTANT, which the
  ``fixed`` env refuses outside the HOLD alpha mode (quirk 6: a BLENDING prune then fails and counts as WAIT);
  the loss-stabilisation latch is computed from the observed val_loss as upstream's tracker does; the total
  improvement is the accuracy now minus the accuracy the heuristic saw at germination.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from esper_jax import masks
from esper_jax.contracts import (
    AlphaCurveAction,
    AlphaMode,
    AlphaSpeedAction,
    AlphaTargetAction,
    BlueprintAction,
    GerminationStyle,
    LifecycleOp,
    PerHead,
    SeedStage,
    TempoAction,
)
from esper_jax.observation import Observation
from esper_jax.random_policy import random_masked_actions

CONTROLLERS: tuple[str, ...] = (
    "wait",
    "grow_heavy",
    "grow_light",
    "grow_small",
    "hold_light",
    "idle",
    "cycle",
    "random",
    "heuristic",
)

GROW_FROM_EPOCH = 5

# Upstream leyline defaults (tamiyo heuristic and tracker).
PLATEAU_EPOCHS_TO_GERMINATE = 3
MIN_EPOCHS_BEFORE_GERMINATE = 5
PRUNE_AFTER_EPOCHS_WITHOUT_IMPROVEMENT = 5
PRUNE_IF_ACCURACY_DROPS_BY = 2.0
EMBARGO_EPOCHS_AFTER_PRUNE = 5
MIN_IMPROVEMENT_TO_FOSSILIZE = 0.5
BLUEPRINT_PENALTY_ON_PRUNE = 2.0
BLUEPRINT_PENALTY_DECAY = 0.5
BLUEPRINT_PENALTY_THRESHOLD = 3.0
RANSOMWARE_CONTRIBUTION_THRESHOLD = 0.1
RANSOMWARE_IMPROVEMENT_THRESHOLD = 0.0
PLATEAU_THRESHOLD_PCT = 0.5
STABILIZATION_THRESHOLD = 0.03
REGRESSION_THRESHOLD = 0.05
STABILIZATION_EPOCHS = 3
ROTATION = (
    BlueprintAction.CONV_LIGHT,
    BlueprintAction.CONV_HEAVY,
    BlueprintAction.ATTENTION,
    BlueprintAction.NORM,
    BlueprintAction.DEPTHWISE,
)
# Upstream's fallback sorts blueprints by (penalty, name): the rank of each rotation entry's name.
_NAME_RANK = jnp.asarray([sorted(b.name.lower() for b in ROTATION).index(b.name.lower()) for b in ROTATION])

_LIVE = (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING)


@struct.dataclass
class Memory:
    """The heuristic's own state (upstream keeps it in the policy object and its signal tracker)."""

    prev_acc: jnp.ndarray  # float32
    prev_loss: jnp.ndarray  # float32 (inf before the first epoch)
    plateau: jnp.ndarray  # int32 consecutive epochs with < 0.5 pp gain
    stable: jnp.ndarray  # int32 consecutive stable-loss epochs
    stabilized: jnp.ndarray  # bool latch
    last_prune_epoch: jnp.ndarray  # int32
    bp_index: jnp.ndarray  # int32 rotation index
    penalties: jnp.ndarray  # float32 [5] per rotation entry
    acc_at_germination: jnp.ndarray  # float32 [S]


def initial_memory(num_slots: int) -> Memory:
    return Memory(
        prev_acc=jnp.zeros((), jnp.float32),
        prev_loss=jnp.full((), jnp.inf, jnp.float32),
        plateau=jnp.zeros((), jnp.int32),
        stable=jnp.zeros((), jnp.int32),
        stabilized=jnp.zeros((), jnp.bool_),
        last_prune_epoch=jnp.full((), -100, jnp.int32),
        bp_index=jnp.zeros((), jnp.int32),
        penalties=jnp.zeros((len(ROTATION),), jnp.float32),
        acc_at_germination=jnp.zeros((num_slots,), jnp.float32),
    )


def action(op, slot=0, blueprint=BlueprintAction.CONV_LIGHT, speed=AlphaSpeedAction.INSTANT) -> PerHead:
    """A full action: germination settings SIGMOID_ADD / STANDARD / FULL; alpha speed INSTANT (prunes)."""
    def i32(v):
        return jnp.asarray(v, jnp.int32)

    return PerHead(
        slot=i32(slot),
        blueprint=i32(blueprint),
        style=i32(GerminationStyle.SIGMOID_ADD),
        tempo=i32(TempoAction.STANDARD),
        alpha_target=i32(AlphaTargetAction.FULL),
        alpha_speed=i32(speed),
        alpha_curve=i32(AlphaCurveAction.LINEAR),
        op=i32(op),
    )


def _in(stage, stages) -> jnp.ndarray:
    return jnp.any(stage[..., None] == jnp.asarray([int(s) for s in stages], jnp.int32), axis=-1)


def _first(ready: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(any ready, index of the first ready slot)."""
    return jnp.any(ready), jnp.argmax(ready).astype(jnp.int32)


def _alpha_at_full_hold(s) -> jnp.ndarray:
    return (s.alpha_target >= 1.0 - 1e-6) & (s.alpha_mode == AlphaMode.HOLD) & (
        jnp.abs(s.current_alpha - s.alpha_target) <= 1e-6
    )


def wait(memory: Memory, obs: Observation, key) -> tuple[Memory, PerHead]:
    return memory, action(LifecycleOp.WAIT)


def grow(blueprint: BlueprintAction, fossilize: bool = True):
    """The grow controllers; ``fossilize=False`` leaves every seed in HOLDING for the rest of the episode."""

    def act(memory: Memory, obs: Observation, key) -> tuple[Memory, PerHead]:
        s = obs.slots
        stage = jnp.where(s.has_report, s.stage, SeedStage.DORMANT)
        empty = s.enabled & ~s.has_report & (obs.signals.epoch >= GROW_FROM_EPOCH)
        advance = s.has_report & (
            (stage == SeedStage.GERMINATED)
            | ((stage == SeedStage.TRAINING) & (s.epochs_in_stage >= 1))
            | ((stage == SeedStage.BLENDING) & _alpha_at_full_hold(s))
        )
        ready_to_fossilize = s.has_report & (stage == SeedStage.HOLDING) & s.has_counterfactual & fossilize
        op_per_slot = jnp.where(
            empty, LifecycleOp.GERMINATE, jnp.where(advance, LifecycleOp.ADVANCE, LifecycleOp.FOSSILIZE)
        )
        any_ready, slot = _first(empty | advance | ready_to_fossilize)
        op = jnp.where(any_ready, op_per_slot[slot], LifecycleOp.WAIT)
        return memory, action(op, slot, blueprint)

    return act


def idle(memory: Memory, obs: Observation, key) -> tuple[Memory, PerHead]:
    s = obs.slots
    any_empty, slot = _first(s.enabled & ~s.has_report)
    go = any_empty & (obs.signals.epoch >= GROW_FROM_EPOCH)
    return memory, action(jnp.where(go, LifecycleOp.GERMINATE, LifecycleOp.WAIT), slot)


def cycle(memory: Memory, obs: Observation, key) -> tuple[Memory, PerHead]:
    m = masks.compute_env(obs)
    s = obs.slots
    prunable = s.has_report[0] & _in(s.stage[0], (SeedStage.GERMINATED, SeedStage.TRAINING)) & m.op[LifecycleOp.PRUNE]
    germinate = ~s.has_report[0] & (obs.signals.epoch >= GROW_FROM_EPOCH)
    op = jnp.where(germinate, LifecycleOp.GERMINATE, jnp.where(prunable, LifecycleOp.PRUNE, LifecycleOp.WAIT))
    return memory, action(op, 0, BlueprintAction.CONV_SMALL)


def random_valid(memory: Memory, obs: Observation, key) -> tuple[Memory, PerHead]:
    return memory, random_masked_actions(masks.compute_env(obs), key)


def _track(memory: Memory, obs: Observation) -> Memory:
    """Upstream's SignalTracker update for the epoch just observed (plateau count, stabilisation latch)."""
    acc, loss = obs.signals.val_accuracy, obs.signals.val_loss
    plateau = jnp.where(acc - memory.prev_acc < PLATEAU_THRESHOLD_PCT, memory.plateau + 1, 0)
    finite_prev = jnp.isfinite(memory.prev_loss) & (memory.prev_loss > 1e-8)
    rel = (memory.prev_loss - loss) / jnp.where(finite_prev, memory.prev_loss, 1.0)
    stable_epoch = finite_prev & (rel > -REGRESSION_THRESHOLD) & (rel < STABILIZATION_THRESHOLD)
    check = ~memory.stabilized & finite_prev
    stable = jnp.where(check, jnp.where(stable_epoch, memory.stable + 1, 0), memory.stable)
    stabilized = memory.stabilized | (check & stable_epoch & (stable >= STABILIZATION_EPOCHS))
    decayed = memory.penalties * BLUEPRINT_PENALTY_DECAY
    return memory.replace(
        prev_acc=acc,
        prev_loss=loss,
        plateau=plateau,
        stable=stable,
        stabilized=stabilized,
        penalties=jnp.where(decayed < 0.1, 0.0, decayed),
    )


def _next_blueprint(memory: Memory) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(rotation entry, new rotation index) as upstream's ``_get_next_blueprint``."""
    n = len(ROTATION)
    start = memory.bp_index
    candidates = (start + jnp.arange(n)) % n
    ok = memory.penalties[candidates] < BLUEPRINT_PENALTY_THRESHOLD
    j = jnp.argmax(ok)
    by_penalty = jnp.lexsort((_NAME_RANK, memory.penalties))
    entry = jnp.where(jnp.any(ok), candidates[j], by_penalty[start % n])
    index = jnp.where(jnp.any(ok), start + j + 1, start + 1)
    return entry, index.astype(jnp.int32)


def heuristic(memory: Memory, obs: Observation, key) -> tuple[Memory, PerHead]:
    memory = _track(memory, obs)
    s = obs.slots
    epoch = obs.signals.epoch
    acc = obs.signals.val_accuracy
    stage = jnp.where(s.has_report, s.stage, SeedStage.DORMANT)
    live = s.has_report & _in(stage, _LIVE)
    any_live, i = _first(live)

    # No live seed: germination rules.
    any_empty, empty_slot = _first(s.enabled & ~s.has_report)
    may_germinate = (
        (epoch - memory.last_prune_epoch >= EMBARGO_EPOCHS_AFTER_PRUNE)
        & memory.stabilized
        & (epoch >= MIN_EPOCHS_BEFORE_GERMINATE)
        & (memory.plateau >= PLATEAU_EPOCHS_TO_GERMINATE)
        & any_empty
    )
    entry, new_index = _next_blueprint(memory)

    # The first live seed decides.
    st, k = stage[i], s.epochs_in_stage[i]
    failing = (k >= PRUNE_AFTER_EPOCHS_WITHOUT_IMPROVEMENT) & (
        s.improvement_since_stage_start[i] < -PRUNE_IF_ACCURACY_DROPS_BY
    )
    has_cf = s.has_counterfactual[i]
    c = s.counterfactual_contribution[i]
    ti = acc - memory.acc_at_germination[i]
    ransomware = has_cf & (c > RANSOMWARE_CONTRIBUTION_THRESHOLD) & (ti < RANSOMWARE_IMPROVEMENT_THRESHOLD)
    improvement = jnp.where(has_cf, c, ti)
    holding_op = jnp.where(
        ransomware | (improvement <= MIN_IMPROVEMENT_TO_FOSSILIZE), LifecycleOp.PRUNE, LifecycleOp.FOSSILIZE
    )
    blending_op = jnp.where(
        failing,
        LifecycleOp.PRUNE,
        jnp.where(_alpha_at_full_hold(jax.tree.map(lambda x: x[i], s)), LifecycleOp.ADVANCE, LifecycleOp.WAIT),
    )
    seed_op = jnp.select(
        [st == SeedStage.GERMINATED, st == SeedStage.TRAINING, st == SeedStage.BLENDING],
        [LifecycleOp.ADVANCE, jnp.where(failing, LifecycleOp.PRUNE, LifecycleOp.ADVANCE), blending_op],
        holding_op,
    )
    germinate_op = jnp.where(may_germinate, LifecycleOp.GERMINATE, LifecycleOp.WAIT)
    op = jnp.where(any_live, seed_op, germinate_op)
    slot = jnp.where(any_live, i, empty_slot)

    pruned = any_live & (op == LifecycleOp.PRUNE)
    germinated = ~any_live & (op == LifecycleOp.GERMINATE)
    blueprint = jnp.asarray([int(b) for b in ROTATION], jnp.int32)[entry]
    slot_bp = s.blueprint_index[i]
    penalised = jnp.asarray([int(b) for b in ROTATION], jnp.int32) == slot_bp
    memory = memory.replace(
        last_prune_epoch=jnp.where(pruned, epoch, memory.last_prune_epoch),
        penalties=memory.penalties + jnp.where(pruned & penalised, BLUEPRINT_PENALTY_ON_PRUNE, 0.0),
        bp_index=jnp.where(germinated, new_index, memory.bp_index),
        acc_at_germination=jnp.where(
            germinated & (jnp.arange(s.stage.shape[-1]) == empty_slot), acc, memory.acc_at_germination
        ),
    )
    return memory, action(op, slot, blueprint)


_ACTS = {
    "wait": wait,
    "grow_heavy": grow(BlueprintAction.CONV_HEAVY),
    "grow_light": grow(BlueprintAction.CONV_LIGHT),
    "grow_small": grow(BlueprintAction.CONV_SMALL),
    "hold_light": grow(BlueprintAction.CONV_LIGHT, fossilize=False),
    "idle": idle,
    "cycle": cycle,
    "random": random_valid,
    "heuristic": heuristic,
}


def act_fns(names: tuple[str, ...]):
    """The act functions of ``names`` (for ``lax.switch``); raises on an unknown name."""
    unknown = [n for n in names if n not in _ACTS]
    if unknown:
        raise ValueError(f"unknown controller(s) {unknown}; available: {CONTROLLERS}")
    return [_ACTS[n] for n in names]


__all__ = ["CONTROLLERS", "Memory", "act_fns", "action", "initial_memory"]
