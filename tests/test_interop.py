"""esper-lite state_dict ⇄ Flax params: exact round trips, upstream key names/order, clear key errors. No torch."""

import jax
import numpy as np
import pytest

from esper_jax import interop
from esper_jax import policy as P
from esper_jax.network import NetworkConfig, param_count
from tests.conftest import NET_2_SLOTS_NARROW as CFG


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(np.asarray, P.init(jax.random.key(0), CFG))


def test_upstream_key_names_and_order(params):
    sd = interop.torch_state_dict_from_params(params, CFG)
    keys = list(sd)
    assert keys[:4] == ["feature_net.0.weight", "feature_net.0.bias", "feature_net.1.weight", "feature_net.1.bias"]
    assert keys[4:8] == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0"]
    assert keys.index("op_head.2.bias") + 1 == keys.index("blueprint_embedding._null_idx")
    assert keys[-12:-10] == ["blueprint_embedding._null_idx", "blueprint_embedding.embedding.weight"]
    assert keys[-4:] == ["value_head.0.weight", "value_head.0.bias", "value_head.2.weight", "value_head.2.bias"]
    null = sd["blueprint_embedding._null_idx"]
    assert null.dtype == np.int64 and null.shape == () and int(null) == 13
    assert sd["feature_net.0.weight"].shape == (32, CFG.input_dim)
    assert sd["lstm.weight_ih_l0"].shape == (64, 32) and sd["value_head.0.weight"].shape == (8, 22)
    assert sum(v.size for k, v in sd.items() if k != "blueprint_embedding._null_idx") == param_count(params)
    np.testing.assert_array_equal(sd["lstm.weight_hh_l0"], params["lstm"]["kernel_hh_l0"].T)
    assert all(v.flags.writeable for v in sd.values())


def test_round_trip_is_bitwise(params):
    sd = interop.torch_state_dict_from_params(params, CFG)
    back = interop.params_from_torch_state_dict(sd)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    sd2 = interop.torch_state_dict_from_params(back, CFG)
    assert list(sd2) == list(sd) and all(sd[k].tobytes() == sd2[k].tobytes() for k in sd)


def test_infers_config(params):
    sd = interop.torch_state_dict_from_params(params, CFG)
    assert interop.infer_config(sd) == CFG
    big = NetworkConfig(num_slots=25, feature_dim=8, hidden_dim=4, lstm_layers=2)
    shapes = interop.expected_shapes(big)
    fake = {k: (np.zeros(s, np.float64) if k != "blueprint_embedding._null_idx" else np.array(13)) for k, s in shapes.items()}
    assert interop.infer_config(fake) == NetworkConfig(num_slots=25, feature_dim=8, hidden_dim=4, lstm_layers=2, dtype=np.float64)


class _TensorLike:
    """Stands in for a torch tensor: only ``.numpy()``."""

    def __init__(self, array):
        self._array = array

    def numpy(self):
        return self._array


def test_accepts_tensor_like_values(params):
    sd = {k: _TensorLike(v) for k, v in interop.torch_state_dict_from_params(params, CFG).items()}
    back = interop.params_from_torch_state_dict(sd, CFG)
    np.testing.assert_array_equal(back["slot_head"]["l2"]["kernel"], params["slot_head"]["l2"]["kernel"])


def test_missing_key_names_key_and_shape(params):
    sd = interop.torch_state_dict_from_params(params, CFG)
    del sd["lstm.bias_hh_l0"]
    with pytest.raises(KeyError, match=r"lstm\.bias_hh_l0.*\(64,\)"):
        interop.params_from_torch_state_dict(sd, CFG)


def test_extra_key_named(params):
    sd = interop.torch_state_dict_from_params(params, CFG)
    sd["contribution_predictor.0.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(KeyError, match="contribution_predictor"):
        interop.params_from_torch_state_dict(sd, CFG)


def test_misshaped_key_names_key_and_expected_shape(params):
    sd = interop.torch_state_dict_from_params(params, CFG)
    sd["slot_head.2.weight"] = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match=r"slot_head\.2\.weight.*\(2, 8\).*\(3, 8\)"):
        interop.params_from_torch_state_dict(sd, CFG)
    sd = interop.torch_state_dict_from_params(params, CFG)
    sd["blueprint_embedding._null_idx"] = np.array(12, np.int64)
    with pytest.raises(ValueError, match="_null_idx"):
        interop.params_from_torch_state_dict(sd, CFG)


def test_bad_dtypes_values_and_hidden_shape_are_named(params):
    base = interop.torch_state_dict_from_params(params, CFG)
    sd = dict(base, **{"lstm.weight_hh_l0": np.zeros((64, 15), np.float32)})
    with pytest.raises(ValueError, match=r"lstm\.weight_hh_l0.*\(4·hidden, hidden\).*\(64, 15\)"):
        interop.params_from_torch_state_dict(sd)
    for dtype in (np.float16, np.int64):
        sd = dict(base, **{"value_head.2.bias": base["value_head.2.bias"].astype(dtype)})
        with pytest.raises(ValueError, match=rf"value_head\.2\.bias.*dtype {np.dtype(dtype).name}"):
            interop.params_from_torch_state_dict(sd, CFG)
    as64 = {k: (v if k.endswith("_null_idx") else v.astype(np.float64)) for k, v in base.items()}
    with pytest.raises(ValueError, match="float64 but jax_enable_x64 is off"):
        interop.params_from_torch_state_dict(as64)
    with jax.enable_x64(True):
        loaded = interop.params_from_torch_state_dict(as64)
    assert all(leaf.dtype == np.float64 for leaf in jax.tree.leaves(loaded))
    sd = dict(base, **{"op_head.2.weight": base["op_head.2.weight"].copy()})
    sd["op_head.2.weight"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"op_head\.2\.weight.*1 NaN/Inf"):
        interop.params_from_torch_state_dict(sd, CFG)


def test_params_side_errors(params):
    broken = jax.tree.map(lambda a: a, params)
    del broken["value_head"]["l2"]
    with pytest.raises(KeyError, match=r"value_head/l2.*value_head\.2\.weight"):
        interop.torch_state_dict_from_params(broken, CFG)
    with pytest.raises(ValueError, match=r"feature_net/l0/kernel.*\(126, 32\).*got \(92, 32\)"):
        interop.torch_state_dict_from_params(params, NetworkConfig(num_slots=3, feature_dim=32, hidden_dim=16))
