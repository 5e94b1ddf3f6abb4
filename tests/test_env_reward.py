"""SHAPED reward of the JAX Esper env against the numbers of docs/environment.md#seed-terms, #env-wide-terms and
#reward-normalisation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax import normalization
from esper_jax.contracts import BlueprintAction, LifecycleOp, SeedStage
from esper_jax.env import EnvConfig, RewardConfig
from esper_jax.env import reward as R
from esper_jax.env.config import cnn_blueprint_params, gate_params

CFG = RewardConfig()
HOST = 6418.0
W, G, SET, P, F, A = (int(o) for o in LifecycleOp)
S = SeedStage


def seed(stage=S.BLENDING, k=1, prev_stage=S.TRAINING, prev_k=1, ti=0.0, c=0.0, known=False, isum=0.0,
         acc_germ=0.0, has_germ=False, present=True):
    def f(x, d=jnp.float32):
        return jnp.asarray(x, d)

    return R.SeedInputs(
        present=f(present, jnp.bool_), stage=f(int(stage), jnp.int32), epochs_in_stage=f(k, jnp.int32),
        previous_stage=f(int(prev_stage), jnp.int32), previous_epochs_in_stage=f(prev_k, jnp.int32),
        total_improvement=f(ti), contribution=f(c), contribution_known=f(known, jnp.bool_), interaction_sum=f(isum),
        acc_at_germination=f(acc_germ), has_acc_at_germination=f(has_germ, jnp.bool_),
    )


def terms(op=W, val_acc=50.0, acc_delta=0.0, fixed=False, **kw):
    return R.seed_terms(jnp.asarray(op), seed(**kw), jnp.float32(val_acc), jnp.float32(acc_delta), CFG, fixed)


def close(x, y, tol=5e-4):
    assert float(x) == pytest.approx(y, abs=tol)


def test_blueprint_param_counts():
    assert [cnn_blueprint_params(BlueprintAction.CONV_HEAVY, c) for c in (8, 16, 32)] == [1184, 4672, 18560]
    assert [cnn_blueprint_params(BlueprintAction.BOTTLENECK, c) for c in (8, 16, 32)] == [720, 864, 1152]
    assert [cnn_blueprint_params(BlueprintAction.ATTENTION, c) for c in (8, 16, 32)] == [40, 144, 544]
    assert [gate_params(c) for c in (8, 16, 32, 384)] == [21, 73, 273, 37057]
    table = EnvConfig().param_table()
    assert table[1, BlueprintAction.CONV_LIGHT] == 2336 and table[2, BlueprintAction.NOOP] == 0


# ---------- 1. attribution -----------------------------------------------------------------------------------

def test_attribution_branches():
    close(terms(c=-2.0, known=True, ti=-1.0).attribution, -2.0)  # c < 0: raw, no discount
    close(terms(c=2.0, known=True, ti=0.5, acc_germ=50.0, has_germ=True, val_acc=50.0).attribution, 0.0)  # p <= 0
    close(terms(c=0.8, known=True, ti=0.5, acc_germ=49.5, has_germ=True).attribution, math.sqrt(0.5 * 0.8))  # c >= p
    close(terms(c=0.8, known=True, ti=0.5, acc_germ=40.0, has_germ=True).attribution, 0.8)  # c < p
    close(terms(c=0.8, known=True, ti=0.5).attribution, 0.4)  # no germination accuracy: 0.5 c
    close(terms(c=0.8, known=True, ti=0.5, op=P).attribution, -0.4)  # PRUNE flips the sign
    close(terms(c=0.8, known=True, ti=-0.1, op=F, stage=S.HOLDING).attribution, 0.0)  # FOSSILIZE with ti < 0
    close(terms(known=False, acc_delta=2.0).attribution, 0.6)  # proxy 0.3·Δacc
    close(terms(known=False, acc_delta=-2.0).attribution, 0.0)
    close(terms(c=5.0, known=True, stage=S.FOSSILIZED).attribution, 0.0)
    close(terms(c=5.0, known=True, present=False).attribution, 0.0)


@pytest.mark.parametrize("ti, d", [(-0.2, 0.3543), (-0.5, 0.1824), (-1.0, 0.0474), (0.3, 1.0)])
def test_attribution_discount(ti, d):
    close(R.attribution_discount(jnp.float32(ti), CFG), d)
    if ti < 0:  # c >= 0 is discounted, 0.5·c with no germination accuracy, no ratio penalty (d < 0.5)
        close(terms(c=4.0, known=True, ti=ti).attribution, 2.0 * d)


def test_ratio_penalty():
    # ti > 0.1 and c/ti > 5: −min(0.3, 0.1·(c/ti − 5)/5); c=4, ti=0.4: ratio 10 → −0.1
    close(terms(c=4.0, known=True, ti=0.4).attribution, 0.5 * 4.0 - 0.1)
    # ratio capped at −0.3: c=9, ti=0.2 → ratio 45 → −0.3
    close(terms(c=9.0, known=True, ti=0.2).attribution, 4.5 - 0.3)
    # ti <= 0.1: −0.3·min(1, c/10); c=4, ti=0.05 → −0.12
    close(terms(c=4.0, known=True, ti=0.05).attribution, 2.0 - 0.12)
    # c <= 1: no penalty
    close(terms(c=1.0, known=True, ti=0.0).attribution, 0.5)


# ---------- 2–5 -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, w", [(1, -0.15), (3, -0.25), (6, -0.4), (9, -0.4)])
def test_blending_warning(k, w):
    close(terms(stage=S.BLENDING, k=k, ti=-0.1).blending_warning, w)
    close(terms(stage=S.BLENDING, k=k, ti=0.1).blending_warning, 0.0)


@pytest.mark.parametrize("k, w", [(1, 0.0), (2, -0.1), (3, -0.15), (4, -0.2), (5, -0.25), (6, -0.3), (9, -0.3)])
def test_holding_warning(k, w):
    close(terms(stage=S.HOLDING, k=k, c=2.0, known=True, ti=2.0).holding_warning, w)
    close(terms(stage=S.HOLDING, k=k, c=2.0, known=True, ti=2.0, op=F).holding_warning, 0.0)  # not WAIT
    close(terms(stage=S.HOLDING, k=k, c=-2.0, known=True, ti=2.0).holding_warning, 0.0)  # A <= 0


def test_pbrs_values():
    close(terms(stage=S.TRAINING, k=3).pbrs, 0.3 * (0.995 * 2.9 - 2.6), tol=1e-6)  # 0.08565
    close(terms(stage=S.TRAINING, k=3).pbrs, 0.08565, tol=1e-5)
    for k in range(1, 7):
        assert 0.08 <= float(terms(stage=S.BLENDING, k=k).pbrs) <= 0.09
    close(terms(stage=S.BLENDING, k=7).pbrs, 0.3 * (0.995 * 5.5 - 5.3), tol=1e-6)  # ≈ 0.05
    close(terms(stage=S.TRAINING, k=20).pbrs, -0.006, tol=1e-6)  # −0.0015·(P + 2)
    close(terms(stage=S.FOSSILIZED, k=20).pbrs, -0.012, tol=1e-6)


def test_pbrs_stage_jump_fixed_mode():
    # upstream: k = 1 after HOLDING→FOSSILIZED only sees the in-stage ramp; fixed pays Φ(new) − Φ(previous)
    up = terms(stage=S.FOSSILIZED, k=1, prev_stage=S.HOLDING, prev_k=1).pbrs
    fx = terms(stage=S.FOSSILIZED, k=1, prev_stage=S.HOLDING, prev_k=1, fixed=True).pbrs
    close(up, 0.3 * (0.995 * 6.3 - 6.0), tol=1e-6)
    close(fx, 0.3 * (0.995 * 6.3 - 5.8), tol=1e-6)
    # just germinated: the GERMINATE shaping paid Φ(GERMINATED, 0), so both modes use the in-stage ramp
    close(terms(stage=S.GERMINATED, k=1, prev_stage=S.DORMANT, prev_k=0, fixed=True).pbrs,
          0.3 * (0.995 * 1.3 - 1.0), tol=1e-6)


def test_synergy():
    close(terms(isum=2.0).synergy, 0.1 * math.tanh(1.0), tol=1e-6)
    close(terms(isum=-2.0).synergy, 0.0)


# ---------- 6–7 rent and shock -----------------------------------------------------------------------------------

def rent(alpha, params, prev_alpha=None, prev_params=None, module=None):
    n = len(alpha)

    def f(x):
        return jnp.asarray(x, jnp.float32)

    return R.RentInputs(
        has_module=jnp.asarray(module if module is not None else [p > 0 for p in params]),
        alpha=f(alpha), params=f(params),
        previous_alpha=f(prev_alpha if prev_alpha is not None else [0.0] * n),
        previous_params=f(prev_params if prev_params is not None else params),
    )


def test_compute_rent_examples():
    close(R.compute_rent(rent([0, 1, 0], [0, 2336, 0]), HOST, CFG), -0.157)
    close(R.compute_rent(rent([0, 0, 1], [0, 0, 18560]), HOST, CFG), -0.680)
    close(R.compute_rent(rent([0, 0, 0], [0, 0, 18560]), HOST, CFG), -0.002)
    close(R.compute_rent(rent([0, 0, 0], [0, 0, 0]), HOST, CFG), 0.0)
    close(R.compute_rent(rent([1] * 3, [1e12] * 3), HOST, CFG), -8.0)  # capped


def test_alpha_shock_examples():
    close(R.alpha_shock(rent([0, 0, 1], [0, 0, 18560], prev_alpha=[0, 0, 0]), HOST, CFG), -0.566)
    close(R.alpha_shock(rent([0, 0, 1 / 3], [0, 0, 18560], prev_alpha=[0, 0, 0]), HOST, CFG), -0.063)
    # an instant prune: alpha 1 → 0 with the previous params is shocked too
    close(R.alpha_shock(rent([0, 0, 0], [0, 0, 0], prev_alpha=[0, 0, 1], prev_params=[0, 0, 18560]), HOST, CFG),
          -0.566)


# ---------- 8 action shaping, 9 terminal, hindsight ---------------------------------------------------------------

def shaping(op, **kw):
    return R.action_shaping(jnp.asarray(op), seed(**kw), CFG)


def test_action_shaping():
    close(shaping(G, present=False), 0.2785, tol=1e-6)
    close(shaping(SET), -0.005, tol=1e-7)
    close(shaping(A), 0.0)
    close(shaping(W), 0.0)
    # FOSSILIZE
    close(shaping(F, stage=S.HOLDING, ti=-1.0, c=0.5, known=True, k=3), -0.01 - 0.5 - 0.2 - 0.3)
    close(shaping(F, stage=S.HOLDING, ti=-0.1, c=0.05, known=True), -0.01 - 0.5 - 0.02)
    close(shaping(F, stage=S.HOLDING, ti=-10.0, c=0.0, known=True), -0.01 - 0.5 - 1.0)
    close(shaping(F, stage=S.HOLDING, ti=2.0, c=3.0, known=True, k=2), -0.01 + (0.5 + 0.3) * 0.4)
    close(shaping(F, stage=S.HOLDING, ti=2.0, c=3.0, known=True, k=8), -0.01 + 0.8)
    close(shaping(F, stage=S.HOLDING, ti=2.0, c=0.5, known=True), -0.21)
    # PRUNE
    close(shaping(P, c=-1.0, known=True), 0.295)
    close(shaping(P, c=-0.2, known=True), 0.095)
    close(shaping(P, c=2.0, known=True), -0.405)
    close(shaping(P, c=20.0, known=True), -0.905)
    close(shaping(P, known=False), -0.005)


@pytest.mark.parametrize("acc, fossils, bonus", [(60.0, 2, 9.0), (70.0, 0, 3.5), (70.0, 1, 6.5)])
def test_terminal(acc, fossils, bonus):
    close(R.terminal_bonus(jnp.asarray(True), jnp.float32(acc), jnp.int32(fossils), CFG), bonus, tol=1e-5)
    close(R.terminal_bonus(jnp.asarray(False), jnp.float32(acc), jnp.int32(fossils), CFG), 0.0)


def test_hindsight_credit():
    ledger = np.zeros((10, 3), np.float32)
    ledger[2, 1] = 2.0  # boost 2 at epoch 3 from slot 1
    ledger[6, 2] = 1.0  # boost 1 at epoch 7 from slot 2
    got = R.hindsight_credit(jnp.asarray(ledger), jnp.int32(9), jnp.float32(3.0), CFG)
    want = math.tanh(0.1 * 2 * 3) * 0.1 * 0.995**6 + math.tanh(0.1 * 1 * 3) * 0.1 * 0.995**2
    close(got, want, tol=1e-6)
    close(R.hindsight_credit(jnp.full((10, 3), 50.0), jnp.int32(9), jnp.float32(3.0), CFG), 0.2, tol=1e-7)  # cap
    close(R.hindsight_credit(jnp.asarray(ledger), jnp.int32(9), jnp.float32(-1.0), CFG), 0.0)  # ti <= 0


# ---------- whole reward: sampled slot vs every slot, components sum --------------------------------------------

def _three_seeds():
    seeds = [seed(stage=S.BLENDING, k=2, ti=-0.5), seed(stage=S.TRAINING, k=4), seed(present=False, stage=S.DORMANT)]
    return jax.tree.map(lambda *x: jnp.stack(x), *seeds)


@pytest.mark.parametrize("compat", ["upstream", "fixed"])
def test_shaped_reward_sums_and_slot_choice(compat):
    seeds = _three_seeds()
    r = rent([0.5, 0, 0], [592, 2336, 0], prev_alpha=[0.25, 0, 0])
    args = (seeds, r, jnp.float32(50.0), jnp.float32(1.0), jnp.asarray(False), jnp.int32(0), jnp.float32(0.05),
            HOST, CFG, compat)
    on0 = R.shaped_reward(jnp.int32(W), jnp.int32(0), *args)
    on2 = R.shaped_reward(jnp.int32(W), jnp.int32(2), *args)
    for comps in (on0, on2):
        total = sum(float(getattr(comps, f)) for f in R._FIELDS)
        assert float(comps.total()) == pytest.approx(total, abs=1e-6)
        close(comps.hindsight_credit, 0.05, tol=1e-7)
    if compat == "upstream":
        # quirk 3: under WAIT the (irrelevant) slot head picks which seed is paid
        assert float(on0.blending_warning) < 0.0 and float(on2.blending_warning) == 0.0
        assert float(on0.total()) != float(on2.total())
    else:
        assert float(on0.total()) == float(on2.total())
        close(on0.pbrs, float(terms(stage=S.BLENDING, k=2, ti=-0.5, fixed=True).pbrs)
              + float(terms(stage=S.TRAINING, k=4, fixed=True).pbrs), tol=1e-6)


def test_reward_normaliser_matches_upstream_rules():
    stats = normalization.reward_init()
    stats, out = R.normalize_batch(stats, jnp.asarray([3.0, 3.0, -20.0, 1.0], jnp.float32))
    # first: clipped only; second identical: std 1e-8 → clipped to +10; then r/sample std
    assert float(out[0]) == 3.0 and float(out[1]) == 10.0
    rs = np.array([3.0, 3.0, -20.0])
    assert float(out[2]) == pytest.approx(max(-10.0, -20.0 / rs.std(ddof=1)), rel=1e-5)
    rs = np.array([3.0, 3.0, -20.0, 1.0])
    assert float(out[3]) == pytest.approx(1.0 / rs.std(ddof=1), rel=1e-5)
