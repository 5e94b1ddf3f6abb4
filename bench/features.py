"""features: Observation → features + blueprint indices + masks, for a batch of envs.

esper_jax: one jitted call of ``features.extract`` (validation off: a hot path whose inputs are known good) and
``masks.compute``, vmapped over envs. torch reference: upstream's per-env × per-slot Python loops
(``batch_obs_to_features`` + ``compute_batch_masks``). The conversion of the Observation into upstream's Python
objects (``from_observation``, ``slot_states_from_observation``) happens once, outside the timed region: upstream
receives those objects from its environments, it does not build them from arrays.
"""

from __future__ import annotations

import sys

import jax

from bench import common
from bench.common import TORCH, Measurement, Options
from esper_jax import features as features_mod
from esper_jax import masks as masks_mod
from esper_jax.testing import random_observation
from reference_torch.leyline import SlotConfig as RefSlotConfig

NAME = "features"
SLOTS = (3, 5, 10, 25)
ENVS = (4, 64, 1024, 4096)
COMPAT = "fixed"  # the training default; both implementations support it and cost the same in either mode
MASK_CONFIG = masks_mod.MaskConfig()


def _jax_observe(obs):
    return features_mod.extract(obs, compat=COMPAT, validate=False), masks_mod.compute(obs, MASK_CONFIG)


_jax_observe_jit = jax.jit(_jax_observe)


def _measure_jax(obs, num_envs: int, num_slots: int, options: Options) -> Measurement:
    return common.jax_row(
        NAME,
        _jax_observe_jit,
        (obs,),
        options,
        work=num_envs,
        unit="env",
        envs=num_envs,
        slots=num_slots,
        note="jit(extract + masks.compute), validate=False",
    )


def _measure_torch(torch, obs, num_envs: int, num_slots: int, options: Options) -> Measurement:
    from reference_torch.features import batch_obs_to_features
    from reference_torch.masks import compute_batch_masks, slot_states_from_observation
    from reference_torch.observation import from_observation

    slot_config = RefSlotConfig.for_grid(1, num_slots)
    signals, reports, env_states = from_observation(obs, slot_config)  # conversion: not timed
    slot_states, enabled, total_seeds = slot_states_from_observation(obs, slot_config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def call():
        feats = batch_obs_to_features(signals, reports, env_states, slot_config, device, compat=COMPAT)
        masks = compute_batch_masks(slot_states, enabled, total_seeds, slot_config=slot_config, device=device)
        return feats, masks

    timing = common.time_torch(call, options, torch)
    return common.measured(
        NAME,
        TORCH,
        timing,
        work=num_envs,
        unit="env",
        device=common.torch_device_name(torch),
        matmul_precision="n/a",
        envs=num_envs,
        slots=num_slots,
        note="upstream loops; from_observation conversion excluded",
    )


def run(options: Options) -> list[Measurement]:
    torch = common.setup_torch()
    slots = SLOTS[:1] if options.quick else SLOTS
    envs, dropped = common.within(ENVS[:1] if options.quick else ENVS, options.env_cap(NAME))
    rows: list[Measurement] = []
    for num_slots in slots:
        for num_envs in envs:
            obs = random_observation(1000 + num_envs + num_slots, num_slots, (num_envs,))
            jax_row = _measure_jax(obs, num_envs, num_slots, options)
            if torch is None:
                torch_row = common.skipped(NAME, TORCH, "torch is not installed", envs=num_envs, slots=num_slots)
            else:
                torch_row = _measure_torch(torch, obs, num_envs, num_slots, options)
                common.pair_ratio(jax_row, torch_row)
            rows += [common.emit(jax_row), common.emit(torch_row)]
        for num_envs in dropped:
            reason = f"envs > cap {options.env_cap(NAME)} (--max-envs/--cap)"
            rows.append(common.emit(common.skipped(NAME, "both", reason, envs=num_envs, slots=num_slots)))
    return rows


if __name__ == "__main__":
    from bench.__main__ import main

    main([*sys.argv[1:], "--only", NAME])
