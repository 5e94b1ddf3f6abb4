"""reset/step of ONE environment (docs/environment.md#step-order), pure and branch-free; vmap it over envs.

State convention: an ``EnvState`` is always "after the OBSERVE phase of epoch e" — the host has trained epoch e,
the fused validation has run, seeds have recorded their accuracy — which is exactly the state upstream's policy
decides on. ``step`` then runs upstream's per-env tail of epoch e and the head of epoch e + 1:

  rent/shock inputs → reward on the PRE-action state (+ pending hindsight credit) → execute the op on the sampled
  slot → action feedback → ``step_epoch`` on every slot (cooldowns, alpha tick, scheduled-prune completion) →
  if e < L: train + validate + observe epoch e + 1.

At e = L the episode is truncated (``done = truncated = True``) and ``obs`` is the post-action, post-tick
observation with epoch L's measurements (upstream's ``SignalTracker.peek``), which the bootstrap value needs; as the
rollout contract requires, ``step`` does not reset. ``step_autoreset`` is the self-resetting variant for callers
that do not bootstrap (benchmarks, property tests).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from esper_jax.contracts import LifecycleOp, PerHead, SeedStage
from esper_jax.env import lifecycle, reward, signals
from esper_jax.env.config import EnvConfig
from esper_jax.env.interface import StepOutput
from esper_jax.env.oracle import Oracle, SimulatorOracle, SlotView
from esper_jax.env.reward import RewardComponents
from esper_jax.observation import Observation


@struct.dataclass
class EnvState:
    slots: lifecycle.Slots
    tracker: signals.Tracker
    feedback: signals.Feedback
    oracle: Any


@struct.dataclass
class StepInfo:
    reward_components: RewardComponents  # sums exactly to the step's reward
    invalid_action: jnp.ndarray  # int32 0/1: the action was scored (and, except upstream's quirks, executed) as WAIT
    action_success: jnp.ndarray  # bool
    effective_op: jnp.ndarray  # int32: the op the reward scored
    epoch: jnp.ndarray  # int32: the epoch this action was taken at
    # Slots whose seed entered the stage during this step, read from the stage transitions themselves so that
    # upstream's uncounted ADVANCE-fossilisation (quirk 5) and scheduled prunes completing on the tick count too.
    seeds_germinated: jnp.ndarray  # int32
    seeds_fossilized: jnp.ndarray  # int32
    seeds_pruned: jnp.ndarray  # int32


def _entered(before: jnp.ndarray, after: jnp.ndarray, stage: SeedStage) -> jnp.ndarray:
    return jnp.sum((after == stage) & (before != stage), dtype=jnp.int32)


def slot_view(slots: lifecycle.Slots) -> SlotView:
    """What the oracle sees of the slots when it trains and validates the next epoch."""
    return SlotView(
        stage=slots.stage,
        blueprint=slots.blueprint,
        seed_id=slots.seed_id,
        algorithm=slots.algorithm,
        alpha=slots.alpha,
        epochs_total=slots.epochs_total,
        has_module=slots.has_module,
        frozen=slots.frozen & slots.has_module,  # decided by the last tick (lifecycle.blend_out_frozen)
    )


def _tree_select(pred: jnp.ndarray, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


@dataclasses.dataclass(frozen=True)
class EsperEnv:
    """The functional Esper environment (conforms to ``esper_jax.env.interface.Environment``). Hashable and static."""

    config: EnvConfig
    oracle: Oracle

    @classmethod
    def simulator(cls, config: EnvConfig) -> EsperEnv:
        return cls(config=config, oracle=SimulatorOracle.from_config(config))

    @property
    def num_slots(self) -> int:
        return self.config.num_slots

    def data(self) -> Any:
        """The arrays the oracle reads (a pytree of device arrays; None for the simulator). Compiled code should
        take them as an argument and ``bind`` them, so that a large dataset is not baked in as constants."""
        device_data = getattr(self.oracle, "device_data", None)
        return None if device_data is None else device_data()

    def bind(self, data: Any) -> EsperEnv:
        """This env reading ``data`` (``self.data()``, possibly traced) instead of its constants."""
        return self if data is None else dataclasses.replace(self, oracle=self.oracle.bind(data))

    # ---- parts ---------------------------------------------------------------------------------------------

    def seed_params(self, slots: lifecycle.Slots) -> jnp.ndarray:
        """float32 [S]: parameters of each slot's seed module (gate included), 0 without a module."""
        cfg = self.config
        table = jnp.asarray(cfg.param_table())
        rows = jnp.arange(cfg.num_slots)
        base = table[rows, jnp.clip(slots.blueprint, 0, table.shape[1] - 1)]
        gate = jnp.where(slots.has_gate, jnp.asarray(cfg.gate_param_table()), 0.0)
        return jnp.where(slots.has_module, base + gate, 0.0)

    def _advance_epoch(self, state: EnvState, key: jax.Array) -> EnvState:
        """Train + validate + observe the next epoch."""
        cfg = self.config
        epoch = state.tracker.epoch + 1
        slots = state.slots
        view = slot_view(slots)
        configs = signals.validation_configs(slots, cfg)
        oracle_state, measurement = self.oracle.measure(state.oracle, view, configs, epoch, key)
        new_slots, tracker, feedback = signals.observe_epoch(
            slots, state.tracker, state.feedback, measurement, epoch, cfg
        )
        return EnvState(slots=new_slots, tracker=tracker, feedback=feedback, oracle=oracle_state)

    def observe(self, state: EnvState) -> Observation:
        return signals.build_observation(state.slots, state.tracker, state.feedback)

    # ---- the interface -------------------------------------------------------------------------------------

    def reset(self, key: jax.Array) -> tuple[EnvState, Observation]:
        cfg = self.config
        k_oracle, k_epoch = jax.random.split(key)
        blank = EnvState(
            slots=lifecycle.empty_slots(cfg.num_slots),
            tracker=signals.initial_tracker(),
            feedback=signals.initial_feedback(cfg),
            oracle=self.oracle.init(k_oracle),
        )
        state = self._advance_epoch(blank, k_epoch)
        return state, self.observe(state)

    def step(self, state: EnvState, actions: PerHead, key: jax.Array) -> StepOutput:
        cfg = self.config
        rcfg = cfg.reward
        actions = jax.tree.map(lambda a: jnp.asarray(a, jnp.int32), actions)
        slots, tracker, feedback = state.slots, state.tracker, state.feedback
        epoch = tracker.epoch
        is_last = epoch >= cfg.episode_length

        # Execute first only to learn the action's validity: the reward still reads the untouched pre-action state.
        acted, outcome = lifecycle.execute(slots, actions, feedback.seeds_created, cfg)
        effective_op = jnp.where(outcome.valid, actions.op, LifecycleOp.WAIT).astype(jnp.int32)

        params = self.seed_params(slots)
        rent_inputs = reward.RentInputs(
            has_module=slots.has_module,
            alpha=slots.alpha,
            params=params,
            previous_alpha=feedback.previous_alpha,
            previous_params=feedback.previous_params,
        )
        fixed = cfg.compat == "fixed"
        # Quirk 15: the fixed reward judges seeds by the env's gain over the same host without seeds.
        gain_over_reference = tracker.val_accuracy - tracker.reference_accuracy
        seeds = reward.SeedInputs(
            present=slots.has_module,
            stage=slots.stage,
            epochs_in_stage=slots.epochs_in_stage,
            previous_stage=slots.previous_stage,
            previous_epochs_in_stage=slots.previous_epochs_in_stage,
            total_improvement=jnp.broadcast_to(gain_over_reference, slots.total_improvement.shape)
            if fixed
            else slots.total_improvement,
            contribution=slots.contribution,
            contribution_known=slots.contribution_fresh,
            interaction_sum=slots.interaction_sum,
            acc_at_germination=feedback.acc_at_germination,
            has_acc_at_germination=feedback.has_acc_at_germination,
        )
        components = reward.shaped_reward(
            effective_op,
            actions.slot,
            seeds,
            rent_inputs,
            tracker.val_accuracy,
            tracker.accuracy_delta,
            is_last,
            feedback.contributing_fossilized,
            feedback.pending_hindsight,
            cfg.host_params,
            rcfg,
            cfg.compat,
        )

        # Env counters and hindsight credit for a counted fossilisation (paid with the next reward).
        chosen = jnp.arange(cfg.num_slots) == actions.slot
        ti = outcome.fossilized_improvement
        ledger_row = jnp.sum(jnp.where(chosen[:, None, None], feedback.scaffold_ledger, 0.0), axis=0)
        credit = jnp.where(outcome.fossilized, reward.hindsight_credit(ledger_row, epoch, ti, rcfg), 0.0)
        clear_ledger = outcome.fossilized & chosen
        germ_here = outcome.germinated & chosen
        if fixed:  # quirk 15: a fossil contributes by its own counterfactual contribution
            c_chosen = jnp.sum(jnp.where(chosen, slots.contribution, 0.0))
            contributes = jnp.any(chosen & slots.has_contribution) & (c_chosen >= rcfg.min_fossilize_contribution)
        else:
            contributes = ti >= rcfg.min_fossilize_contribution
        # Upstream pops the slot's germination accuracy when a PRUNE or FOSSILIZE op succeeds there (an ADVANCE
        # that fossilises does not), and again after the tick wherever no seed module is left
        # (docs/compat.md#upstream-exact).
        popped_by_op = chosen & (outcome.pruned | ((actions.op == LifecycleOp.FOSSILIZE) & outcome.success))
        feedback = feedback.replace(
            previous_alpha=slots.alpha,
            previous_params=params,
            pending_hindsight=credit,
            scaffold_ledger=jnp.where(clear_ledger[:, None, None], 0.0, feedback.scaffold_ledger),
            seeds_fossilized=feedback.seeds_fossilized + outcome.fossilized.astype(jnp.int32),
            contributing_fossilized=feedback.contributing_fossilized
            + (outcome.fossilized & contributes).astype(jnp.int32),
            seeds_created=feedback.seeds_created + outcome.germinated.astype(jnp.int32),
            acc_at_germination=jnp.where(germ_here, tracker.val_accuracy, feedback.acc_at_germination),
            has_acc_at_germination=(feedback.has_acc_at_germination | germ_here) & ~popped_by_op,
        )
        feedback = signals.after_action(feedback, slots, actions.op, outcome.success)
        ticked = lifecycle.step_epoch(acted, cfg)
        feedback = feedback.replace(has_acc_at_germination=feedback.has_acc_at_germination & ticked.has_module)
        post = EnvState(slots=ticked, tracker=tracker, feedback=feedback, oracle=state.oracle)
        if fixed:
            # Quirk 15: charge the potential of every seed module that leaves its slot this step, and of every seed
            # at the episode's end (a terminal state has potential 0), so PBRS telescopes and pays nothing net.
            leaving = slots.has_module & (~ticked.has_module | is_last)
            removal = reward.pbrs_removal(slots.stage, slots.epochs_in_stage, leaving, rcfg)
            components = components.replace(pbrs=components.pbrs + removal)

        next_state = jax.lax.cond(is_last, lambda s: s, lambda s: self._advance_epoch(s, key), post)
        info = StepInfo(
            reward_components=components,
            invalid_action=(~outcome.valid).astype(jnp.int32),
            action_success=outcome.success,
            effective_op=effective_op,
            epoch=epoch,
            seeds_germinated=_entered(slots.stage, acted.stage, SeedStage.GERMINATED),
            seeds_fossilized=_entered(slots.stage, acted.stage, SeedStage.FOSSILIZED),
            # An instant prune is PRUNED after execute (and EMBARGOED after the tick); a scheduled one reaches
            # PRUNED on the tick, when its alpha ramp ends.
            seeds_pruned=_entered(slots.stage, acted.stage, SeedStage.PRUNED)
            + _entered(acted.stage, ticked.stage, SeedStage.PRUNED),
        )
        return StepOutput(
            state=next_state,
            obs=self.observe(next_state),
            reward=components.total(),
            done=is_last,
            truncated=is_last,
            info=info,
        )

    def step_autoreset(self, state: EnvState, actions: PerHead, key: jax.Array) -> StepOutput:
        """``step``, then a fresh episode where it ended (state and obs replaced; reward/done/info kept)."""
        k_step, k_reset = jax.random.split(key)
        out = self.step(state, actions, k_step)
        fresh_state, fresh_obs = self.reset(k_reset)
        return out.replace(
            state=_tree_select(out.done, fresh_state, out.state),
            obs=_tree_select(out.done, fresh_obs, out.obs),
        )
