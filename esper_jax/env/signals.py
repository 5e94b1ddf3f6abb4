"""Signal tracking (docs/environment.md#signals-and-observation): what one epoch's measurements do to the state, the
caller-side feedback state, and the ``Observation`` the policy sees.

Upstream/fixed differences handled here (quirk numbers of docs/compat.md#environment-side):

* 1 — upstream's losses are the true mean loss divided by the per-env batch size (≈ 0 features); fixed reports the
  true mean loss.
* 8 — upstream's interaction uses the leave-one-out baselines f(A∖{i}) and is only computed for 3–4 active seeds;
  fixed computes the textbook I_ij = f({i,j}) − f({i}) − f({j}) + f(∅) for 2–4 active seeds.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from esper_jax.contracts import HISTORY_LENGTH, SeedStage
from esper_jax.env import alpha as alpha_mod
from esper_jax.env.config import EnvConfig
from esper_jax.env.lifecycle import Slots, live_seed_count, record_accuracy
from esper_jax.env.oracle import ConfigLayout, Measurement
from esper_jax.observation import Observation, Signals, SlotReports

VELOCITY_DECAY = 0.7
GRADIENT_EMA_DECAY = 0.9
MAX_INTERACTING_SEEDS = 4  # upstream stops computing pair configurations beyond four active seeds


@struct.dataclass
class Tracker:
    """SignalTracker state (per env, scalars and the 5-long histories)."""

    epoch: jnp.ndarray  # int32, 1-based once the first epoch is observed
    val_loss: jnp.ndarray  # float32, as reported (upstream: divided by the batch size)
    val_accuracy: jnp.ndarray  # float32
    previous_val_accuracy: jnp.ndarray  # float32, 0 before the first epoch
    loss_history: jnp.ndarray  # float32 [5], oldest first, left-padded with 0
    accuracy_history: jnp.ndarray  # float32 [5]
    host_max_accuracy: jnp.ndarray  # float32
    reference_accuracy: jnp.ndarray  # float32: the host's accuracy without seeds (Measurement; fixed reward only)

    @property
    def accuracy_delta(self) -> jnp.ndarray:
        return self.val_accuracy - self.previous_val_accuracy


@struct.dataclass
class Feedback:
    """Caller-side env state (ParallelEnvState): action feedback, per-slot trackers, counters, ledgers."""

    last_action_op: jnp.ndarray  # int32
    last_action_success: jnp.ndarray  # bool
    gradient_health_prev: jnp.ndarray  # float32 [S], 1.0 where never set
    epochs_since_counterfactual: jnp.ndarray  # int32 [S]
    has_counterfactual_key: jnp.ndarray  # bool [S]: upstream's dict has the slot
    acc_at_germination: jnp.ndarray  # float32 [S]
    has_acc_at_germination: jnp.ndarray  # bool [S]
    previous_alpha: jnp.ndarray  # float32 [S] (alpha shock)
    previous_params: jnp.ndarray  # float32 [S] (alpha shock)
    seeds_created: jnp.ndarray  # int32: germinations this episode (numbers seed ids; not the max_seeds count)
    seeds_fossilized: jnp.ndarray  # int32
    contributing_fossilized: jnp.ndarray  # int32
    pending_hindsight: jnp.ndarray  # float32: credit paid with the next step's reward
    scaffold_ledger: jnp.ndarray  # float32 [S, L, S]: boost to beneficiary b at epoch e from scaffold s (0 = none)


def initial_tracker() -> Tracker:
    z = jnp.zeros((), jnp.float32)
    return Tracker(
        epoch=jnp.zeros((), jnp.int32),
        val_loss=z,
        val_accuracy=z,
        previous_val_accuracy=z,
        loss_history=jnp.zeros(HISTORY_LENGTH, jnp.float32),
        accuracy_history=jnp.zeros(HISTORY_LENGTH, jnp.float32),
        host_max_accuracy=z,
        reference_accuracy=z,
    )


def initial_feedback(cfg: EnvConfig) -> Feedback:
    s = cfg.num_slots
    return Feedback(
        last_action_op=jnp.zeros((), jnp.int32),
        last_action_success=jnp.ones((), jnp.bool_),
        gradient_health_prev=jnp.ones(s, jnp.float32),
        epochs_since_counterfactual=jnp.zeros(s, jnp.int32),
        has_counterfactual_key=jnp.zeros(s, jnp.bool_),
        acc_at_germination=jnp.zeros(s, jnp.float32),
        has_acc_at_germination=jnp.zeros(s, jnp.bool_),
        previous_alpha=jnp.zeros(s, jnp.float32),
        previous_params=jnp.zeros(s, jnp.float32),
        seeds_created=jnp.zeros((), jnp.int32),
        seeds_fossilized=jnp.zeros((), jnp.int32),
        contributing_fossilized=jnp.zeros((), jnp.int32),
        pending_hindsight=jnp.zeros((), jnp.float32),
        scaffold_ledger=jnp.zeros((s, cfg.episode_length, s), jnp.float32),
    )


def config_layout(cfg: EnvConfig) -> ConfigLayout:
    return ConfigLayout(num_slots=cfg.num_slots, with_singletons=cfg.compat == "fixed")


def validation_configs(slots: Slots, cfg: EnvConfig) -> jnp.ndarray:
    """Alphas [K, S] of the fused validation pass: the layout's keep-matrix times the live alphas."""
    live_alpha = jnp.where(slots.has_module, slots.alpha, 0.0)
    return jnp.asarray(config_layout(cfg).keep()) * live_alpha[None, :]


def _push(history: jnp.ndarray, value: jnp.ndarray) -> jnp.ndarray:
    return jnp.concatenate([history[1:], jnp.reshape(value, (1,)).astype(history.dtype)])


def observe_epoch(
    slots: Slots, tracker: Tracker, feedback: Feedback, m: Measurement, epoch: jnp.ndarray, cfg: EnvConfig
) -> tuple[Slots, Tracker, Feedback]:
    """Fold one epoch's measurements into the state: counterfactuals, record_accuracy, telemetry, tracker."""
    layout = config_layout(cfg)
    acc = m.val_accuracy
    val_acc = acc[0]

    # Counterfactuals for every seed with a module and alpha > 0 (the fused pass's set A).
    active = slots.has_module & (slots.alpha > 0.0)
    n_active = jnp.sum(active)
    baseline = acc[jnp.asarray(layout.solo_rows)]  # f(A∖{i})
    c = val_acc - baseline
    velocity = jnp.where(
        slots.has_previous_contribution,
        VELOCITY_DECAY * slots.contribution_velocity + (1.0 - VELOCITY_DECAY) * (c - slots.previous_contribution),
        slots.contribution_velocity,
    )
    slots = slots.replace(
        contribution=jnp.where(active, c, slots.contribution),
        has_contribution=slots.has_contribution | active,
        contribution_fresh=active,
        contribution_velocity=jnp.where(active, velocity, slots.contribution_velocity),
        previous_contribution=jnp.where(active, c, slots.previous_contribution),
        has_previous_contribution=slots.has_previous_contribution | active,
    )
    feedback = feedback.replace(
        epochs_since_counterfactual=jnp.where(active, 0, feedback.epochs_since_counterfactual),
        has_counterfactual_key=feedback.has_counterfactual_key | active,
    )

    # Pairwise interactions, reset every epoch.
    s = cfg.num_slots
    interaction = jnp.zeros((s, s), jnp.float32)
    pair_valid = jnp.zeros((s, s), jnp.bool_)
    if layout.pairs:
        ii = jnp.asarray([p[0] for p in layout.pairs])
        jj = jnp.asarray([p[1] for p in layout.pairs])
        f_pair = acc[jnp.asarray(layout.pair_rows)]
        f_none = acc[layout.all_off_row]
        if cfg.compat == "upstream":
            enough = (n_active >= 3) & (n_active <= MAX_INTERACTING_SEEDS)
            values = f_pair - baseline[ii] - baseline[jj] + f_none
        else:
            enough = (n_active >= 2) & (n_active <= MAX_INTERACTING_SEEDS)
            f_single = acc[jnp.asarray(layout.singleton_rows)]
            values = f_pair - f_single[ii] - f_single[jj] + f_none
        ok = enough & active[ii] & active[jj]
        interaction = interaction.at[ii, jj].set(jnp.where(ok, values, 0.0))
        interaction = interaction + interaction.T
        pair_valid = pair_valid.at[ii, jj].set(ok)
        pair_valid = pair_valid | pair_valid.T
    interaction_sum = jnp.sum(interaction, axis=1)
    boost = jnp.maximum(0.0, jnp.max(jnp.where(pair_valid, interaction, 0.0), axis=1))
    slots = slots.replace(interaction_sum=interaction_sum, boost_received=boost)
    # Positive interactions are remembered in both directions for hindsight credit (beneficiary, epoch, scaffold).
    row = jnp.clip(epoch - 1, 0, cfg.episode_length - 1)
    positive = jnp.where(pair_valid & (interaction > 0.0), interaction, 0.0)
    feedback = feedback.replace(scaffold_ledger=feedback.scaffold_ledger.at[:, row, :].set(positive))

    slots = record_accuracy(slots, val_acc)

    # Gradient telemetry for TRAINING/BLENDING seeds; values persist elsewhere.
    sampled = slots.has_module & ((slots.stage == SeedStage.TRAINING) | (slots.stage == SeedStage.BLENDING))
    ema = jnp.where(
        slots.has_gradient_ratio,
        GRADIENT_EMA_DECAY * slots.gradient_ratio_ema + (1.0 - GRADIENT_EMA_DECAY) * m.gradient_ratio,
        m.gradient_ratio,
    )
    slots = slots.replace(
        gradient_norm=jnp.where(sampled, m.gradient_norm, slots.gradient_norm),
        gradient_health=jnp.where(sampled, m.gradient_health, slots.gradient_health),
        has_vanishing=jnp.where(sampled, m.has_vanishing, slots.has_vanishing),
        has_exploding=jnp.where(sampled, m.has_exploding, slots.has_exploding),
        gradient_ratio_ema=jnp.where(sampled, ema, slots.gradient_ratio_ema),
        has_gradient_ratio=slots.has_gradient_ratio | sampled,
    )

    loss = m.val_loss[0]
    if cfg.compat == "upstream":
        loss = loss / cfg.task_spec.batch_size
    tracker = Tracker(
        epoch=jnp.asarray(epoch, jnp.int32),
        val_loss=loss,
        val_accuracy=val_acc,
        previous_val_accuracy=tracker.val_accuracy,
        loss_history=_push(tracker.loss_history, loss),
        accuracy_history=_push(tracker.accuracy_history, val_acc),
        host_max_accuracy=jnp.maximum(tracker.host_max_accuracy, val_acc),
        reference_accuracy=jnp.asarray(m.reference_accuracy, jnp.float32),
    )
    return slots, tracker, feedback


def after_action(feedback: Feedback, pre: Slots, op: jnp.ndarray, success: jnp.ndarray) -> Feedback:
    """Caller-side updates after every step, from the pre-action reports
    (docs/environment.md#signals-and-observation)."""
    reported = pre.has_state
    return feedback.replace(
        last_action_op=jnp.asarray(op, jnp.int32),
        last_action_success=jnp.asarray(success, jnp.bool_),
        gradient_health_prev=jnp.where(reported, pre.gradient_health, feedback.gradient_health_prev),
        epochs_since_counterfactual=jnp.where(
            reported,
            jnp.where(feedback.has_counterfactual_key, feedback.epochs_since_counterfactual + 1, 0),
            feedback.epochs_since_counterfactual,
        ),
        has_counterfactual_key=feedback.has_counterfactual_key | reported,
    )


def build_observation(slots: Slots, tracker: Tracker, feedback: Feedback) -> Observation:
    signals = Signals(
        epoch=tracker.epoch,
        val_loss=tracker.val_loss,
        val_accuracy=tracker.val_accuracy,
        loss_history=tracker.loss_history,
        accuracy_history=tracker.accuracy_history,
        last_action_success=feedback.last_action_success,
        last_action_op=feedback.last_action_op,
        total_seeds=live_seed_count(slots),  # upstream total_seeds() at decision time (docs/compat.md#upstream-exact)
    )
    ctrl = slots.controller
    has_report = slots.has_state
    reports = SlotReports(
        enabled=jnp.ones_like(has_report),
        has_report=has_report,
        stage=slots.stage,
        blueprint_index=slots.blueprint,
        seed_age=slots.epochs_total,
        blend_tempo_epochs=slots.tempo,
        current_alpha=ctrl.alpha,
        alpha_target=ctrl.target,
        alpha_mode=ctrl.mode,
        alpha_steps_total=ctrl.steps_total,
        alpha_steps_done=ctrl.steps_done,
        time_to_target=alpha_mod.time_to_target(ctrl),
        alpha_velocity=alpha_mod.velocity(ctrl),
        alpha_algorithm=slots.algorithm,
        has_counterfactual=slots.has_contribution,
        counterfactual_contribution=slots.contribution,
        improvement_since_stage_start=slots.improvement_since_stage_start,
        contribution_velocity=slots.contribution_velocity,
        interaction_sum=slots.interaction_sum,
        epochs_in_stage=slots.epochs_in_stage,
        has_telemetry=has_report,
        gradient_norm=slots.gradient_norm,
        gradient_health=slots.gradient_health,
        has_vanishing=slots.has_vanishing,
        has_exploding=slots.has_exploding,
        gradient_health_prev=feedback.gradient_health_prev,
        epochs_since_counterfactual=feedback.epochs_since_counterfactual,
    )
    return Observation(signals=signals, slots=reports)
