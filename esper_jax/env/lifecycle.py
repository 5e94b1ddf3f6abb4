"""Seed lifecycle (docs/environment.md#lifecycle, #alpha-controller, #ops; docs/compat.md#upstream-exact): gates, op
execution and the epoch tick.

All slots live in one ``Slots`` struct of ``[S]`` arrays (``env/slots.py``). An op is evaluated for every slot at
once and the result is kept only at the sampled slot (a one-hot select), so nothing branches on traced values.

Upstream/fixed differences handled here (quirk numbers of docs/compat.md#environment-side):

* 5 — ADVANCE on a HOLDING slot: upstream runs G5 and fossilises without counting it; fixed: the action fails.
* 6 — an INSTANT prune runs whatever the controller mode; fixed: it needs HOLD, like the mask and the reward.
* 11 — WAIT reports success False upstream; fixed: True.
* 13 — blend-out freeze lag: upstream decides a seed's freeze from the controller mode BEFORE the epoch's alpha
  tick, so a seed whose SET_ALPHA_TARGET ramp-down ends on a tick stays frozen for one more epoch; fixed unfreezes
  it as soon as the ramp has ended (``blend_out_frozen``).
* 12 — an ADVANCE whose gate fails is still "valid" for the reward: kept in BOTH modes. The reward number is the
  same as WAIT's anyway, and calling it invalid would make the mask (which cannot see gate state) offer ops the env
  rejects.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import struct

from esper_jax.contracts import (
    ALPHA_CURVE_STEEPNESS,
    ALPHA_CURVE_TO_CURVE,
    ALPHA_SPEED_TO_STEPS,
    ALPHA_TARGET_VALUES,
    STYLE_TO_KASMINA,
    TEMPO_TO_EPOCHS,
    AlphaAlgorithm,
    AlphaCurve,
    AlphaMode,
    AlphaSpeedAction,
    GerminationStyle,
    LifecycleOp,
    PerHead,
    SeedStage,
)
from esper_jax.env import alpha as alpha_mod
from esper_jax.env.config import EnvConfig
from esper_jax.env.slots import (
    MODULE_STAGES,
    Slots,
    empty_slots,
    in_stages,
    live_seed_count,
    select,
    transition,
)

__all__ = [
    "MODULE_STAGES",
    "OpOutcome",
    "Slots",
    "blend_out_frozen",
    "empty_slots",
    "execute",
    "gate_g2",
    "gate_g3",
    "gate_g5",
    "in_stages",
    "live_seed_count",
    "prune_now",
    "record_accuracy",
    "select",
    "step_epoch",
    "transition",
]

G3_TOLERANCE = 1e-6
STRICT_G2_IMPROVEMENT = 0.5
STRICT_G2_MIN_EPOCHS = 3
STRICT_G2_GRADIENT_RATIO = 0.10
STRICT_G3_MIN_EPOCHS = 3
STRICT_G5_MIN_CONTRIBUTION = 1.0

_PRUNABLE = (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING)

# style -> blend curve used when BLENDING starts (docs/environment.md#alpha-controller: linear → LINEAR, sigmoid →
# SIGMOID k 12, gated → LINEAR)
_BLEND_NAME_TO_CURVE = {"linear": AlphaCurve.LINEAR, "sigmoid": AlphaCurve.SIGMOID, "gated": AlphaCurve.LINEAR}
STYLE_CURVE = np.asarray([_BLEND_NAME_TO_CURVE[STYLE_TO_KASMINA[s][0]] for s in GerminationStyle], np.int32)
STYLE_ALGORITHM = np.asarray([STYLE_TO_KASMINA[s][1] for s in GerminationStyle], np.int32)
BLEND_STEEPNESS = 12.0


# ----------------------------------------------------------------------------------------------------------------
# Gates (docs/environment.md#gates)
# ----------------------------------------------------------------------------------------------------------------


def gate_g2(slots: Slots, cfg: EnvConfig) -> jnp.ndarray:
    k = slots.epochs_in_stage
    if cfg.gates == "permissive":
        return k >= 1
    return (
        (slots.improvement_since_stage_start >= STRICT_G2_IMPROVEMENT)
        & (k >= STRICT_G2_MIN_EPOCHS)
        & (slots.gradient_ratio_ema >= STRICT_G2_GRADIENT_RATIO)
    )


def gate_g3(slots: Slots, cfg: EnvConfig) -> jnp.ndarray:
    c = slots.controller
    ok = (c.target >= 1.0 - G3_TOLERANCE) & (c.mode == AlphaMode.HOLD) & (jnp.abs(c.alpha - c.target) <= G3_TOLERANCE)
    if cfg.gates == "strict":
        ok = ok & (slots.epochs_in_stage >= STRICT_G3_MIN_EPOCHS)
    return ok


def gate_g5(slots: Slots, cfg: EnvConfig) -> jnp.ndarray:
    # is_healthy is never set False upstream, so only the counterfactual's presence (and, strict, size) matters.
    ok = slots.has_contribution
    if cfg.gates == "strict":
        ok = ok & (slots.contribution >= STRICT_G5_MIN_CONTRIBUTION)
    return ok


# ----------------------------------------------------------------------------------------------------------------
# Ops (docs/environment.md#ops)
# ----------------------------------------------------------------------------------------------------------------


@struct.dataclass
class OpOutcome:
    """What executing the sampled action did (scalars)."""

    success: jnp.ndarray  # bool: reported as last_action_success
    valid: jnp.ndarray  # bool: the reward scores the op itself (else exactly as WAIT)
    germinated: jnp.ndarray  # bool
    fossilized: jnp.ndarray  # bool: a counted fossilisation (counters, hindsight credit)
    pruned: jnp.ndarray  # bool: a PRUNE op executed (instant, or a scheduled ramp started)
    fossilized_improvement: jnp.ndarray  # float32 total_improvement of the fossilised seed


def _germinate(slots: Slots, actions: PerHead, seed_id: jnp.ndarray) -> Slots:
    fresh = empty_slots(slots.stage.shape[0])
    style = actions.style
    born = fresh.replace(
        stage=jnp.full_like(slots.stage, SeedStage.GERMINATED),
        previous_stage=jnp.full_like(slots.stage, SeedStage.DORMANT),
        blueprint=jnp.full_like(slots.blueprint, actions.blueprint),
        seed_id=jnp.full_like(slots.seed_id, seed_id),
        algorithm=jnp.full_like(slots.algorithm, jnp.asarray(STYLE_ALGORITHM)[style]),
        blend_curve=jnp.full_like(slots.blend_curve, jnp.asarray(STYLE_CURVE)[style]),
        tempo=jnp.full_like(slots.tempo, jnp.asarray(TEMPO_TO_EPOCHS, jnp.int32)[actions.tempo]),
        initial_target=jnp.full_like(slots.initial_target, jnp.asarray(ALPHA_TARGET_VALUES, jnp.float32)[actions.alpha_target]),
        # Upstream's gradient-ratio EMA keeps the slot's key only while a seed lives there: a recycled slot's next
        # seed starts from its first value (has_gradient_ratio False), the episode's first seed from 0.
        has_gradient_ratio=slots.has_gradient_ratio,
        gradient_ratio_ema=slots.gradient_ratio_ema,
    )
    return born


def _start_blending(slots: Slots) -> Slots:
    moved = transition(slots, jnp.ones_like(slots.has_gate), SeedStage.BLENDING)
    ctrl = alpha_mod.retarget(
        alpha_mod.fresh(slots.stage.shape),
        jnp.ones_like(slots.has_gate),
        slots.initial_target,
        slots.tempo,
        slots.blend_curve,
        jnp.full_like(slots.initial_target, BLEND_STEEPNESS),
    )
    return moved.replace(controller=ctrl, has_gate=slots.algorithm == AlphaAlgorithm.GATE)


def prune_now(slots: Slots, where: jnp.ndarray) -> Slots:
    """Instant prune: module gone, alpha and controller back to 0/HOLD (curve and steepness kept, as upstream),
    state kept as PRUNED."""
    pruned = transition(slots, where, SeedStage.PRUNED)
    pruned = pruned.replace(
        controller=alpha_mod.reset_where(pruned.controller, where),
        pending_prune=jnp.where(where, False, pruned.pending_prune),
        has_gate=jnp.where(where, False, pruned.has_gate),
        frozen=jnp.where(where, False, pruned.frozen),
    )
    return pruned


def _fossilize(slots: Slots) -> Slots:
    moved = transition(slots, jnp.ones_like(slots.has_gate), SeedStage.FOSSILIZED)
    return moved.replace(controller=alpha_mod.snap(moved.controller, jnp.ones_like(slots.has_gate), 1.0))


def execute(
    slots: Slots, actions: PerHead, seeds_created: jnp.ndarray, cfg: EnvConfig
) -> tuple[Slots, OpOutcome]:
    """Run the sampled op on the sampled slot (docs/environment.md#ops) and judge its validity for the reward
    (docs/environment.md#validity).

    ``seeds_created`` is the episode's germination count so far: it numbers the new seed's id. The ``max_seeds``
    limit is checked against ``live_seed_count(slots)`` (upstream's ``total_seeds()``, docs/compat.md#upstream-exact),
    not against it."""
    upstream = cfg.compat == "upstream"
    num_slots = cfg.num_slots
    slot_ok = (actions.slot >= 0) & (actions.slot < num_slots)
    chosen = (jnp.arange(num_slots) == actions.slot) & slot_ok
    op = actions.op
    stage = slots.stage
    ctrl = slots.controller
    in_hold = ctrl.mode == AlphaMode.HOLD
    ones = jnp.ones_like(slots.has_gate)

    # GERMINATE: an empty slot, an offered blueprint, and the seed limit not reached (the mask's conditions).
    bp_ok = jnp.asarray(cfg.blueprint_allowed())[jnp.clip(actions.blueprint, 0, len(cfg.blueprint_allowed()) - 1)]
    bp_ok = bp_ok & (actions.blueprint >= 0) & (actions.blueprint < len(cfg.blueprint_allowed()))
    under_limit = jnp.asarray(cfg.max_seeds == 0) | (live_seed_count(slots) < cfg.max_seeds)
    can_germinate = ~slots.has_state & bp_ok & under_limit
    germinated_slots = _germinate(slots, actions, seeds_created)

    # ADVANCE: the next gate of the slot's stage.
    g1 = stage == SeedStage.GERMINATED
    g2 = (stage == SeedStage.TRAINING) & gate_g2(slots, cfg)
    g3 = (stage == SeedStage.BLENDING) & gate_g3(slots, cfg)
    g5_advance = (stage == SeedStage.HOLDING) & gate_g5(slots, cfg) & jnp.asarray(upstream)
    advanced = transition(slots, g1, SeedStage.TRAINING)
    advanced = select(g2, _start_blending(slots), advanced)
    to_holding = transition(slots, ones, SeedStage.HOLDING)
    to_holding = to_holding.replace(controller=alpha_mod.complete_blending(to_holding.controller, ones))
    advanced = select(g3, to_holding, advanced)
    advanced = select(g5_advance, _fossilize(slots), advanced)
    advance_ok = g1 | g2 | g3 | g5_advance

    # FOSSILIZE: HOLDING through G5.
    fossilize_ok = (stage == SeedStage.HOLDING) & gate_g5(slots, cfg)
    fossilized_slots = _fossilize(slots)

    # PRUNE: agent prunes need age >= MIN_PRUNE_AGE; instant for INSTANT speed, an untrained seed or alpha already 0,
    # otherwise a scheduled ramp to 0 from HOLD.
    prunable = in_stages(stage, _PRUNABLE) & (slots.epochs_total >= cfg.min_prune_age)
    instant_kind = (
        (actions.alpha_speed == AlphaSpeedAction.INSTANT)
        | (stage == SeedStage.GERMINATED)
        | (stage == SeedStage.TRAINING)
        | (ctrl.alpha <= 0.0)
    )
    instant_ok = prunable & instant_kind & (in_hold | jnp.asarray(upstream))
    scheduled_ok = prunable & ~instant_kind & in_stages(stage, (SeedStage.BLENDING, SeedStage.HOLDING)) & in_hold
    speed_steps = jnp.asarray(ALPHA_SPEED_TO_STEPS, jnp.int32)[actions.alpha_speed]
    curve = jnp.asarray([int(c) for c in ALPHA_CURVE_TO_CURVE], jnp.int32)[actions.alpha_curve]
    steepness = jnp.asarray(ALPHA_CURVE_STEEPNESS, jnp.float32)[actions.alpha_curve]
    scheduled = transition(slots, stage == SeedStage.HOLDING, SeedStage.BLENDING)
    scheduled = scheduled.replace(
        controller=alpha_mod.retarget(scheduled.controller, ones, jnp.zeros_like(ctrl.alpha), speed_steps, curve, steepness),
        pending_prune=ones,
    )
    pruned_slots = select(instant_ok, prune_now(slots, ones), scheduled)
    prune_ok = instant_ok | scheduled_ok

    # SET_ALPHA_TARGET: BLENDING/HOLDING in HOLD; may switch the operator; a target < 1 reopens BLENDING.
    retarget_ok = in_stages(stage, (SeedStage.BLENDING, SeedStage.HOLDING)) & in_hold
    target = jnp.asarray(ALPHA_TARGET_VALUES, jnp.float32)[actions.alpha_target]
    new_algorithm = jnp.asarray(STYLE_ALGORITHM)[actions.style]
    retargeted = transition(slots, (stage == SeedStage.HOLDING) & (target < 1.0), SeedStage.BLENDING)
    retargeted = retargeted.replace(
        controller=alpha_mod.retarget(retargeted.controller, ones, jnp.full_like(ctrl.alpha, target), speed_steps, curve, steepness),
        algorithm=jnp.full_like(slots.algorithm, new_algorithm),
        # Switching to GATE builds a new gate; switching away drops it (it no longer runs, so it costs no rent).
        has_gate=jnp.full_like(slots.has_gate, new_algorithm == AlphaAlgorithm.GATE),
    )

    per_op_slots = [slots, germinated_slots, retargeted, pruned_slots, fossilized_slots, advanced]
    per_op_ok = [
        jnp.zeros_like(chosen),
        can_germinate,
        retarget_ok,
        prune_ok,
        fossilize_ok,
        advance_ok,
    ]
    result = slots
    executed_any = jnp.asarray(False)
    for code, (candidate, ok) in enumerate(zip(per_op_slots, per_op_ok)):
        apply = chosen & ok & (op == code)
        result = select(apply, candidate, result)
        executed_any = executed_any | jnp.any(apply)

    is_wait = op == LifecycleOp.WAIT
    success = jnp.where(is_wait, jnp.asarray(not upstream), executed_any)

    def at_chosen(x: jnp.ndarray) -> jnp.ndarray:
        return jnp.any(chosen & x)

    # The validity rules (docs/environment.md#validity) on the pre-action state of the sampled slot, identical in both
    # modes: they are the mask's per-slot conditions, so a masked-in op is always valid for some slot. (Upstream's only
    # departures are executions the rules call invalid — quirks 5 and 6 — which fixed mode does not execute.)
    valid_by_op = [
        jnp.asarray(True),
        at_chosen(can_germinate),
        at_chosen(retarget_ok),
        at_chosen(in_stages(stage, _PRUNABLE) & in_hold & (slots.epochs_total >= cfg.min_prune_age)),
        at_chosen(stage == SeedStage.HOLDING),
        at_chosen(in_stages(stage, (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING))),
    ]
    valid = jnp.asarray(False)
    for code, v in enumerate(valid_by_op):
        valid = valid | ((op == code) & v)
    valid = valid & (is_wait | slot_ok)

    fossilized = (op == LifecycleOp.FOSSILIZE) & executed_any
    outcome = OpOutcome(
        success=success,
        valid=valid,
        germinated=(op == LifecycleOp.GERMINATE) & executed_any,
        fossilized=fossilized,
        pruned=(op == LifecycleOp.PRUNE) & executed_any,
        fossilized_improvement=jnp.sum(jnp.where(chosen, slots.total_improvement, 0.0)),
    )
    return result, outcome


# ----------------------------------------------------------------------------------------------------------------
# Epoch bookkeeping
# ----------------------------------------------------------------------------------------------------------------


def record_accuracy(slots: Slots, val_acc: jnp.ndarray) -> Slots:
    """SeedMetrics.record_accuracy on every slot holding a seed module (runs before the decision, so a stage
    entered at step t reads k = 1 at t + 1)."""
    live = slots.has_module
    first = slots.epochs_total == 0
    acc = jnp.broadcast_to(jnp.asarray(val_acc, jnp.float32), slots.current_acc.shape)
    recorded = slots.replace(
        initial_acc=jnp.where(first, acc, slots.initial_acc),
        stage_start_acc=jnp.where(first, acc, slots.stage_start_acc),
        current_acc=acc,
        best_acc=jnp.maximum(slots.best_acc, acc),
        epochs_total=slots.epochs_total + 1,
        epochs_in_stage=slots.epochs_in_stage + 1,
    )
    return select(live, recorded, slots)


def step_epoch(slots: Slots, cfg: EnvConfig) -> Slots:
    """``SeedSlot.step_epoch`` on every slot, after the action: blend-out freeze decision, cooldown pipeline, alpha
    tick (BLENDING only), scheduled-prune completion."""
    stage = slots.stage
    # Cooldown, judged on the stage before this tick so a seed moves at most one cooldown stage per epoch.
    was_pruned = stage == SeedStage.PRUNED
    was_embargoed = stage == SeedStage.EMBARGOED
    was_resetting = stage == SeedStage.RESETTING
    # Both dwell counters tick in EMBARGOED and RESETTING (upstream's cooldown branches), so the seed age reported
    # to the masks keeps growing through the cooldown; PRUNED moves on without counting.
    cooling = was_embargoed | was_resetting
    counted = slots.replace(
        epochs_in_stage=jnp.where(cooling, slots.epochs_in_stage + 1, slots.epochs_in_stage),
        epochs_total=jnp.where(cooling, slots.epochs_total + 1, slots.epochs_total),
    )
    out = transition(counted, was_pruned, SeedStage.EMBARGOED)
    out = transition(out, was_embargoed & (counted.epochs_in_stage >= cfg.embargo_epochs), SeedStage.RESETTING)
    emptied = was_resetting & (counted.epochs_in_stage >= cfg.resetting_epochs)
    cleared = empty_slots(stage.shape[0]).replace(
        # The gradient-ratio EMA entry dies with the state; nothing else survives an empty slot.
        has_gradient_ratio=jnp.zeros_like(slots.has_gradient_ratio),
    )
    out = select(emptied, cleared, out)

    blending = out.stage == SeedStage.BLENDING
    out = out.replace(controller=alpha_mod.tick(out.controller, blending))
    done_ramp = out.pending_prune & (out.controller.mode == AlphaMode.HOLD) & (out.controller.alpha <= 0.0)
    out = out.replace(frozen=blend_out_frozen(slots, out, cfg))
    return prune_now(out, done_ramp)


def blend_out_frozen(before_tick: Slots, after_tick: Slots, cfg: EnvConfig) -> jnp.ndarray:
    """bool [S]: which seeds train frozen during the next epoch (the host env's ``SlotView.frozen``).

    Upstream (``SeedSlot.step_epoch``) sets the freeze from ``alpha_mode == DOWN`` BEFORE ticking the controller,
    so the epoch after the tick that ends a ramp-down still trains the seed frozen. Fixed reads the mode after the
    tick: the seed is frozen only while its alpha is still going down. Either way a slot whose prune completes on
    this tick is unfrozen by ``prune_now`` (no module left)."""
    if cfg.compat == "upstream":
        return before_tick.controller.mode == AlphaMode.DOWN
    return after_tick.pending_prune | (after_tick.controller.mode == AlphaMode.DOWN)
