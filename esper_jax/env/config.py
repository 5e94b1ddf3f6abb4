"""Static configuration of the JAX-native Esper environment (docs/environment.md#interface, #blueprints, #reward).

Everything here is a frozen, hashable dataclass: the environment object that carries it is a static jit argument,
so every value is validated in Python before anything is traced, and every error names the offending field and
the values it accepts.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from esper_jax.contracts import (
    CNN_BLUEPRINTS,
    COMPAT_MODES,
    DEFAULT_COMPAT,
    DEFAULT_GAMMA,
    MIN_PRUNE_AGE,
    NUM_BLUEPRINTS,
    TOPOLOGIES,
    TRANSFORMER_BLUEPRINTS,
    BlueprintAction,
    Compat,
    SlotConfig,
    check_compat,
)
from esper_jax.env.lm_config import LMConfig, transformer_blueprint_params, transformer_host_params

# --------------------------------------------------------------------------------------------------------------
# Tasks (docs/environment.md#interface, #oracles) and blueprint sizes (#blueprints)
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One host preset: its topology, host parameter count, channels at each injection point (slot column
    ``r0c{i}``), the per-env batch size (the divisor of upstream's loss quirk 1, docs/compat.md#environment-side; the
    host env's default minibatch) and, for CNN hosts, the architecture the host env builds (``CNNHost``: 2×2 max-pool
    after block ``i`` while ``i < pool_layers``, ``kernel_size`` convs, ``input_channels`` image channels)."""

    name: str
    topology: str
    host_params: int
    slot_channels: tuple[int, ...]
    batch_size: int
    num_classes: int
    pool_layers: int = 0
    kernel_size: int = 3
    input_channels: int = 3
    # Transformer hosts (docs/environment.md#transformer-host): width D = slot_channels[0], one slot per segment.
    n_layer: int = 0
    n_head: int = 0
    block_size: int = 0


TASKS: dict[str, TaskSpec] = {
    "cifar10": TaskSpec("cifar10", "cnn", 6_418, (8, 16, 32), 512, 10, pool_layers=3),
    "cifar10_deep": TaskSpec("cifar10_deep", "cnn", 99_922, (8, 16, 32, 64, 128), 128, 10, pool_layers=5),
    "cifar10_blind": TaskSpec("cifar10_blind", "cnn", 2_986, (32, 64), 128, 10, pool_layers=0, kernel_size=1),
    "tinystories": TaskSpec("tinystories", "transformer", 30_044_544, (384, 384, 384), 32, 50_257,
                            n_layer=6, n_head=6, block_size=256),
    # A transformer host a CPU can step (issue 19): D 64, one layer per segment, 32-token windows, byte vocabulary.
    "tinystories_small": TaskSpec("tinystories_small", "transformer", 168_512, (64, 64, 64), 16, 256,
                                  n_layer=3, n_head=4, block_size=32),
    # The host env's default (docs/environment.md#oracles): cifar10's CNNHost (8/16/32 channels, so every blueprint
    # keeps its size relative to the host) on scikit-learn's 8×8 grey digits, pooled after blocks 0 and 1 (8→4→2 px).
    "digits": TaskSpec("digits", "cnn", 6_274, (8, 16, 32), 16, 10, pool_layers=2, input_channels=1),
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def cnn_blueprint_params(blueprint: BlueprintAction, channels: int) -> int:
    """Exact parameter count of a CNN seed at ``channels`` (docs/environment.md#blueprints)."""
    c = channels
    b = max(8, c // 4)
    counts = {
        BlueprintAction.NORM: 2 * c + 1,
        BlueprintAction.ATTENTION: c * c // 2 + c,
        BlueprintAction.DEPTHWISE: c * c + 11 * c,
        BlueprintAction.BOTTLENECK: 2 * c * b + 9 * b * b + 2 * c,
        BlueprintAction.CONV_SMALL: c * c + 2 * c,
        BlueprintAction.CONV_LIGHT: 9 * c * c + 2 * c,
        BlueprintAction.CONV_HEAVY: 18 * c * c + 4 * c,
    }
    return counts.get(BlueprintAction(blueprint), 0)


def gate_params(channels: int) -> int:
    """GATE-style gate network Linear(C, max(1, C/4)) → ReLU → Linear(·, 1): 21 / 73 / 273 at C = 8/16/32
    (docs/environment.md#blueprints)."""
    hidden = max(1, channels // 4)
    return channels * hidden + hidden + hidden + 1


def blueprint_param_table(task: TaskSpec, slot_columns: tuple[int, ...]) -> np.ndarray:
    """float32 [S, 13]: parameters of each blueprint at each enabled slot (0 for blueprints of the other topology)."""
    table = np.zeros((len(slot_columns), NUM_BLUEPRINTS), np.float32)
    for s, col in enumerate(slot_columns):
        for bp in BlueprintAction:
            if task.topology == "cnn":
                table[s, bp] = cnn_blueprint_params(bp, task.slot_channels[col])
            else:
                table[s, bp] = transformer_blueprint_params(bp, task.slot_channels[col])
    return table


# --------------------------------------------------------------------------------------------------------------
# Reward constants (ContributionRewardConfig defaults, docs/environment.md#reward)
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    contribution_weight: float = 1.0
    proxy_confidence_factor: float = 0.3
    pbrs_weight: float = 0.3
    epoch_progress_bonus: float = 0.3
    max_progress_bonus: float = 2.0
    rent_weight: float = 0.5
    max_rent: float = 8.0
    base_slot_rent_ratio: float = 0.0039
    alpha_shock_coef: float = 0.1958
    germinate_cost: float = -0.02
    fossilize_cost: float = -0.01
    prune_cost: float = -0.005
    set_alpha_target_cost: float = -0.005
    fossilize_base_bonus: float = 0.5
    fossilize_contribution_scale: float = 0.1
    fossilize_noncontributing_penalty: float = -0.2
    prune_hurting_bonus: float = 0.3
    prune_acceptable_bonus: float = 0.1
    prune_good_seed_penalty: float = -0.3
    prune_hurting_threshold: float = -0.5
    improvement_safe_threshold: float = 0.1
    hacking_ratio_threshold: float = 5.0
    attribution_sigmoid_steepness: float = 3.0
    terminal_acc_weight: float = 0.05
    fossilize_terminal_scale: float = 3.0
    # Upstream's DEFAULT_MIN_FOSSILIZE_CONTRIBUTION: the ti a fossil needs to count as contributing (terminal bonus)
    # and the c a FOSSILIZE needs to earn its bonus instead of the non-contributing penalty.
    min_fossilize_contribution: float = 1.0
    gamma: float = DEFAULT_GAMMA
    disable_pbrs: bool = False
    disable_terminal_reward: bool = False
    disable_anti_gaming: bool = False
    hindsight_decay: float = 0.995
    hindsight_scale: float = 0.1  # weight of each ledger entry's credit
    hindsight_boost_scale: float = 0.1  # inside the tanh: tanh(0.1·boost·ti)
    hindsight_cap: float = 0.2
    # Stage potentials P[stage] indexed by SeedStage value (0..10); 5 is retired and pruned stages carry 0.
    stage_potentials: tuple[float, ...] = (0.0, 0.0, 1.0, 2.0, 3.5, 0.0, 5.5, 6.0, 0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        # Upstream divides the ratio penalty by contribution_weight (and would raise ZeroDivisionError on 0).
        if not (math.isfinite(self.contribution_weight) and self.contribution_weight != 0.0):
            raise ValueError(
                f"RewardConfig.contribution_weight must be a finite non-zero float, got {self.contribution_weight}"
            )
        # Upstream raises unless the PBRS gamma equals the PPO gamma: PBRS is only policy-invariant then.
        if self.gamma != DEFAULT_GAMMA:
            raise ValueError(f"RewardConfig.gamma must equal DEFAULT_GAMMA={DEFAULT_GAMMA} (PBRS), got {self.gamma}")
        if len(self.stage_potentials) != 11:
            raise ValueError(
                f"RewardConfig.stage_potentials needs 11 entries (SeedStage values 0..10), got {len(self.stage_potentials)}"
            )


# --------------------------------------------------------------------------------------------------------------
# Simulator oracle (docs/environment.md#oracles)
# --------------------------------------------------------------------------------------------------------------

# Mean latent gain (pp at full alpha and maturity) per blueprint name: bigger seeds help more on average, and every
# blueprint can still hurt (the spread below is larger than most means).
_DEFAULT_GAIN_MEANS: tuple[tuple[str, float], ...] = (
    ("norm", 0.3),
    ("attention", 0.8),
    ("depthwise", 1.2),
    ("bottleneck", 1.5),
    ("conv_small", 1.0),
    ("conv_light", 2.5),
    ("conv_heavy", 3.5),
    ("lora", 0.5),
    ("lora_large", 1.0),
    ("mlp_small", 1.5),
    ("mlp", 2.5),
    ("flex_attention", 2.0),
)


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """Knobs of the accuracy/gradient simulator. Ranges are sampled per env at reset."""

    host_final_acc: tuple[float, float] = (55.0, 75.0)  # a∞
    host_initial_acc: tuple[float, float] = (15.0, 30.0)  # a0
    host_tau: tuple[float, float] = (15.0, 60.0)  # epochs
    host_noise: float = 1.0  # shared across the fused-validation configs of one epoch (cancels in differences)
    paired_noise: float = 0.35  # per configuration: contribution noise ≈ √2 × this ≈ 0.5 pp
    gain_means: tuple[tuple[str, float], ...] = _DEFAULT_GAIN_MEANS
    gain_spread: float = 2.0  # std of the latent gain around its blueprint mean (negative gains happen)
    seed_tau: tuple[float, float] = (2.0, 8.0)  # epochs to mature
    host_dependency: tuple[float, float] = (0.0, 0.5)  # share of a seed's gain the host stops learning itself
    interaction_spread: float = 1.0  # std of pairwise interaction terms (pp)
    gradient_scale: float = 0.5
    p_exploding: float = 0.01
    p_vanishing: float = 0.01
    loss_noise: float = 0.02

    def __post_init__(self) -> None:
        names = [n for n, _ in self.gain_means]
        unknown = [n for n in names if n not in _BLUEPRINT_NAMES]
        if unknown:
            raise ValueError(
                f"SimulatorConfig.gain_means names unknown blueprints {unknown}; valid: {sorted(_BLUEPRINT_NAMES)}"
            )
        for field in ("host_final_acc", "host_initial_acc", "host_tau", "seed_tau", "host_dependency"):
            lo, hi = getattr(self, field)
            if not lo <= hi:
                raise ValueError(f"SimulatorConfig.{field} must be a (low, high) range with low <= high, got {(lo, hi)}")
        for field in ("host_noise", "paired_noise", "gain_spread", "interaction_spread", "gradient_scale", "loss_noise"):
            if getattr(self, field) < 0:
                raise ValueError(f"SimulatorConfig.{field} must be >= 0, got {getattr(self, field)}")
        if not (0 <= self.p_exploding <= 1 and 0 <= self.p_vanishing <= 1):
            raise ValueError("SimulatorConfig.p_exploding and p_vanishing must be probabilities in [0, 1]")

    def gain_mean_table(self) -> np.ndarray:
        table = np.zeros(NUM_BLUEPRINTS, np.float32)
        for name, mean in self.gain_means:
            table[_BLUEPRINT_NAMES[name]] = mean
        return table


_BLUEPRINT_NAMES: dict[str, int] = {b.name.lower(): int(b) for b in BlueprintAction if b != BlueprintAction.NOOP}

# --------------------------------------------------------------------------------------------------------------
# Host-network oracle (docs/environment.md#blending, #signals-and-observation, #oracles)
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostConfig:
    """Training inside one host env. One RL step = ``minibatches_per_step`` SGD steps of ``batch_size`` images
    (upstream runs a full pass of its shared loader; on digits that would saturate the host within a few steps, so
    an RL step is a fraction of a digits epoch, docs/environment.md#oracles), then the fused validation over the whole
    validation split."""

    minibatches_per_step: int = 2
    batch_size: int | None = None  # None: the task's batch size (16 on digits)
    host_lr: float = 0.01
    host_momentum: float = 0.9
    host_weight_decay: float = 5e-4
    seed_lr: float = 0.01
    seed_momentum: float = 0.9
    max_grad_norm: float = 1.0  # clipping per group: the host, and each slot's seed
    gradient_stride: int = 10  # gradient statistics sampled on minibatches 0, stride, 2·stride, … (last kept)
    norm_eps: float = 1e-5
    data_dir: str | None = None  # cifar10: the cifar-10-batches-py folder, its parent, or cifar-10-python.tar.gz
    augment: bool = False  # random crop (4-px zero padding) + horizontal flip of training images, as upstream's loader
    val_subset: int | None = None  # validate on this many images per env (a fixed per-env window); None: all

    def __post_init__(self) -> None:
        if self.val_subset is not None and (
            isinstance(self.val_subset, bool) or not isinstance(self.val_subset, (int, np.integer)) or self.val_subset < 1
        ):
            raise ValueError(f"HostConfig.val_subset must be None (all) or an integer >= 1, got {self.val_subset!r}")
        if not isinstance(self.augment, (bool, np.bool_)):
            raise ValueError(f"HostConfig.augment must be a bool, got {self.augment!r}")
        if self.data_dir is not None and (not isinstance(self.data_dir, str) or not self.data_dir):
            raise ValueError(f"HostConfig.data_dir must be None or a non-empty path string, got {self.data_dir!r}")
        for name, minimum in (("minibatches_per_step", 1), ("gradient_stride", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"HostConfig.{name} must be an integer >= {minimum}, got {value!r}")
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1
        ):
            raise ValueError(f"HostConfig.batch_size must be None (the task's) or an integer >= 1, got {self.batch_size!r}")
        for name in ("host_lr", "seed_lr", "max_grad_norm", "norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HostConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("host_momentum", "seed_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"HostConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.host_weight_decay >= 0:
            raise ValueError(f"HostConfig.host_weight_decay must be >= 0, got {self.host_weight_decay!r}")

# --------------------------------------------------------------------------------------------------------------
# The environment
# --------------------------------------------------------------------------------------------------------------

GATE_MODES: tuple[str, ...] = ("permissive", "strict")
REWARD_MODES: tuple[str, ...] = ("shaped",)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """One environment's static settings. Defaults are upstream's RL defaults with three slots on ``cifar10``."""

    slots: SlotConfig = SlotConfig()
    task: str = "cifar10"
    topology: str | None = None  # None: the task's; if given it must match the task
    episode_length: int = 150
    max_seeds: int = 0  # 0 = unlimited
    gates: str = "permissive"
    compat: Compat = DEFAULT_COMPAT
    reward_mode: str = "shaped"
    reward: RewardConfig = RewardConfig()
    embargo_epochs: int = 5  # DEFAULT_EMBARGO_EPOCHS_AFTER_PRUNE
    resetting_epochs: int = 1
    min_prune_age: int = MIN_PRUNE_AGE
    simulator: SimulatorConfig = SimulatorConfig()
    host: HostConfig = HostConfig()
    lm: LMConfig = LMConfig()  # transformer tasks only: tokens and vocabulary

    def __post_init__(self) -> None:
        if not isinstance(self.slots, SlotConfig):
            raise TypeError(f"EnvConfig.slots must be a SlotConfig, got {type(self.slots).__name__}")
        if self.task not in TASKS:
            raise ValueError(f"EnvConfig.task must be one of {TASK_NAMES}, got {self.task!r}")
        task = TASKS[self.task]
        if self.topology is not None and self.topology not in TOPOLOGIES:
            raise ValueError(f"EnvConfig.topology must be None (the task's) or one of {TOPOLOGIES}, got {self.topology!r}")
        if self.topology is not None and self.topology != task.topology:
            raise ValueError(
                f"EnvConfig.topology {self.topology!r} does not match task {self.task!r} (topology {task.topology!r})"
            )
        valid_ids = tuple(f"r0c{i}" for i in range(len(task.slot_channels)))
        bad = [s for s in self.slots.slot_ids if s not in valid_ids]
        if bad:
            raise ValueError(f"EnvConfig.slots {bad} do not exist on task {self.task!r}; valid slot ids: {valid_ids}")
        _check_int("episode_length", self.episode_length, 1)
        _check_int("max_seeds", self.max_seeds, 0)
        _check_int("embargo_epochs", self.embargo_epochs, 1)
        _check_int("resetting_epochs", self.resetting_epochs, 1)
        _check_int("min_prune_age", self.min_prune_age, 0)
        if self.gates not in GATE_MODES:
            raise ValueError(f"EnvConfig.gates must be one of {GATE_MODES}, got {self.gates!r}")
        if self.compat not in COMPAT_MODES:
            raise ValueError(f"EnvConfig.compat must be one of {COMPAT_MODES}, got {self.compat!r}")
        check_compat(self.compat)
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"EnvConfig.reward_mode must be one of {REWARD_MODES}, got {self.reward_mode!r}")
        if not isinstance(self.reward, RewardConfig):
            raise TypeError(f"EnvConfig.reward must be a RewardConfig, got {type(self.reward).__name__}")
        if not isinstance(self.simulator, SimulatorConfig):
            raise TypeError(f"EnvConfig.simulator must be a SimulatorConfig, got {type(self.simulator).__name__}")
        if not isinstance(self.host, HostConfig):
            raise TypeError(f"EnvConfig.host must be a HostConfig, got {type(self.host).__name__}")
        if not isinstance(self.lm, LMConfig):
            raise TypeError(f"EnvConfig.lm must be an LMConfig, got {type(self.lm).__name__}")

    @classmethod
    def create(cls, num_slots: int = 3, **kwargs) -> EnvConfig:
        """Config with the first ``num_slots`` slots of the task (r0c0 … r0c{n-1})."""
        if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f"EnvConfig num_slots must be an integer >= 1, got {num_slots!r}")
        return cls(slots=SlotConfig.with_num_slots(num_slots), **kwargs)

    # ---- derived, static -----------------------------------------------------------------------------------

    @property
    def resolved_topology(self) -> str:
        """``topology``, or the task's when it is None (the field stays as given)."""
        return TASKS[self.task].topology if self.topology is None else self.topology

    @property
    def num_slots(self) -> int:
        return self.slots.num_slots

    @property
    def task_spec(self) -> TaskSpec:
        return TASKS[self.task]

    @property
    def slot_columns(self) -> tuple[int, ...]:
        return tuple(int(s.split("c")[1]) for s in self.slots.slot_ids)

    @property
    def slot_channels(self) -> tuple[int, ...]:
        return tuple(self.task_spec.slot_channels[c] for c in self.slot_columns)

    @property
    def host_batch_size(self) -> int:
        """Minibatch size of the host env's SGD steps."""
        return self.host.batch_size or self.task_spec.batch_size

    @property
    def host_params(self) -> float:
        task = self.task_spec
        if task.topology == "transformer":  # the vocabulary is the data's (EnvConfig.lm), not the task's
            return float(transformer_host_params(task.slot_channels[0], task.n_layer, task.block_size,
                                                 self.lm.vocab(task.num_classes)))
        return float(task.host_params)

    @property
    def topology_blueprints(self) -> tuple[BlueprintAction, ...]:
        return TRANSFORMER_BLUEPRINTS if self.resolved_topology == "transformer" else CNN_BLUEPRINTS

    def param_table(self) -> np.ndarray:
        return blueprint_param_table(self.task_spec, self.slot_columns)

    def gate_param_table(self) -> np.ndarray:
        return np.asarray([gate_params(c) for c in self.slot_channels], np.float32)

    def blueprint_allowed(self) -> np.ndarray:
        """bool [13]: the blueprints the mask offers (topology set minus NOOP)."""
        allowed = np.zeros(NUM_BLUEPRINTS, bool)
        allowed[[int(b) for b in self.topology_blueprints]] = True
        allowed[BlueprintAction.NOOP] = False
        return allowed

    @property
    def log_num_classes(self) -> float:
        return math.log(self.task_spec.num_classes)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"EnvConfig.{name} must be an integer >= {minimum}, got {value!r}")
