"""The JAX-native Esper environment: exact lifecycle, alpha control, signals and SHAPED reward, with an oracle for
everything that needs real training (docs/environment.md#oracles).

``make(name, config)`` returns an object with ``reset(key) -> (EnvState, Observation)`` and
``step(state, actions: PerHead[int32 scalar], key) -> StepOutput`` for ONE env (``esper_jax.env.interface.Environment``);
vmap over envs, scan over time. Available names: ``"sim"`` (the simulator oracle) and ``"host"`` (real host
CNNs trained with their seeds on device: ``make("host")`` trains on scikit-learn's digits with the ``digits``
task; ``cifar10`` reads CIFAR-10's local files from ``EnvConfig.host.data_dir``; any other CNN task takes
``dataset=esper_jax.env.host.from_arrays(...)`` or ``from_uint8(...)``; transformer tasks, ``tinystories`` and
``tinystories_small``, train a language-model host on the tokens ``config.lm`` names, the embedded corpus by
default). Both share the exact lifecycle, signals and reward; only the oracle differs.

Modules: ``interface`` (``Environment`` protocol, ``StepOutput``), ``config`` (EnvConfig), ``alpha`` (controller and curves), ``slots`` (per-slot seed state), ``lifecycle``
(gates, ops, tick), ``signals`` (measurements → state, feedback, Observation), ``reward`` (SHAPED components,
normaliser helper), ``oracle`` (oracle interface, simulator), ``core`` (reset/step wiring), ``host/`` (the
host-network oracle: data, CNN, blueprints, blend operators).

Quirks of upstream (docs/compat.md#environment-side) and how ``EnvConfig.compat`` treats them:

| # | quirk | ``upstream`` (reproduced) | ``fixed`` (default) |
|---|---|---|---|
| 1 | losses divided by the per-env batch size | obs val_loss = mean loss / B (512 on cifar10), ≈ 0 | true mean loss |
| 2 | host_stabilized hard-coded 0 | 0 (the Observation has no such field; features write 0) | same: not modelled here (no field) |
| 3 | reward pays the sampled slot even on WAIT | seed terms (attribution, warnings, PBRS, synergy) of the sampled slot only | seed terms summed over every slot holding a seed; the sampled op applies to the sampled slot, WAIT to the others |
| 3b | invalid actions rewarded as WAIT | yes, counted in ``info.invalid_action`` | same (no explicit penalty), counted |
| 4 | PBRS stage jump never paid (k ≥ 1 at reward time) | Φ_prev = Φ(stage, k − 1) | at k = 1 Φ_prev = Φ(previous stage, previous k), except just after germination (the GERMINATE shaping pays that jump) |
| 5 | ADVANCE on HOLDING fossilises uncounted | runs G5, FOSSILIZED, no counters/credit, scored as WAIT | the action fails (no-op, success False, invalid) |
| 6 | INSTANT prune regardless of controller mode | executes (scored as WAIT when not in HOLD) | needs HOLD, else fails |
| 7 | gate never trained / MULTIPLY zero-init / SE not identity | ``host``: the GATE network stays at its random init; MULTIPLY zero-inits each seed's last layer, SE's bias too (gate σ(0) = 0.5, not identity); SE born as x·σ(3) = x·0.953 | ``host``: the gate trains in its seed's optimizer group (clipped with it); MULTIPLY zero-init kept; SE gate is 2σ(·) with bias 0, identity at birth under every style (same parameter count). ``sim``: not applicable |
| 8 | interaction from leave-one-out baselines; none for 2 seeds | I_ij = f({i,j}) − f(A∖i) − f(A∖j) + f(∅), 3–4 active seeds | I_ij = f({i,j}) − f({i}) − f({j}) + f(∅), 2–4 active seeds (K grows by S rows) |
| 9 | default PPO slot set is r0c1 only | not reproduced in either mode: EnvConfig defaults to r0c0..r0c2 | same |
| 10 | LM fused-validation reshape; LOSS-family sign | upstream cannot run an LM host in its PPO loop; the transformer host env scores per-token correctness [K, V, T] (SHAPED only) | same |
| 11 | WAIT never reports success | last_action_success False after WAIT | True |
| 13 | blend-out freeze read before the alpha tick | a seed stays frozen one epoch after its ramp-down ends | frozen only while alpha is still going down |
| 14 | host gradient through a blended slot | ``host``: ADD/GATE y = h + a·(s − h) with a detached seed input: ∂y/∂h = 1 − a, no gradient to the blocks before a slot at a = 1 or after fossilisation | ``host``: y = h + a·(s − stop_gradient(h)), same value, ∂y/∂h = 1. ``sim``: not applicable |
| 15 | farmable reward | proxy attribution for alpha-0 seeds; ti = improvement since germination; fossils contribute by ti; no charge when a seed leaves | no proxy; ti = accuracy − the seedless reference (sim curve / host-env twin); fossils contribute by their counterfactual; −0.3·Φ charged when a seed leaves and at the episode's end |
| 12 | a failed G3 ADVANCE counts as valid for the reward | valid, success False | same (kept): the reward equals WAIT's either way, and the mask cannot see gate state, so calling it invalid would make masked-in ops illegal |
"""

from __future__ import annotations

import functools

from esper_jax.env.config import EnvConfig, HostConfig, RewardConfig, SimulatorConfig
from esper_jax.env.core import EnvState, EsperEnv, StepInfo
from esper_jax.env.interface import Environment, StepOutput
from esper_jax.env.reward import RewardComponents

__all__ = [
    "ENV_NAMES",
    "EnvConfig",
    "EnvState",
    "Environment",
    "EsperEnv",
    "HostConfig",
    "RewardComponents",
    "RewardConfig",
    "SimulatorConfig",
    "StepInfo",
    "StepOutput",
    "make",
]

ENV_NAMES: tuple[str, ...] = ("sim", "host")
HOST_DEFAULT_TASK = "digits"


def make(name: str, config: EnvConfig | None = None, dataset=None) -> EsperEnv:
    """Build an environment by name: ``"sim"`` (simulator oracle) or ``"host"`` (host-network oracle).

    ``"host"`` without a config uses ``EnvConfig(task="digits")``; with the ``digits`` task and no ``dataset`` it
    loads scikit-learn's digits, with ``cifar10`` CIFAR-10 from ``config.host.data_dir``. Other CNN tasks need
    ``dataset`` (an ``esper_jax.env.host.Dataset``, e.g. from ``from_arrays``). Transformer tasks read their tokens
    from ``config.lm`` unless ``dataset`` is a ``host.tokens.TokenData``. Raises ValueError for unknown names and
    for data the task cannot take.
    """
    if name not in ENV_NAMES:
        raise ValueError(f"unknown environment {name!r}; available: {ENV_NAMES}")
    if config is None:
        config = EnvConfig(task=HOST_DEFAULT_TASK) if name == "host" else EnvConfig()
    if not isinstance(config, EnvConfig):
        raise TypeError(f"config must be an EnvConfig, got {type(config).__name__}")
    if name == "sim":
        if dataset is not None:
            raise ValueError("dataset is only used by the 'host' environment")
        return EsperEnv.simulator(config)
    from esper_jax.env import host

    if config.resolved_topology == "transformer":  # issue 19: the transformer host (tokens from config.lm)
        from esper_jax.env.host import lm_oracle, tokens

        dataset = tokens.for_config(config) if dataset is None else dataset
        return EsperEnv(config=config, oracle=lm_oracle.LMOracle.from_config(config, dataset))
    if dataset is None:
        dataset = _builtin_dataset(config)
    return EsperEnv(config=config, oracle=host.HostOracle.from_config(config, dataset))


def _builtin_dataset(config: EnvConfig):
    """The data a host task reads without ``dataset``: digits (in the scikit-learn wheel), or CIFAR-10 from the
    local files at ``config.host.data_dir`` (nothing is downloaded)."""
    from esper_jax.env.host import cifar_files

    if config.task == HOST_DEFAULT_TASK:
        return _digits()
    if config.task == "cifar10":
        if config.host.data_dir is None:
            raise ValueError(
                "the 'host' environment on task 'cifar10' reads CIFAR-10 from local files: set "
                f"EnvConfig.host.data_dir (--env.host.data-dir DIR); {cifar_files.HOW_TO_GET}"
            )
        return _cifar10(config.host.data_dir)
    raise ValueError(
        f"the 'host' environment on task {config.task!r} needs dataset=esper_jax.env.host.from_arrays(...); "
        f"built-in data: {HOST_DEFAULT_TASK!r} (scikit-learn's digits), 'cifar10' (EnvConfig.host.data_dir)"
    )


@functools.lru_cache(maxsize=1)
def _digits():
    from esper_jax.env.host import load_digits

    return load_digits()


@functools.lru_cache(maxsize=2)
def _cifar10(path: str):
    from esper_jax.env.host import load_cifar10

    return load_cifar10(path)
