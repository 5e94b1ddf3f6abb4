"""The component configs keep every field exactly as given: ``__post_init__`` validates, it never rewrites.

Derived values are properties (``EnvConfig.resolved_topology``, ``NetworkConfig.resolved_dtype``,
``PPOConfig.head_entropy_coefs``); spellings that need canonicalising go through a named constructor
(``SlotConfig.of``, ``PPOConfig.head_weights``) or are refused, naming the field and the canonical form.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax import masks, ppo
from esper_jax.config import TrainingConfig, load_dict, to_dict
from esper_jax.env import EnvConfig
from esper_jax.network import NetworkConfig
from esper_jax.slots import SlotConfig


def _fields(cfg) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


@pytest.mark.parametrize("cfg, given", [
    (EnvConfig(), {"topology": None}),
    (EnvConfig(topology="cnn"), {"topology": "cnn"}),
    (NetworkConfig(dtype=jnp.float64), {"dtype": jnp.float64, "matmul_dtype": None}),
    (NetworkConfig(dtype="float32", matmul_dtype="bfloat16"), {"dtype": "float32", "matmul_dtype": "bfloat16"}),
    (ppo.PPOConfig(entropy_coef_per_head=(("op", 2.0),)), {"entropy_coef_per_head": (("op", 2.0),)}),
    (masks.MaskConfig(max_seeds=3, allow_governor_override=True), {"max_seeds": 3, "allow_governor_override": True}),
    (SlotConfig(("r0c0", "r0c2")), {"slot_ids": ("r0c0", "r0c2")}),
])
def test_fields_are_kept_as_given(cfg, given):
    fields = _fields(cfg)
    for name, value in given.items():
        assert fields[name] is value or (fields[name] == value and type(fields[name]) is type(value)), name


def test_derived_values_are_properties():
    assert EnvConfig().resolved_topology == "cnn" and EnvConfig(task="tinystories").resolved_topology == "transformer"
    net = NetworkConfig(dtype=jnp.float64)
    assert net.resolved_dtype is np.float64 and net.resolved_matmul_dtype is np.float64
    assert NetworkConfig(matmul_dtype="bfloat16").resolved_matmul_dtype is jnp.bfloat16.dtype.type
    # every spelling of one dtype is one config (one jit cache entry)
    assert NetworkConfig(dtype="float32", matmul_dtype=np.float32) == NetworkConfig()
    assert hash(NetworkConfig(dtype=jnp.float32)) == hash(NetworkConfig(dtype="float32"))
    assert NetworkConfig(dtype="float64") != NetworkConfig()
    weights = ppo.PPOConfig(entropy_coef_per_head=(("blueprint", 0.5),)).head_entropy_coefs
    assert weights == {h: (0.5 if h == "blueprint" else 1.0) for h in weights} and len(weights) == 8


def test_canonicalising_constructors():
    assert SlotConfig.of(["late", "r0c0"]).slot_ids == ("r0c0", "r0c2")
    assert ppo.PPOConfig.head_weights({"op": 2.0, "slot": 0.5}) == (("slot", 0.5), ("op", 2.0))  # HEAD_NAMES order


@pytest.mark.parametrize("build, error, fragment", [
    (lambda: SlotConfig(("r0c2", "r0c0")), ValueError, r"network order .*\('r0c0', 'r0c2'\)"),
    (lambda: SlotConfig(("early",)), ValueError, r"SlotConfig.slot_ids .*\('r0c0',\)"),
    (lambda: SlotConfig(["r0c0"]), TypeError, "SlotConfig.slot_ids must be a tuple"),
    (lambda: ppo.PPOConfig(entropy_coef_per_head={"op": 2.0}), ValueError, "entropy_coef_per_head .*head_weights"),
    (lambda: ppo.PPOConfig(entropy_coef_per_head=(("op", 1.0), ("op", 2.0))), ValueError, "each head once"),
    (lambda: masks.MaskConfig(max_seeds=np.int64(3)), TypeError, "MaskConfig.max_seeds"),
    (lambda: masks.MaskConfig(allow_governor_override=1), TypeError, "MaskConfig.allow_governor_override"),
    (lambda: NetworkConfig(dtype="int32"), ValueError, "NetworkConfig.dtype must be a float dtype"),
    (lambda: EnvConfig(topology="rnn"), ValueError, "EnvConfig.topology"),
])
def test_non_canonical_values_are_refused_naming_the_field(build, error, fragment):
    with pytest.raises(error, match=fragment):
        build()


def test_json_round_trip_keeps_the_tree():
    cfg = TrainingConfig(
        network=dataclasses.replace(TrainingConfig().network, matmul_dtype="bfloat16"),
        ppo=dataclasses.replace(TrainingConfig().ppo, entropy_coef_per_head=(("style", 0.7), ("op", 1.5))),
    )
    data = to_dict(cfg)
    assert data["ppo"]["entropy_coef_per_head"] == {"style": 0.7, "op": 1.5}
    assert data["env"]["topology"] is None and data["network"]["matmul_dtype"] == "bfloat16"
    # config.json is written with sorted keys: the reader puts the heads back in HEAD_NAMES order
    back = load_dict(dict(data, ppo=dict(data["ppo"], entropy_coef_per_head={"op": 1.5, "style": 0.7})))
    assert back == cfg and back.ppo.entropy_coef_per_head == (("style", 0.7), ("op", 1.5))
