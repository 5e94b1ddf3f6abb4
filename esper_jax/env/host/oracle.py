"""``HostOracle``: the env's measurements from a real host network trained with its seeds (docs/environment.md#blending,
#step-order, #counterfactual-validation, #signals-and-observation), one env at a time; vmap it with the env.

``measure`` = bookkeeping of seeds born/fossilised since the last call → ``minibatches_per_step`` SGD steps
(``lax.scan``) → the fused validation of the K alpha configurations, vmapped over the distinct feature variants
the configurations induce (they share the network up to their first differing slot; see ``validate``).

Per slot, by stage (docs/environment.md#blending; CNN isolation: the seed always reads a detached copy of the host
features):

* no module / GERMINATED: y = h, the seed gets no gradient;
* TRAINING: y = h + (s − stop_gradient(s)) — the value is h, the host's gradient is the host-only one, ∂L/∂s = ∂L/∂y;
* BLENDING / HOLDING / FOSSILIZED: y = blend(h, s, alpha) with the slot's operator; where alpha is 0, y = h exactly.
  Under ``fixed`` the ADD and GATE blends keep the host's own gradient (∂y/∂h = 1, ``blend.py``), so the host blocks
  before a blended or fossilised slot keep learning; under ``upstream`` ∂y/∂h = 1 − a, zero at full amplitude.

Optimisation (docs/environment.md#blending): the host by SGD (lr, momentum, weight decay) with its gradient norm
clipped; each seed by its own SGD (no weight decay), clipped on its own, stepping in TRAINING, BLENDING, HOLDING and
after fossilisation; frozen seeds (alpha ramping down to a prune) get no update. A seed's optimizer is fresh when it is
germinated and again when it fossilises. Quirk 7: the GATE network stays at its initialisation under ``upstream`` and
trains with its seed's group under ``fixed``.

Under ``fixed`` the state also carries a seedless twin (docs/compat.md, quirk 15): the same initial host, trained on the same
minibatches with the same optimiser and no seed. Its validation accuracy is ``Measurement.reference_accuracy``, what
this host would reach without its seeds, which the ``fixed`` reward judges the seeds against. Under ``upstream`` there
is no twin and the reference is row 0's accuracy (unused).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from esper_jax.env import signals
from esper_jax.env.config import EnvConfig, HostConfig
from esper_jax.env.host import cnn
from esper_jax.env.host.augment import augment
from esper_jax.env.host.blend import GateLayout, blend
from esper_jax.env.host.blueprints import BRANCH_OF_BLUEPRINT, SlotLayout
from esper_jax.env.host.data import Dataset, DeviceData
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
from esper_jax.env.oracle import ConfigLayout, SlotView

__all__ = ["GradientStats", "HostOracle", "HostState", "SlotControl", "SlotParams"]

@struct.dataclass
class HostState:
    host: cnn.HostParams
    host_momentum: cnn.HostParams
    slots: tuple[SlotParams, ...]  # one per enabled slot, in network order (their sizes differ with channels)
    seed_id: jnp.ndarray  # int32 [S]: the seed the slot's parameters belong to (-1: none yet)
    stage: jnp.ndarray  # int32 [S]: the stage seen at the last measurement
    gate_live: jnp.ndarray  # bool [S]: a gate network was in use at the last measurement
    # ``fixed`` only (None under ``upstream``): the seedless twin, the same initial host trained on the same
    # minibatches without any seed, whose validation accuracy is the reward's reference (docs/compat.md, quirk 15).
    twin: cnn.HostParams | None = None
    twin_momentum: cnn.HostParams | None = None
    # ``HostConfig.val_subset`` only (None otherwise): the first validation image of this env's fixed window.
    val_start: jnp.ndarray | None = None


def _cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


@dataclasses.dataclass(frozen=True)
class HostOracle(SeedOracle):
    """Real host networks (hashable: part of the static env; the dataset hashes by content). The measurement step
    (``measure``), seed bookkeeping and the twin are ``SeedOracle``'s."""

    branch_of_blueprint = BRANCH_OF_BLUEPRINT
    blend_fn = staticmethod(blend)

    spec: cnn.HostSpec
    layouts: tuple[SlotLayout, ...]  # per enabled slot
    gates: tuple[GateLayout, ...]
    slot_blocks: tuple[int, ...]  # host block of each enabled slot
    host: HostConfig
    batch_size: int
    compat: str
    layout: ConfigLayout  # the env's fused-validation rows
    data: Dataset
    # The dataset's arrays as compiled code received them (``bind``); None: the dataset's device arrays, which a
    # jitted caller then closes over as constants. Not part of the oracle's identity.
    bound: DeviceData | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    @classmethod
    def from_config(cls, cfg: EnvConfig, data: Dataset) -> HostOracle:
        task = cfg.task_spec
        if task.topology != "cnn":
            raise ValueError(f"the host env builds CNN hosts; task {cfg.task!r} has topology {task.topology!r}")
        if not isinstance(data, Dataset):
            raise TypeError(f"dataset must be an esper_jax.env.host.data.Dataset, got {type(data).__name__}")
        h, w, c = data.image_shape
        if c != task.input_channels:
            raise ValueError(f"task {cfg.task!r} expects {task.input_channels}-channel images, the dataset has {c}")
        if h % (1 << task.pool_layers) or w % (1 << task.pool_layers):
            raise ValueError(
                f"task {cfg.task!r} pools {task.pool_layers} times: image height/width must be divisible by "
                f"{1 << task.pool_layers}, got {(h, w)}"
            )
        if data.num_classes != task.num_classes:
            raise ValueError(f"task {cfg.task!r} has {task.num_classes} classes, the dataset {data.num_classes}")
        if cfg.host.val_subset is not None and cfg.host.val_subset > data.num_val:
            raise ValueError(
                f"HostConfig.val_subset ({cfg.host.val_subset}) exceeds the {data.num_val} validation images"
            )
        if cfg.host.augment and (h < 8 or w < 8):
            raise ValueError(f"HostConfig.augment (4-px random crop) needs images of at least 8×8, got {(h, w)}")
        batch = cfg.host_batch_size
        if cfg.host.minibatches_per_step * batch > data.num_train:
            raise ValueError(
                f"HostConfig.minibatches_per_step × batch size = {cfg.host.minibatches_per_step} × {batch} exceeds "
                f"the {data.num_train} training images (one RL step draws its minibatches without replacement)"
            )
        spec = cnn.HostSpec(
            input_channels=task.input_channels,
            channels=task.slot_channels,
            pool_layers=task.pool_layers,
            kernel_size=task.kernel_size,
            num_classes=task.num_classes,
            eps=cfg.host.norm_eps,
        )
        return cls(
            spec=spec,
            layouts=tuple(SlotLayout(c, cfg.compat, cfg.host.norm_eps) for c in cfg.slot_channels),
            gates=tuple(GateLayout(c) for c in cfg.slot_channels),
            slot_blocks=cfg.slot_columns,
            host=cfg.host,
            batch_size=batch,
            compat=cfg.compat,
            layout=signals.config_layout(cfg),
            data=data,
        )

    # ---- data ----------------------------------------------------------------------------------------------

    def device_data(self) -> DeviceData:
        return self.data.device_arrays()

    def bind(self, arrays: DeviceData) -> HostOracle:
        """This oracle reading ``arrays`` (e.g. arguments of a compiled function) instead of constants."""
        return dataclasses.replace(self, bound=arrays)

    @property
    def arrays(self) -> DeviceData:
        return self.device_data() if self.bound is None else self.bound

    def _train_batch(self, idx: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
        """The host's float images of training minibatch ``idx`` (augmented when ``HostConfig.augment``)."""
        images = self.arrays.train_images[idx]
        if self.host.augment:
            images = augment(images, key)
        return self.data.normalise(images)

    def _val_batch(self, state: HostState) -> tuple[jnp.ndarray, jnp.ndarray]:
        arrays = self.arrays
        if state.val_start is None:
            return self.data.normalise(arrays.val_images), arrays.val_labels
        idx = (state.val_start + jnp.arange(self.host.val_subset)) % self.data.num_val
        return self.data.normalise(arrays.val_images[idx]), arrays.val_labels[idx]

    # ---- the network with its slots ------------------------------------------------------------------------

    def forward(self, host: cnn.HostParams, slots: tuple[SlotParams, ...], ctrl: SlotControl, images: jnp.ndarray):
        slot_of_block = {b: i for i, b in enumerate(self.slot_blocks)}

        def inject(block: int, h: jnp.ndarray) -> jnp.ndarray:
            if block not in slot_of_block:
                return h
            i = slot_of_block[block]
            x_s = jax.lax.stop_gradient(h)
            s = self.layouts[i].apply(ctrl.branch[i], slots[i].seed, x_s)
            gate = self.gates[i].apply(slots[i].gate, x_s)
            blended = blend(ctrl.algorithm[i], h, s, x_s, ctrl.alpha[i], gate, host_gradient=self.compat != "upstream")
            straight = h + (s - jax.lax.stop_gradient(s))
            on = ctrl.blended[i] & (ctrl.alpha[i] > 0.0)
            return jnp.where(on, blended, jnp.where(ctrl.straight_through[i], straight, h))

        return cnn.forward(self.spec, host, images, inject)

    def host_only(self, host: cnn.HostParams, images: jnp.ndarray) -> jnp.ndarray:
        return cnn.forward(self.spec, host, images, cnn.no_injection)

    # ---- Oracle protocol -----------------------------------------------------------------------------------

    def init(self, key: jax.Array) -> HostState:
        return self._fresh_state(
            HostState,
            cnn.init_host(self.spec, key),
            val_start=None if self.host.val_subset is None else jax.random.randint(
                jax.random.fold_in(key, 1), (), 0, self.data.num_val, jnp.int32),
        )

    def _gradient_stats(
        self, host_grads: cnn.HostParams, seed_grads: tuple[jnp.ndarray, ...], ctrl: SlotControl, sampled: jnp.ndarray
    ) -> GradientStats:
        return gradient_stats(host_grads, self.spec.param_count(), self.layouts, seed_grads, ctrl.branch, sampled)

    def _train(self, state: HostState, view: SlotView, key: jax.Array) -> tuple[HostState, GradientStats]:
        hc = self.host
        ctrl = self.control(view)
        flags = seed_flags(view, state.gate_live, self.compat)
        labels = self.arrays.train_labels
        m, b = hc.minibatches_per_step, self.batch_size
        batches = jax.random.permutation(key, self.data.num_train)[: m * b].reshape(m, b)
        # Augmentation keys are folded from the step's key, so the permutation (and every result without
        # augmentation) is what it was before augmentation existed.
        aug_keys = jax.random.split(jax.random.fold_in(key, 1), m)

        def loss_fn(trainable, x, y):
            host, slots = trainable
            return jnp.mean(_cross_entropy(self.forward(host, slots, ctrl, x), y))

        def twin_loss(host, x, y):
            return jnp.mean(_cross_entropy(self.host_only(host, x), y))

        def body(carry, inputs):
            st, stats = carry
            index, idx, aug_key = inputs
            x, y = self._train_batch(idx, aug_key), labels[idx]
            grads = jax.grad(loss_fn)((st.host, st.slots), x, y)
            host_g, slot_g = grads
            fresh = self._gradient_stats(host_g, tuple(g.seed for g in slot_g), ctrl, flags.sampled)
            stats = keep_sampled(index, hc.gradient_stride, fresh, stats)

            host, host_m = host_sgd(st.host, st.host_momentum, host_g, hc)
            if self.has_twin:
                twin_g = jax.grad(twin_loss)(st.twin, x, y)
                twin, twin_m = host_sgd(st.twin, st.twin_momentum, twin_g, hc)
                st = st.replace(twin=twin, twin_momentum=twin_m)

            slots = tuple(
                slot_sgd(p, g, flags.learning[i], flags.gate_learning[i], hc)
                for i, (p, g) in enumerate(zip(st.slots, slot_g))
            )
            st = st.replace(host=host, host_momentum=host_m, slots=slots)
            return (st, stats), None

        empty = GradientStats.empty(self.num_slots)
        (state, stats), _ = jax.lax.scan(body, (state, empty), (jnp.arange(m), batches, aug_keys))
        return state, stats

    def validate(self, state: HostState, view: SlotView, configs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(accuracy % [K], mean loss [K]) on the whole validation split for the K alpha rows of ``configs``.

        The rows are the env's fused-validation layout (``ConfigLayout.keep() · live alphas``), so which rows share
        the network up to a slot is static: rows agreeing on the keep-pattern of the slots before slot j feed slot j
        the same features. The pass therefore branches only where the patterns do — at most 2^j variants reach slot
        j (1, 2, 4 for three slots, against K = 8 or 11 rows) — and every seed runs once per variant. Equal to
        ``validate_rows`` (one full forward per row) up to float rounding.
        """
        images, labels = self._val_batch(state)
        return self._scores(self._fused_logits(state, view, configs, images), labels)

    def validate_rows(self, state: HostState, view: SlotView, configs: jnp.ndarray):
        """Reference for ``validate``: one vmapped full forward per alpha row (any rows, no layout assumed)."""
        images, labels = self._val_batch(state)
        base = self.control(view).replace(straight_through=jnp.zeros_like(view.has_module))
        logits = jax.vmap(lambda a: self.forward(state.host, state.slots, base.replace(alpha=a), images))(configs)
        return self._scores(logits, labels)

    @staticmethod
    def _scores(logits: jnp.ndarray, labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        correct = jnp.argmax(logits, axis=-1) == labels
        loss = jax.vmap(lambda row: jnp.mean(_cross_entropy(row, labels)))(logits)
        return 100.0 * jnp.mean(correct.astype(jnp.float32), axis=-1), loss

    def _fused_logits(self, state: HostState, view: SlotView, configs: jnp.ndarray, images: jnp.ndarray):
        return self._fused_rows(
            state, view, configs, self.slot_blocks,
            lambda inject: cnn.forward_many(self.spec, state.host, images, inject),
        )

    def _twin_accuracy(self, state: HostState) -> jnp.ndarray:
        images, labels = self._val_batch(state)
        return self._scores(self.host_only(state.twin, images)[None], labels)[0][0]
