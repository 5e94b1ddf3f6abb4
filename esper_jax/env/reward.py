"""SHAPED contribution reward (docs/environment.md#reward), computed on the pre-action state.

``RewardComponents`` holds every summand; ``total`` adds them in one fixed order and is exactly the env's reward.
The running reward normaliser (Welford, no mean subtraction, clip ±10; docs/environment.md#reward-normalisation) is
shared by all envs and updated in env order, so it cannot live inside a per-env step: the rollout applies it
(``normalize_batch`` below wraps ``esper_jax.normalization``).

Upstream/fixed differences handled here (quirk numbers of docs/compat.md#environment-side):

* 3 — upstream pays the seed terms (attribution, warnings, PBRS, synergy) for the sampled slot only, even on WAIT,
  where the slot head is causally irrelevant; fixed pays them for every slot holding a seed, with the sampled op
  applied to the sampled slot and WAIT to the others. Invalid ops are scored as WAIT in both modes.
* 4 — upstream's PBRS takes Φ_prev = Φ(stage, k − 1) whenever k > 0, and k ≥ 1 always holds at reward time, so stage
  jumps never earn their potential difference; fixed uses Φ(previous_stage, previous_k) at k = 1 (the potential
  the seed showed one step earlier), except right after germination, whose jump the GERMINATE shaping already pays.
* 15 (the reward must not be farmable). Upstream pays the proxy attribution 0.3·max(Δacc, 0) for every
  seed without a fresh counterfactual — seeds at alpha 0 (GERMINATED, TRAINING), which cannot change the forward
  pass; judges a seed's progress, discount, warnings and ratio penalty by the host's improvement since the seed's
  germination (so a seed germinated early is credited with the host's own learning); counts a fossil as
  contributing when that improvement is ≥ 1 pp; and never charges the potential a seed loses when it is removed, so
  germinate→prune loops keep the GERMINATE shaping and the PBRS climb. Fixed pays no proxy (a seed earns
  attribution only from its measured counterfactual); takes the seeds' improvement ``ti`` as the env's accuracy
  minus its ``reference_accuracy`` (the same host without seeds: the simulator's seedless curve, the host env's
  seedless twin; ``core.py``); counts a fossil as contributing by its own counterfactual contribution and keeps attributing it (upstream
  stops at fossilisation, so a seed held in HOLDING forever out-earned the same seed fossilised); and charges
  −w·Φ(stage, k) on the step a seed module leaves its slot and, for every seed still there, on the episode's last
  step (``pbrs_removal``; the end of an episode is a terminal state of potential 0), closing the PBRS telescope.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from esper_jax import normalization
from esper_jax.contracts import LifecycleOp, SeedStage
from esper_jax.env.config import RewardConfig

MIN_HOLDING_EPOCHS = 5.0  # upstream leyline constant: HOLDING epochs before a fossilise earns its full bonus

_FIELDS = (
    "attribution",
    "blending_warning",
    "holding_warning",
    "pbrs",
    "synergy",
    "compute_rent",
    "alpha_shock",
    "action_shaping",
    "terminal",
    "hindsight_credit",
)


@struct.dataclass
class RewardComponents:
    """Every summand of the SHAPED reward (float32, same shape)."""

    attribution: jnp.ndarray
    blending_warning: jnp.ndarray
    holding_warning: jnp.ndarray
    pbrs: jnp.ndarray
    synergy: jnp.ndarray
    compute_rent: jnp.ndarray  # stored negative
    alpha_shock: jnp.ndarray  # stored negative
    action_shaping: jnp.ndarray
    terminal: jnp.ndarray
    hindsight_credit: jnp.ndarray

    def total(self) -> jnp.ndarray:
        out = self.attribution
        for name in _FIELDS[1:]:
            out = out + getattr(self, name)
        return out


@struct.dataclass
class SeedInputs:
    """The reward's view of one slot's seed (any shape; [S] or scalars)."""

    present: jnp.ndarray  # bool: a seed module exists (seed_info is not None)
    stage: jnp.ndarray  # int32
    epochs_in_stage: jnp.ndarray  # int32 k
    previous_stage: jnp.ndarray  # int32
    previous_epochs_in_stage: jnp.ndarray  # int32
    total_improvement: jnp.ndarray  # float32 ti
    contribution: jnp.ndarray  # float32 c (meaningful where contribution_known)
    contribution_known: jnp.ndarray  # bool: measured this epoch
    interaction_sum: jnp.ndarray  # float32
    acc_at_germination: jnp.ndarray  # float32
    has_acc_at_germination: jnp.ndarray  # bool


@struct.dataclass
class SeedTerms:
    attribution: jnp.ndarray
    blending_warning: jnp.ndarray
    holding_warning: jnp.ndarray
    pbrs: jnp.ndarray
    synergy: jnp.ndarray


def potential(stage: jnp.ndarray, k: jnp.ndarray, cfg: RewardConfig) -> jnp.ndarray:
    """Φ(stage, k) = P[stage] + min(0.3·k, 2.0)."""
    table = jnp.asarray(cfg.stage_potentials, jnp.float32)
    p = table[jnp.clip(stage, 0, table.shape[0] - 1)]
    return p + jnp.minimum(cfg.epoch_progress_bonus * k.astype(jnp.float32), cfg.max_progress_bonus)


def attribution_discount(ti: jnp.ndarray, cfg: RewardConfig) -> jnp.ndarray:
    """sigmoid(3·ti) for ti < 0 (exponent clamped at 700 as upstream), else 1."""
    x = jnp.clip(-cfg.attribution_sigmoid_steepness * ti, -700.0, 700.0)
    return jnp.where(ti < 0.0, 1.0 / (1.0 + jnp.exp(x)), 1.0)


def ratio_penalty(c: jnp.ndarray, ti: jnp.ndarray, d: jnp.ndarray, cfg: RewardConfig) -> jnp.ndarray:
    """Anti-gaming penalty when the contribution dwarfs the seed's total improvement.

    Both caps are ``prune_good_seed_penalty`` (−0.3 by default), as upstream; the safe zone starts above
    max(improvement_safe_threshold, 1e-8) while the "no real improvement" branch tests the raw threshold, so a
    threshold of 0 leaves (0, 1e-8] unpenalised exactly as upstream does."""
    if cfg.disable_anti_gaming:
        return jnp.zeros_like(c)
    safe = max(cfg.improvement_safe_threshold, 1e-8)
    in_safe_zone = ti > safe
    ratio = c / jnp.where(in_safe_zone, ti, 1.0)
    high_ratio = in_safe_zone & (ratio > cfg.hacking_ratio_threshold)
    pen = jnp.where(
        high_ratio,
        -jnp.minimum(
            -cfg.prune_good_seed_penalty, 0.1 * (ratio - cfg.hacking_ratio_threshold) / cfg.hacking_ratio_threshold
        ),
        jnp.where(
            ~in_safe_zone & (ti <= cfg.improvement_safe_threshold),
            cfg.prune_good_seed_penalty * jnp.minimum(1.0, c / 10.0),
            0.0,
        ),
    )
    return jnp.where((c > 1.0) & (d >= 0.5), pen, 0.0)


def seed_terms(
    op: jnp.ndarray,
    seed: SeedInputs,
    val_acc: jnp.ndarray,
    acc_delta: jnp.ndarray,
    cfg: RewardConfig,
    fixed_pbrs: bool,
    fixed_attribution: bool = False,
) -> SeedTerms:
    """Items 1–5 of docs/environment.md#seed-terms for one seed under the (effective) op. ``fixed_attribution`` (quirk 15): no proxy, and the
    progress that bounds the attribution is ``ti`` itself (the env's gain over its seedless reference)."""
    ti = seed.total_improvement
    c = seed.contribution
    k = seed.epochs_in_stage
    fossil = seed.stage == SeedStage.FOSSILIZED

    # 1. bounded attribution. Upstream adds the ratio penalty as rp / w before multiplying by the weight w, so w
    # scales the attribution (and the proxy) but not the penalty.
    cw = cfg.contribution_weight
    d = attribution_discount(ti, cfg)
    progress = ti if fixed_attribution else val_acc - seed.acc_at_germination
    has_progress = True if fixed_attribution else seed.has_acc_at_germination
    bounded = jnp.where(
        has_progress,
        jnp.where(progress <= 0.0, 0.0, jnp.where(c >= progress, jnp.sqrt(jnp.maximum(progress * c, 0.0)), c)),
        0.5 * c,
    )
    rp = ratio_penalty(c, ti, d, cfg)
    known_nonnegative = cw * (bounded * d + rp / cw)
    known = jnp.where(c < 0.0, cw * c, known_nonnegative)
    proxy_weight = cw * cfg.proxy_confidence_factor  # upstream's proxy_contribution_weight
    proxy = jnp.where(acc_delta > 0.0, proxy_weight * acc_delta, 0.0)
    if fixed_attribution:
        proxy_weight = 0.0
        proxy = jnp.zeros_like(proxy)
    # Upstream stops attributing a seed once it fossilises. Fixed keeps paying a fossil its measured contribution
    # (bounded by the env's gain over the seedless reference, as for any seed): otherwise a seed kept in HOLDING
    # forever out-earns the same seed fossilised, at the same accuracy (docs/compat.md quirk 15).
    attributed = seed.present & (True if fixed_attribution else ~fossil)
    a = jnp.where(seed.contribution_known, known, proxy)
    a = jnp.where(attributed, a, 0.0)
    # The sign of a as float64 upstream sees it. d = sigmoid(3·ti) is > 0 in float64 for every finite ti (its
    # exponent is clamped at 700), but bounded·d underflows to 0 in float32 once ti < about −29.6; so where no ratio
    # penalty applies the sign is that of w·bounded. With a ratio penalty d ≥ 0.5 and the float32 value is safe.
    bounded_sign = (bounded > 0.0) if cw > 0 else (bounded < 0.0)
    known_positive = jnp.where(
        c < 0.0, jnp.asarray(cw < 0), jnp.where(rp != 0.0, known_nonnegative > 0.0, bounded_sign)
    )
    proxy_positive = (acc_delta > 0.0) & (proxy_weight > 0)
    a_positive = attributed & jnp.where(seed.contribution_known, known_positive, proxy_positive)
    a = jnp.where((op == LifecycleOp.FOSSILIZE) & (ti < 0.0), 0.0, a)
    a = jnp.where(op == LifecycleOp.PRUNE, -a, a)

    # 2. blending warning
    kf = k.astype(jnp.float32)
    blending = jnp.where(
        seed.present & (seed.stage == SeedStage.BLENDING) & (ti < 0.0), -0.1 - jnp.minimum(0.05 * kf, 0.3), 0.0
    )
    # 3. holding warning (op is WAIT here, so the FOSSILIZE/PRUNE overrides above never apply to a_positive)
    holding = jnp.where(
        seed.present & (seed.stage == SeedStage.HOLDING) & (op == LifecycleOp.WAIT) & (k >= 2) & a_positive,
        -jnp.minimum(0.1 + 0.05 * (kf - 2.0), 0.3),
        0.0,
    )
    # 4. PBRS
    if cfg.disable_pbrs:
        pbrs = jnp.zeros_like(a)
    else:
        phi = potential(seed.stage, k, cfg)
        phi_in_stage = potential(seed.stage, jnp.maximum(k - 1, 0), cfg)
        phi_jump = potential(seed.previous_stage, seed.previous_epochs_in_stage, cfg)
        if fixed_pbrs:
            just_germinated = (seed.previous_stage == SeedStage.DORMANT) | (seed.previous_stage == SeedStage.UNKNOWN)
            use_jump = (k <= 1) & ~just_germinated
        else:
            use_jump = k <= 0
        phi_prev = jnp.where(use_jump, phi_jump, phi_in_stage)
        pbrs = jnp.where(seed.present, cfg.pbrs_weight * (cfg.gamma * phi - phi_prev), 0.0)
    # 5. synergy
    synergy = jnp.where(
        seed.present & (seed.interaction_sum > 0.0), 0.1 * jnp.tanh(0.5 * seed.interaction_sum), 0.0
    )
    return SeedTerms(attribution=a, blending_warning=blending, holding_warning=holding, pbrs=pbrs, synergy=synergy)


def pbrs_removal(stage: jnp.ndarray, k: jnp.ndarray, leaving: jnp.ndarray, cfg: RewardConfig) -> jnp.ndarray:
    """Quirk 15, fixed only: the PBRS term of the transition out of the slot, γ·0 − Φ(stage, k), summed over the
    seeds whose module leaves this step or is still there at the episode's end (``leaving`` [S]; stage and k are
    the pre-action values)."""
    if cfg.disable_pbrs:
        return jnp.zeros((), jnp.float32)
    return -cfg.pbrs_weight * jnp.sum(jnp.where(leaving, potential(stage, k, cfg), 0.0))


def action_shaping(op: jnp.ndarray, seed: SeedInputs, cfg: RewardConfig) -> jnp.ndarray:
    """Item 8 of docs/environment.md#env-wide-terms for a VALID op on the sampled slot (invalid ops arrive here as
    WAIT)."""
    ti = seed.total_improvement
    c = seed.contribution
    known = seed.contribution_known
    kf = seed.epochs_in_stage.astype(jnp.float32)
    pbrs_on = 0.0 if cfg.disable_pbrs else 1.0
    germinate = pbrs_on * cfg.pbrs_weight * (cfg.gamma * cfg.stage_potentials[SeedStage.GERMINATED] - 0.0)
    germinate = germinate + cfg.germinate_cost

    c_or_zero = jnp.where(known, c, 0.0)
    negative = -0.5 - jnp.minimum(0.2 * jnp.abs(ti), 1.0) - jnp.where(known & (c > 0.1) & (ti < -0.2), 0.3, 0.0)
    contributing = (cfg.fossilize_base_bonus + cfg.fossilize_contribution_scale * c_or_zero) * jnp.minimum(
        1.0, kf / MIN_HOLDING_EPOCHS
    )
    # Upstream compares c with DEFAULT_MIN_FOSSILIZE_CONTRIBUTION here, the constant that also decides which fossils
    # count as contributing; min_fossilize_contribution is that constant.
    earned = known & (c >= cfg.min_fossilize_contribution)
    fossilize = cfg.fossilize_cost + jnp.where(
        ti < 0.0, negative, jnp.where(earned, contributing, cfg.fossilize_noncontributing_penalty)
    )

    good_seed = jnp.maximum(cfg.prune_good_seed_penalty - 0.05 * c, 3.0 * cfg.prune_good_seed_penalty)
    prune_known = jnp.where(
        c < cfg.prune_hurting_threshold,
        cfg.prune_hurting_bonus,
        jnp.where(c < 0.0, cfg.prune_acceptable_bonus, good_seed),
    )
    prune = cfg.prune_cost + jnp.where(known, prune_known, 0.0)

    return jnp.select(
        [op == LifecycleOp.GERMINATE, op == LifecycleOp.FOSSILIZE, op == LifecycleOp.PRUNE, op == LifecycleOp.SET_ALPHA_TARGET],
        [jnp.asarray(germinate, jnp.float32), fossilize, prune, jnp.asarray(cfg.set_alpha_target_cost, jnp.float32)],
        jnp.asarray(0.0, jnp.float32),
    )


@struct.dataclass
class RentInputs:
    """Env-wide compute terms (all [S])."""

    has_module: jnp.ndarray  # bool
    alpha: jnp.ndarray  # float32, at reward time
    params: jnp.ndarray  # float32 seed params incl. gate (0 without a module)
    previous_alpha: jnp.ndarray
    previous_params: jnp.ndarray


def compute_rent(inputs: RentInputs, host_params: float, cfg: RewardConfig) -> jnp.ndarray:
    effective = jnp.sum(
        jnp.where(inputs.has_module, cfg.base_slot_rent_ratio * host_params + inputs.alpha * inputs.params, 0.0)
    )
    growth = effective / host_params
    return jnp.where(effective > 0.0, -jnp.minimum(cfg.rent_weight * jnp.log1p(growth), cfg.max_rent), 0.0)


def alpha_shock(inputs: RentInputs, host_params: float, cfg: RewardConfig) -> jnp.ndarray:
    if cfg.disable_anti_gaming:
        return jnp.zeros((), jnp.float32)
    delta = inputs.alpha - inputs.previous_alpha
    return -cfg.alpha_shock_coef * jnp.sum(delta * delta * inputs.previous_params) / host_params


def terminal_bonus(
    is_last: jnp.ndarray, val_acc: jnp.ndarray, contributing_fossilized: jnp.ndarray, cfg: RewardConfig
) -> jnp.ndarray:
    if cfg.disable_terminal_reward:
        return jnp.zeros((), jnp.float32)
    bonus = cfg.terminal_acc_weight * val_acc + cfg.fossilize_terminal_scale * contributing_fossilized.astype(jnp.float32)
    return jnp.where(is_last, bonus, 0.0)


def shaped_reward(
    op: jnp.ndarray,
    slot: jnp.ndarray,
    seeds: SeedInputs,
    rent: RentInputs,
    val_acc: jnp.ndarray,
    acc_delta: jnp.ndarray,
    is_last: jnp.ndarray,
    contributing_fossilized: jnp.ndarray,
    hindsight_credit: jnp.ndarray,
    host_params: float,
    cfg: RewardConfig,
    compat: str,
) -> RewardComponents:
    """The whole SHAPED reward. ``op`` is the EFFECTIVE op (WAIT for an invalid action); ``seeds`` is [S]."""
    num_slots = seeds.stage.shape[0]
    chosen = jnp.arange(num_slots) == slot
    fixed = compat == "fixed"
    op_per_slot = jnp.where(chosen, op, LifecycleOp.WAIT)
    terms = jax.vmap(lambda o, s: seed_terms(o, s, val_acc, acc_delta, cfg, fixed, fixed))(op_per_slot, seeds)
    weight = jnp.ones(num_slots, jnp.float32) if fixed else chosen.astype(jnp.float32)
    summed = jax.tree.map(lambda x: jnp.sum(x * weight), terms)
    sampled_seed = jax.tree.map(lambda x: jnp.sum(jnp.where(chosen, x, jnp.zeros_like(x))).astype(x.dtype), seeds)
    return RewardComponents(
        attribution=summed.attribution,
        blending_warning=summed.blending_warning,
        holding_warning=summed.holding_warning,
        pbrs=summed.pbrs,
        synergy=summed.synergy,
        compute_rent=compute_rent(rent, host_params, cfg),
        alpha_shock=alpha_shock(rent, host_params, cfg),
        action_shaping=action_shaping(op, sampled_seed, cfg),
        terminal=terminal_bonus(is_last, val_acc, contributing_fossilized, cfg),
        hindsight_credit=jnp.asarray(hindsight_credit, jnp.float32),
    )


def hindsight_credit(
    ledger_row: jnp.ndarray, epoch: jnp.ndarray, total_improvement: jnp.ndarray, cfg: RewardConfig
) -> jnp.ndarray:
    """Credit for the scaffolds of a seed fossilised at ``epoch`` with ti > 0 (docs/environment.md#hindsight-credit).

    ``ledger_row`` is [L, S]: boosts given to the beneficiary at epochs 1..L by each scaffold (0 = no entry).
    """
    epochs = jnp.arange(1, ledger_row.shape[0] + 1, dtype=jnp.float32)[:, None]
    age = jnp.asarray(epoch, jnp.float32) - epochs
    terms = jnp.tanh(cfg.hindsight_boost_scale * ledger_row * total_improvement) * cfg.hindsight_scale * cfg.hindsight_decay**age
    credit = jnp.sum(jnp.where(ledger_row > 0.0, terms, 0.0))
    return jnp.where(total_improvement > 0.0, jnp.minimum(cfg.hindsight_cap, credit), 0.0)


def normalize_batch(
    stats: normalization.RewardNormalizer, raw_rewards: jnp.ndarray
) -> tuple[normalization.RewardNormalizer, jnp.ndarray]:
    """Upstream's shared reward normaliser over a step's envs, in env order (r/std, clip ±10)."""
    return normalization.reward_update_and_normalize_sequence(stats, raw_rewards)
