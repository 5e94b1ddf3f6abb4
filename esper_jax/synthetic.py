"""Random but realistic observations, for tests, parity checks and benchmarks.

Host-side and NumPy-seeded (not a jit function): the same seed gives the same batch on every machine, and the
torch reference can be fed the very same values. Slot states are valid lifecycle states with consistent alpha
fields; edge values that exercise upstream's clamps and defaults (NaN/inf gradients, huge contributions, negative
interaction sums, missing telemetry or counterfactuals) appear with small probability.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

from esper_jax.contracts import (
    HISTORY_LENGTH,
    NUM_BLUEPRINTS,
    NUM_OPS,
    TEMPO_TO_EPOCHS,
    AlphaAlgorithm,
    AlphaMode,
    SeedStage,
)
from esper_jax.observation import Observation, SlotReports, Signals, signal_dtypes, slot_dtypes

_STAGES = np.array([s.value for s in SeedStage], dtype=np.int32)


def random_observation(
    seed: int | np.random.Generator,
    num_slots: int,
    batch_shape: tuple[int, ...] = (),
    *,
    p_report: float = 0.6,
    p_enabled: float = 0.9,
    edge_cases: bool = True,
) -> Observation:
    """A batch of observations with leading axes ``batch_shape`` and ``num_slots`` slots.

    ``p_report`` is the chance that a slot holds a seed; ``p_enabled`` the chance it is enabled for masks.
    """
    if num_slots < 1:
        raise ValueError(f"num_slots must be >= 1, got {num_slots}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    b = tuple(batch_shape)
    s = b + (num_slots,)

    epoch = rng.integers(0, 151, size=b)
    n_hist = np.minimum(epoch + 1, HISTORY_LENGTH)[..., None]
    pad = np.arange(HISTORY_LENGTH) < (HISTORY_LENGTH - n_hist)  # left padding while history is short
    loss_history = np.where(pad, 0.0, rng.uniform(0.05, 4.0, size=b + (HISTORY_LENGTH,)))
    accuracy_history = np.where(pad, 0.0, rng.uniform(0.0, 100.0, size=b + (HISTORY_LENGTH,)))
    signals = Signals(
        epoch=epoch,
        val_loss=loss_history[..., -1],
        val_accuracy=accuracy_history[..., -1],
        loss_history=loss_history,
        accuracy_history=accuracy_history,
        last_action_success=rng.random(b) < 0.7,
        last_action_op=rng.integers(0, NUM_OPS, size=b),
        total_seeds=rng.integers(0, 2 * num_slots + 2, size=b),
    )

    has_report = rng.random(s) < p_report
    stage = rng.choice(_STAGES[1:], size=s)  # any real stage but UNKNOWN
    blending_like = np.isin(stage, [SeedStage.BLENDING, SeedStage.HOLDING])
    alpha_mode = np.where(blending_like, rng.integers(0, 3, size=s), AlphaMode.HOLD)
    steps_total = rng.integers(0, 40, size=s)
    steps_done = np.minimum(rng.integers(0, 40, size=s), steps_total)
    contribution = rng.normal(0.0, 4.0, size=s)
    gradient_norm = rng.lognormal(0.0, 1.5, size=s)
    gradient_health = rng.uniform(-0.2, 1.2, size=s)
    interaction = rng.normal(0.0, 6.0, size=s)
    if edge_cases:
        gradient_norm = np.where(rng.random(s) < 0.05, np.nan, gradient_norm)
        gradient_health = np.where(rng.random(s) < 0.05, np.inf, gradient_health)
        contribution = np.where(rng.random(s) < 0.05, contribution * 20.0, contribution)
        interaction = np.where(rng.random(s) < 0.05, -30.0, interaction)

    fields = dict(
        enabled=rng.random(s) < p_enabled,
        has_report=has_report,
        stage=np.where(has_report, stage, 0),
        blueprint_index=np.where(has_report, rng.integers(-1, NUM_BLUEPRINTS, size=s), -1),
        seed_age=rng.integers(0, 30, size=s),
        blend_tempo_epochs=rng.choice(np.array(TEMPO_TO_EPOCHS), size=s),
        current_alpha=np.where(np.isin(stage, [SeedStage.FOSSILIZED]), 1.0, rng.uniform(0, 1, size=s)),
        alpha_target=rng.choice(np.array([0.0, 0.5, 0.7, 1.0]), size=s),
        alpha_mode=alpha_mode,
        alpha_steps_total=steps_total,
        alpha_steps_done=steps_done,
        time_to_target=steps_total - steps_done,
        alpha_velocity=rng.normal(0.0, 0.5, size=s),
        alpha_algorithm=rng.choice(np.array([a.value for a in AlphaAlgorithm]), size=s),
        has_counterfactual=rng.random(s) < 0.7,
        counterfactual_contribution=contribution,
        improvement_since_stage_start=rng.normal(0.0, 3.0, size=s),
        contribution_velocity=rng.normal(0.0, 2.0, size=s),
        interaction_sum=interaction,
        epochs_in_stage=rng.integers(0, 40, size=s),
        has_telemetry=rng.random(s) < 0.8,
        gradient_norm=gradient_norm,
        gradient_health=gradient_health,
        has_vanishing=rng.random(s) < 0.1,
        has_exploding=rng.random(s) < 0.1,
        gradient_health_prev=rng.uniform(0.0, 1.5, size=s),
        epochs_since_counterfactual=rng.integers(0, 20, size=s),
    )
    dtypes = slot_dtypes()
    slots = SlotReports(**{k: jnp.asarray(v, dtype=dtypes[k]) for k, v in fields.items()})
    sig_dtypes = signal_dtypes()
    signals = Signals(**{k: jnp.asarray(getattr(signals, k), dtype=sig_dtypes[k]) for k in sig_dtypes})
    return Observation(signals=signals, slots=slots)
