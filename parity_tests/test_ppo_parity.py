"""esper_jax.ppo vs reference_torch.ppo (compat upstream): GAE, loss + gradients, parameters after full updates.

Both sides start from the same weights (torch init → ``interop.params_from_torch_state_dict``) and see the same
buffer: states/masks from the real feature and mask functions on random observations, actions drawn from the
env masks (style canonicalised by the op, as the rollout does), old log-probs/values = current ones plus noise so
that ratios spread over the clip range. Tolerances from docs/parity.md; every test prints its observed error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from esper_jax import normalization, policy, ppo
from esper_jax.contracts import HEAD_NAMES
from esper_jax.interop import params_from_torch_state_dict
from esper_jax.network import NetworkConfig
from esper_jax.testing import UpdateBuffer, random_policy_batch
from reference_torch import ppo as ref_ppo
from reference_torch.leyline import SlotConfig as RefSlotConfig
from reference_torch.network import FactoredRecurrentActorCritic


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
    previous = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", "highest")
    yield
    jax.config.update("jax_default_matmul_precision", previous)


SMALL = NetworkConfig(num_slots=3, feature_dim=64, hidden_dim=64)
FULL = NetworkConfig(num_slots=3)


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: one buffer, seen by both sides
# ---------------------------------------------------------------------------------------------------------------


def _torch_net(config: NetworkConfig, seed: int) -> FactoredRecurrentActorCritic:
    torch.manual_seed(seed)
    return FactoredRecurrentActorCritic(
        state_dim=config.state_dim,
        feature_dim=config.feature_dim,
        lstm_hidden_dim=config.hidden_dim,
        lstm_layers=config.lstm_layers,
        slot_config=RefSlotConfig.for_grid(1, config.num_slots),
    )


def _jax_params(net: FactoredRecurrentActorCritic, config: NetworkConfig):
    return jax.tree.map(jnp.asarray, params_from_torch_state_dict(net.state_dict(), config))


def _make_buffer(config: NetworkConfig, params, num_envs: int, num_steps: int, step_counts, seed: int) -> UpdateBuffer:
    """Env-major buffer ``[E, T, ...]`` in upstream's layout, padded steps as upstream pads them."""
    rng = np.random.default_rng(seed)
    batch = random_policy_batch(rng, config.num_slots, (num_envs, num_steps), compat="upstream")
    valid = np.arange(num_steps)[None, :] < np.asarray(step_counts)[:, None]
    # Upstream's padding: zero states/indices/actions, masks with only column 0 valid.
    states = np.where(valid[..., None], batch.features, 0.0).astype(np.float32)
    bp = np.where(valid[..., None], batch.blueprint_indices, 0).astype(np.int32)
    masks = batch.masks.map(lambda m: np.where(valid[..., None], m, np.arange(m.shape[-1]) == 0))
    actions = batch.actions.map(lambda a: np.where(valid, a, 0).astype(np.int32))

    carry = policy.initial_carry(config, (num_envs,))
    evaluation = policy.evaluate_actions(
        params, config, carry, jnp.asarray(states), jnp.asarray(bp), actions.map(jnp.asarray), masks.map(jnp.asarray)
    )
    old_log_probs = evaluation.log_probs.map(
        lambda lp: np.where(valid, np.asarray(lp) + rng.normal(0, 0.15, valid.shape), 0.0).astype(np.float32)
    )
    values = np.where(valid, np.asarray(evaluation.value) + rng.normal(0, 0.5, valid.shape), 0).astype(np.float32)
    rewards = np.where(valid, rng.normal(0.3, 1.0, valid.shape), 0).astype(np.float32)
    last = np.arange(num_steps)[None, :] == (np.asarray(step_counts)[:, None] - 1)
    truncated = last.copy()
    truncated[0] = False  # env 0 ends in a true terminal (governor-penalty shape): no bootstrap
    hidden = np.zeros((config.lstm_layers, num_envs, config.hidden_dim), np.float32)
    return UpdateBuffer(
        states=states,
        blueprint_indices=bp,
        actions=actions,
        old_log_probs=old_log_probs,
        masks=masks,
        values=values,
        rewards=rewards,
        dones=last.copy(),
        truncated=truncated,
        bootstrap_values=np.where(truncated, rng.normal(0, 1.0, valid.shape), 0).astype(np.float32),
        valid=valid,
        hidden=(hidden, hidden),
    )


def _torch_grads_as_params(net: FactoredRecurrentActorCritic, config: NetworkConfig):
    grads = {name: p.grad.detach().clone() for name, p in net.named_parameters()}
    grads["blueprint_embedding._null_idx"] = net.state_dict()["blueprint_embedding._null_idx"]
    return params_from_torch_state_dict(grads, config)


def _relative_errors(jax_tree, torch_tree) -> dict[str, float]:
    """Per tensor: max|Δ| / max(max|reference|, tiny) (normwise relative error)."""
    flat_j = jax.tree_util.tree_flatten_with_path(jax_tree)[0]
    flat_t = dict(jax.tree_util.tree_flatten_with_path(torch_tree)[0])
    out = {}
    for path, value in flat_j:
        ref = np.asarray(flat_t[path], np.float64)
        diff = np.max(np.abs(np.asarray(value, np.float64) - ref))
        out[jax.tree_util.keystr(path)] = float(diff / max(np.max(np.abs(ref)), 1e-12))
    return out


# ---------------------------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------------------------


def test_gae_parity_with_truncation_terminals_and_padding():
    rng = np.random.default_rng(7)
    num_envs, num_steps = 6, 40
    step_counts = [40, 40, 25, 1, 0, 40]
    rewards = rng.normal(0, 2, (num_envs, num_steps)).astype(np.float32)
    values = rng.normal(0, 2, (num_envs, num_steps)).astype(np.float32)
    bootstrap = rng.normal(0, 2, (num_envs, num_steps)).astype(np.float32)
    dones = np.zeros((num_envs, num_steps), bool)
    truncated = np.zeros((num_envs, num_steps), bool)
    for env, n in enumerate(step_counts):
        if n:
            dones[env, n - 1] = True
            truncated[env, n - 1] = env % 2 == 0  # odd envs: true terminal at the end
    dones[5, 10] = True  # a true terminal mid-sequence resets the trace
    dones[2, 30] = truncated[2, 30] = True  # flags beyond the valid slice must be ignored
    valid = np.arange(num_steps)[None, :] < np.asarray(step_counts)[:, None]

    adv_t, ret_t = ref_ppo.compute_advantages_and_returns(
        torch.as_tensor(rewards), torch.as_tensor(values), torch.as_tensor(dones), torch.as_tensor(truncated),
        torch.as_tensor(bootstrap), step_counts,
    )
    norm_t = ref_ppo.normalize_advantages(adv_t, step_counts)
    adv_j, ret_j = ppo.gae(
        rewards, values, dones, truncated, bootstrap, gamma=0.995, gae_lambda=0.98, lengths=jnp.asarray(step_counts)
    )
    norm_j = ppo.normalize_advantages(adv_j, valid)
    errs = {
        "advantages": np.max(np.abs(np.where(valid, np.asarray(adv_j) - adv_t.numpy(), 0))),
        "returns": np.max(np.abs(np.where(valid, np.asarray(ret_j) - ret_t.numpy(), 0))),
        "normalised": np.max(np.abs(np.where(valid, np.asarray(norm_j) - norm_t.numpy(), 0))),
    }
    print(f"GAE max-abs errors: {errs}")
    assert max(errs.values()) <= 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Loss and gradients
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, num_envs, num_steps, step_counts, clip_value",
    [
        (SMALL, 4, 12, [12, 12, 7, 12], True),
        (SMALL, 3, 9, [9, 9, 9], False),
        (FULL, 2, 25, [25, 25], True),
    ],
    ids=["small-clip", "small-noclip", "full-E2-T25"],
)
def test_loss_and_gradients_match_torch(config, num_envs, num_steps, step_counts, clip_value):
    net = _torch_net(config, seed=3)
    params = _jax_params(net, config)
    buf = _make_buffer(config, params, num_envs, num_steps, step_counts, seed=11)
    cfg = ppo.PPOConfig(compat="upstream", clip_value=clip_value)
    rcfg = ref_ppo.ReferenceConfig(clip_value=clip_value)

    batch, _ = ppo.prepare_batch(buf.trajectory(), cfg)
    coef = ppo.entropy_coefficient(cfg, 0)
    (loss_j, info_j), grads_j = jax.value_and_grad(
        lambda p: ppo.compute_loss(p, batch, coef, config=cfg, network_config=config), has_aux=True
    )(params)

    data = ref_ppo.prepare_data(buf.torch_data(torch), step_counts, rcfg)
    loss_t, info_t = ref_ppo.compute_loss(net, data, list(range(num_envs)), rcfg)
    net.zero_grad()
    loss_t.backward()
    grads_t = _torch_grads_as_params(net, config)

    terms = {
        "loss": (float(loss_j), float(loss_t.detach())),
        "policy": (float(info_j.policy_loss), float(info_t["policy_loss"].detach())),
        "value": (float(info_j.value_loss), float(info_t["value_loss"].detach())),
        "entropy": (float(info_j.entropy), float(info_t["entropy"].detach())),
        "approx_kl": (float(info_j.approx_kl), float(info_t["approx_kl"])),
    }
    term_errs = {k: abs(a - b) / max(abs(b), 1e-12) for k, (a, b) in terms.items()}
    per_head = max(
        abs(float(getattr(info_j.policy_loss_per_head, h)) - float(info_t["policy_loss_per_head"][h].detach()))
        for h in HEAD_NAMES
    )
    grad_errs = _relative_errors(grads_j, grads_t)
    worst = max(grad_errs, key=grad_errs.get)
    print(f"loss terms {terms}\n  relative errors {term_errs}; per-head policy max-abs {per_head:.2e}")
    print(f"  gradient max normwise relative error {grad_errs[worst]:.2e} at {worst}")
    assert max(v for k, v in term_errs.items() if k != "approx_kl") <= 1e-4
    assert term_errs["approx_kl"] <= 1e-3 or abs(terms["approx_kl"][0] - terms["approx_kl"][1]) <= 1e-7
    assert per_head <= 1e-5
    assert grad_errs[worst] <= 1e-4


# ---------------------------------------------------------------------------------------------------------------
# Full updates (epochs × minibatches, Adam, clipping)
# ---------------------------------------------------------------------------------------------------------------


def _run_both(config, num_envs, num_steps, step_counts, ppo_config: ppo.PPOConfig, rcfg: ref_ppo.ReferenceConfig):
    net = _torch_net(config, seed=5)
    params = _jax_params(net, config)
    buf = _make_buffer(config, params, num_envs, num_steps, step_counts, seed=13)
    key = jax.random.PRNGKey(42)
    state = ppo.TrainState(
        params=params,
        opt_state=ppo.make_optimizer(ppo_config).init(params),
        obs_stats=normalization.init(config.state_dim),
        train_steps=jnp.zeros((), jnp.int32),
    )
    new_state, metrics = ppo.update(state, buf.trajectory(), key, config=ppo_config, network_config=config)
    order = np.asarray(ppo.minibatch_order(key, num_envs, ppo_config)).tolist()

    optimizer = ref_ppo.make_optimizer(net, rcfg)
    ref_metrics = ref_ppo.update(net, optimizer, buf.torch_data(torch), step_counts, rcfg, minibatch_order=order)
    after_t = jax.tree.map(np.asarray, params_from_torch_state_dict(net.state_dict(), config))
    return params, new_state, metrics, ref_metrics, after_t


def _check_params(new_params, torch_params, label: str) -> None:
    flat_j = jax.tree_util.tree_flatten_with_path(new_params)[0]
    flat_t = dict(jax.tree_util.tree_flatten_with_path(torch_params)[0])
    worst_rel, worst_abs = 0.0, 0.0
    for path, value in flat_j:
        a, b = np.asarray(value, np.float64), np.asarray(flat_t[path], np.float64)
        excess = np.abs(a - b) - (1e-6 + 1e-4 * np.abs(b))
        worst_abs = max(worst_abs, float(np.max(np.abs(a - b))))
        big = np.abs(b) > 1e-3  # elementwise relative error where it is meaningful; atol covers the rest
        if big.any():
            worst_rel = max(worst_rel, float(np.max(np.abs(a - b)[big] / np.abs(b)[big])))
        assert np.all(excess <= 0), f"{label}: {jax.tree_util.keystr(path)} off by {np.max(np.abs(a - b)):.3e}"
    print(f"{label}: params after update max-abs {worst_abs:.2e}, max rel (|ref| > 1e-3) {worst_rel:.2e}")


@pytest.mark.parametrize(
    "config, num_envs, num_steps, step_counts, epochs, minibatches",
    [
        (SMALL, 4, 10, [10, 10, 10, 6], 1, 1),
        (SMALL, 4, 10, [10, 10, 10, 6], 3, 2),
        (FULL, 2, 25, [25, 25], 1, 1),
    ],
    ids=["small-1x1", "small-3x2", "full-E2-T25-1x1"],
)
def test_params_after_update_match_torch(config, num_envs, num_steps, step_counts, epochs, minibatches):
    cfg = ppo.PPOConfig(compat="upstream", epochs=epochs, minibatches=minibatches, target_kl=None)
    rcfg = ref_ppo.ReferenceConfig(target_kl=None)
    before, new_state, metrics, ref_metrics, after_t = _run_both(config, num_envs, num_steps, step_counts, cfg, rcfg)
    assert int(metrics.steps_applied) == epochs * minibatches == len(ref_metrics["grad_norm"])
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                zip(jax.tree.leaves(new_state.params), jax.tree.leaves(before)))
    assert moved > 1e-4  # the update really moved the weights, so agreement is not trivial
    grad_norm_err = abs(float(metrics.grad_norm) - float(np.mean(ref_metrics["grad_norm"])))
    print(f"grad norm jax {float(metrics.grad_norm):.6f} torch {np.mean(ref_metrics['grad_norm']):.6f}")
    assert grad_norm_err <= 1e-4 * max(1.0, float(np.mean(ref_metrics["grad_norm"])))
    _check_params(new_state.params, after_t, f"{epochs}x{minibatches}")


def test_kl_early_stop_matches_torch():
    """Old log-probs far from the policy: both sides stop before the first step and leave the weights alone."""
    cfg = ppo.PPOConfig(compat="upstream", target_kl=1e-4)
    rcfg = ref_ppo.ReferenceConfig(target_kl=1e-4)
    before, new_state, metrics, ref_metrics, after_t = _run_both(SMALL, 2, 6, [6, 6], cfg, rcfg)
    print(f"approx_kl jax {float(metrics.approx_kl):.6f} torch {ref_metrics['approx_kl'][0]:.6f}")
    assert bool(metrics.early_stopped) and ref_metrics["early_stopped"]
    assert int(metrics.steps_applied) == 0 and not ref_metrics["grad_norm"]
    assert abs(float(metrics.approx_kl) - ref_metrics["approx_kl"][0]) <= 1e-4 * ref_metrics["approx_kl"][0]
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _check_params(new_state.params, after_t, "early-stop")
