"""esper_jax.masks against the upstream-style torch reference: every head, every env, exactly equal."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from esper_jax import masks  # noqa: E402
from esper_jax.contracts import HEAD_NAMES, AlphaMode, LifecycleOp  # noqa: E402
from esper_jax.observation import Observation  # noqa: E402
from esper_jax.testing import random_observation  # noqa: E402
from reference_torch import masks as ref  # noqa: E402
from reference_torch.leyline import SlotConfig as RefSlotConfig  # noqa: E402

SLOT_COUNTS = (1, 3, 5, 25)
BATCH_SIZES = (1, 4, 64)
SEEDS = (0, 1, 2)


def _configs(num_slots: int) -> list[masks.MaskConfig]:
    return [
        masks.MaskConfig(),
        masks.MaskConfig(max_seeds=num_slots, allow_governor_override=True),
        masks.MaskConfig(max_seeds=1, topology="transformer"),
        masks.MaskConfig(max_seeds=2 * num_slots, topology="transformer", allow_governor_override=True),
    ]


def _stressed(obs: Observation, seed: int) -> Observation:
    """Push the random states onto the rule boundaries that random_observation rarely reaches: ages 0–2 around
    MIN_PRUNE_AGE, and non-HOLD alpha modes on every stage (so the governor override matters for TRAINING too)."""
    rng = np.random.default_rng(10_000 + seed)
    shape = obs.slots.stage.shape
    slots = obs.slots.replace(
        seed_age=jnp.asarray(rng.integers(0, 3, size=shape), jnp.int32),
        alpha_mode=jnp.asarray(rng.integers(0, len(AlphaMode), size=shape), jnp.int32),
    )
    return obs.replace(slots=slots)


def _shared_enabled(obs: Observation) -> Observation:
    """Every env enables the same slots (env 0's), the only case upstream's compute_batch_masks signature covers."""
    enabled = jnp.broadcast_to(obs.slots.enabled[:1], obs.slots.enabled.shape)
    return obs.replace(slots=obs.slots.replace(enabled=enabled))


def _observations(num_slots: int, batch: int, seed: int) -> dict[str, Observation]:
    return {
        "plain": random_observation(seed, num_slots, (batch,), p_enabled=0.8),
        "stressed": _stressed(random_observation(seed + 100, num_slots, (batch,), p_report=0.8, p_enabled=0.7), seed),
        "shared-enabled": _shared_enabled(random_observation(seed + 200, num_slots, (batch,), p_report=0.4)),
    }


def _mismatches(jax_masks: masks.PerHead, torch_masks: dict[str, torch.Tensor]) -> dict[str, int]:
    assert set(torch_masks) == set(HEAD_NAMES)  # upstream's causal dict lists "op" first
    counts = {}
    for head in HEAD_NAMES:
        ours = np.asarray(getattr(jax_masks, head))
        theirs = torch_masks[head].numpy()
        assert ours.shape == theirs.shape, (head, ours.shape, theirs.shape)
        assert theirs.dtype == np.bool_ and ours.dtype == np.bool_, head
        counts[head] = int((ours != theirs).sum())
    return counts


@pytest.mark.parametrize("config_index", range(4))
@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("num_slots", SLOT_COUNTS)
def test_masks_match_reference(num_slots: int, batch: int, config_index: int) -> None:
    config = _configs(num_slots)[config_index]
    slot_config = RefSlotConfig.for_grid(1, num_slots)
    for seed in SEEDS:
        for variant, obs in _observations(num_slots, batch, seed).items():
            states, enabled, total_seeds = ref.slot_states_from_observation(obs, slot_config)
            # The shared variant goes through upstream's own signature: one enabled list for every env.
            enabled_arg = enabled[0] if variant == "shared-enabled" else enabled
            expected = ref.compute_batch_masks(
                states,
                enabled_arg,
                total_seeds_list=total_seeds,
                max_seeds=config.max_seeds,
                slot_config=slot_config,
                topology=config.topology,
                allow_governor_override=config.allow_governor_override,
            )
            assert tuple(expected) == HEAD_NAMES
            counts = _mismatches(masks.compute(obs, config), expected)
            print(
                f"masks S={num_slots:2d} B={batch:2d} seed={seed} {variant:14s} max_seeds={config.max_seeds:2d} "
                f"{config.topology:11s} override={int(config.allow_governor_override)} "
                f"mismatching entries={sum(counts.values())}"
            )
            assert sum(counts.values()) == 0, counts


@pytest.mark.parametrize("shape", [(), (1,), (64,), (25, 4)])
def test_causal_masks_match_reference(shape: tuple[int, ...]) -> None:
    ops = np.random.default_rng(len(shape) * 7 + sum(shape)).integers(0, len(LifecycleOp), size=shape)
    ours = masks.causal_relevance(jnp.asarray(ops, jnp.int32))
    theirs = ref.compute_causal_masks(torch.as_tensor(ops, dtype=torch.int64))
    counts = _mismatches(ours, theirs)
    print(f"causal shape={shape} mismatching entries={sum(counts.values())}")
    assert sum(counts.values()) == 0, counts


def test_time_major_batch_matches_reference_per_step() -> None:
    """[T, E] observations: the vmapped leading axes flatten in the same order as the reference's env list."""
    slot_config = RefSlotConfig.for_grid(1, 3)
    obs = _stressed(random_observation(42, 3, (5, 8), p_enabled=0.8), 42)
    config = masks.MaskConfig(max_seeds=4, allow_governor_override=True)
    states, enabled, total_seeds = ref.slot_states_from_observation(obs, slot_config)
    expected = ref.compute_batch_masks(
        states, enabled, total_seeds, max_seeds=4, slot_config=slot_config, allow_governor_override=True
    )
    flat = jax.tree.map(lambda x: x.reshape((40,) + x.shape[2:]), masks.compute(obs, config))
    counts = _mismatches(flat, expected)
    print(f"masks [T=5, E=8] S=3 mismatching entries={sum(counts.values())}")
    assert sum(counts.values()) == 0, counts


def test_reference_keeps_upstream_contract() -> None:
    """The reference's own upstream behaviour: required enabled_slots, frozen MaskSeedInfo, DORMANT occupied."""
    from dataclasses import FrozenInstanceError
    from types import SimpleNamespace

    from esper_jax.contracts import SeedStage

    with pytest.raises(TypeError):
        ref.compute_action_masks({})  # type: ignore[call-arg]
    info = ref.MaskSeedInfo(stage=3, seed_age_epochs=5)
    assert info.alpha_mode == AlphaMode.HOLD
    with pytest.raises(FrozenInstanceError):
        info.stage = 4  # type: ignore[misc]

    report = SimpleNamespace(stage=SeedStage.DORMANT, metrics=SimpleNamespace(epochs_total=7), alpha_mode=2)
    states = ref.build_slot_states({"r0c1": report}, ["r0c0", "r0c1"])
    assert states == {"r0c0": None, "r0c1": ref.MaskSeedInfo(stage=1, seed_age_epochs=7, alpha_mode=2)}
    op = ref.compute_action_masks({"r0c0": states["r0c1"]}, ["r0c0"], slot_config=RefSlotConfig(("r0c0",)))["op"]
    assert op.tolist() == [True, False, False, False, False, False]
