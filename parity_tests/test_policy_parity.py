"""esper_jax policy vs reference_torch (upstream's network) on transplanted weights (docs/parity.md).

Quantities: masked logits, Q(s, op), per-head log-prob and normalised entropy (evaluate_actions with fixed valid
actions), deterministic (argmax) actions and values from get_action, the carried LSTM state; single steps over slot
counts 1/3/5/25 and batch sizes 1/4/64, and 150-step sequences (whole and in 25-step chunks with carried state).
Bounds: float32 max-abs <= 1e-5, float64 (both sides) <= 1e-10. Each test prints the max error it saw.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from esper_jax import interop
from esper_jax import policy as P
from esper_jax.contracts import HEAD_NAMES, TOPOLOGIES, GerminationStyle, PerHead, feature_size
from esper_jax.distributions import mask_logits
from esper_jax.masks import MaskConfig
from esper_jax.masks import compute as compute_masks
from esper_jax.network import FactoredRecurrentActorCritic as JaxNet
from esper_jax.network import NetworkConfig
from esper_jax.testing import random_observation
from reference_torch.leyline import SlotConfig as RefSlotConfig
from reference_torch.network import FactoredRecurrentActorCritic as TorchNet

BOUND = {"float32": 1e-5, "float64": 1e-10}
TIE_EPS = 1e-6


@contextlib.contextmanager
def precision(dtype: str):
    if dtype == "float64":
        with jax.enable_x64(True):
            yield
    else:
        yield


def build_torch(num_slots: int, hidden: int, feature: int, dtype: str, seed: int) -> TorchNet:
    torch.manual_seed(seed)
    net = TorchNet(
        state_dim=feature_size(num_slots),
        num_slots=num_slots,
        feature_dim=feature,
        lstm_hidden_dim=hidden,
        slot_config=RefSlotConfig.for_grid(1, num_slots),
    )
    with torch.no_grad():  # the 0.01-gain heads give near-uniform logits; spread them so argmax means something
        for head in HEAD_NAMES:
            getattr(net, f"{head}_head")[-1].weight.mul_(100.0)
        for module in net.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)):
                module.bias.normal_(0.0, 0.1)
        for name, p in net.lstm.named_parameters():
            if "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return net.double() if dtype == "float64" else net


def random_inputs(rng, num_slots, lead, np_dtype):
    feats = rng.normal(size=(*lead, feature_size(num_slots))).astype(np_dtype)
    idx = rng.integers(-3, 13, size=(*lead, num_slots)).astype(np.int64)
    return feats, idx


def realistic_masks(rng, num_slots, lead) -> dict[str, np.ndarray]:
    """Masks from the real mask function (esper_jax.masks) on random valid slot states (docs/parity.md: "masks from the
    real mask function"). At least one slot is enabled per row, as in training, where the slot head would
    otherwise have no valid action; the topology alternates so both blueprint sets are exercised."""
    obs = random_observation(rng, num_slots, tuple(lead), p_enabled=0.8)
    forced = np.arange(num_slots) == rng.integers(0, num_slots, size=lead)[..., None]
    obs = obs.replace(slots=obs.slots.replace(enabled=obs.slots.enabled | forced))
    topology = TOPOLOGIES[int(rng.integers(0, len(TOPOLOGIES)))]
    computed = compute_masks(obs, MaskConfig(topology=topology, max_seeds=int(rng.integers(0, 2 * num_slots))))
    return {h: np.asarray(getattr(computed, h)) for h in HEAD_NAMES}


def valid_actions(rng, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    acts = {}
    for head in ["op"] + [h for h in HEAD_NAMES if h != "op"]:
        m = masks[head]
        if head == "style":
            free = (acts["op"] != 1) & (acts["op"] != 2)
            m = np.where(free[..., None], np.arange(m.shape[-1]) == int(GerminationStyle.SIGMOID_ADD), m)
        scores = np.where(m, rng.random(m.shape), -1.0)
        acts[head] = scores.argmax(-1).astype(np.int64)
    return acts


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0


def to_jax_masks(masks, lead_slice=None) -> PerHead:
    return PerHead(**{h: jnp.asarray(masks[h]) for h in HEAD_NAMES})


def torch_mask_args(masks) -> dict[str, torch.Tensor]:
    return {f"{h}_mask": torch.from_numpy(masks[h]) for h in HEAD_NAMES}


def jax_params_for(net: TorchNet, direction: str, config: NetworkConfig, seed: int):
    """torch→jax: transplant the torch weights; jax→torch: init in JAX and load those into ``net`` (strict)."""
    if direction == "torch_to_jax":
        params = interop.params_from_torch_state_dict(net.state_dict())
        assert interop.infer_config(net.state_dict()) == config
        return params
    params = P.init(jax.random.key(seed), config)
    params = jax.tree.map(lambda x: x, params)
    for head in HEAD_NAMES:  # same spreading as build_torch, applied on the JAX side
        last = "l4" if head == "blueprint" else "l2"
        params[f"{head}_head"][last]["kernel"] = params[f"{head}_head"][last]["kernel"] * 100.0
    sd = interop.torch_state_dict_from_params(params, config)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    return params


def run_case(num_slots, batch, steps, dtype, hidden=64, feature=64, seed=0, direction="torch_to_jax", chunk=None):
    """Compare one configuration; returns {quantity: max_abs_err} and the number of argmax ties."""
    np_dtype = np.float64 if dtype == "float64" else np.float32
    rng = np.random.default_rng(seed)
    net = build_torch(num_slots, hidden, feature, dtype, seed)
    config = NetworkConfig(num_slots=num_slots, feature_dim=feature, hidden_dim=hidden, dtype=np_dtype)
    params = jax_params_for(net, direction, config, seed)
    feats, idx = random_inputs(rng, num_slots, (batch, steps), np_dtype)
    masks = realistic_masks(rng, num_slots, (batch, steps))
    acts = valid_actions(rng, masks)
    h0 = rng.normal(size=(1, batch, hidden)).astype(np_dtype) * 0.5
    c0 = rng.normal(size=(1, batch, hidden)).astype(np_dtype) * 0.5
    errs: dict[str, float] = {}

    # --- torch reference ---
    with torch.no_grad():
        hidden_t = (torch.from_numpy(h0), torch.from_numpy(c0))
        lp_t, v_t, ent_t, (hT_t, cT_t) = net.evaluate_actions(
            torch.from_numpy(feats), torch.from_numpy(idx), {h: torch.from_numpy(a) for h, a in acts.items()},
            hidden=hidden_t, **{f"{h}_mask": torch.from_numpy(masks[h]) for h in HEAD_NAMES},
        )
        fwd = net.forward(torch.from_numpy(feats), torch.from_numpy(idx), hidden_t,
                          **{f"{h}_mask": torch.from_numpy(masks[h]) for h in HEAD_NAMES})
        step0 = {h: torch.from_numpy(masks[h][:, 0]) for h in HEAD_NAMES}
        ga_t = net.get_action(torch.from_numpy(feats[:, 0]), torch.from_numpy(idx[:, 0]), hidden_t,
                              deterministic=True, return_op_logits=True, **{f"{h}_mask": step0[h] for h in HEAD_NAMES})

    # --- JAX ---
    carry0 = P.LSTMCarry(h=jnp.asarray(np.moveaxis(h0, 0, 1)), c=jnp.asarray(np.moveaxis(c0, 0, 1)))
    jmasks = PerHead(**{h: jnp.asarray(masks[h]) for h in HEAD_NAMES})
    jacts = PerHead(**{h: jnp.asarray(acts[h].astype(np.int32)) for h in HEAD_NAMES})
    if chunk is None:
        ev = P.evaluate_actions(params, config, carry0, jnp.asarray(feats), jnp.asarray(idx), jacts, jmasks)
        lp_j, ent_j, v_j, carry_j = ev.log_probs, ev.entropies, np.asarray(ev.value), ev.carry
    else:  # chunks with the carry threaded between calls, as the PPO update sees them
        carry_j, parts = carry0, []
        for start in range(0, steps, chunk):
            sl = slice(start, start + chunk)
            ev = P.evaluate_actions(params, config, carry_j, jnp.asarray(feats[:, sl]), jnp.asarray(idx[:, sl]),
                                    jacts.map(lambda a: a[:, sl]), jmasks.map(lambda m: m[:, sl]))
            parts.append(ev)
            carry_j = ev.carry
        lp_j = PerHead(**{h: np.concatenate([getattr(p.log_probs, h) for p in parts], 1) for h in HEAD_NAMES})
        ent_j = PerHead(**{h: np.concatenate([getattr(p.entropies, h) for p in parts], 1) for h in HEAD_NAMES})
        v_j = np.concatenate([p.value for p in parts], 1)
    net_j = JaxNet(config)
    trunk = jax.jit(lambda p, f, i, c: net_j.apply({"params": p}, f, i, c, method=net_j.trunk))(
        params, jnp.asarray(feats), jnp.asarray(idx), carry0)
    masked_j = jax.tree.map(mask_logits, trunk.logits, jmasks)
    ga_j = P.get_action(params, config, carry0, jnp.asarray(feats[:, 0]), jnp.asarray(idx[:, 0]),
                        jmasks.map(lambda m: m[:, 0]), jax.random.key(seed), deterministic=True)

    for h in HEAD_NAMES:
        errs[f"logits.{h}"] = max_err(getattr(masked_j, h), fwd[f"{h}_logits"].numpy())
        errs[f"log_prob.{h}"] = max_err(getattr(lp_j, h), lp_t[h].numpy())
        errs[f"entropy.{h}"] = max_err(getattr(ent_j, h), ent_t[h].numpy())
        errs[f"get_action.log_prob.{h}"] = max_err(getattr(ga_j.log_probs, h), ga_t.log_probs[h].numpy())
    errs["value_stored_op"] = max_err(v_j, v_t.numpy())
    errs["get_action.value_argmax_op"] = max_err(ga_j.value, ga_t.values.numpy())
    errs["get_action.op_logits"] = max_err(ga_j.op_logits, ga_t.op_logits.numpy())
    errs["carry.h"] = max_err(np.moveaxis(np.asarray(carry_j.h), 1, 0), hT_t.numpy())
    errs["carry.c"] = max_err(np.moveaxis(np.asarray(carry_j.c), 1, 0), cT_t.numpy())

    ties = 0
    for h in HEAD_NAMES:
        ours, theirs = np.asarray(getattr(ga_j.actions, h)), ga_t.actions[h].numpy()
        logits = np.sort(np.asarray(getattr(masked_j, h))[:, 0], axis=-1)
        tie = (logits[:, -1] - logits[:, -2]) < TIE_EPS if logits.shape[-1] > 1 else np.zeros(len(logits), bool)
        ties += int(tie.sum())
        assert np.array_equal(ours[~tie], theirs[~tie]), f"argmax action mismatch on head {h}"
    return errs, ties


def report_and_check(name, errs, ties, dtype):
    worst = max(errs, key=errs.get)
    by_kind: dict[str, float] = {}
    for key, value in errs.items():
        kind = key.rsplit(".", 1)[0] if key.split(".")[0] in ("logits", "log_prob", "entropy") or key.startswith("get_action.log_prob") else key
        by_kind[kind] = max(by_kind.get(kind, 0.0), value)
    summary = " ".join(f"{k}={v:.3e}" for k, v in by_kind.items())
    print(f"{name} [{dtype}] ties={ties} max_abs_err={errs[worst]:.3e} ({worst}); {summary}")
    assert errs[worst] <= BOUND[dtype], f"{worst}: {errs[worst]:.3e} > {BOUND[dtype]:.0e}"


def _grid(cases, default):
    """Every case of ``cases``; those not in ``default`` carry the ``slow`` marker. Each distinct shape and dtype
    is a fresh XLA compile on both legs, so the default run keeps one representative per axis value and
    ``pytest -m slow`` runs the full grid."""
    return [c if c in default else pytest.param(*c, marks=pytest.mark.slow) for c in cases]


_SINGLE_STEP = [(s, b, d) for s in (1, 3, 5, 25) for b in (1, 4, 64) for d in ("float32", "float64")]
# float32 over the whole slot x batch grid; float64 at every slot count with batch 4.
_SINGLE_STEP_DEFAULT = [c for c in _SINGLE_STEP if c[2] == "float32" or c[1] == 4]


@pytest.mark.parametrize("num_slots, batch, dtype", _grid(_SINGLE_STEP, _SINGLE_STEP_DEFAULT))
def test_single_step_parity(num_slots, batch, dtype):
    with precision(dtype):
        errs, ties = run_case(num_slots, batch, 1, dtype, seed=num_slots * 100 + batch)
    report_and_check(f"single_step S={num_slots} B={batch}", errs, ties, dtype)


_SEQUENCE = [(s, b, d) for s, b in ((1, 4), (3, 64), (25, 4)) for d in ("float32", "float64")]
_SEQUENCE_DEFAULT = [c for c in _SEQUENCE if c[2] == "float32" or c[0] == 1]


@pytest.mark.parametrize("num_slots, batch, dtype", _grid(_SEQUENCE, _SEQUENCE_DEFAULT))
def test_sequence_150_parity(num_slots, batch, dtype):
    with precision(dtype):
        errs, ties = run_case(num_slots, batch, 150, dtype, seed=7 + num_slots)
    report_and_check(f"seq150 S={num_slots} B={batch}", errs, ties, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sequence_150_chunked_carry_parity(dtype):
    with precision(dtype):
        errs, ties = run_case(5, 4, 150, dtype, seed=11, chunk=25)
    report_and_check("seq150 chunked 6x25 S=5 B=4", errs, ties, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reverse_direction_jax_to_torch(dtype):
    with precision(dtype):
        errs, ties = run_case(3, 4, 25, dtype, seed=5, direction="jax_to_torch")
    report_and_check("jax->torch S=3 B=4 T=25", errs, ties, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_full_size_parity(dtype):
    with precision(dtype):
        errs, ties = run_case(3, 4, 25, dtype, hidden=512, feature=512, seed=3)
    report_and_check("full-size H=F=512 S=3 B=4 T=25", errs, ties, dtype)


def test_upstream_state_dict_loads_strict():
    net = build_torch(3, 512, 512, "float32", 0)
    assert sum(p.numel() for p in net.parameters()) == 3_625_314
    sd = net.state_dict()
    params = interop.params_from_torch_state_dict(sd)
    back = interop.torch_state_dict_from_params(params, interop.infer_config(sd))
    assert list(back) == list(sd)
    for k in sd:
        assert np.array_equal(back[k], sd[k].numpy()), k
    fresh = TorchNet(state_dim=114)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
