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
import numpy as np
from flax import struct

from esper_jax.contracts import AlphaAlgorithm, SeedStage
from esper_jax.env import signals
from esper_jax.env.config import EnvConfig, HostConfig
from esper_jax.env.host import cnn
from esper_jax.env.host.augment import augment
from esper_jax.env.host.blend import GateLayout, blend
from esper_jax.env.host.blueprints import BRANCH_OF_BLUEPRINT, SlotLayout
from esper_jax.env.host.data import Dataset, DeviceData
from esper_jax.env.oracle import EXPLODING_NORM, VANISHING_NORM, ConfigLayout, Measurement, SlotView

_BLENDED_STAGES = (SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED)
_LEARNING_STAGES = (SeedStage.TRAINING,) + _BLENDED_STAGES


def _in(stage: jnp.ndarray, stages) -> jnp.ndarray:
    return jnp.any(stage[..., None] == jnp.asarray([int(s) for s in stages], jnp.int32), axis=-1)


@struct.dataclass
class SlotParams:
    """One slot's seed parameter union, its gate network and their SGD momenta."""

    seed: jnp.ndarray  # [U]
    seed_momentum: jnp.ndarray  # [U]
    gate: jnp.ndarray  # [G]
    gate_momentum: jnp.ndarray  # [G]


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


@struct.dataclass
class SlotControl:
    """How the forward pass treats each slot ([S] each)."""

    branch: jnp.ndarray  # int32 blueprint branch
    blended: jnp.ndarray  # bool: BLENDING/HOLDING/FOSSILIZED with a module
    straight_through: jnp.ndarray  # bool: TRAINING (only matters for gradients)
    alpha: jnp.ndarray  # float32
    algorithm: jnp.ndarray  # int32 AlphaAlgorithm


@struct.dataclass
class GradientStats:
    """Gradient statistics (docs/environment.md#signals-and-observation) of one sampled minibatch, [S] each."""

    norm: jnp.ndarray
    health: jnp.ndarray
    vanishing: jnp.ndarray
    exploding: jnp.ndarray
    ratio: jnp.ndarray


def _global_norm(tree) -> jnp.ndarray:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _clip(tree, max_norm: float):
    norm = _global_norm(tree)
    # torch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
    factor = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * factor, tree)


def _cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


@dataclasses.dataclass(frozen=True)
class HostOracle:
    """Real host networks (hashable: part of the static env; the dataset hashes by content)."""

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

    @property
    def num_slots(self) -> int:
        return len(self.layouts)

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

    def control(self, view: SlotView, alpha: jnp.ndarray | None = None) -> SlotControl:
        return SlotControl(
            branch=jnp.asarray(BRANCH_OF_BLUEPRINT)[jnp.clip(view.blueprint, 0, len(BRANCH_OF_BLUEPRINT) - 1)],
            blended=view.has_module & _in(view.stage, _BLENDED_STAGES),
            straight_through=view.has_module & (view.stage == SeedStage.TRAINING),
            alpha=view.alpha if alpha is None else alpha,
            algorithm=view.algorithm,
        )

    # ---- Oracle protocol -----------------------------------------------------------------------------------

    def init(self, key: jax.Array) -> HostState:
        host = cnn.init_host(self.spec, key)  # seeds get their parameters when germinated (_sync_seeds)
        slots = tuple(
            SlotParams(
                seed=jnp.zeros((lay.size,), jnp.float32),
                seed_momentum=jnp.zeros((lay.size,), jnp.float32),
                gate=jnp.zeros((g.size,), jnp.float32),
                gate_momentum=jnp.zeros((g.size,), jnp.float32),
            )
            for lay, g in zip(self.layouts, self.gates)
        )
        s = self.num_slots
        return HostState(
            host=host,
            host_momentum=jax.tree.map(jnp.zeros_like, host),
            slots=slots,
            seed_id=jnp.full((s,), -1, jnp.int32),
            stage=jnp.full((s,), SeedStage.DORMANT, jnp.int32),
            gate_live=jnp.zeros((s,), jnp.bool_),
            twin=host if self.has_twin else None,
            twin_momentum=jax.tree.map(jnp.zeros_like, host) if self.has_twin else None,
            val_start=None if self.host.val_subset is None else jax.random.randint(
                jax.random.fold_in(key, 1), (), 0, self.data.num_val, jnp.int32),
        )

    @property
    def has_twin(self) -> bool:
        return self.compat != "upstream"

    def _sync_seeds(self, state: HostState, view: SlotView, key: jax.Array) -> HostState:
        """Fresh parameters for newly germinated seeds and newly built gates; fresh optimizers on fossilisation."""
        branch = self.control(view).branch
        born = view.has_module & (view.seed_id != state.seed_id)
        fossilised = (view.stage == SeedStage.FOSSILIZED) & (state.stage != SeedStage.FOSSILIZED)
        gate_live = view.has_module & (view.algorithm == AlphaAlgorithm.GATE) & _in(view.stage, _BLENDED_STAGES)
        gate_new = gate_live & (~state.gate_live | born)
        multiply = view.algorithm == AlphaAlgorithm.MULTIPLY
        keys = jax.random.split(key, 2 * self.num_slots)
        slots = []
        for i, (lay, gl, p) in enumerate(zip(self.layouts, self.gates, state.slots)):
            seed = jnp.where(born[i], lay.init(keys[2 * i], branch[i], multiply[i]), p.seed)
            reset = born[i] | fossilised[i]
            gate = jnp.where(gate_new[i], gl.init(keys[2 * i + 1]), p.gate)
            slots.append(SlotParams(
                seed=seed,
                seed_momentum=jnp.where(reset, 0.0, p.seed_momentum),
                gate=gate,
                gate_momentum=jnp.where(reset | gate_new[i], 0.0, p.gate_momentum),
            ))
        return state.replace(
            slots=tuple(slots),
            seed_id=jnp.where(view.has_module, view.seed_id, state.seed_id),
            stage=view.stage,
            gate_live=gate_live,
        )

    def _gradient_stats(
        self, host_grads: cnn.HostParams, seed_grads: tuple[jnp.ndarray, ...], ctrl: SlotControl, sampled: jnp.ndarray
    ) -> GradientStats:
        host_norm = _global_norm(host_grads)
        host_per = host_norm / np.sqrt(self.spec.param_count())
        norms, healths, vans, exps, ratios = [], [], [], [], []
        for i, (lay, g) in enumerate(zip(self.layouts, seed_grads)):
            branch = ctrl.branch[i]
            t = lay.max_tensors
            per_tensor = jnp.sqrt(jax.ops.segment_sum(jnp.square(g), jnp.asarray(lay.segments)[branch], t + 1)[:t])
            n_tensors = jnp.asarray([len(ts) for ts in lay.tensors])[branch]
            real = jnp.arange(t) < n_tensors
            f_vanish = jnp.sum(real & (per_tensor < VANISHING_NORM)) / n_tensors
            f_explode = jnp.sum(real & (per_tensor > EXPLODING_NORM)) / n_tensors
            total = jnp.sqrt(jnp.sum(jnp.square(g)))
            n_seed = jnp.asarray(lay.param_counts, jnp.float32)[branch]
            ratio = (total / jnp.sqrt(n_seed)) / (host_per + 1e-8)
            norms.append(total / n_tensors)
            healths.append(jnp.clip(1.0 - 0.5 * f_vanish - 0.8 * f_explode, 0.0, 1.0))
            vans.append(f_vanish > 0)
            exps.append(f_explode > 0)
            ratios.append(jnp.where((total < 1e-8) | (host_norm < 1e-8), 0.0, ratio))
        stack = jnp.stack
        return GradientStats(
            norm=jnp.where(sampled, stack(norms), 0.0),
            health=jnp.where(sampled, stack(healths), 1.0),
            vanishing=sampled & stack(vans),
            exploding=sampled & stack(exps),
            ratio=jnp.where(sampled, stack(ratios), 0.0),
        )

    def _train(self, state: HostState, view: SlotView, key: jax.Array) -> tuple[HostState, GradientStats]:
        hc = self.host
        ctrl = self.control(view)
        learning = view.has_module & _in(view.stage, _LEARNING_STAGES) & ~view.frozen
        gate_learning = learning & state.gate_live & jnp.asarray(self.compat != "upstream")
        # Statistics of frozen seeds: upstream's frozen parameters carry no gradients, so there is nothing to sample.
        sampled = (
            view.has_module & ((view.stage == SeedStage.TRAINING) | (view.stage == SeedStage.BLENDING)) & ~view.frozen
        )
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

        def host_sgd(params, momentum, g):
            g = _clip(g, hc.max_grad_norm)
            g = jax.tree.map(lambda g, p: g + hc.host_weight_decay * p, g, params)
            buf = jax.tree.map(lambda b, g: hc.host_momentum * b + g, momentum, g)
            return jax.tree.map(lambda p, b: p - hc.host_lr * b, params, buf), buf

        def sgd(p, buf, g, lr, momentum, on):
            new_buf = momentum * buf + g
            return jnp.where(on, p - lr * new_buf, p), jnp.where(on, new_buf, buf)

        def body(carry, inputs):
            st, stats = carry
            index, idx, aug_key = inputs
            x, y = self._train_batch(idx, aug_key), labels[idx]
            grads = jax.grad(loss_fn)((st.host, st.slots), x, y)
            host_g, slot_g = grads
            fresh = self._gradient_stats(host_g, tuple(g.seed for g in slot_g), ctrl, sampled)
            take = index % hc.gradient_stride == 0
            stats = jax.tree.map(lambda new, old: jnp.where(take, new, old), fresh, stats)

            host, host_m = host_sgd(st.host, st.host_momentum, host_g)
            if self.has_twin:
                twin_g = jax.grad(twin_loss)(st.twin, x, y)
                twin, twin_m = host_sgd(st.twin, st.twin_momentum, twin_g)
                st = st.replace(twin=twin, twin_momentum=twin_m)

            slots = []
            for i, (p, g) in enumerate(zip(st.slots, slot_g)):
                # The gate joins its seed's group only where it trains (fixed mode), so upstream's clip ignores it.
                gate_g = jnp.where(gate_learning[i], g.gate, 0.0)
                seed_g, gate_g = _clip((g.seed, gate_g), hc.max_grad_norm)
                seed, seed_m = sgd(p.seed, p.seed_momentum, seed_g, hc.seed_lr, hc.seed_momentum, learning[i])
                gate, gate_m = sgd(p.gate, p.gate_momentum, gate_g, hc.seed_lr, hc.seed_momentum, gate_learning[i])
                slots.append(SlotParams(seed=seed, seed_momentum=seed_m, gate=gate, gate_momentum=gate_m))
            st = st.replace(host=host, host_momentum=host_m, slots=tuple(slots))
            return (st, stats), None

        zeros = jnp.zeros((self.num_slots,), jnp.float32)
        no_flags = jnp.zeros((self.num_slots,), jnp.bool_)
        empty = GradientStats(norm=zeros, health=zeros + 1.0, vanishing=no_flags, exploding=no_flags, ratio=zeros)
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
        keep = self.keep_matrix(configs.shape[0])
        ctrl = self.control(view)
        slot_of_block = {b: i for i, b in enumerate(self.slot_blocks)}
        # Variants before slot j: the distinct keep-patterns of slots < j (static), each with a representative row.
        patterns = [()]

        def inject(block: int, h: jnp.ndarray) -> jnp.ndarray:
            nonlocal patterns
            if block not in slot_of_block:
                return h
            j = slot_of_block[block]
            x_s = h  # validation: no gradients, isolation is moot
            s = jax.vmap(lambda x: self.layouts[j].apply(ctrl.branch[j], state.slots[j].seed, x))(x_s)
            gate = jax.vmap(lambda x: self.gates[j].apply(state.slots[j].gate, x))(x_s)
            new_patterns = sorted({tuple(int(v) for v in row[: j + 1]) for row in keep})
            parent = np.asarray([patterns.index(p[:-1]) for p in new_patterns])
            bit = np.asarray([p[-1] for p in new_patterns], bool)
            rep = np.asarray([next(r for r, row in enumerate(keep) if tuple(row[: j + 1]) == p) for p in new_patterns])
            alpha = configs[rep, j]

            def one(h_p, s_p, x_p, g_p, a, on):
                y = blend(ctrl.algorithm[j], h_p, s_p, x_p, a, g_p)
                return jnp.where(on & ctrl.blended[j] & (a > 0.0), y, h_p)

            patterns = new_patterns
            return jax.vmap(one)(h[parent], s[parent], x_s[parent], gate[parent], alpha, jnp.asarray(bit))

        logits = cnn.forward_many(self.spec, state.host, images, inject)
        final = [tuple(int(v) for v in row) for row in keep]
        return logits[np.asarray([patterns.index(f[: len(patterns[0])]) for f in final])]

    def keep_matrix(self, rows: int) -> np.ndarray:
        """int [K, S] static keep-pattern of the fused-validation rows (the env's ``ConfigLayout``)."""
        keep = self.layout.keep().astype(np.int32)
        if keep.shape[0] != rows:
            raise ValueError(
                f"HostOracle expects the env's {keep.shape[0]} fused-validation rows (ConfigLayout), got {rows}"
            )
        return keep

    def measure(
        self, state: HostState, view: SlotView, configs: jnp.ndarray, epoch: jnp.ndarray, key: jax.Array
    ) -> tuple[HostState, Measurement]:
        k_sync, k_train = jax.random.split(key)
        state = self._sync_seeds(state, view, k_sync)
        state, stats = self._train(state, view, k_train)
        acc, loss = self.validate(state, view, configs)
        if self.has_twin:
            images, labels = self._val_batch(state)
            reference = self._scores(self.host_only(state.twin, images)[None], labels)[0][0]
        else:
            reference = acc[0]
        return state, Measurement(
            val_accuracy=acc,
            val_loss=loss,
            gradient_norm=stats.norm,
            gradient_health=stats.health,
            has_vanishing=stats.vanishing,
            has_exploding=stats.exploding,
            gradient_ratio=stats.ratio,
            reference_accuracy=reference,
        )

