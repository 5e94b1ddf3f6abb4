"""``bench/scripted.py``: upstream's heuristic re-expressed over the Observation, and the scripted grow controller;
``bench/controllers.py``: its report. Hand-built observations, no env compile (the controllers on a real env are
exercised by ``tests/test_env_seeds_help.py`` on the simulator)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import controllers, scripted
from esper_jax.contracts import AlphaMode, BlueprintAction, LifecycleOp, SeedStage
from esper_jax.observation import empty_observation

S = 3
KEY = jax.random.PRNGKey(0)


def obs_with(epoch=10, acc=50.0, loss=1.0, **slot_fields):
    obs = empty_observation(S)
    signals = obs.signals.replace(
        epoch=jnp.int32(epoch), val_accuracy=jnp.float32(acc), val_loss=jnp.float32(loss)
    )
    slots = obs.slots.replace(**{k: jnp.asarray(v) for k, v in slot_fields.items()})
    return obs.replace(signals=signals, slots=slots)


def ready_memory(**kw):
    """Stabilised, on a 3-epoch plateau, last accuracy 50, last loss 1.0."""
    fields = {
        "prev_acc": jnp.float32(50.0), "prev_loss": jnp.float32(1.0), "plateau": jnp.int32(2),
        "stabilized": jnp.asarray(True), **kw,
    }
    return scripted.initial_memory(S).replace(**fields)


heuristic = jax.jit(scripted.heuristic)


def test_heuristic_germinates_on_a_plateau_in_rotation_and_respects_its_gates():
    memory, a = heuristic(ready_memory(), obs_with(epoch=10), KEY)
    assert (int(a.op), int(a.slot), int(a.blueprint)) == (LifecycleOp.GERMINATE, 0, BlueprintAction.CONV_LIGHT)
    assert float(memory.acc_at_germination[0]) == 50.0
    # The next germination takes the next blueprint of the rotation, into the first empty slot.
    obs = obs_with(epoch=11, has_report=[True, False, False], stage=[SeedStage.FOSSILIZED, 0, 0])
    _, a = heuristic(memory.replace(plateau=jnp.int32(2)), obs, KEY)
    assert (int(a.op), int(a.slot), int(a.blueprint)) == (LifecycleOp.GERMINATE, 1, BlueprintAction.CONV_HEAVY)
    # Too early, not stabilised, no plateau (a +1 pp epoch resets it), or under embargo: WAIT.
    for memory, obs in (
        (ready_memory(), obs_with(epoch=4)),
        (ready_memory(stabilized=jnp.asarray(False), stable=jnp.int32(0)), obs_with(loss=0.5)),
        (ready_memory(), obs_with(acc=51.0)),
        (ready_memory(last_prune_epoch=jnp.int32(7)), obs_with(epoch=10)),
    ):
        assert int(heuristic(memory, obs, KEY)[1].op) == LifecycleOp.WAIT


@pytest.mark.parametrize(
    ("c", "acc_germ", "op"),
    [(1.0, 40.0, LifecycleOp.FOSSILIZE), (0.3, 40.0, LifecycleOp.PRUNE), (0.5, 60.0, LifecycleOp.PRUNE)],
)
def test_heuristic_holding_decision(c, acc_germ, op):
    """> 0.5 pp counterfactual fossilises; ≤ 0.5 prunes; a positive counterfactual with a negative total
    improvement (accuracy 50 now, 60 at germination) is pruned as ransomware."""
    memory = ready_memory(acc_at_germination=jnp.full((S,), acc_germ, jnp.float32))
    obs = obs_with(
        has_report=[False, True, False], stage=[0, SeedStage.HOLDING, 0], has_counterfactual=[False, True, False],
        counterfactual_contribution=[0.0, c, 0.0], blueprint_index=[-1, BlueprintAction.CONV_LIGHT, -1],
    )
    memory, a = heuristic(memory, obs, KEY)
    assert (int(a.op), int(a.slot)) == (op, 1)
    if op == LifecycleOp.PRUNE:
        assert int(memory.last_prune_epoch) == 10
        assert float(memory.penalties[0]) == scripted.BLUEPRINT_PENALTY_ON_PRUNE  # conv_light penalised


def test_heuristic_prunes_a_failing_training_seed_and_advances_a_healthy_one():
    fields = {"has_report": [True, False, False], "stage": [SeedStage.TRAINING, 0, 0], "epochs_in_stage": [5, 0, 0]}
    _, a = heuristic(ready_memory(), obs_with(improvement_since_stage_start=[-2.5, 0, 0], **fields), KEY)
    assert int(a.op) == LifecycleOp.PRUNE
    _, a = heuristic(ready_memory(), obs_with(improvement_since_stage_start=[-1.0, 0, 0], **fields), KEY)
    assert int(a.op) == LifecycleOp.ADVANCE


def test_grow_advances_the_first_ready_slot_and_fossilises_from_holding():
    grow = jax.jit(scripted.grow(BlueprintAction.CONV_HEAVY))
    # Slot 0 blends towards its target (not ready), slot 1 holds with a counterfactual, slot 2 is empty.
    obs = obs_with(
        has_report=[True, True, False], stage=[SeedStage.BLENDING, SeedStage.HOLDING, 0],
        alpha_target=[1.0, 1.0, 0.0], current_alpha=[0.4, 1.0, 0.0], alpha_mode=[AlphaMode.UP, AlphaMode.HOLD, 0],
        has_counterfactual=[True, True, False],
    )
    _, a = grow(scripted.initial_memory(S), obs, KEY)
    assert (int(a.op), int(a.slot)) == (LifecycleOp.FOSSILIZE, 1)
    before_epoch_5 = obs_with(epoch=4)
    assert int(grow(scripted.initial_memory(S), before_epoch_5, KEY)[1].op) == LifecycleOp.WAIT


def test_report_summarises_and_pairs_against_wait():
    per = {
        "final_acc": [90.0, 92.0], "params": [6274.0, 6274.0], "fossils": [0, 0], "return": [1.0, 3.0],
        "ops": [[150, 0, 0, 0, 0, 0], [148, 1, 0, 1, 0, 0]],
        **{n: [0.0, 0.0] for n in ("attribution", "pbrs", "compute_rent", "terminal")},
    }
    other = dict(per, final_acc=[91.0, 92.0])
    results = {"modes": {"fixed": {
        "wait": {"summary": controllers.summarise(per), "per_episode": per},
        "grow_light": {"summary": controllers.summarise(other), "per_episode": other},
    }}}
    assert controllers.summarise(per)["final_acc"] == [91.0, 1.0]
    np.testing.assert_allclose(controllers.summarise(per)["ops"], [149, 0.5, 0, 0.5, 0, 0])
    table = controllers.markdown(results)
    assert "| grow_light | 91.50 ± 0.50 | +0.50 ± 0.50 |" in table
    with pytest.raises(ValueError, match="unknown controller"):
        scripted.act_fns(("wait", "nope"))


@pytest.mark.slow  # compiles the host env's episode scan: minutes on a loaded 2-core CPU
def test_controllers_command_writes_its_results(tmp_path):
    out = tmp_path / "run"
    results = controllers.main(
        ["--epochs", "3", "--episodes", "2", "--compat", "fixed", "--controllers", "wait,heuristic", "--out", str(out)]
    )
    assert (out / "results.json").exists() and (out / "results.md").exists()
    wait = results["modes"]["fixed"]["wait"]["per_episode"]
    assert wait["fossils"] == [0, 0] and wait["params"] == [6274.0, 6274.0]
    assert "| heuristic |" in (out / "results.md").read_text()
