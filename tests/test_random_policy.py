"""``esper_jax.random_policy``: the random baseline shared by the trainer's final comparison and bench.controllers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bench import scripted
from esper_jax import masks
from esper_jax.contracts import CANONICAL_STYLE, HEAD_NAMES, LifecycleOp, SeedStage
from esper_jax.network import NetworkConfig
from esper_jax.policy import all_valid_masks
from esper_jax.random_policy import random_masked_actions

N = 4000


def test_every_head_stays_in_its_mask_and_the_style_follows_the_op():
    full = all_valid_masks(NetworkConfig(num_slots=3), (N,))
    # Forbid one choice per head (not the canonical style: non-germinating ops are forced onto it).
    cut = {h: getattr(full, h).at[:, 1 if h != "style" else int(CANONICAL_STYLE) ^ 1].set(False) for h in HEAD_NAMES}
    m = full.replace(**cut)
    acts = jax.jit(random_masked_actions)(m, jax.random.PRNGKey(3))
    for h in HEAD_NAMES:
        a = np.asarray(getattr(acts, h))
        assert a.shape == (N,) and a.dtype == np.int32
        assert np.all(np.asarray(getattr(m, h))[np.arange(N), a]), h
    op, style = np.asarray(acts.op), np.asarray(acts.style)
    free = (op == LifecycleOp.GERMINATE) | (op == LifecycleOp.SET_ALPHA_TARGET)
    assert np.all(style[~free] == int(CANONICAL_STYLE))
    # Where the style matters it is drawn from the whole mask, not forced.
    assert len(set(style[free].tolist())) == int(np.asarray(m.style[0]).sum())
    # Every allowed op is drawn (uniform: each near 1/5 of N).
    counts = np.bincount(op, minlength=int(m.op.shape[-1]))
    assert counts[1] == 0 and np.all(counts[np.asarray(m.op[0])] > N / 5 * 0.8), counts


def test_the_bench_random_controller_is_the_shared_random_policy():
    """The benchmark's ``random`` row plays exactly the trainer's random baseline (one function, not two copies)."""
    from tests.mask_builders import make_obs

    obs = make_obs([SeedStage.HOLDING, None, SeedStage.BLENDING])  # several ops allowed, GERMINATE among them
    key = jax.random.PRNGKey(7)
    _, bench_acts = scripted.random_valid(scripted.initial_memory(3), obs, key)
    shared = random_masked_actions(masks.compute_env(obs), key)
    for h in HEAD_NAMES:
        assert int(getattr(bench_acts, h)) == int(getattr(shared, h)), h
    # and never a non-canonical style with a non-germinating op, over many keys
    keys = jax.random.split(key, 256)
    acts = jax.vmap(lambda k: scripted.random_valid(scripted.initial_memory(3), obs, k)[1])(keys)
    free = (acts.op == LifecycleOp.GERMINATE) | (acts.op == LifecycleOp.SET_ALPHA_TARGET)
    assert bool(jnp.all(jnp.where(free, True, acts.style == int(CANONICAL_STYLE))))
