"""Upstream's ``FactoredRecurrentActorCritic.state_dict()`` ⇄ Flax params, both directions, exact.

No torch import: a state_dict may hold torch tensors (anything with ``.numpy()`` or ``__array__``) or NumPy arrays;
the reverse direction returns NumPy arrays under upstream's key names (docs/policy-and-ppo.md#network), in upstream's
key order, including the ``blueprint_embedding._null_idx`` buffer (int64 scalar 13). Linear and LSTM weights are
transposed ([out, in] ⇄ [in, out]); nothing is summed or rescaled, so a round trip is bitwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from esper_jax.contracts import BLUEPRINT_NULL_INDEX, NUM_BLUEPRINTS, NUM_OPS, feature_size
from esper_jax.network import NetworkConfig

__all__ = ["params_from_torch_state_dict", "torch_state_dict_from_params", "expected_shapes", "infer_config"]

NULL_IDX_KEY = "blueprint_embedding._null_idx"
# Registration order of upstream's __init__ (state_dict order): the blueprint head comes after the embedding.
_SMALL_HEADS = ("slot", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "op")


def _to_numpy(value: Any, key: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor that may require grad
        value = value.detach()
    if hasattr(value, "cpu"):
        value = value.cpu()
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    try:
        return np.asarray(value)
    except Exception as exc:  # pragma: no cover - message only
        raise TypeError(f"state_dict[{key!r}] is not array-like ({type(value).__name__})") from exc


# Each entry: torch key → (path in the Flax params tree, transpose?).
def _layout(config: NetworkConfig) -> list[tuple[str, tuple[str, ...], bool]]:
    entries: list[tuple[str, tuple[str, ...], bool]] = [
        ("feature_net.0.weight", ("feature_net", "l0", "kernel"), True),
        ("feature_net.0.bias", ("feature_net", "l0", "bias"), False),
        ("feature_net.1.weight", ("feature_net", "l1", "scale"), False),
        ("feature_net.1.bias", ("feature_net", "l1", "bias"), False),
    ]
    for layer in range(config.lstm_layers):
        entries += [
            (f"lstm.weight_ih_l{layer}", ("lstm", f"kernel_ih_l{layer}"), True),
            (f"lstm.weight_hh_l{layer}", ("lstm", f"kernel_hh_l{layer}"), True),
            (f"lstm.bias_ih_l{layer}", ("lstm", f"bias_ih_l{layer}"), False),
            (f"lstm.bias_hh_l{layer}", ("lstm", f"bias_hh_l{layer}"), False),
        ]
    entries += [
        ("lstm_ln.weight", ("lstm_ln", "scale"), False),
        ("lstm_ln.bias", ("lstm_ln", "bias"), False),
    ]
    for head in _SMALL_HEADS:
        for index in (0, 2):
            entries += [
                (f"{head}_head.{index}.weight", (f"{head}_head", f"l{index}", "kernel"), True),
                (f"{head}_head.{index}.bias", (f"{head}_head", f"l{index}", "bias"), False),
            ]
    entries.append(("blueprint_embedding.embedding.weight", ("blueprint_embedding", "embedding"), False))
    for head, indices in (("blueprint", (0, 2, 4)), ("value", (0, 2))):
        for index in indices:
            entries += [
                (f"{head}_head.{index}.weight", (f"{head}_head", f"l{index}", "kernel"), True),
                (f"{head}_head.{index}.bias", (f"{head}_head", f"l{index}", "bias"), False),
            ]
    return entries


def expected_shapes(config: NetworkConfig) -> dict[str, tuple[int, ...]]:
    """torch key → torch shape, in upstream's state_dict order (``_null_idx`` is a 0-d int64 buffer)."""
    h, hh, f = config.hidden_dim, config.head_hidden_dim, config.feature_dim
    sizes = config.head_sizes
    shapes: dict[str, tuple[int, ...]] = {
        "feature_net.0.weight": (f, config.input_dim),
        "feature_net.0.bias": (f,),
        "feature_net.1.weight": (f,),
        "feature_net.1.bias": (f,),
    }
    for layer in range(config.lstm_layers):
        in_dim = f if layer == 0 else h
        shapes[f"lstm.weight_ih_l{layer}"] = (4 * h, in_dim)
        shapes[f"lstm.weight_hh_l{layer}"] = (4 * h, h)
        shapes[f"lstm.bias_ih_l{layer}"] = (4 * h,)
        shapes[f"lstm.bias_hh_l{layer}"] = (4 * h,)
    shapes["lstm_ln.weight"] = (h,)
    shapes["lstm_ln.bias"] = (h,)
    for head in _SMALL_HEADS:
        shapes[f"{head}_head.0.weight"] = (hh, h)
        shapes[f"{head}_head.0.bias"] = (hh,)
        shapes[f"{head}_head.2.weight"] = (sizes[head], hh)
        shapes[f"{head}_head.2.bias"] = (sizes[head],)
    shapes[NULL_IDX_KEY] = ()
    shapes["blueprint_embedding.embedding.weight"] = (NUM_BLUEPRINTS + 1, config.blueprint_embed_dim)
    shapes.update(
        {
            "blueprint_head.0.weight": (h, h),
            "blueprint_head.0.bias": (h,),
            "blueprint_head.2.weight": (hh, h),
            "blueprint_head.2.bias": (hh,),
            "blueprint_head.4.weight": (NUM_BLUEPRINTS, hh),
            "blueprint_head.4.bias": (NUM_BLUEPRINTS,),
            "value_head.0.weight": (hh, h + NUM_OPS),
            "value_head.0.bias": (hh,),
            "value_head.2.weight": (1, hh),
            "value_head.2.bias": (1,),
        }
    )
    return shapes


def _require(state: Mapping[str, Any], key: str, what: str) -> np.ndarray:
    if key not in state:
        raise KeyError(f"state_dict is missing {key!r}, needed to infer {what}")
    return _to_numpy(state[key], key)


def infer_config(state_dict: Mapping[str, Any]) -> NetworkConfig:
    """Read num_slots, dims, layer count and dtype off a state_dict."""
    slot_w = _require(state_dict, "slot_head.2.weight", "num_slots")
    hh_w = _require(state_dict, "lstm.weight_hh_l0", "hidden_dim")
    feat_w = _require(state_dict, "feature_net.0.weight", "feature_dim")
    emb = _require(state_dict, "blueprint_embedding.embedding.weight", "blueprint_embed_dim")
    layers = sum(1 for k in state_dict if re.fullmatch(r"lstm\.weight_ih_l\d+", k))
    if slot_w.ndim != 2 or hh_w.ndim != 2 or feat_w.ndim != 2 or emb.ndim != 2:
        raise ValueError(
            "cannot infer the network config: slot_head.2.weight, lstm.weight_hh_l0, feature_net.0.weight and "
            "blueprint_embedding.embedding.weight must all be 2-D"
        )
    if hh_w.shape[0] != 4 * hh_w.shape[1]:  # the hidden size is read off this key: check it before trusting it
        raise ValueError(f"state_dict['lstm.weight_hh_l0'] must have shape (4·hidden, hidden), got {hh_w.shape}")
    config = NetworkConfig(
        num_slots=int(slot_w.shape[0]),
        feature_dim=int(feat_w.shape[0]),
        hidden_dim=int(hh_w.shape[1]),
        lstm_layers=max(layers, 1),
        blueprint_embed_dim=int(emb.shape[1]),
        dtype=feat_w.dtype.type,
    )
    expected_in = feature_size(config.num_slots) + config.blueprint_embed_dim * config.num_slots
    if feat_w.shape[1] != expected_in:
        raise ValueError(
            f"state_dict['feature_net.0.weight'] has {feat_w.shape[1]} input columns but a {config.num_slots}-slot "
            f"network expects {expected_in} (24 + 30·S observation + {config.blueprint_embed_dim}·S embedding)"
        )
    return config


def _check_values(arrays: Mapping[str, np.ndarray]) -> None:
    """Parameters must be float32 or float64 (one dtype for all; float64 needs jax_enable_x64) and finite: anything
    else would load here and fail deep inside flax, or train silently in another precision."""
    import jax

    weights = {k: v for k, v in arrays.items() if k != NULL_IDX_KEY}
    for key, value in weights.items():
        if value.dtype not in (np.float32, np.float64):
            raise ValueError(f"state_dict[{key!r}] has dtype {value.dtype}; parameters must be float32 or float64 "
                             "(cast the state_dict first, e.g. {k: v.float() for k, v in sd.items()})")
    dtypes = sorted({str(v.dtype) for v in weights.values()})
    if len(dtypes) > 1:
        raise ValueError(f"state_dict mixes parameter dtypes {dtypes}; cast it to one (float32)")
    if dtypes == ["float64"] and jax.dtypes.canonicalize_dtype(np.float64) != np.float64:  # x64 off (here)
        raise ValueError("state_dict is float64 but jax_enable_x64 is off; cast it to float32 or enable x64 "
                         "(jax.config.update('jax_enable_x64', True))")
    for key, value in weights.items():
        bad = ~np.isfinite(value)
        if bad.any():
            raise ValueError(f"state_dict[{key!r}] holds {int(bad.sum())} NaN/Inf value(s) of {value.size}")


def params_from_torch_state_dict(state_dict: Mapping[str, Any], config: NetworkConfig | None = None) -> dict:
    """Upstream state_dict → Flax params (nested dict of NumPy arrays in the state_dict's dtype).

    Missing, unexpected and mis-shaped keys raise KeyError / ValueError naming the key and the expected shape.
    ``_null_idx`` must be present and equal 13 (it is part of upstream's state_dict, not a parameter here).
    """
    if config is None:
        config = infer_config(state_dict)
    shapes = expected_shapes(config)
    missing = [k for k in shapes if k not in state_dict]
    if missing:
        details = ", ".join(f"{k!r} (expected shape {shapes[k]})" for k in missing)
        raise KeyError(f"state_dict is missing {len(missing)} key(s): {details}")
    extra = [k for k in state_dict if k not in shapes]
    if extra:
        raise KeyError(f"state_dict has unexpected key(s) for {config}: {', '.join(repr(k) for k in extra)}")
    arrays = {k: _to_numpy(state_dict[k], k) for k in shapes}
    for key, shape in shapes.items():
        if arrays[key].shape != shape:
            raise ValueError(f"state_dict[{key!r}] must have shape {shape}, got {arrays[key].shape}")
    _check_values(arrays)
    null_idx = arrays[NULL_IDX_KEY]
    if null_idx.item() != BLUEPRINT_NULL_INDEX:
        raise ValueError(f"state_dict[{NULL_IDX_KEY!r}] must be {BLUEPRINT_NULL_INDEX}, got {null_idx.item()}")

    params: dict[str, Any] = {}
    for key, path, transpose in _layout(config):
        value = arrays[key]
        value = np.array(value.T, order="C", copy=True) if transpose else np.array(value, copy=True)
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return params


def _get_path(params: Mapping[str, Any], path: tuple[str, ...], key: str) -> np.ndarray:
    node: Any = params
    for depth, part in enumerate(path):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"params is missing {'/'.join(path[: depth + 1])!r} (needed for torch key {key!r})")
        node = node[part]
    return np.asarray(node)


def _flatten(params: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, value in params.items():
        if isinstance(value, Mapping):
            out += _flatten(value, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def torch_state_dict_from_params(params: Mapping[str, Any], config: NetworkConfig) -> dict[str, np.ndarray]:
    """Flax params → upstream state_dict (NumPy arrays, upstream key order, ``_null_idx`` = int64 13).

    Load into torch with ``{k: torch.from_numpy(v) for k, v in sd.items()}`` and ``strict=True``.
    """
    if "params" in params and len(params) == 1:  # accept the variables dict returned by Module.init too
        params = params["params"]
    shapes = expected_shapes(config)
    layout = _layout(config)
    known = {path for _, path, _ in layout}
    extra = [p for p in _flatten(params) if p not in known]
    if extra:
        raise KeyError(f"params has unexpected entr{'y' if len(extra) == 1 else 'ies'}: {['/'.join(p) for p in extra]}")
    by_key: dict[str, np.ndarray] = {}
    for key, path, transpose in layout:
        value = _get_path(params, path, key)
        value = np.array(value.T, order="C", copy=True) if transpose else np.array(value, copy=True)
        if value.shape != shapes[key]:
            flax_shape = tuple(reversed(shapes[key])) if transpose else shapes[key]
            raise ValueError(
                f"params {'/'.join(path)!r} must have shape {flax_shape} (torch {key!r} {shapes[key]}), "
                f"got {tuple(reversed(value.shape)) if transpose else value.shape}"
            )
        by_key[key] = value
    by_key[NULL_IDX_KEY] = np.array(BLUEPRINT_NULL_INDEX, dtype=np.int64)
    return {key: by_key[key] for key in shapes}
