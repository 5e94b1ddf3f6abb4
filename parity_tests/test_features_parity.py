"""esper_jax.features against the upstream-style torch reference (docs/parity.md: features max-abs <= 1e-6, indices
exact).

Both sides read the same random observation: esper_jax directly, the reference through ``from_observation``'s
per-env Python objects. Every case prints its max error so a regression shows its size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from esper_jax.contracts import COMPAT_MODES, SeedStage  # noqa: E402
from esper_jax.features import extract  # noqa: E402
from esper_jax.observation import Observation  # noqa: E402
from esper_jax.testing import random_observation  # noqa: E402
from reference_torch.features import batch_obs_to_features  # noqa: E402
from reference_torch.leyline import SlotConfig as RefSlotConfig  # noqa: E402
from reference_torch.observation import InvalidStage, from_observation  # noqa: E402

SLOT_COUNTS = (1, 3, 5, 25)
BATCH_SIZES = (1, 4, 64)
FEATURE_TOL = 1e-6


def _reference(obs: Observation, num_slots: int, compat: str) -> tuple[np.ndarray, np.ndarray]:
    config = RefSlotConfig.for_grid(1, num_slots)
    features, indices = batch_obs_to_features(*from_observation(obs, config), config, "cpu", compat=compat)
    assert features.dtype == torch.float32 and indices.dtype == torch.int64
    return features.numpy(), indices.numpy()


def _compare(obs: Observation, num_slots: int, compat: str) -> tuple[float, int]:
    """(max-abs feature error, number of differing features); asserts the tolerance and exact indices."""
    ref_features, ref_indices = _reference(obs, num_slots, compat)
    out = extract(obs, compat=compat)
    features = np.asarray(out.features).reshape(ref_features.shape)
    np.testing.assert_array_equal(np.asarray(out.blueprint_indices).reshape(ref_indices.shape), ref_indices)
    assert np.isfinite(ref_features).all()
    err = float(np.abs(features - ref_features).max())
    assert err <= FEATURE_TOL, f"max-abs error {err:.3e} > {FEATURE_TOL:.0e}"
    return err, int((features != ref_features).sum())


@pytest.mark.parametrize("compat", COMPAT_MODES)
@pytest.mark.parametrize("num_envs", BATCH_SIZES)
@pytest.mark.parametrize("num_slots", SLOT_COUNTS)
def test_features_match_reference(num_slots, num_envs, compat):
    obs = random_observation(1000 * num_slots + num_envs, num_slots, (num_envs,))
    err, _ = _compare(obs, num_slots, compat)
    print(f"features S={num_slots} E={num_envs} compat={compat} max_abs_err={err:.3e}")


@pytest.mark.parametrize("compat", COMPAT_MODES)
@pytest.mark.parametrize("num_slots", (3, 25))
def test_features_bit_identical_under_x64(num_slots, compat):
    # Computing in float64 and rounding once is exactly what upstream does.
    obs = random_observation(7 + num_slots, num_slots, (64,))
    with jax.enable_x64(True):
        err, differing = _compare(obs, num_slots, compat)
    print(f"features S={num_slots} E=64 compat={compat} x64 max_abs_err={err:.3e}")
    assert differing == 0


def test_features_match_reference_with_two_batch_axes():
    obs = random_observation(21, 5, (6, 4))
    err, _ = _compare(obs, 5, "upstream")
    print(f"features S=5 E=6x4 compat=upstream max_abs_err={err:.3e}")


@pytest.mark.parametrize("compat", COMPAT_MODES)
def test_features_match_reference_on_edge_values(compat):
    """Invalid stages, all-TRAINING envs, interaction -30, no telemetry/counterfactual, padded histories."""
    num_slots, num_envs = 5, 8
    obs = random_observation(99, num_slots, (num_envs,), p_report=1.0)
    s = obs.slots
    rows = jnp.arange(num_envs)[:, None]
    stage = jnp.where(rows % 2 == 0, int(SeedStage.TRAINING), s.stage).at[1, 0].set(5).at[3, 1].set(12)
    slots = s.replace(
        stage=stage,
        interaction_sum=s.interaction_sum.at[:, 2].set(-30.0),
        has_telemetry=s.has_telemetry.at[:, 3].set(False),
        has_counterfactual=s.has_counterfactual.at[:, 4].set(False),
        alpha_steps_total=s.alpha_steps_total.at[5, :].set(-3),
        gradient_norm=s.gradient_norm.at[6, :].set(jnp.inf),
        gradient_health=s.gradient_health.at[7, :].set(jnp.nan),
        epochs_since_counterfactual=s.epochs_since_counterfactual.at[0, :].set(138),
    )
    signals = obs.signals.replace(
        epoch=obs.signals.epoch.at[0].set(200),
        loss_history=obs.signals.loss_history.at[1, :3].set(0.0),
        accuracy_history=obs.signals.accuracy_history.at[1, :3].set(0.0),
    )
    obs = obs.replace(signals=signals, slots=slots)
    batch_signals, batch_reports, _ = from_observation(obs, RefSlotConfig.for_grid(1, num_slots))
    assert isinstance(batch_reports[1]["r0c0"].stage, InvalidStage)
    assert batch_reports[0]["r0c4"].metrics.counterfactual_contribution is None
    assert batch_reports[0]["r0c3"].telemetry is None
    err, _ = _compare(obs, num_slots, compat)
    print(f"features S={num_slots} E={num_envs} compat={compat} edge max_abs_err={err:.3e}")
