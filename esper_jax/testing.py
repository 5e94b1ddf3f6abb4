"""Test and benchmark fixtures (not used by training): random but realistic observations, policy batches and PPO
update buffers for tests, parity checks and benchmarks. ``UpdateBuffer.torch_data`` takes the torch module (the ``torch`` extra).

Host-side and NumPy-seeded (not a jit function): the same seed gives the same batch on every machine, and the
torch reference can be fed the very same values. Slot states are valid lifecycle states with consistent alpha
fields; edge values that exercise upstream's clamps and defaults (NaN/inf gradients, huge contributions, negative
interaction sums, missing telemetry or counterfactuals) appear with small probability. ``random_policy_batch``
adds their features, masks and valid actions; ``UpdateBuffer`` holds a filled rollout buffer in upstream's layout
and converts it for either implementation's PPO update.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from esper_jax import features as features_mod
from esper_jax import masks as masks_mod
from esper_jax.contracts import (
    CANONICAL_STYLE,
    HEAD_NAMES,
    HISTORY_LENGTH,
    NUM_BLUEPRINTS,
    NUM_OPS,
    TEMPO_TO_EPOCHS,
    AlphaAlgorithm,
    AlphaMode,
    Compat,
    LifecycleOp,
    PerHead,
    SeedStage,
)
from esper_jax.observation import Observation, Signals, SlotReports, signal_dtypes, slot_dtypes

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


def sample_valid(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """One uniformly drawn valid index per row of a bool mask ``[..., n]``, int32 ``[...]``."""
    scores = rng.random(mask.shape) + mask  # valid entries score in [1, 2), invalid in [0, 1)
    return np.argmax(scores, axis=-1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class PolicyBatch:
    """Policy inputs and stored actions for a batch ``[...]`` of random valid observations (NumPy).

    ``features [..., D]`` float32, ``blueprint_indices [..., S]`` int32, ``masks`` PerHead of bool ``[..., n]``
    (env masks from ``esper_jax.masks``), ``actions`` PerHead of int32 ``[...]``: valid under the masks, with
    style canonicalised where the op ignores it, as the rollout stores them.
    """

    features: np.ndarray
    blueprint_indices: np.ndarray
    masks: PerHead
    actions: PerHead


def random_policy_batch(
    rng: np.random.Generator, num_slots: int, batch_shape: tuple[int, ...], *, compat: Compat
) -> PolicyBatch:
    """Observations from ``random_observation`` (every slot enabled, so no mask row is empty), their features,
    blueprint indices and env masks, and one valid action per head drawn from ``rng``."""
    obs = random_observation(rng, num_slots, batch_shape, p_enabled=1.0)
    feats = features_mod.extract(obs, compat=compat)
    masks = masks_mod.compute(obs, masks_mod.MaskConfig()).map(np.asarray)
    actions = {h: sample_valid(rng, getattr(masks, h)) for h in HEAD_NAMES}
    op = actions["op"]
    style_relevant = (op == LifecycleOp.GERMINATE) | (op == LifecycleOp.SET_ALPHA_TARGET)
    actions["style"] = np.where(style_relevant, actions["style"], int(CANONICAL_STYLE)).astype(np.int32)
    return PolicyBatch(
        features=np.asarray(feats.features, np.float32),
        blueprint_indices=np.asarray(feats.blueprint_indices, np.int32),
        masks=masks,
        actions=PerHead.from_dict(actions),
    )


@dataclasses.dataclass(frozen=True)
class UpdateBuffer:
    """A filled rollout buffer in upstream's env-major layout ``[E, T, ...]`` (NumPy), the input of a PPO update
    on either implementation: ``trajectory()`` gives esper_jax's time-major Trajectory, ``torch_data()`` the
    dict ``reference_torch.ppo.update`` takes. ``valid`` marks real steps (a prefix per env); ``hidden`` is the
    initial LSTM state (h, c), each ``[L, E, H]`` as torch stores it."""

    states: np.ndarray
    blueprint_indices: np.ndarray
    actions: PerHead
    old_log_probs: PerHead
    masks: PerHead
    values: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    truncated: np.ndarray
    bootstrap_values: np.ndarray
    valid: np.ndarray
    hidden: tuple[np.ndarray, np.ndarray]

    @property
    def step_counts(self) -> list[int]:
        return [int(n) for n in self.valid.sum(axis=1)]

    def trajectory(self):
        """The same data as an ``esper_jax.rollout.Trajectory`` (time-major, carry ``[E, L, H]``)."""
        from esper_jax.network import LSTMCarry  # here, not at the top: keeps this module free of the policy stack
        from esper_jax.rollout import Trajectory

        tm = lambda x: jnp.asarray(np.swapaxes(x, 0, 1))  # noqa: E731 - env-major → time-major
        batch_first = lambda x: jnp.asarray(np.moveaxis(x, 1, 0))  # noqa: E731 - [L, E, H] → [E, L, H]
        return Trajectory(
            features=tm(self.states),
            raw_features=tm(self.states),
            blueprint_indices=tm(self.blueprint_indices),
            actions=self.actions.map(tm),
            log_probs=self.old_log_probs.map(tm),
            masks=self.masks.map(tm),
            value=tm(self.values),
            reward=tm(self.rewards),
            raw_reward=tm(self.rewards),
            done=tm(self.dones),
            truncated=tm(self.truncated),
            bootstrap_value=tm(self.bootstrap_values),
            valid=tm(self.valid),
            initial_carry=LSTMCarry(h=batch_first(self.hidden[0]), c=batch_first(self.hidden[1])),
        )

    def torch_data(self, torch: Any, device: Any = "cpu") -> dict[str, Any]:
        """The dict ``reference_torch.ppo.update`` / ``prepare_data`` take (``torch`` is the imported module)."""
        t = lambda x: torch.as_tensor(np.ascontiguousarray(x), device=device)  # noqa: E731
        return dict(
            states=t(self.states),
            blueprint_indices=t(self.blueprint_indices).long(),
            actions={h: t(a).long() for h, a in self.actions.as_dict().items()},
            old_log_probs={h: t(v) for h, v in self.old_log_probs.as_dict().items()},
            masks={h: t(m) for h, m in self.masks.as_dict().items()},
            values=t(self.values),
            rewards=t(self.rewards),
            dones=t(self.dones),
            truncated=t(self.truncated),
            bootstrap_values=t(self.bootstrap_values),
            initial_hidden=(t(self.hidden[0]), t(self.hidden[1])),
        )
