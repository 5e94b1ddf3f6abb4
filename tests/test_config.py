"""TrainingConfig / RunTelemetryConfig: upstream fields and presets, strict JSON, CLI resolution."""

from __future__ import annotations

import dataclasses
import json

import pytest

from esper_jax.config import (
    INERT_FIELDS,
    PRESETS,
    ConfigError,
    RunTelemetryConfig,
    TrainingConfig,
    preset,
)

UPSTREAM_FIELDS = {
    "n_episodes": 100, "n_envs": 4, "max_epochs": 150, "batch_size_per_env": None, "lr": 3e-4, "clip_ratio": 0.2,
    "gamma": 0.995, "gae_lambda": 0.98, "ppo_updates_per_batch": 1, "entropy_coef": 0.05,
    "entropy_coef_start": None, "entropy_coef_end": None, "entropy_coef_min": 0.01, "adaptive_entropy_floor": False,
    "entropy_anneal_episodes": 0, "use_telemetry": True, "amp": False, "amp_dtype": "auto",
    "compile_mode": "default", "chunk_length": None, "slots": ("r0c1",), "max_seeds": None, "reward_mode": "shaped",
    "reward_family": "contribution", "param_budget": 500_000, "param_penalty_weight": 0.1, "sparse_reward_scale": 1.0,
    "reward_mode_per_env": None, "plateau_threshold": 0.5, "improvement_threshold": 2.0,
    "gradient_telemetry_stride": 10, "seed": 42, "task": None, "permissive_gates": True, "disable_pbrs": False,
    "disable_terminal_reward": False, "disable_anti_gaming": False, "max_grad_norm": 1.0, "lstm_hidden_dim": 512,
}


def test_every_upstream_field_with_its_default():
    cfg = TrainingConfig()
    for name, value in UPSTREAM_FIELDS.items():
        assert getattr(cfg, name) == value, name


def test_telemetry_config_fields_and_name():
    t = RunTelemetryConfig()
    assert (t.level, t.gradient_check_interval, t.memory_check_interval, t.weight_track_interval,
            t.anomaly_escalation_epochs, t.auto_escalate_on_anomaly) == ("normal", 1, 5, 10, 5, True)
    import esper_jax.config as cfg_mod

    assert not hasattr(cfg_mod, "TelemetryConfig")  # seed 004 TC-01: no name clash


def test_inert_fields_exist():
    names = {f.name for f in dataclasses.fields(TrainingConfig)}
    tnames = {f.name for f in dataclasses.fields(RunTelemetryConfig)}
    for f in INERT_FIELDS:
        if f.startswith("telemetry."):
            assert f.split(".", 1)[1] in tnames
        else:
            assert f in names


def test_presets_keep_upstream_hyperparameters():
    assert PRESETS["default"] == TrainingConfig()
    c = preset("cifar10")
    assert (c.entropy_coef, c.plateau_threshold, c.env, c.env_task) == (0.1, 0.4, "host", "digits")
    assert (PRESETS["default"].env, PRESETS["default"].env_task) == ("sim", "cifar10")
    assert TrainingConfig(env="host").env_task == "digits"
    d = preset("cifar10-deep")
    assert (d.entropy_coef, d.plateau_threshold, d.env, d.env_task) == (0.08, 0.35, "sim", "cifar10_deep")
    t = preset("tinystories")
    assert (t.entropy_coef, t.entropy_anneal_episodes, t.plateau_threshold, t.improvement_threshold,
            t.sparse_reward_scale, t.env, t.env_task) == (0.05, 10, 0.3, 1.5, 0.5, "sim", "tinystories")
    with pytest.raises(ConfigError, match="valid"):
        preset("nope")


def test_json_round_trip(tmp_path):
    cfg = TrainingConfig(n_envs=2, slots=("r0c0", "r0c2"), telemetry=RunTelemetryConfig(level="debug"))
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert TrainingConfig.from_json_path(path) == cfg


def test_json_unknown_key_names_it_and_lists_valid(tmp_path):
    with pytest.raises(ConfigError) as exc:
        TrainingConfig.from_dict({"n_envs": 2, "bogus_key": 1})
    assert "bogus_key" in str(exc.value) and "n_episodes" in str(exc.value)
    with pytest.raises(ConfigError, match="telemetry.*nope"):
        TrainingConfig.from_dict({"telemetry": {"nope": 1}})


@pytest.mark.parametrize(
    "data, key",
    [
        ({"n_envs": "4"}, "n_envs"),
        ({"n_envs": 2.0}, "n_envs"),
        ({"amp": 1}, "amp"),
        ({"lr": "fast"}, "lr"),
        ({"slots": "r0c1"}, "slots"),
        ({"amp_dtype": "fp8"}, "amp_dtype"),
        ({"env": "gym"}, "env"),
    ],
)
def test_json_wrong_type(data, key):
    with pytest.raises(ConfigError, match=key):
        TrainingConfig.from_dict(data)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"n_envs": 0}, "n_envs"),
        ({"gamma": 1.5}, "gamma"),
        ({"lr": 0.0}, "lr"),
        ({"entropy_coef": -1.0}, "entropy_coef"),
        ({"chunk_length": 10}, "chunk_length"),
        ({"max_seeds": 0}, "max_seeds"),
        ({"slots": []}, "slots"),
        ({"reward_mode_per_env": ["shaped"]}, "reward_mode_per_env"),
        ({"lstm_hidden_dim": 33}, "lstm_hidden_dim"),
    ],
)
def test_json_out_of_range(data, key):
    with pytest.raises(ConfigError, match=key):
        TrainingConfig.from_dict(data)


def test_json_top_level_must_be_object(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="object"):
        TrainingConfig.from_json_path(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="JSON"):
        TrainingConfig.from_json_path(path)


def test_entropy_anneal_rounds_alias():
    assert TrainingConfig.from_dict({"entropy_anneal_rounds": 8}).entropy_anneal_episodes == 8
    with pytest.raises(ConfigError, match="both"):
        TrainingConfig.from_dict({"entropy_anneal_rounds": 8, "entropy_anneal_episodes": 8})


def test_json_keys_override_a_base():
    cfg = TrainingConfig.from_dict({"n_envs": 2}, base=preset("cifar10"))
    assert (cfg.n_envs, cfg.entropy_coef) == (2, 0.1)


def test_use_telemetry_false_turns_level_off():
    assert TrainingConfig(use_telemetry=False).telemetry.level == "off"


def test_budget_arithmetic():
    cfg = TrainingConfig(n_episodes=10, n_envs=4, iterations_per_interval=2, entropy_anneal_episodes=9)
    assert (cfg.num_iterations, cfg.num_intervals) == (3, 2)
    assert [cfg.interval_iterations(i) for i in range(2)] == [2, 1]
    assert cfg.entropy_anneal_steps == 3
    ppo = cfg.ppo_config()
    assert (ppo.entropy_anneal_steps, ppo.learning_rate, ppo.epochs) == (3, cfg.lr, 1)


def test_builders():
    cfg = TrainingConfig(slots=("r0c0", "r0c1"), max_epochs=30, permissive_gates=False, lstm_hidden_dim=64)
    env = cfg.env_config()
    assert (env.num_slots, env.episode_length, env.gates, env.task) == (2, 30, "strict", "cifar10")
    net = cfg.network_config()
    assert (net.num_slots, net.hidden_dim) == (2, 64)


# ---- CLI ------------------------------------------------------------------------------------------------------


def test_cli_preset_config_and_overrides(tmp_path):
    from esper_jax.train import parse_args

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"n_envs": 2, "lr": 1e-3}))
    args = parse_args(["--preset", "cifar10", "--config", str(path), "--lr", "5e-4", "--seed", "7",
                       "--telemetry.level", "debug", "--debug-nans", "--out", str(tmp_path / "run")])
    cfg = args.train
    assert (cfg.entropy_coef, cfg.n_envs, cfg.lr, cfg.seed, cfg.telemetry.level) == (0.1, 2, 5e-4, 7, "debug")
    assert args.debug_nans and args.out == tmp_path / "run" and args.preset == "cifar10"


def test_cli_bad_config_file_starts_nothing(tmp_path, capsys):
    from esper_jax.train import main

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"n_envz": 2}))
    out = tmp_path / "run"
    assert main(["--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "n_envz" in err and "n_envs" in err
    assert not out.exists()


def test_host_env_refuses_a_task_without_data(tmp_path, capsys):
    with pytest.raises(ConfigError, match="cifar10.*valid host tasks.*digits"):
        TrainingConfig(env="host", task="cifar10")
    assert TrainingConfig(task="cifar10").env_task == "cifar10"
    from esper_jax.train import main

    out = tmp_path / "run"
    assert main(["--env", "host", "--task", "cifar10", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "digits" in err and "sim" in err
    assert not out.exists()


def test_host_fields_reach_the_host_env_config():
    env = TrainingConfig(env="host", batch_size_per_env=32, max_grad_norm=0.5).env_config()
    assert (env.task, env.host.batch_size, env.host.max_grad_norm, env.host_batch_size) == ("digits", 32, 0.5, 32)
    assert TrainingConfig(env="host").env_config().host_batch_size == 16  # the digits task's minibatch


def test_cli_help_documents_everything(capsys):
    from esper_jax.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--preset", "--config", "--seed", "--out", "--resume", "--env", "--debug-nans", "--n-episodes",
                 "--lstm-hidden-dim", "--telemetry.level", "--max-intervals"):
        assert flag in text, flag
