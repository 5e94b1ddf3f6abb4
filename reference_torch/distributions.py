"""Masked categorical as upstream's ``tamiyo/policy/action_masks.py`` (docs/policy-and-ppo.md#distributions).

Counterpart of the JAX port's ``distributions`` module. Written the upstream way on purpose (Categorical wrapper, class-level
``validate`` toggle, float32 ``log(num_valid)``), since it is the yardstick the JAX port is measured against.
"""

from __future__ import annotations

import torch
from torch.distributions import Categorical

from reference_torch.leyline import MASKED_LOGIT_VALUE

__all__ = ["InvalidStateMachineError", "MaskedCategorical", "_validate_action_mask", "_validate_logits"]


class InvalidStateMachineError(RuntimeError):
    """Raised when action mask has no valid actions (state machine bug)."""


def _validate_action_mask(mask: torch.Tensor) -> None:
    valid_count = mask.sum(dim=-1)
    if (valid_count == 0).any():
        raise InvalidStateMachineError(
            f"No valid actions available. Mask: {mask}. This indicates a bug in the Kasmina state machine."
        )


def _validate_logits(logits: torch.Tensor) -> None:
    if torch.isnan(logits).any() or torch.isinf(logits).any():
        raise ValueError(
            "MaskedCategorical received logits with inf/nan values. "
            "This indicates network instability (gradient explosion, numerical overflow). "
            f"Logits stats: min={logits.min().item():.4g}, max={logits.max().item():.4g}, "
            f"nan_count={torch.isnan(logits).sum().item()}, inf_count={torch.isinf(logits).sum().item()}"
        )


class MaskedCategorical:
    """Categorical over masked logits (fill -1e4 in the logits' dtype) with normalised entropy."""

    validate: bool = True  # class-level toggle; upstream's training never switches it off

    def __init__(self, logits: torch.Tensor, mask: torch.Tensor):
        if MaskedCategorical.validate:
            _validate_action_mask(mask)
            _validate_logits(logits)
        self.mask = mask
        mask_value = torch.tensor(MASKED_LOGIT_VALUE, device=logits.device, dtype=logits.dtype)
        self.masked_logits = logits.masked_fill(~mask, mask_value)
        self._dist = Categorical(logits=self.masked_logits)

    @property
    def probs(self) -> torch.Tensor:
        return self._dist.probs

    def sample(self) -> torch.Tensor:
        return self._dist.sample()

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return self._dist.log_prob(actions)

    def entropy(self) -> torch.Tensor:
        probs = self._dist.probs
        log_probs = self._dist.logits - self._dist.logits.logsumexp(dim=-1, keepdim=True)
        raw_entropy = -(probs * log_probs * self.mask).sum(dim=-1)
        num_valid = self.mask.sum(dim=-1).clamp(min=1)
        max_entropy = torch.log(num_valid.float())
        normalized = raw_entropy / max_entropy.clamp(min=1e-8)
        return torch.where(num_valid == 1, torch.zeros_like(normalized), normalized)
