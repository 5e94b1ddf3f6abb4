"""TrainingConfig (a tree of the parts' configs): presets, strict nested JSON, the flat upstream / pre-tree adapter,
the sections' agreement, CLI resolution."""

from __future__ import annotations

import dataclasses
import json

import pytest

from esper_jax.config import (
    FLAT_FIELDS,
    INERT_FIELDS,
    PRESETS,
    ConfigError,
    RunTelemetryConfig,
    TrainingConfig,
    from_flat_dict,
    load_dict,
    load_json,
    preset,
    to_dict,
)
from esper_jax.env import EnvConfig
from esper_jax.ppo import PPOConfig
from esper_jax.rollout import RolloutConfig

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


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def test_every_upstream_field_with_its_default():
    assert set(UPSTREAM_FIELDS) <= set(FLAT_FIELDS)
    cfg = TrainingConfig()
    assert from_flat_dict(UPSTREAM_FIELDS) == cfg  # upstream's defaults are the tree's defaults
    where = {  # each live upstream field's home in the tree
        "n_episodes": cfg.n_episodes, "n_envs": cfg.n_envs, "max_epochs": cfg.env.episode_length,
        "batch_size_per_env": cfg.env.host.batch_size, "lr": cfg.ppo.learning_rate, "clip_ratio": cfg.ppo.clip_ratio,
        "gamma": cfg.ppo.gamma, "gae_lambda": cfg.ppo.gae_lambda, "ppo_updates_per_batch": cfg.ppo.epochs,
        "entropy_coef": cfg.ppo.entropy_coef, "entropy_coef_start": cfg.ppo.entropy_coef_start,
        "entropy_coef_end": cfg.ppo.entropy_coef_end, "entropy_coef_min": cfg.ppo.entropy_coef_min,
        "entropy_anneal_episodes": cfg.ppo.entropy_anneal_steps, "slots": cfg.env.slots.slot_ids,
        "reward_mode": cfg.env.reward_mode, "seed": cfg.seed, "disable_pbrs": cfg.env.reward.disable_pbrs,
        "disable_terminal_reward": cfg.env.reward.disable_terminal_reward,
        "disable_anti_gaming": cfg.env.reward.disable_anti_gaming, "max_grad_norm": cfg.env.host.max_grad_norm,
        "lstm_hidden_dim": cfg.network.hidden_dim,
    }
    for name, value in where.items():
        assert value == UPSTREAM_FIELDS[name], name
    assert (cfg.env.max_seeds, cfg.env.gates, cfg.env.task, cfg.rollout.num_steps) == (0, "permissive", "cifar10", 150)


def test_telemetry_config_fields_and_name():
    t = RunTelemetryConfig()
    assert (t.level, t.tensorboard, t.plots, t.progress_bar) == ("normal", True, True, True)
    import esper_jax.config as cfg_mod

    assert not hasattr(cfg_mod, "TelemetryConfig")  # the run's RunTelemetryConfig must not clash with telemetry's name


def test_inert_fields_only_in_the_upstream_reader():
    tree = _leaves(TrainingConfig().to_dict())
    for f in INERT_FIELDS:
        if f.startswith("telemetry."):
            assert f not in tree
            from_flat_dict({"telemetry": {f.split(".", 1)[1]: 1 if "interval" in f or "epochs" in f else True}})
        else:
            assert f in FLAT_FIELDS and not any(leaf.endswith(f) for leaf in tree), f
    with pytest.raises(ConfigError, match="plateau_threshold"):
        load_dict({"n_envs": 2, "ppo": {"plateau_threshold": 0.4}})
    with pytest.raises(ConfigError, match="telemetry.weight_tracking"):
        from_flat_dict({"telemetry": {"weight_tracking": 1}})  # inert, still type-checked


def test_presets_keep_upstream_hyperparameters():
    assert PRESETS["default"] == TrainingConfig()
    c = preset("cifar10")
    assert (c.ppo.entropy_coef, c.env_kind, c.env.task) == (0.1, "host", "cifar10")
    assert (preset("digits").ppo.entropy_coef, preset("digits").env_kind, preset("digits").env.task) == (
        0.1, "host", "digits")
    assert (PRESETS["default"].env_kind, PRESETS["default"].env.task) == ("sim", "cifar10")
    assert from_flat_dict({"env": "host"}).env.task == "digits"
    d = preset("cifar10-deep")
    assert (d.ppo.entropy_coef, d.env_kind, d.env.task) == (0.08, "sim", "cifar10_deep")
    t = preset("tinystories")
    assert (t.ppo.entropy_coef, t.ppo.entropy_anneal_steps, t.env_kind, t.env.task) == (0.05, 3, "host", "tinystories")
    small = preset("tinystories-small")  # issue 19: the same hyperparameters on a transformer host a CPU steps
    assert (small.ppo.entropy_coef, small.env_kind, small.env.task, small.env.episode_length) == (
        0.05, "host", "tinystories_small", 50)
    assert small.rollout.mask_config.topology == "transformer"
    assert (t.env.lm.vocab_size, small.env.lm.vocab_size) == (256, None)  # byte tokens: the embedded corpus
    assert t.rollout.mask_config.topology == t.env.resolved_topology == "transformer"  # the masks offer the task's blueprints
    with pytest.raises(ConfigError, match="valid"):
        preset("nope")


def test_json_round_trip(tmp_path):
    base = from_flat_dict({"n_envs": 2, "slots": ["r0c0", "r0c2"], "matmul_dtype": "bfloat16"})
    cfg = dataclasses.replace(base, telemetry=RunTelemetryConfig(level="debug"))
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert load_json(path) == cfg
    for p in PRESETS.values():
        assert load_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_json_unknown_key_names_it_and_lists_valid(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_dict({"n_envs": 2, "bogus_key": 1})
    assert "bogus_key" in str(exc.value) and "n_episodes" in str(exc.value)
    with pytest.raises(ConfigError, match="telemetry.*nope"):
        load_dict({"telemetry": {"nope": 1}})
    with pytest.raises(ConfigError, match=r"ppo\.clip_ratoi.*clip_ratio"):
        load_dict({"ppo": {"clip_ratoi": 0.1}})
    with pytest.raises(ConfigError, match=r"env\.host\.batch_sise.*batch_size"):
        load_dict({"env": {"host": {"batch_sise": 8}}})
    with pytest.raises(ConfigError) as exc:
        from_flat_dict({"lr": 1e-3, "bogus_key": 1})  # an upstream file with a key upstream never had
    assert "bogus_key" in str(exc.value) and "n_episodes" in str(exc.value)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"n_envs": "4"}, "n_envs"),
        ({"n_envs": 2.0}, "n_envs"),
        ({"ppo": {"clip_value": 1}}, r"ppo\.clip_value"),
        ({"ppo": {"learning_rate": "fast"}}, r"ppo\.learning_rate"),
        ({"env": {"slots": {"slot_ids": "r0c1"}}}, r"env\.slots\.slot_ids"),
        ({"telemetry": {"level": "loud"}}, r"telemetry\.level"),
        ({"env_kind": "gym"}, "env_kind"),
        ({"amp": 1}, "amp"),
        ({"lr": "fast"}, "lr"),
        ({"slots": "r0c1"}, "slots"),
        ({"amp_dtype": "fp8"}, "amp_dtype"),
        ({"env": "gym"}, "env"),
    ],
)
def test_json_wrong_type(data, key):
    with pytest.raises(ConfigError, match=key):
        load_dict(data)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"n_envs": 0}, "n_envs"),
        ({"ppo": {"gamma": 1.5}}, r"ppo\.gamma must be in \(0, 1\], got 1\.5"),
        ({"ppo": {"learning_rate": 0.0}}, r"ppo\.learning_rate must be > 0"),
        ({"ppo": {"entropy_coef": -1.0}}, r"ppo\.entropy_coef must be >= 0"),
        ({"rollout": {"num_steps": 10}}, r"rollout\.num_steps"),
        ({"network": {"hidden_dim": 33}}, r"network\.hidden_dim must be even"),
        ({"env": {"host": {"host_momentum": 1.0}}}, r"env\.host\.host_momentum must be in \[0, 1\)"),
        ({"gamma": 1.5}, "gamma"),
        ({"chunk_length": 10}, "chunk_length"),
        ({"max_seeds": 0}, "max_seeds"),
        ({"slots": []}, "slots"),
        ({"reward_mode_per_env": ["shaped"]}, "reward_mode_per_env"),
        ({"lstm_hidden_dim": 33}, "lstm_hidden_dim"),
    ],
)
def test_json_out_of_range(data, key):
    with pytest.raises(ConfigError, match=key):
        load_dict(data)


def test_sections_must_agree():
    """Values two parts share live in each and must agree; nothing is copied behind the user's back."""
    cfg = TrainingConfig()
    with pytest.raises(ConfigError, match=r"env\.compat, ppo\.compat and rollout\.compat must agree"):
        dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, compat="upstream"))
    upstream = dataclasses.replace(
        cfg, env=dataclasses.replace(cfg.env, compat="upstream"), ppo=dataclasses.replace(cfg.ppo, compat="upstream"),
        rollout=dataclasses.replace(cfg.rollout, compat="upstream"))
    assert upstream.compat == "upstream" and from_flat_dict({"compat": "upstream"}) == upstream
    with pytest.raises(ConfigError, match=r"rollout\.num_steps \(150\) must equal env\.episode_length \(20\)"):
        dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, episode_length=20))
    with pytest.raises(ConfigError, match=r"network\.num_slots \(1\) must equal the number of env\.slots"):
        load_dict({"env": {"slots": {"slot_ids": ["r0c0", "r0c1"]}}})
    with pytest.raises(ConfigError, match=r"rollout\.mask_config .*max_seeds"):
        load_dict({"env": {"max_seeds": 2}})
    assert load_dict({"env": {"max_seeds": 2}, "rollout": {"mask_config": {"max_seeds": 2}}}).env.max_seeds == 2
    with pytest.raises(ConfigError, match=r"ppo\.gamma .* must equal env\.reward\.gamma"):
        dataclasses.replace(cfg, ppo=PPOConfig(gamma=0.9))
    with pytest.raises(ConfigError, match="n_envs must be an integer"):
        TrainingConfig(n_envs=True)
    assert isinstance(TrainingConfig(rollout=RolloutConfig(num_steps=150)).env, EnvConfig)


def test_json_top_level_must_be_object(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="object"):
        load_json(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="JSON"):
        load_json(path)


def test_entropy_anneal_rounds_alias():
    assert from_flat_dict({"entropy_anneal_rounds": 8}).ppo.entropy_anneal_steps == 2  # 8 episodes / 4 envs
    with pytest.raises(ConfigError, match="both"):
        from_flat_dict({"entropy_anneal_rounds": 8, "entropy_anneal_episodes": 8})


def test_json_keys_override_a_base():
    cfg = load_dict({"n_envs": 2}, base=preset("cifar10"))
    assert (cfg.n_envs, cfg.ppo.entropy_coef) == (2, 0.1)
    cfg = load_dict({"ppo": {"clip_ratio": 0.3}}, base=preset("cifar10"))
    assert (cfg.ppo.clip_ratio, cfg.ppo.entropy_coef, cfg.env.task) == (0.3, 0.1, "cifar10")
    with pytest.raises(ConfigError, match="flat"):
        load_dict({"lr": 1e-3}, base=preset("cifar10"))


def test_use_telemetry_false_turns_level_off():
    assert from_flat_dict({"use_telemetry": False}).telemetry.level == "off"


def test_budget_arithmetic():
    cfg = from_flat_dict({"n_episodes": 10, "n_envs": 4, "iterations_per_interval": 2, "entropy_anneal_episodes": 9})
    assert (cfg.num_iterations, cfg.num_intervals) == (3, 2)
    assert [cfg.interval_iterations(i) for i in range(2)] == [2, 1]
    assert (cfg.ppo.entropy_anneal_steps, cfg.ppo.learning_rate, cfg.ppo.epochs) == (3, 3e-4, 1)


def test_flat_fields_reach_their_sections():
    cfg = from_flat_dict({"slots": ["r0c0", "r0c1"], "max_epochs": 30, "permissive_gates": False,
                          "lstm_hidden_dim": 64, "policy_max_grad_norm": 0.7, "max_grad_norm": 0.3})
    env = cfg.env
    assert (env.num_slots, env.episode_length, env.gates, env.task) == (2, 30, "strict", "cifar10")
    assert (cfg.network.num_slots, cfg.network.hidden_dim, cfg.rollout.num_steps) == (2, 64, 30)
    assert (cfg.ppo.max_grad_norm, cfg.env.host.max_grad_norm) == (0.7, 0.3)  # policy vs host clipping


# ---- CLI ------------------------------------------------------------------------------------------------------


def test_cli_preset_config_and_overrides(tmp_path):
    from esper_jax.train import parse_args

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"n_envs": 2, "ppo": {"learning_rate": 1e-3}}))
    args = parse_args(["--config", str(path), "cifar10", "--ppo.learning-rate", "5e-4", "--seed", "7",
                       "--telemetry.level", "debug", "--debug-nans", "--out", str(tmp_path / "run")])
    cfg = args.config
    assert (cfg.ppo.entropy_coef, cfg.n_envs, cfg.ppo.learning_rate, cfg.seed, cfg.telemetry.level) == (
        0.1, 2, 5e-4, 7, "debug")
    assert args.debug_nans and args.out == tmp_path / "run" and args.preset == "cifar10"
    args = parse_args(["--network.matmul-dtype", "bfloat16", "--env.host.batch-size", "8", "--ppo.clip-ratio", "0.3"])
    assert args.preset == "default" and args.config.ppo.clip_ratio == 0.3 and args.config.env.host.batch_size == 8
    assert args.config.network.resolved_matmul_dtype.__name__ == "bfloat16"


def test_cli_shared_values_in_one_flag():
    from esper_jax.train import parse_args

    cfg = parse_args(["tinystories", "--compat", "upstream", "--episode-length", "20"]).config
    assert (cfg.env.compat, cfg.ppo.compat, cfg.rollout.compat) == ("upstream",) * 3
    assert (cfg.env.episode_length, cfg.rollout.num_steps, cfg.ppo.entropy_anneal_steps) == (20, 20, 3)
    assert parse_args([]).config == TrainingConfig()  # without them the sections keep their own values
    with pytest.raises(ConfigError, match=r"--compat .* not both"):
        parse_args(["--compat", "upstream", "--ppo.compat", "fixed"])  # the preset's value, still refused
    with pytest.raises(ConfigError, match=r"--episode-length .*--rollout\.num-steps"):
        parse_args(["--episode-length", "20", "--rollout.num_steps=30"])
    with pytest.raises(ConfigError, match=r"rollout\.num_steps \(150\) must equal env\.episode_length \(20\)"):
        parse_args(["--env.episode-length", "20"])


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
    with pytest.raises(ConfigError, match="cifar10_deep.*valid host tasks.*digits"):
        TrainingConfig(env_kind="host", env=dataclasses.replace(TrainingConfig().env, task="cifar10_deep"))
    assert TrainingConfig().env.task == "cifar10"
    from esper_jax.train import main

    out = tmp_path / "run"  # cifar10 has data only from local files: without --env.host.data-dir, an error line
    assert main(["--env-kind", "host", "--env.task", "cifar10", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--env.host.data-dir" in err and "cifar-10-python.tar.gz" in err
    assert not out.exists()


def test_host_fields_reach_the_host_env_config():
    env = from_flat_dict({"env": "host", "batch_size_per_env": 32, "max_grad_norm": 0.5}).env
    assert (env.task, env.host.batch_size, env.host.max_grad_norm, env.host_batch_size) == ("digits", 32, 0.5, 32)
    assert preset("digits").env.host_batch_size == 16  # the digits task's minibatch
    assert preset("cifar10").env.host_batch_size == 512  # upstream's per-env batch on cifar10


def test_cli_help_documents_everything(capsys):
    from esper_jax.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--config", "--seed", "--out", "--resume", "--env-kind", "--debug-nans", "--n-episodes",
                 "--network.hidden-dim", "--telemetry.level", "--max-intervals", "--ppo.clip-ratio",
                 "--env.host.batch-size", "--env.episode-length", "--network.matmul-dtype", "cifar10-deep",
                 "--compat", "--episode-length",
                 "ppo options", "env.host options"):
        assert flag in text, flag
    assert to_dict(TrainingConfig())["env"]["host"]["max_grad_norm"] == 1.0
