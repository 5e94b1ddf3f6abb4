"""``FactoredRecurrentActorCritic`` in flax.linen, layer for layer as upstream (docs/policy-and-ppo.md#network).

Layout mirrors ``reference_torch/network.py``: blueprint embedding → feature net (Linear → LayerNorm → ReLU) →
LSTM (torch gate order i, f, g, o; two bias vectors) → LayerNorm on the output sequence → eight policy heads and
the op-conditioned critic Q(s, op). Kernels are stored [in, out] (torch weights transposed); the LSTM keeps
``bias_ih`` and ``bias_hh`` as separate parameters so an optimiser update touches them exactly as torch does.

The LSTM (``esper_jax.lstm``) and the host-side orthogonal initialiser (``esper_jax.initializers``) live in their
own modules; ``LSTMCarry``, ``TorchLSTM``, ``matmul`` and ``orthogonal`` are re-exported here.

Shapes: every input has arbitrary leading batch axes followed by the time axis, ``features [..., T, D]``,
``blueprint_indices [..., T, S]``; the carry is ``LSTMCarry(h, c)`` with ``[..., L, H]`` (batch axes leading,
unlike torch's ``[L, B, H]``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esper_jax.contracts import (
    BLUEPRINT_NULL_INDEX,
    DEFAULT_BLUEPRINT_EMBED_DIM,
    HEAD_NAMES,
    NUM_BLUEPRINTS,
    NUM_OPS,
    PerHead,
    feature_size,
    head_sizes,
)
from esper_jax.initializers import orthogonal
from esper_jax.lstm import LSTMCarry, TorchLSTM, matmul
from esper_jax.tracing import is_concrete

__all__ = [
    "NetworkConfig",
    "LSTMCarry",
    "TrunkOutput",
    "FactoredRecurrentActorCritic",
    "TorchLSTM",
    "validate_inputs",
    "embedding_indices",
    "param_count",
    "orthogonal",
    "matmul",
    "is_kernel",
]

DEFAULT_FEATURE_DIM = 512
DEFAULT_HIDDEN_DIM = 512
LAYER_NORM_EPS = 1e-5  # torch default; Flax's is 1e-6
POLICY_HEAD_LAST_GAIN = 0.01
VALUE_HEAD_LAST_GAIN = 1.0
HIDDEN_GAIN = math.sqrt(2.0)
EMBEDDING_STD = 0.02


@dataclasses.dataclass(frozen=True, eq=False)
class NetworkConfig:
    """Static network shape. Hashable, so it can be a static argument of ``jax.jit``.

    ``feature_dim`` is the width of the feature net (upstream's network ``feature_dim``, 512), not the
    observation width, which is derived: ``state_dim = feature_size(num_slots)``.
    """

    # dtype and matmul_dtype keep the spelling they were given (jnp.float32, np.float32, "float32"); the network
    # reads resolved_dtype / resolved_matmul_dtype. Equality and hashing compare the resolved types, so every
    # spelling of one config is one jit cache entry (and __post_init__ never rewrites a field to get there).

    num_slots: int = 3
    feature_dim: int = DEFAULT_FEATURE_DIM
    hidden_dim: int = DEFAULT_HIDDEN_DIM
    lstm_layers: int = 1
    blueprint_embed_dim: int = DEFAULT_BLUEPRINT_EMBED_DIM
    dtype: Any = np.float32
    # Operand type of the matmuls (None: ``dtype``). bfloat16 rounds activations and kernels to bf16 and
    # accumulates in ``dtype``; params, biases, LayerNorm, the LSTM cell maths and the heads' softmax stay in
    # ``dtype``. It halves the bytes of weights a small-batch step streams and runs on bf16 tensor cores on GPUs.
    matmul_dtype: Any = None

    def __post_init__(self) -> None:
        for name in ("num_slots", "feature_dim", "hidden_dim", "lstm_layers", "blueprint_embed_dim"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"NetworkConfig.{name} must be an integer >= 1, got {value!r}")
        if self.hidden_dim % 2:
            raise ValueError(f"NetworkConfig.hidden_dim must be even (heads use hidden_dim // 2), got {self.hidden_dim}")
        dtype = _float_dtype("dtype", self.dtype)
        matmul = dtype if self.matmul_dtype is None else _float_dtype("matmul_dtype", self.matmul_dtype)
        if np.dtype(matmul).itemsize > np.dtype(dtype).itemsize:
            raise ValueError(
                f"NetworkConfig.matmul_dtype ({np.dtype(matmul).name}) must not be wider than dtype "
                f"({np.dtype(dtype).name}): the matmuls accumulate in dtype"
            )

    @property
    def resolved_dtype(self) -> Any:
        """``dtype`` as a numpy scalar type (params, activations, the LSTM cell and the heads' softmax)."""
        return _float_dtype("dtype", self.dtype)

    @property
    def resolved_matmul_dtype(self) -> Any:
        """The matmuls' operand type as a numpy scalar type: ``matmul_dtype``, or ``dtype`` when None."""
        return self.resolved_dtype if self.matmul_dtype is None else _float_dtype("matmul_dtype", self.matmul_dtype)

    def _key(self) -> tuple:
        spelled = ("dtype", "matmul_dtype")
        return (*(getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in spelled),
                self.resolved_dtype, self.resolved_matmul_dtype)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def state_dim(self) -> int:
        """Observation width D = 24 + 30·S."""
        return feature_size(self.num_slots)

    @property
    def input_dim(self) -> int:
        """Feature-net input width D + embed_dim·S."""
        return self.state_dim + self.blueprint_embed_dim * self.num_slots

    @property
    def head_hidden_dim(self) -> int:
        return self.hidden_dim // 2

    @property
    def head_sizes(self) -> dict[str, int]:
        return head_sizes(self.num_slots)


def _float_dtype(field: str, value: Any) -> Any:
    try:
        dtype = np.dtype(jnp.dtype(value))
    except TypeError as error:
        raise ValueError(f"NetworkConfig.{field} must be a float dtype such as 'float32' or 'bfloat16', got {value!r}") from error
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"NetworkConfig.{field} must be a float dtype such as 'float32' or 'bfloat16', got {dtype.name}")
    return dtype.type


def _dot_general(matmul_dtype: Any):
    """A ``lax.dot_general`` for ``nn.Dense`` that rounds both operands to ``matmul_dtype`` (None: Flax's own)."""

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        del preferred_element_type  # the product comes back in the input dtype, as without the rounding
        return jax.lax.dot_general(
            lhs.astype(matmul_dtype),
            rhs.astype(matmul_dtype),
            dimension_numbers,
            precision=precision,
            preferred_element_type=lhs.dtype,
        )

    return dot_general


@struct.dataclass
class TrunkOutput:
    """What one pass of the trunk and the eight heads gives.

    ``logits`` are raw (unmasked) ``[..., T, n]``; ``lstm_out`` is the LayerNormed LSTM output ``[..., T, H]``;
    ``carry`` the raw (h_T, c_T); ``index_error [..., T]`` is True where a blueprint index was >= 14 (looked up
    as the null row instead, never an arbitrary row).
    """

    logits: PerHead
    lstm_out: jax.Array
    carry: LSTMCarry
    index_error: jax.Array


def embedding_indices(blueprint_indices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Map every negative index to the null row 13 (upstream); also route indices >= 14 there and flag them."""
    idx = jnp.asarray(blueprint_indices).astype(jnp.int32)
    out_of_range = idx > BLUEPRINT_NULL_INDEX
    safe = jnp.where((idx < 0) | out_of_range, BLUEPRINT_NULL_INDEX, idx)
    return safe, out_of_range


def validate_inputs(config: NetworkConfig, features: Any, blueprint_indices: Any, *, time_axis: bool) -> None:
    """Shape checks (always; shapes are static under jit) and a value check of concrete blueprint indices.

    ``time_axis`` says whether inputs carry a T axis before the last one ([..., T, D]) or not ([..., D]).
    """
    features_shape = tuple(np.shape(features))
    indices_shape = tuple(np.shape(blueprint_indices))
    lead = "[..., T, " if time_axis else "[..., "
    min_rank = 2 if time_axis else 1
    if len(features_shape) < min_rank or features_shape[-1] != config.state_dim:
        raise ValueError(
            f"features must have shape {lead}{config.state_dim}] (state_dim = 24 + 30·{config.num_slots}), "
            f"got {features_shape}"
        )
    if len(indices_shape) < min_rank or indices_shape[-1] != config.num_slots:
        raise ValueError(
            f"blueprint_indices must have shape {lead}{config.num_slots}] (one index per slot), got {indices_shape}"
        )
    if features_shape[:-1] != indices_shape[:-1]:
        raise ValueError(
            f"features {features_shape} and blueprint_indices {indices_shape} must share their leading axes"
        )
    if not jnp.issubdtype(jnp.result_type(blueprint_indices), jnp.integer):
        raise ValueError(f"blueprint_indices must be integers, got dtype {jnp.result_type(blueprint_indices)}")
    if is_concrete(blueprint_indices):
        values = np.asarray(blueprint_indices)
        bad = values > BLUEPRINT_NULL_INDEX
        if bad.any():
            raise ValueError(
                f"blueprint_indices must be < {NUM_BLUEPRINTS + 1} (0..{NUM_BLUEPRINTS - 1} blueprints, "
                f"{BLUEPRINT_NULL_INDEX} or any negative value for 'no seed'); got {int(values.max())} in "
                f"{int(bad.sum())} entr{'y' if bad.sum() == 1 else 'ies'}"
            )


def _dense(features: int, gain: float, dtype: Any, matmul_dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=orthogonal(gain),
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=dtype,
        # Kept None at full width, so that path is Flax's own (bit-identical parity).
        dot_general=None if np.dtype(matmul_dtype) == np.dtype(dtype) else _dot_general(matmul_dtype),
        name=name,
    )


def _layer_norm(dtype: Any, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype, param_dtype=dtype, name=name)


class MLPHead(nn.Module):
    """Linear → ReLU → … → Linear. Layer names ``l0, l2, l4`` are torch's ``nn.Sequential`` indices."""

    widths: tuple[int, ...]
    last_gain: float
    dtype: Any
    matmul_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        last = len(self.widths) - 1
        for i, width in enumerate(self.widths):
            x = _dense(width, self.last_gain if i == last else HIDDEN_GAIN, self.dtype, self.matmul_dtype, f"l{2 * i}")(x)
            if i != last:
                x = nn.relu(x)
        return x


class FeatureNet(nn.Module):
    """Linear(D + 4S → F) → LayerNorm → ReLU (torch ``feature_net.0`` / ``feature_net.1``)."""

    features: int
    dtype: Any
    matmul_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _dense(self.features, HIDDEN_GAIN, self.dtype, self.matmul_dtype, "l0")(x)
        return nn.relu(_layer_norm(self.dtype, "l1")(x))


class BlueprintEmbedding(nn.Module):
    """Table [14, E] ~ N(0, 0.02²); row 13 is the trainable null row for empty slots (torch ``_null_idx``)."""

    embed_dim: int
    dtype: Any

    @nn.compact
    def __call__(self, blueprint_indices: jax.Array) -> tuple[jax.Array, jax.Array]:
        table = self.param(
            "embedding", nn.initializers.normal(stddev=EMBEDDING_STD), (NUM_BLUEPRINTS + 1, self.embed_dim), self.dtype
        )
        safe, out_of_range = embedding_indices(blueprint_indices)
        return jnp.take(table, safe, axis=0), out_of_range


class FactoredRecurrentActorCritic(nn.Module):
    """The Tamiyo actor-critic. ``trunk`` gives the raw logits of the eight heads and the LSTM output;
    ``q_value`` gives Q(s, op) from that output. ``__call__`` runs both (used by ``init``)."""

    config: NetworkConfig

    def setup(self) -> None:
        cfg = self.config
        dt, mm = cfg.resolved_dtype, cfg.resolved_matmul_dtype
        h, hh = cfg.hidden_dim, cfg.head_hidden_dim
        sizes = cfg.head_sizes
        self.blueprint_embedding = BlueprintEmbedding(cfg.blueprint_embed_dim, dt)
        self.feature_net = FeatureNet(cfg.feature_dim, dt, mm)
        self.lstm = TorchLSTM(h, cfg.lstm_layers, dt, mm)
        self.lstm_ln = _layer_norm(dt)
        self.slot_head = MLPHead((hh, sizes["slot"]), POLICY_HEAD_LAST_GAIN, dt, mm)
        self.blueprint_head = MLPHead((h, hh, sizes["blueprint"]), POLICY_HEAD_LAST_GAIN, dt, mm)
        self.style_head = MLPHead((hh, sizes["style"]), POLICY_HEAD_LAST_GAIN, dt, mm)
        self.tempo_head = MLPHead((hh, sizes["tempo"]), POLICY_HEAD_LAST_GAIN, dt, mm)
        self.alpha_target_head = MLPHead((hh, sizes["alpha_target"]), POLICY_HEAD_LAST_GAIN, dt, mm)
        self.alpha_speed_head = MLPHead((hh, sizes["alpha_speed"]), POLICY_HEAD_LAST_GAIN, dt, mm)
        self.alpha_curve_head = MLPHead((hh, sizes["alpha_curve"]), POLICY_HEAD_LAST_GAIN, dt, mm)
        self.op_head = MLPHead((hh, sizes["op"]), POLICY_HEAD_LAST_GAIN, dt, mm)
        self.value_head = MLPHead((hh, 1), VALUE_HEAD_LAST_GAIN, dt, mm)

    def trunk(self, features: jax.Array, blueprint_indices: jax.Array, carry: LSTMCarry) -> TrunkOutput:
        """``features [..., T, D]``, ``blueprint_indices [..., T, S]``, ``carry [..., L, H]`` → TrunkOutput."""
        cfg = self.config
        validate_inputs(cfg, features, blueprint_indices, time_axis=True)
        emb, out_of_range = self.blueprint_embedding(blueprint_indices)  # [..., T, S, E]
        emb_flat = emb.reshape(*emb.shape[:-2], cfg.num_slots * cfg.blueprint_embed_dim)  # slot-major
        x = jnp.concatenate([jnp.asarray(features, cfg.resolved_dtype), emb_flat.astype(cfg.resolved_dtype)], axis=-1)
        y, new_carry = self.lstm(self.feature_net(x), carry)
        z = self.lstm_ln(y)
        logits = PerHead(**{name: getattr(self, f"{name}_head")(z) for name in HEAD_NAMES})
        return TrunkOutput(logits=logits, lstm_out=z, carry=new_carry, index_error=jnp.any(out_of_range, axis=-1))

    def q_value(self, lstm_out: jax.Array, op: jax.Array) -> jax.Array:
        """Q(s, op) = value_head(lstm_out ‖ one_hot(op, 6)), squeezed: ``[..., H]``, ``[...]`` → ``[...]``."""
        one_hot = jax.nn.one_hot(op, NUM_OPS, dtype=lstm_out.dtype)
        return self.value_head(jnp.concatenate([lstm_out, one_hot], axis=-1))[..., 0]

    def __call__(
        self, features: jax.Array, blueprint_indices: jax.Array, carry: LSTMCarry, op: jax.Array
    ) -> tuple[TrunkOutput, jax.Array]:
        out = self.trunk(features, blueprint_indices, carry)
        return out, self.q_value(out.lstm_out, op)


def is_kernel(path: tuple[Any, ...]) -> bool:
    """Whether a parameter (by its tree path) is a matmul operand: a Dense ``kernel`` or an LSTM ``kernel_*``.
    The embedding table is gathered, not multiplied, and stays at full width."""
    name = str(getattr(path[-1], "key", path[-1]))
    return name == "kernel" or name.startswith("kernel_")


def param_count(params: Any) -> int:
    """Number of scalars in a parameter pytree (torch ``sum(p.numel())``; the ``_null_idx`` buffer is not one)."""
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
