"""GAE, factored PPO loss and the update step, written the upstream way in plain torch (upstream's
``simic/agent/rollout_buffer.py`` + ``simic/agent/ppo.py``; docs/policy-and-ppo.md#ppo-update).

Loops over envs and steps in Python, dicts of heads, ``torch.optim.Adam(eps=1e-5)`` and ``clip_grad_norm_``, on
the reference network's ``evaluate_actions``. The parity tests compare the JAX port against this. The only
generalisation over upstream is an explicit minibatch order (lists of env indices per step), so that
epochs × minibatches can be compared with the JAX update step for step; ``[[0..E-1]]`` is upstream's single
full-batch step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from reference_torch.leyline import HEAD_NAMES
from reference_torch.masks import compute_causal_masks
from reference_torch.network import FactoredRecurrentActorCritic

ENTROPY_COEF_PER_HEAD = {
    "op": 1.0,
    "slot": 1.0,
    "blueprint": 1.3,
    "style": 1.2,
    "tempo": 1.3,
    "alpha_target": 1.2,
    "alpha_speed": 1.2,
    "alpha_curve": 1.2,
}

def compute_advantages_and_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    truncated: torch.Tensor,
    bootstrap_values: torch.Tensor,
    step_counts: Sequence[int],
    gamma: float = 0.995,
    gae_lambda: float = 0.98,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-env GAE over each env's valid slice, backwards, exactly as the buffer method. Inputs ``[E, T]``."""
    advantages = torch.zeros_like(rewards)
    returns = torch.zeros_like(rewards)
    for env in range(rewards.shape[0]):
        n = int(step_counts[env])
        if n == 0:
            continue
        last_gae = torch.zeros((), dtype=rewards.dtype)
        for t in reversed(range(n)):
            if t == n - 1:
                if truncated[env, t]:
                    next_value = bootstrap_values[env, t]
                    next_non_terminal = 1.0
                else:
                    next_value = 0.0
                    next_non_terminal = 1.0 - dones[env, t].float()
            else:
                next_value = values[env, t + 1]
                next_non_terminal = 1.0 - (dones[env, t] & ~truncated[env, t]).float()
            if dones[env, t] and not truncated[env, t]:
                last_gae = torch.zeros((), dtype=rewards.dtype)
            delta = rewards[env, t] + gamma * next_value * next_non_terminal - values[env, t]
            last_gae = delta + gamma * gae_lambda * next_non_terminal * last_gae
            advantages[env, t] = last_gae
        returns[env, :n] = advantages[env, :n] + values[env, :n]
    return advantages, returns


def normalize_advantages(advantages: torch.Tensor, step_counts: Sequence[int]) -> torch.Tensor:
    """Global mean / population std over all valid advantages, + 1e-8; padded entries untouched."""
    valid = torch.cat([advantages[env, : int(n)] for env, n in enumerate(step_counts)])
    mean = valid.mean()
    std = valid.std(correction=0)
    out = advantages.clone()
    for env, n in enumerate(step_counts):
        out[env, : int(n)] = (advantages[env, : int(n)] - mean) / (std + 1e-8)
    return out


def valid_mask(step_counts: Sequence[int], num_steps: int) -> torch.Tensor:
    counts = torch.as_tensor([int(n) for n in step_counts])
    return torch.arange(num_steps)[None, :] < counts[:, None]


@dataclass
class ReferenceConfig:
    gamma: float = 0.995
    gae_lambda: float = 0.98
    clip_ratio: float = 0.2
    value_coef: float = 0.5
    clip_value: bool = True
    value_clip: float = 10.0
    entropy_coef: float = 0.05
    entropy_coef_min: float = 0.01
    entropy_coef_per_head: dict[str, float] = field(default_factory=lambda: dict(ENTROPY_COEF_PER_HEAD))
    max_grad_norm: float = 1.0
    target_kl: float | None = 0.015
    lr: float = 3e-4

    def get_entropy_coef(self) -> float:  # no annealing (entropy_anneal_steps = 0, the loop default)
        return max(self.entropy_coef, self.entropy_coef_min)


def make_optimizer(network: torch.nn.Module, config: ReferenceConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(network.parameters(), lr=config.lr, eps=1e-5, foreach=False)


def compute_loss(
    network: FactoredRecurrentActorCritic,
    data: dict,
    rows: Sequence[int],
    config: ReferenceConfig,
) -> tuple[torch.Tensor, dict]:
    """One forward of ``evaluate_actions`` on the env rows ``rows`` and upstream's loss on its valid steps.

    ``data`` holds env-major ``[E, T, ...]`` tensors: states, blueprint_indices, actions/old_log_probs/masks
    dicts, values, returns, advantages (normalised), valid_mask, initial_hidden (h, c) each ``[L, E, H]``.
    Returns (loss, info) with info holding the per-term values and ``approx_kl`` (a float).
    """
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    states = data["states"][idx]
    bp = data["blueprint_indices"][idx]
    actions = {h: data["actions"][h][idx] for h in HEAD_NAMES}
    masks = {h: data["masks"][h][idx] for h in HEAD_NAMES}
    hidden = (data["initial_hidden"][0][:, idx].contiguous(), data["initial_hidden"][1][:, idx].contiguous())
    vm = data["valid_mask"][idx]

    log_probs, values, entropy, _ = network.evaluate_actions(
        states,
        bp,
        actions,
        slot_mask=masks["slot"],
        blueprint_mask=masks["blueprint"],
        style_mask=masks["style"],
        tempo_mask=masks["tempo"],
        alpha_target_mask=masks["alpha_target"],
        alpha_speed_mask=masks["alpha_speed"],
        alpha_curve_mask=masks["alpha_curve"],
        op_mask=masks["op"],
        hidden=hidden,
    )
    log_probs = {k: v[vm] for k, v in log_probs.items()}
    entropy = {k: v[vm] for k, v in entropy.items()}
    values = values[vm]
    normalized_advantages = data["advantages"][idx][vm]
    returns = data["returns"][idx][vm]
    old_values = data["values"][idx][vm]
    old_log_probs = {h: data["old_log_probs"][h][idx][vm] for h in HEAD_NAMES}
    valid_op_actions = actions["op"][vm]
    head_masks = compute_causal_masks(valid_op_actions)
    per_head_advantages = {h: normalized_advantages * head_masks[h].float() for h in HEAD_NAMES}

    per_head_ratios = {}
    log_ratios_for_kl = {}
    for key in HEAD_NAMES:
        log_ratio = log_probs[key] - old_log_probs[key]
        log_ratios_for_kl[key] = log_ratio
        per_head_ratios[key] = torch.exp(torch.clamp(log_ratio, min=-20.0, max=20.0))

    with torch.no_grad():
        head_kls = []
        total_weight = 0.0
        n_valid = int(valid_op_actions.numel())
        for key in HEAD_NAMES:
            mask = head_masks[key].float()
            log_ratio = log_ratios_for_kl[key]
            kl_per_step = (torch.exp(log_ratio) - 1) - log_ratio
            n_relevant = mask.sum().clamp(min=1)
            head_kl = (kl_per_step * mask).sum() / n_relevant
            weight = n_relevant / max(n_valid, 1)
            head_kls.append(weight * head_kl)
            total_weight = total_weight + weight
        approx_kl = (torch.stack(head_kls).sum() / total_weight).item()

    eps = config.clip_ratio
    policy_loss = 0
    per_head_policy = {}
    for key in HEAD_NAMES:
        ratio = per_head_ratios[key]
        adv = per_head_advantages[key]
        mask = head_masks[key].float()
        surr1 = ratio * adv
        surr2 = torch.clamp(ratio, 1.0 - eps, 1.0 + eps) * adv
        clipped_surr = torch.min(surr1, surr2)
        n_valid_head = mask.sum().clamp(min=1)
        head_loss = -(clipped_surr * mask).sum() / n_valid_head
        per_head_policy[key] = head_loss
        policy_loss = policy_loss + head_loss

    if config.clip_value:
        values_clipped = old_values + torch.clamp(values - old_values, -config.value_clip, config.value_clip)
        value_loss_unclipped = (values - returns) ** 2
        value_loss_clipped = (values_clipped - returns) ** 2
        value_loss = 0.5 * torch.max(value_loss_unclipped, value_loss_clipped).mean()
    else:
        value_loss = ((values - returns) ** 2).mean()

    entropy_loss = 0
    for key, ent in entropy.items():
        head_coef = config.entropy_coef_per_head.get(key, 1.0)
        mask = head_masks[key].float()
        n_valid_head = mask.sum().clamp(min=1)
        masked_ent = (ent * mask).sum() / n_valid_head
        entropy_loss = entropy_loss - head_coef * masked_ent

    loss = policy_loss + config.value_coef * value_loss + config.get_entropy_coef() * entropy_loss
    info = {
        "policy_loss": policy_loss,
        "policy_loss_per_head": per_head_policy,
        "value_loss": value_loss,
        "entropy": -entropy_loss,
        "approx_kl": approx_kl,
    }
    return loss, info


def prepare_data(
    trajectory: dict,
    step_counts: Sequence[int],
    config: ReferenceConfig,
) -> dict:
    """GAE + normalisation on env-major buffer tensors (what ``update()`` does first)."""
    advantages, returns = compute_advantages_and_returns(
        trajectory["rewards"],
        trajectory["values"],
        trajectory["dones"],
        trajectory["truncated"],
        trajectory["bootstrap_values"],
        step_counts,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
    )
    data = dict(trajectory)
    data["advantages"] = normalize_advantages(advantages, step_counts)
    data["returns"] = returns
    data["valid_mask"] = valid_mask(step_counts, trajectory["rewards"].shape[1])
    return data


def update(
    network: FactoredRecurrentActorCritic,
    optimizer: torch.optim.Optimizer,
    trajectory: dict,
    step_counts: Sequence[int],
    config: ReferenceConfig,
    minibatch_order: Sequence[Sequence[int]] | None = None,
) -> dict:
    """GAE, then one optimiser step per minibatch in ``minibatch_order`` (default: all envs, one step), each
    preceded by the KL check; an over-threshold KL stops the update before its step."""
    data = prepare_data(trajectory, step_counts, config)
    num_envs = trajectory["rewards"].shape[0]
    order = [list(range(num_envs))] if minibatch_order is None else [list(r) for r in minibatch_order]
    metrics: dict = {"approx_kl": [], "policy_loss": [], "value_loss": [], "grad_norm": [], "early_stopped": False}
    for rows in order:
        loss, info = compute_loss(network, data, rows, config)
        metrics["approx_kl"].append(info["approx_kl"])
        if config.target_kl is not None and info["approx_kl"] > 1.5 * config.target_kl:
            metrics["early_stopped"] = True
            break
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(network.parameters(), config.max_grad_norm)
        optimizer.step()
        metrics["policy_loss"].append(float(info["policy_loss"].detach()))
        metrics["value_loss"].append(float(info["value_loss"].detach()))
        metrics["grad_norm"].append(float(grad_norm))
    return metrics


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    var_returns = returns.var()
    if var_returns <= 1e-8:
        return 0.0
    return float(1 - (returns - values).var() / var_returns)


__all__ = [
    "ENTROPY_COEF_PER_HEAD",
    "HEAD_NAMES",
    "ReferenceConfig",
    "compute_causal_masks",
    "compute_advantages_and_returns",
    "normalize_advantages",
    "valid_mask",
    "make_optimizer",
    "compute_loss",
    "prepare_data",
    "update",
    "explained_variance",
]
