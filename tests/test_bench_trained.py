"""``bench/trained.py``: a trained policy as a controller of bench.controllers (fresh params, hand-built
observations: no env compile, no checkpoint)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import controllers, trained
from esper_jax import masks, ppo
from esper_jax.config import TrainingConfig, load_dict, to_dict
from esper_jax.contracts import HEAD_NAMES, LifecycleOp, SeedStage
from tests.mask_builders import make_obs


def host_config(compat: str = "fixed") -> TrainingConfig:
    base = to_dict(TrainingConfig())
    slots = ["r0c0", "r0c1", "r0c2"]
    return load_dict({
        "env_kind": "host", "env": {**base["env"], "task": "digits", "compat": compat,
                                    "slots": {**base["env"]["slots"], "slot_ids": slots}},
        "network": {**base["network"], "num_slots": 3, "hidden_dim": 32, "feature_dim": 32},  # small: fast compile
        "ppo": {**base["ppo"], "compat": compat}, "rollout": {**base["rollout"], "compat": compat},
    })


def fresh_policy(compat: str = "fixed") -> trained.TrainedPolicy:
    cfg = host_config(compat)
    state = ppo.create_train_state(jax.random.PRNGKey(0), cfg.ppo, cfg.network)
    return trained.TrainedPolicy(run_dir=Path("nowhere"), config=cfg, params=state.params,
                                 obs_stats=state.obs_stats, episodes_trained=0)


def test_the_trained_controller_acts_within_the_masks_sampled_and_greedy():
    pol = fresh_policy()
    act = jax.jit(trained.act_fn(pol))
    obs = make_obs([SeedStage.HOLDING, None, SeedStage.BLENDING])
    allowed = masks.compute_env(obs)
    carry = trained.initial_carry(pol)
    greedy = []
    for i, key in enumerate(jax.random.split(jax.random.PRNGKey(1), 8)):
        index = jnp.int32(i % 2)
        new_carry, a = act((index, pol.params, pol.obs_stats), carry, obs, key)
        assert new_carry.h.shape == carry.h.shape and not np.allclose(new_carry.h, carry.h)  # the LSTM steps
        for h in HEAD_NAMES:
            v = int(getattr(a, h))
            if h != "style" or int(a.op) in (LifecycleOp.GERMINATE, LifecycleOp.SET_ALPHA_TARGET):
                assert bool(getattr(allowed, h)[v]), (h, v)
        if i % 2:
            greedy.append(tuple(int(getattr(a, h)) for h in HEAD_NAMES))
    assert len(set(greedy)) == 1  # argmax: the same action from the same carry and observation, whatever the key


def test_a_policy_for_another_mode_or_slot_count_is_refused():
    pol = fresh_policy("upstream")
    trained.check_fits(pol, "upstream", 3, "digits")
    with pytest.raises(ValueError, match="compat 'upstream'"):
        trained.check_fits(pol, "fixed", 3, "digits")
    with pytest.raises(ValueError, match="3 slots"):
        trained.check_fits(pol, "upstream", 2, "digits")
    sim = dataclasses.replace(pol, config=dataclasses.replace(pol.config, env_kind="sim"))
    with pytest.raises(ValueError, match="env 'sim'"):
        trained.check_fits(sim, "upstream", 3, "digits")


def test_policy_flag_is_checked_before_anything_runs(tmp_path):
    with pytest.raises(SystemExit):
        controllers.main(["--compat", "fixed", "--policy", f"upstream={tmp_path}", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        controllers.main(["--compat", "fixed", "--policy", f"fixed={tmp_path}", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # trains a tiny simulator run (one compile of the trainer's interval)
def test_load_restores_the_newest_checkpoint_of_a_run(tmp_path):
    from esper_jax import train as train_mod
    from esper_jax.config import CheckpointConfig, RunTelemetryConfig
    from esper_jax.contracts import SlotConfig
    from esper_jax.env import EnvConfig
    from esper_jax.network import NetworkConfig
    from esper_jax.rollout import RolloutConfig

    cfg = TrainingConfig(
        env_kind="sim", n_episodes=4, n_envs=2, iterations_per_interval=1, eval_episodes=1, seed=5,
        env=EnvConfig(slots=SlotConfig(("r0c1",)), episode_length=10), rollout=RolloutConfig(num_steps=10),
        network=NetworkConfig(num_slots=1, hidden_dim=16, feature_dim=16), checkpoints=CheckpointConfig(every=1),
        telemetry=RunTelemetryConfig(progress_bar=False, tensorboard=False, plots=False),
    )
    result = train_mod.train(cfg, tmp_path / "run", evaluate=False)
    pol = trained.load(tmp_path / "run")
    assert pol.episodes_trained == 4 and pol.compat == cfg.compat
    for a, b in zip(jax.tree.leaves(pol.params), jax.tree.leaves(result.state.train.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="env 'sim'"):  # a simulator policy does not play the host-env benchmark
        trained.check_fits(pol, cfg.compat, 1, "digits")
