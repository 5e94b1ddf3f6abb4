"""``FactoredRecurrentActorCritic`` exactly as upstream's ``tamiyo/networks/factored_lstm.py``
(docs/policy-and-ppo.md#network).

Same constructor signature and defaults, module registration order (hence state_dict key order), buffers and
methods (``forward``, ``get_action``, ``evaluate_actions``, ``get_initial_hidden``, ``_compute_value``), so an
upstream state_dict loads with ``strict=True``. Counterpart of the JAX port's ``network`` + ``policy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_torch.distributions import (
    InvalidStateMachineError,
    MaskedCategorical,
    _validate_action_mask,
    _validate_logits,
)
from reference_torch.leyline import (
    BLUEPRINT_NULL_INDEX,
    DEFAULT_BLUEPRINT_EMBED_DIM,
    HEAD_NAMES,
    MASKED_LOGIT_VALUE,
    NUM_BLUEPRINTS,
    NUM_OPS,
    GerminationStyle,
    LifecycleOp,
    SlotConfig,
    get_action_head_sizes,
)

__all__ = ["BlueprintEmbedding", "FactoredRecurrentActorCritic", "GetActionResult", "InvalidStateMachineError"]

DEFAULT_FEATURE_DIM = 512
DEFAULT_LSTM_HIDDEN_DIM = 512


@dataclass(frozen=True, slots=True)
class GetActionResult:
    actions: dict[str, torch.Tensor]
    log_probs: dict[str, torch.Tensor]
    values: torch.Tensor  # Q(s, sampled/argmax op)
    hidden: tuple[torch.Tensor, torch.Tensor]
    sampled_op: torch.Tensor
    op_logits: torch.Tensor | None = None


class BlueprintEmbedding(nn.Module):
    """(NUM_BLUEPRINTS + 1) x embed_dim table, N(0, 0.02²); every negative index → the null row 13."""

    def __init__(self, num_blueprints: int = NUM_BLUEPRINTS, embed_dim: int = DEFAULT_BLUEPRINT_EMBED_DIM):
        super().__init__()
        self.embedding = nn.Embedding(num_blueprints + 1, embed_dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.register_buffer("_null_idx", torch.tensor(BLUEPRINT_NULL_INDEX, dtype=torch.int64))

    def forward(self, blueprint_indices: torch.Tensor) -> torch.Tensor:
        safe_idx = torch.where(blueprint_indices < 0, self._null_idx, blueprint_indices)
        return self.embedding(safe_idx)


class FactoredRecurrentActorCritic(nn.Module):
    def __init__(
        self,
        state_dim: int,
        num_slots: int | None = None,
        num_blueprints: int | None = None,
        num_styles: int | None = None,
        num_tempo: int | None = None,
        num_alpha_targets: int | None = None,
        num_alpha_speeds: int | None = None,
        num_alpha_curves: int | None = None,
        num_ops: int | None = None,
        feature_dim: int = DEFAULT_FEATURE_DIM,
        lstm_hidden_dim: int = DEFAULT_LSTM_HIDDEN_DIM,
        lstm_layers: int = 1,
        slot_config: SlotConfig | None = None,
    ):
        super().__init__()
        if slot_config is None:
            slot_config = SlotConfig.default()
        head_sizes = get_action_head_sizes(slot_config)

        self.state_dim = state_dim
        self.num_slots = head_sizes["slot"] if num_slots is None else num_slots
        self.num_blueprints = head_sizes["blueprint"] if num_blueprints is None else num_blueprints
        self.num_styles = head_sizes["style"] if num_styles is None else num_styles
        self.num_tempo = head_sizes["tempo"] if num_tempo is None else num_tempo
        self.num_alpha_targets = head_sizes["alpha_target"] if num_alpha_targets is None else num_alpha_targets
        self.num_alpha_speeds = head_sizes["alpha_speed"] if num_alpha_speeds is None else num_alpha_speeds
        self.num_alpha_curves = head_sizes["alpha_curve"] if num_alpha_curves is None else num_alpha_curves
        self.num_ops = head_sizes["op"] if num_ops is None else num_ops
        self.lstm_hidden_dim = lstm_hidden_dim
        self.lstm_layers = lstm_layers

        blueprint_embed_size = self.num_slots * DEFAULT_BLUEPRINT_EMBED_DIM
        self.feature_net = nn.Sequential(
            nn.Linear(state_dim + blueprint_embed_size, feature_dim),
            nn.LayerNorm(feature_dim),
            nn.ReLU(),
        )
        self.lstm = nn.LSTM(
            input_size=feature_dim, hidden_size=lstm_hidden_dim, num_layers=lstm_layers, batch_first=True
        )
        self.lstm_ln = nn.LayerNorm(lstm_hidden_dim)

        head_hidden = lstm_hidden_dim // 2

        def small_head(n: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(lstm_hidden_dim, head_hidden), nn.ReLU(), nn.Linear(head_hidden, n))

        # Registration order = upstream's = state_dict key order (the blueprint head comes after the embedding).
        self.slot_head = small_head(self.num_slots)
        self.style_head = small_head(self.num_styles)
        self.tempo_head = small_head(self.num_tempo)
        self.alpha_target_head = small_head(self.num_alpha_targets)
        self.alpha_speed_head = small_head(self.num_alpha_speeds)
        self.alpha_curve_head = small_head(self.num_alpha_curves)
        self.op_head = small_head(self.num_ops)
        self.blueprint_embedding = BlueprintEmbedding(num_blueprints=NUM_BLUEPRINTS, embed_dim=DEFAULT_BLUEPRINT_EMBED_DIM)
        self._blueprint_embed_total_dim = self.num_slots * DEFAULT_BLUEPRINT_EMBED_DIM
        self.blueprint_head = nn.Sequential(
            nn.Linear(lstm_hidden_dim, lstm_hidden_dim),
            nn.ReLU(),
            nn.Linear(lstm_hidden_dim, head_hidden),
            nn.ReLU(),
            nn.Linear(head_hidden, self.num_blueprints),
        )
        self.value_head = nn.Sequential(
            nn.Linear(lstm_hidden_dim + NUM_OPS, head_hidden),
            nn.ReLU(),
            nn.Linear(head_hidden, 1),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.orthogonal_(module.weight, gain=math.sqrt(2))
                nn.init.zeros_(module.bias)
        for head in [
            self.slot_head,
            self.blueprint_head,
            self.style_head,
            self.tempo_head,
            self.alpha_target_head,
            self.alpha_speed_head,
            self.alpha_curve_head,
            self.op_head,
        ]:
            nn.init.orthogonal_(head[-1].weight.data, gain=0.01)
        nn.init.orthogonal_(self.value_head[-1].weight.data, gain=1.0)
        for name, param in self.lstm.named_parameters():
            if "weight_ih" in name or "weight_hh" in name:
                nn.init.orthogonal_(param.data)
            elif "bias" in name:
                nn.init.zeros_(param)
                n = param.size(0)
                param.data[n // 4 : n // 2].fill_(1.0)  # in each of bias_ih, bias_hh: effective 2.0

    def get_initial_hidden(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Default dtype, as upstream (float32 even after .double(): pass a hidden explicitly then).
        h = torch.zeros(self.lstm_layers, batch_size, self.lstm_hidden_dim, device=device)
        c = torch.zeros(self.lstm_layers, batch_size, self.lstm_hidden_dim, device=device)
        return h, c

    def _compute_value(self, lstm_out: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        op_one_hot = F.one_hot(op, num_classes=NUM_OPS).float()
        value_input = torch.cat([lstm_out, op_one_hot], dim=-1)
        return self.value_head(value_input).squeeze(-1)

    def _trunk(self, state, blueprint_indices, hidden):
        bp_emb = self.blueprint_embedding(blueprint_indices)
        bp_emb_flat = bp_emb.flatten(start_dim=2)
        state_with_bp = torch.cat([state, bp_emb_flat], dim=-1)
        features = self.feature_net(state_with_bp)
        lstm_out, new_hidden = self.lstm(features, hidden)
        lstm_out = self.lstm_ln(lstm_out)
        logits = {
            "slot": self.slot_head(lstm_out),
            "blueprint": self.blueprint_head(lstm_out),
            "style": self.style_head(lstm_out),
            "tempo": self.tempo_head(lstm_out),
            "alpha_target": self.alpha_target_head(lstm_out),
            "alpha_speed": self.alpha_speed_head(lstm_out),
            "alpha_curve": self.alpha_curve_head(lstm_out),
            "op": self.op_head(lstm_out),
        }
        return logits, lstm_out, new_hidden

    @staticmethod
    def _apply_masks(logits: dict[str, torch.Tensor], masks: dict[str, torch.Tensor | None]) -> None:
        for key in HEAD_NAMES:
            if masks[key] is not None:
                logits[key] = logits[key].masked_fill(~masks[key], MASKED_LOGIT_VALUE)

    def forward(
        self,
        state: torch.Tensor,  # [batch, seq_len, state_dim]
        blueprint_indices: torch.Tensor,  # [batch, seq_len, num_slots]
        hidden: tuple[torch.Tensor, torch.Tensor] | None = None,
        slot_mask: torch.Tensor | None = None,
        blueprint_mask: torch.Tensor | None = None,
        style_mask: torch.Tensor | None = None,
        tempo_mask: torch.Tensor | None = None,
        alpha_target_mask: torch.Tensor | None = None,
        alpha_speed_mask: torch.Tensor | None = None,
        alpha_curve_mask: torch.Tensor | None = None,
        op_mask: torch.Tensor | None = None,
    ) -> dict:
        batch_size, seq_len = state.size(0), state.size(1)
        if hidden is None:
            hidden = self.get_initial_hidden(batch_size, state.device)
        logits, lstm_out, new_hidden = self._trunk(state, blueprint_indices, hidden)
        masks = dict(
            zip(
                HEAD_NAMES,
                (slot_mask, blueprint_mask, style_mask, tempo_mask, alpha_target_mask, alpha_speed_mask,
                 alpha_curve_mask, op_mask),
            )
        )
        self._apply_masks(logits, masks)
        if MaskedCategorical.validate:
            if op_mask is not None and (op_mask.sum(dim=-1) == 0).any():
                raise InvalidStateMachineError(
                    f"No valid op actions available in forward(). Mask: {op_mask}. "
                    "This indicates a bug in the Kasmina state machine."
                )
            _validate_logits(logits["op"])
        op_probs = F.softmax(logits["op"], dim=-1)
        sampled_op = torch.multinomial(op_probs.reshape(-1, self.num_ops), num_samples=1).squeeze(-1)
        sampled_op = sampled_op.reshape(batch_size, seq_len)
        value = self._compute_value(lstm_out, sampled_op)
        out = {f"{key}_logits": logits[key] for key in HEAD_NAMES}
        out.update(value=value, lstm_out=lstm_out, sampled_op=sampled_op, hidden=new_hidden)
        return out

    def get_action(
        self,
        state: torch.Tensor,  # [batch, state_dim] or [batch, 1, state_dim]
        blueprint_indices: torch.Tensor,  # [batch, num_slots] or [batch, 1, num_slots]
        hidden: tuple[torch.Tensor, torch.Tensor] | None = None,
        slot_mask: torch.Tensor | None = None,
        blueprint_mask: torch.Tensor | None = None,
        style_mask: torch.Tensor | None = None,
        tempo_mask: torch.Tensor | None = None,
        alpha_target_mask: torch.Tensor | None = None,
        alpha_speed_mask: torch.Tensor | None = None,
        alpha_curve_mask: torch.Tensor | None = None,
        op_mask: torch.Tensor | None = None,
        deterministic: bool = False,
        return_op_logits: bool = False,
    ) -> GetActionResult:
        if state.dim() == 2:
            state = state.unsqueeze(1)
        if blueprint_indices.dim() == 2:
            blueprint_indices = blueprint_indices.unsqueeze(1)
        raw_masks = (slot_mask, blueprint_mask, style_mask, tempo_mask, alpha_target_mask, alpha_speed_mask,
                     alpha_curve_mask, op_mask)
        masks3 = [m.unsqueeze(1) if m is not None and m.dim() == 2 else m for m in raw_masks]

        with torch.inference_mode():
            output = self.forward(state, blueprint_indices, hidden, *masks3)
            actions: dict[str, torch.Tensor] = {}
            log_probs: dict[str, torch.Tensor] = {}
            masks = {k: (m[:, 0, :] if m is not None else None) for k, m in zip(HEAD_NAMES, masks3)}
            head_logits = {k: output[f"{k}_logits"][:, 0, :] for k in HEAD_NAMES}

            def _sample_head(key: str, *, mask_override: torch.Tensor | None = None) -> None:
                logits = head_logits[key]
                mask = mask_override if mask_override is not None else masks[key]
                if mask is None:
                    mask = torch.ones_like(logits, dtype=torch.bool)
                if MaskedCategorical.validate:
                    _validate_action_mask(mask)
                    _validate_logits(logits)
                masked_logits = logits.masked_fill(~mask, MASKED_LOGIT_VALUE)
                if deterministic:
                    action = masked_logits.argmax(dim=-1)
                else:
                    probs = F.softmax(masked_logits, dim=-1)
                    action = torch.multinomial(probs, num_samples=1).squeeze(-1)
                all_log_probs = F.log_softmax(masked_logits, dim=-1)
                actions[key] = action
                log_probs[key] = all_log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)

            op_logits = head_logits["op"]
            op_mask2 = masks["op"]
            if op_mask2 is None:
                op_mask2 = torch.ones_like(op_logits, dtype=torch.bool)
            if MaskedCategorical.validate:
                _validate_action_mask(op_mask2)
                _validate_logits(op_logits)
            op_masked_logits = op_logits.masked_fill(~op_mask2, MASKED_LOGIT_VALUE)
            if deterministic:
                selected_op = op_masked_logits.argmax(dim=-1)
                lstm_out = output["lstm_out"][:, 0, :]
                value = self._compute_value(lstm_out.unsqueeze(1), selected_op.unsqueeze(1)).squeeze(1)
            else:
                selected_op = output["sampled_op"][:, 0]
                value = output["value"][:, 0]
            actions["op"] = selected_op
            log_probs["op"] = F.log_softmax(op_masked_logits, dim=-1).gather(-1, selected_op.unsqueeze(-1)).squeeze(-1)

            style_mask_override = masks["style"]
            if style_mask_override is None:
                style_mask_override = torch.ones_like(head_logits["style"], dtype=torch.bool)
            style_mask_override = style_mask_override.clone()
            style_irrelevant = (selected_op != LifecycleOp.GERMINATE) & (selected_op != LifecycleOp.SET_ALPHA_TARGET)
            style_mask_override[style_irrelevant] = False
            style_mask_override[style_irrelevant, int(GerminationStyle.SIGMOID_ADD)] = True
            _sample_head("style", mask_override=style_mask_override)
            for key in ["slot", "blueprint", "tempo", "alpha_target", "alpha_speed", "alpha_curve"]:
                _sample_head(key)

            return GetActionResult(
                actions=actions,
                log_probs=log_probs,
                values=value,
                hidden=output["hidden"],
                sampled_op=selected_op,
                op_logits=head_logits["op"] if return_op_logits else None,
            )

    def evaluate_actions(
        self,
        states: torch.Tensor,  # [batch, seq_len, state_dim]
        blueprint_indices: torch.Tensor,  # [batch, seq_len, num_slots]
        actions: dict[str, torch.Tensor],  # each [batch, seq_len]
        slot_mask: torch.Tensor | None = None,
        blueprint_mask: torch.Tensor | None = None,
        style_mask: torch.Tensor | None = None,
        tempo_mask: torch.Tensor | None = None,
        alpha_target_mask: torch.Tensor | None = None,
        alpha_speed_mask: torch.Tensor | None = None,
        alpha_curve_mask: torch.Tensor | None = None,
        op_mask: torch.Tensor | None = None,
        hidden: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        if hidden is None:
            hidden = self.get_initial_hidden(states.size(0), states.device)
        head_logits, lstm_out, new_hidden = self._trunk(states, blueprint_indices, hidden)
        masks = dict(
            zip(
                HEAD_NAMES,
                (slot_mask, blueprint_mask, style_mask, tempo_mask, alpha_target_mask, alpha_speed_mask,
                 alpha_curve_mask, op_mask),
            )
        )
        self._apply_masks(head_logits, masks)
        op_actions = actions["op"]
        value = self._compute_value(lstm_out, op_actions)
        log_probs: dict[str, torch.Tensor] = {}
        entropy: dict[str, torch.Tensor] = {}
        for key in HEAD_NAMES:
            logits = head_logits[key]
            batch, seq, action_dim = logits.shape
            mask = masks[key]
            if mask is None:
                mask = torch.ones_like(logits, dtype=torch.bool)
            if key == "style":
                style_irrelevant = (op_actions != LifecycleOp.GERMINATE) & (op_actions != LifecycleOp.SET_ALPHA_TARGET)
                mask = mask.masked_fill(style_irrelevant.unsqueeze(-1).expand_as(mask), False)
                idx = int(GerminationStyle.SIGMOID_ADD)
                mask[..., idx] = mask[..., idx] | style_irrelevant
            dist = MaskedCategorical(logits=logits.reshape(-1, action_dim), mask=mask.reshape(-1, action_dim))
            log_probs[key] = dist.log_prob(actions[key].reshape(-1)).reshape(batch, seq)
            entropy[key] = dist.entropy().reshape(batch, seq)
        return log_probs, value, entropy, new_hidden
