"""``LMOracle``: the env's measurements from a real transformer host trained with its seeds on next-token prediction
(docs/environment.md#transformer-host), one env at a time; vmap it with the env. The transformer counterpart of
``oracle.HostOracle`` with the same step: seeds born/fossilised since the last call → ``minibatches_per_step`` SGD
steps (``lax.scan``) → fused validation of the K alpha rows → the seedless twin's accuracy under ``fixed``.

Per slot, by stage (docs/environment.md#blending, transformer row):

* no module / GERMINATED: y = h, the seed gets no gradient;
* TRAINING: the seed reads a detached h; y = h + (s − stop_gradient(s)) — the value is h, the host's gradient is
  the host-only one, ∂L/∂s = ∂L/∂y;
* BLENDING / HOLDING / FOSSILIZED: y = blend(h, s(h), alpha) with the seed reading h *undetached* (transformer
  blending drops isolation), so the host also learns through the seed; where alpha is 0, y = h exactly.

Optimisation, the GATE network (quirk 7) and the seedless twin (quirk 15) are the CNN host env's. Accuracy is
next-token top-1 over every position of the validation windows, from per-token correctness [K, V, T]; the loss is
the mean token cross-entropy (upstream cannot run this pass in its PPO loop, docs/environment.md#data: its fused
validation reshapes correctness to [K, B]).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from esper_jax.env import signals
from esper_jax.env.config import EnvConfig, HostConfig
from esper_jax.env.host import transformer as tf
from esper_jax.env.host.seed_oracle import SeedOracle
from esper_jax.env.host.seed_sgd import (
    GradientStats,
    SlotControl,
    SlotParams,
    gradient_stats,
    host_sgd,
    keep_sampled,
    seed_flags,
    slot_sgd,
)
from esper_jax.env.host.tokens import TokenData
from esper_jax.env.host.transformer_blueprints import (
    BRANCH_OF_BLUEPRINT,
    SequenceGateLayout,
    TransformerSlotLayout,
    blend,
)
from esper_jax.env.oracle import ConfigLayout, SlotView


@struct.dataclass
class LMHostState:
    host: tf.TransformerParams
    host_momentum: tf.TransformerParams
    slots: tuple[SlotParams, ...]  # one per enabled slot, network order
    seed_id: jnp.ndarray  # int32 [S]: the seed the slot's parameters belong to (-1: none yet)
    stage: jnp.ndarray  # int32 [S]: the stage at the last measurement
    gate_live: jnp.ndarray  # bool [S]
    twin: tf.TransformerParams | None = None  # ``fixed`` only: the seedless twin (quirk 15)
    twin_momentum: tf.TransformerParams | None = None


def _token_loss(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Cross-entropy per token: logits [.., T, V], targets int [.., T] → [.., T]."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


@dataclasses.dataclass(frozen=True)
class LMOracle(SeedOracle):
    """Real transformer hosts (hashable: part of the static env; the tokens hash by content). The measurement step
    (``measure``), seed bookkeeping and the twin are ``SeedOracle``'s."""

    branch_of_blueprint = BRANCH_OF_BLUEPRINT
    blend_fn = staticmethod(blend)

    spec: tf.TransformerSpec
    layouts: tuple[TransformerSlotLayout, ...]
    gates: tuple[SequenceGateLayout, ...]
    slot_segments: tuple[int, ...]  # the segment each enabled slot follows
    host: HostConfig
    batch_size: int
    compat: str
    layout: ConfigLayout
    data: TokenData

    @classmethod
    def from_config(cls, cfg: EnvConfig, data: TokenData) -> LMOracle:
        task = cfg.task_spec
        if task.topology != "transformer":
            raise ValueError(f"LMOracle builds transformer hosts; task {cfg.task!r} has topology {task.topology!r}")
        if not isinstance(data, TokenData):
            raise TypeError(f"dataset must be an esper_jax.env.host.tokens.TokenData, got {type(data).__name__}")
        vocab = cfg.lm.vocab(task.num_classes)
        if data.vocab_size != vocab:
            raise ValueError(f"the tokens' vocabulary {data.vocab_size} differs from env.lm.vocab_size {vocab}")
        if data.block_size != task.block_size:
            raise ValueError(f"task {cfg.task!r} has block_size {task.block_size}, the validation windows {data.block_size}")
        if data.num_train <= task.block_size + 1:
            raise ValueError(f"{data.num_train} train tokens cannot fill a window of {task.block_size + 1}")
        d = task.slot_channels[0]
        spec = tf.TransformerSpec(vocab, d, task.n_head, task.n_layer, task.block_size,
                                  len(task.slot_channels), cfg.host.norm_eps)
        return cls(
            spec=spec,
            layouts=tuple(TransformerSlotLayout(c, cfg.compat, cfg.host.norm_eps) for c in cfg.slot_channels),
            gates=tuple(SequenceGateLayout(c) for c in cfg.slot_channels),
            slot_segments=cfg.slot_columns,
            host=cfg.host,
            batch_size=cfg.host_batch_size,
            compat=cfg.compat,
            layout=signals.config_layout(cfg),
            data=data,
        )

    # ---- the network with its slots ------------------------------------------------------------------------

    def _slot(self, i: int, slots: tuple[SlotParams, ...], ctrl: SlotControl, h: jnp.ndarray) -> jnp.ndarray:
        # Isolated (detached) input in TRAINING only; blended stages read h itself.
        x_s = jnp.where(ctrl.blended[i], h, jax.lax.stop_gradient(h))
        s = self.layouts[i].apply(ctrl.branch[i], slots[i].seed, x_s)
        gate = self.gates[i].apply(slots[i].gate, x_s)
        blended = blend(ctrl.algorithm[i], h, s, x_s, ctrl.alpha[i], gate)
        straight = h + (s - jax.lax.stop_gradient(s))
        on = ctrl.blended[i] & (ctrl.alpha[i] > 0.0)
        return jnp.where(on, blended, jnp.where(ctrl.straight_through[i], straight, h))

    def forward(self, host: tf.TransformerParams, slots, ctrl: SlotControl, tokens: jnp.ndarray) -> jnp.ndarray:
        """Logits [N, T, V] of the host with its slots."""
        slot_of = {seg: i for i, seg in enumerate(self.slot_segments)}

        def inject(seg: int, h: jnp.ndarray) -> jnp.ndarray:
            return self._slot(slot_of[seg], slots, ctrl, h) if seg in slot_of else h

        return tf.forward(self.spec, host, tokens, inject)

    def host_only(self, host: tf.TransformerParams, tokens: jnp.ndarray) -> jnp.ndarray:
        return tf.forward(self.spec, host, tokens, tf.no_injection)

    # ---- Oracle protocol -----------------------------------------------------------------------------------

    def init(self, key: jax.Array) -> LMHostState:
        return self._fresh_state(LMHostState, tf.init_host(self.spec, key))

    def _windows(self, key: jax.Array, shape: tuple[int, ...]) -> jnp.ndarray:
        """Random train windows int [*shape, block_size + 1]."""
        span = self.spec.block_size + 1
        starts = jax.random.randint(key, shape, 0, self.data.num_train - span + 1)
        return jnp.asarray(self.data.train)[starts[..., None] + jnp.arange(span)]

    def _train(self, state: LMHostState, view: SlotView, key: jax.Array):
        hc = self.host
        ctrl = self.control(view)
        flags = seed_flags(view, state.gate_live, self.compat)
        m = hc.minibatches_per_step
        windows = self._windows(key, (m, self.batch_size))

        def loss_fn(trainable, w):
            host, slots = trainable
            return jnp.mean(_token_loss(self.forward(host, slots, ctrl, w[:, :-1]), w[:, 1:]))

        def twin_loss(host, w):
            return jnp.mean(_token_loss(self.host_only(host, w[:, :-1]), w[:, 1:]))

        def body(carry, inputs):
            st, stats = carry
            index, w = inputs
            host_g, slot_g = jax.grad(loss_fn)((st.host, st.slots), w)
            fresh = gradient_stats(host_g, self.spec.param_count(), self.layouts, tuple(g.seed for g in slot_g),
                                   ctrl.branch, flags.sampled)
            stats = keep_sampled(index, hc.gradient_stride, fresh, stats)
            host, host_m = host_sgd(st.host, st.host_momentum, host_g, hc)
            if self.has_twin:
                twin, twin_m = host_sgd(st.twin, st.twin_momentum, jax.grad(twin_loss)(st.twin, w), hc)
                st = st.replace(twin=twin, twin_momentum=twin_m)
            slots = tuple(
                slot_sgd(p, g, flags.learning[i], flags.gate_learning[i], hc)
                for i, (p, g) in enumerate(zip(st.slots, slot_g))
            )
            return (st.replace(host=host, host_momentum=host_m, slots=slots), stats), None

        empty = GradientStats.empty(self.num_slots)
        (state, stats), _ = jax.lax.scan(body, (state, empty), (jnp.arange(m), windows))
        return state, stats

    # ---- fused validation ----------------------------------------------------------------------------------

    def token_scores(self, host: tf.TransformerParams, hidden: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Final hidden states [P, V, T, D] → (next-token top-1 correct bool [P, V, T], token loss [P, V, T]).
        One variant's logits [V, T, vocab] at a time (``lax.map``): at GPT-2's vocabulary they dominate memory."""
        targets = jnp.asarray(self.data.val_windows[:, 1:])

        def one(h):
            logits = tf.head(self.spec, host, h)
            return jnp.argmax(logits, axis=-1) == targets, _token_loss(logits, targets)

        return jax.lax.map(one, hidden)

    def correctness(self, state: LMHostState, view: SlotView, configs: jnp.ndarray):
        """Per-token correctness [K, V, T] and token loss [K, V, T] of the K alpha rows of ``configs`` (the env's
        fused-validation layout), by ``SeedOracle._fused_rows`` as in the CNN host env."""
        tokens = jnp.asarray(self.data.val_windows[:, :-1])
        return self._fused_rows(
            state, view, configs, self.slot_segments,
            lambda inject: self.token_scores(state.host, tf.forward_many(self.spec, state.host, tokens, inject)),
        )

    def validate(self, state: LMHostState, view: SlotView, configs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(next-token accuracy % [K], mean token loss [K]) over the validation windows."""
        correct, loss = self.correctness(state, view, configs)
        return 100.0 * jnp.mean(correct.astype(jnp.float32), axis=(1, 2)), jnp.mean(loss, axis=(1, 2))

    def validate_rows(self, state: LMHostState, view: SlotView, configs: jnp.ndarray):
        """Reference for ``validate``: one full forward per alpha row (any rows, no layout assumed)."""
        tokens = jnp.asarray(self.data.val_windows[:, :-1])
        targets = jnp.asarray(self.data.val_windows[:, 1:])
        base = self.control(view).replace(straight_through=jnp.zeros_like(view.has_module))
        logits = jax.vmap(lambda a: self.forward(state.host, state.slots, base.replace(alpha=a), tokens))(configs)
        targets = jnp.broadcast_to(targets, logits.shape[:-1])
        correct = jnp.argmax(logits, axis=-1) == targets
        return 100.0 * jnp.mean(correct.astype(jnp.float32), axis=(1, 2)), jnp.mean(_token_loss(logits, targets), (1, 2))

    def _twin_accuracy(self, state: LMHostState) -> jnp.ndarray:
        tokens = jnp.asarray(self.data.val_windows[:, :-1])
        twin_hidden = tf.forward_many(self.spec, state.twin, tokens, tf.no_injection)
        return 100.0 * jnp.mean(self.token_scores(state.twin, twin_hidden)[0].astype(jnp.float32))
