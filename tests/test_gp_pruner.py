"""``pruner: gp``: the learning-curve GP keeps slow starters that will finish well, stops fast
starters that will not, feeds the gp sampler its forecasts, and shows its reasons."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, xy_recipe
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torchtune_hp import Float, Study, TrialState
from torchtune_hp.errors import ConfigError
from torchtune_hp.gp.curves import KERNELS, thinned_resources
from torchtune_hp.gp.stopping import GPPruner
from torchtune_hp.gp.surrogate import Surrogate, fit_warp
from torchtune_hp.pruners import ASHAPruner, make_pruner
from torchtune_hp.recipe import load_recipe
from torchtune_hp.runner import run_recipe
from torchtune_hp.space import Space
from torchtune_hp.trial import FrozenTrial

EPOCHS = 16
SPACE = Space({"a": Float(0.0, 1.0)})


def loss(a: float, epoch: int) -> float:
    """Validation loss after ``epoch`` epochs: configurations near a = 0.8 end best but start
    slowest (the time constant grows with a); small a learns fast and plateaus high."""
    final = 0.2 + (a - 0.8) ** 2
    tau = 0.5 + 4.0 * a
    return final + (2.0 - final) * math.exp(-epoch / tau)


def trial(number: int, a: float, epochs: int, state=TrialState.COMPLETE) -> FrozenTrial:
    curve = {e: loss(a, e) for e in range(1, epochs + 1)}
    value = min(curve.values()) if state is TrialState.COMPLETE else None
    return FrozenTrial(number, state, {"a": a}, value=value, intermediate=curve)


HISTORY = [trial(i, a, EPOCHS) for i, a in enumerate([0.0, 0.15, 0.3, 0.45, 0.6, 1.0])]


def test_thinned_resources_are_log_spaced_and_keep_the_last():
    assert thinned_resources(1) == [1]
    assert thinned_resources(20) == [1, 2, 3, 4, 6, 8, 12, 16, 20]
    assert thinned_resources(0) == []


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_model_keeps_a_slow_starter_that_asha_stops_and_stops_a_plateau_asha_keeps(kernel):
    slow_good = trial(10, 0.8, 2, TrialState.RUNNING)  # ends at 0.20: better than all so far
    fast_bad = trial(11, 0.1, 2, TrialState.RUNNING)  # ends at 0.69: worse than the best
    assert slow_good.intermediate[2] > fast_bad.intermediate[2]  # it looks worse at epoch 2
    best_so_far = min(t.value for t in HISTORY)
    assert loss(0.8, EPOCHS) < best_so_far < loss(0.1, EPOCHS)

    asha = ASHAPruner(min_resource=1, eta=2)
    assert asha.prune(slow_good, HISTORY, "min") and not asha.prune(fast_bad, HISTORY, "min")

    gp = GPPruner(n_startup=3, kernel=kernel)
    gp.bind(SPACE, "min")
    assert not gp.prune(slow_good, HISTORY, "min")
    keep = gp.last_decision
    assert keep is not None and not keep.stop and keep.forecast.p_improve > 0.05
    assert gp.prune(fast_bad, HISTORY, "min")
    stop = gp.last_decision
    assert stop is not None and stop.stop and stop.forecast.p_improve < 0.05
    # the forecasts are near the truth, and the slow starter's far below its current value
    assert keep.forecast.mean == pytest.approx(loss(0.8, EPOCHS), abs=0.08)
    assert stop.forecast.mean == pytest.approx(loss(0.1, EPOCHS), abs=0.1)
    assert keep.forecast.mean < slow_good.intermediate[2] - 0.5
    assert "stopped after 2 reports" in stop.describe("val_loss")


def test_forecasts_beyond_the_best_so_far_survive_a_plateau_and_diverged_runs_are_left_out():
    """Tied best values (a plateau) must not pin every forecast to the incumbent, and a
    stopped run that diverged is not handed to the sampler as a finite forecast."""
    incumbent = min(t.value for t in HISTORY)
    plateau = FrozenTrial(  # its running best ties the incumbent for its last 10 epochs
        6,
        TrialState.COMPLETE,
        {"a": 0.62},
        value=incumbent,
        intermediate={e: max(loss(0.62, e), incumbent) for e in range(1, EPOCHS + 1)},
    )
    gp = GPPruner(n_startup=3)
    gp.bind(SPACE, "min")
    slow_good = trial(10, 0.8, 4, TrialState.RUNNING)
    assert not gp.prune(slow_good, [*HISTORY, plateau], "min")
    forecast = gp.last_decision.forecast  # below the tied incumbent, not clamped to it
    assert forecast.mean < incumbent - 1e-3 and forecast.p_improve > 0.5
    diverged = FrozenTrial(
        11,
        TrialState.PRUNED,
        {"a": 0.95},
        value=math.inf,
        intermediate={1: 1.5, 2: 0.9, 3: math.inf},
    )
    stopped = FrozenTrial(
        12, TrialState.PRUNED, {"a": 0.1}, value=1.0, intermediate={1: 1.2, 2: 1.0}
    )
    gp.prune(trial(13, 0.1, 2, TrialState.RUNNING), [*HISTORY, plateau, diverged, stopped], "min")
    assert set(gp.final_values([*HISTORY, diverged, stopped])) == {12}


def test_keep_top_zero_lets_the_gain_rule_stop_even_the_leader():
    leader = trial(10, 0.8, 2, TrialState.RUNNING)
    keep = GPPruner(n_startup=3, threshold=0.0, gain_ratio=1e6)  # every trial "cheaper new"
    keep.bind(SPACE, "min")
    assert not keep.prune(leader, HISTORY, "min")  # the best forecast at its rung goes on
    drop = GPPruner(n_startup=3, threshold=0.0, gain_ratio=1e6, keep_top=0.0)
    drop.bind(SPACE, "min")
    assert drop.prune(leader, HISTORY, "min")


def test_before_startup_asha_ranks_and_the_model_keeps_only_its_leaders():
    """Before any trial completes the model cannot forecast: the rank at the rung decides,
    as ASHA's would. Until ``n_startup`` have completed, a trial that ASHA would stop goes on
    only when the model would keep it and forecasts it among the best at the rung."""
    gp = GPPruner(n_startup=3, min_resource=2, eta=2)
    gp.bind(SPACE, "min")
    asha = ASHAPruner(min_resource=2, eta=2)
    partial = [trial(i, a, 4, TrialState.RUNNING) for i, a in enumerate([0.0, 0.3, 0.6])]
    for a in (0.1, 0.45, 0.8, 1.0):
        running = trial(11, a, 2, TrialState.RUNNING)
        assert gp.prune(running, partial, "min") == asha.prune(running, partial, "min")
        assert gp.last_decision is not None and gp.last_decision.forecast is None
    slow = trial(11, 0.8, 2, TrialState.RUNNING)
    assert gp.prune(slow, partial, "min")  # worse at epoch 2 than all three: stopped
    assert gp.last_decision.describe("loss") == (
        "stopped after 2 reports by rank, before the model forecasts: 3 of the 4 trials that "
        "reached 2 reports were better"
    )
    assert not gp.prune(slow, [], "min")  # the first trial at a rung goes on

    two = HISTORY[:2]  # two complete trials: the model has a say, but not alone yet
    outcomes = []
    for a in (0.1, 0.3, 0.4, 1.0):  # fresh models: each decision from the same start
        gp = GPPruner(n_startup=3, min_resource=2, eta=2)
        alone = GPPruner(n_startup=2, min_resource=2, eta=2)  # the model's own rule
        leaders = GPPruner(n_startup=2, min_resource=2, eta=2, threshold=0.0, gain_ratio=1e6)
        for pruner in (gp, alone, leaders):  # ``leaders`` stops all but the best forecasts
            pruner.bind(SPACE, "min")
        running = trial(11, a, 2, TrialState.RUNNING)
        rank_stop = asha.prune(running, two, "min")
        model_keeps = not alone.prune(running, two, "min")
        leads = not leaders.prune(running, two, "min")
        outcomes.append((rank_stop, model_keeps, leads, gp.prune(running, two, "min")))
        assert outcomes[-1][-1] == (rank_stop and not (model_keeps and leads))
        d = gp.last_decision
        assert d is not None and d.rank is not None and (d.forecast is not None) == rank_stop
        if rank_stop:
            assert "predicted final loss" in d.describe("loss") and "by rank, " in d.describe()
    assert outcomes == [  # ASHA keeps it; the model keeps a leader; and stops the others
        (False, False, False, False),
        (True, True, True, False),
        (True, True, False, True),
        (True, False, False, True),
    ]


def test_no_decision_off_rung_or_at_the_end():
    gp = GPPruner(n_startup=3, min_resource=2, eta=2)
    gp.bind(SPACE, "min")
    assert not gp.prune(trial(11, 0.1, 3, TrialState.RUNNING), HISTORY, "min")  # off rung
    assert gp.last_decision is None
    assert gp.prune(trial(11, 0.1, 4, TrialState.RUNNING), HISTORY, "min")
    assert not gp.prune(trial(11, 0.1, EPOCHS, TrialState.RUNNING), HISTORY, "min")
    diverging = FrozenTrial(12, TrialState.RUNNING, {"a": 0.5}, intermediate={1: math.inf})
    assert gp.prune(diverging, HISTORY[:1], "min")  # stopped at once, model or not


def test_startup_ranks_from_the_first_report_and_the_model_from_min_resource():
    """By default ASHA's startup rank decides at 1, 2, 4, ... reports (trying many
    configurations briefly pays before any curve has ended) and the model at 2, 4, 8, ...
    (one report is where a slow starter and a bad configuration look most alike). A
    ``min_resource`` the user sets moves both; ``startup_min_resource`` moves the first."""
    partial = [trial(i, a, 4, TrialState.RUNNING) for i, a in enumerate([0.0, 0.3, 0.6])]
    bad = FrozenTrial(11, TrialState.RUNNING, {"a": 0.9}, intermediate={1: 5.0})
    default = GPPruner()
    assert (default.min_resource, default.startup_min_resource) == (2, 1)
    default.bind(SPACE, "min")
    assert default.prune(bad, partial, "min")  # startup: ranked at 1 report, stopped
    assert default.last_decision is not None
    assert default.last_decision.describe().startswith("stopped after 1 report by rank")
    assert not default.prune(bad, HISTORY, "min")  # the model decides alone: not at 1 report
    assert default.last_decision is None
    for options, first in (
        ({"min_resource": 2}, 2),
        ({"min_resource": 4}, 4),
        ({"min_resource": 4, "startup_min_resource": 1}, 1),
    ):
        gp = GPPruner(**options)
        assert gp.startup_min_resource == first
        gp.bind(SPACE, "min")
        assert gp.prune(bad, partial, "min") == (first == 1)
    with pytest.raises(ValueError, match="startup_min_resource must be >= 1"):
        GPPruner(startup_min_resource=0)


def test_maximizing_studies_are_forecast_in_their_direction():
    flipped = [
        FrozenTrial(
            t.number,
            t.state,
            t.params,
            value=-t.value,
            intermediate={e: -v for e, v in t.intermediate.items()},
        )
        for t in HISTORY
    ]
    gp = GPPruner(n_startup=3)
    gp.bind(SPACE, "max")
    fast_bad = trial(11, 0.1, 2, TrialState.RUNNING)
    neg = FrozenTrial(
        11,
        fast_bad.state,
        fast_bad.params,
        intermediate={e: -v for e, v in fast_bad.intermediate.items()},
    )
    assert gp.prune(neg, flipped, "max")
    assert gp.last_decision.forecast.mean == pytest.approx(-loss(0.1, EPOCHS), abs=0.1)


def _units_study(factor: float) -> tuple[TrialState, ...]:
    """The states of a 24-trial gp + gp-pruner study whose reports are scaled by ``factor``."""
    space = {"lr": Float(1e-3, 1.0, log=True), "w": Float(0.0, 1.0)}

    def objective(trial):
        lr, w = trial.params["lr"], trial.params["w"]
        final = (math.log10(lr) + 1.5) ** 2 + (w - 0.3) ** 2 + 0.1
        for epoch in range(16):
            value = final + 3.0 * math.exp(-lr * 10 * (epoch + 1))
            trial.report(value * factor, epoch)
            if trial.should_prune():
                break
        return value * factor

    s = Study("units", space, sampler="gp", pruner="gp", logdir=None, seed=0)
    s.optimize(objective, n_trials=24)
    return tuple(t.state for t in s.trials)


def test_decisions_are_the_same_whatever_the_metrics_units():
    """Reports near 1e180 overflowed the model's standard deviation and near 1e-180
    underflowed it: the pruner then stopped nothing (0 of 30 trials, against 13 at the
    metric's own scale). Scaled by a power of two, every decision is now the unscaled one
    (one test: both scales compare against one unscaled run)."""
    plain = _units_study(1.0)
    assert plain.count(TrialState.PRUNED) >= 5
    for scale in (2.0**600, 2.0**-600):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _units_study(scale) == plain, scale


def test_scale_boxcox_forecasts_a_loss_that_stays_above_zero():
    """``scale: boxcox`` fits a Box-Cox transform to a positive loss before the GP: whatever
    the GP says, a forecast maps back above zero, where on the linear scale (the default) the
    range below the best value is open (a validation loss of 0.05 could be forecast at -0.1)."""

    def scaled(t: FrozenTrial) -> FrozenTrial:  # losses a tenth as large: 0.02 to 0.2
        value = None if t.value is None else t.value / 10
        curve = {e: v / 10 for e, v in t.intermediate.items()}
        return FrozenTrial(t.number, t.state, t.params, value=value, intermediate=curve)

    history = [scaled(t) for t in HISTORY]
    running = scaled(trial(10, 0.8, 2, TrialState.RUNNING))
    models = {}
    for scale in ("boxcox", "linear"):
        gp = GPPruner(n_startup=3, scale=scale)
        gp.bind(SPACE, "min")
        assert not gp.prune(running, history, "min")  # the slow starter goes on either way
        models[scale] = gp.model
    boxcox, linear = models["boxcox"], models["linear"]
    assert boxcox.boxcox is not None and linear.boxcox is None
    far_below = np.array([-50.0, -5.0, 0.0])  # warped units: far below the best, and its level
    assert (boxcox.unwarp(far_below) > 0).all() and linear.unwarp(far_below)[0] < 0
    (f,) = boxcox.forecast([running])
    assert f.mean == pytest.approx(loss(0.8, EPOCHS) / 10, abs=0.01)
    _, mean, _ = boxcox.continuation(running)
    assert min(mean) > 0
    # a value that is not positive (a metric at zero, or one to maximize) keeps the values
    zero = FrozenTrial(20, TrialState.PRUNED, {"a": 0.5}, value=0.0, intermediate={1: 0.0})
    assert boxcox.update([*history, zero]) and boxcox.boxcox is None
    assert boxcox.unwarp(far_below)[0] < 0


def train_curve(trial) -> float:
    for epoch in range(1, EPOCHS + 1):
        trial.report(loss(trial.params["a"], epoch), step=epoch)
        if trial.should_prune():
            trial.pruned = True
            return None
    return loss(trial.params["a"], EPOCHS)


def read(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_a_study_with_pruner_gp_stops_bad_trials_feeds_the_sampler_and_shows_why(tmp_path):
    study = Study(
        "mf",
        {"a": Float(0.0, 1.0)},
        sampler="gp",
        pruner="gp",
        logdir=tmp_path / "logs",
        metric="loss",
        seed=0,
        images_every=1,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(train_curve, n_trials=14)
    assert not [w for w in caught if "TensorBoard output" in str(w.message)]
    trials = study.trials
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert pruned and len(complete) >= 3
    epochs = sum(len(t.intermediate) for t in trials)
    assert epochs <= EPOCHS * (len(trials) - 1)  # the stops saved a full training at least
    assert study.best_value < 0.2225  # the best reachable in 16 epochs is 0.2209 (a = 0.70)
    by_model = [t for t in pruned if "predicted final loss" in t.note]
    assert by_model and all(t in by_model or "by rank" in t.note for t in pruned)
    for t in by_model:
        assert "P(beats best" in t.note
        assert loss(t.params["a"], EPOCHS) > study.best_value  # none would have become best
    # the sampler learns a stopped trial's forecast final value, not its early report
    forecasts = study.sampler.final_values(trials)
    assert set(forecasts) == {t.number for t in pruned}
    for t in pruned:
        assert forecasts[t.number] <= t.value  # never above its best report (a plateau: at it)
        assert forecasts[t.number] == pytest.approx(loss(t.params["a"], EPOCHS), abs=0.15)
    assert sum(forecasts[t.number] < t.value - 0.05 for t in pruned) >= len(pruned) / 2
    study.close()
    # TensorBoard: each decision's forecast in the trial's forecast run; the reason as text
    t = by_model[0]
    acc = read(tmp_path / "logs" / "mf" / f"trial_{t.number:04d}" / "pruner_forecast")
    final = acc.Scalars("forecast/final_loss")
    assert final and final[-1].step == max(t.intermediate)
    low, high = acc.Scalars("forecast/final_loss_low"), acc.Scalars("forecast/final_loss_high")
    assert low[-1].value < final[-1].value < high[-1].value
    p_note = float(t.note.split("P(beats best")[1].split("= ")[1].split(";")[0])
    assert acc.Scalars("forecast/p_beats_best")[-1].value == pytest.approx(p_note, abs=0.006)
    text = acc.Tensors("forecast/decision")[-1].tensor_proto.string_val[0].decode()
    assert text == t.note.splitlines()[-1]  # after the design's note, for a design trial
    views = read(tmp_path / "logs" / "mf" / "study" / "views")
    assert "views/curves" in views.Tags()["images"]


def test_recipe_key_and_bad_options_name_the_key(tmp_path):
    bad = run_cli("validate", "digits_mlp", "pruner.name=gp", "pruner.threshold=1.5", cwd=tmp_path)
    assert bad.returncode == 2 and "pruner.threshold" in bad.stderr and "[0, 1)" in bad.stderr
    # the rest in this process (each command line pays for importing torch and lightning)
    load_recipe("digits_mlp", ["pruner.name=gp", "pruner.threshold=0.1"])
    for option, said in (
        ("kernel=rbf", "must be one of matern_decay, matern, freeze_thaw, got 'rbf'"),
        ("scale=log", "must be one of linear, boxcox, got 'log'"),
    ):
        with pytest.raises(ConfigError, match=rf"pruner\.{option.split('=')[0]}: .*{said}"):
            load_recipe("digits_mlp", ["pruner.name=gp", f"pruner.{option}"])
    with pytest.raises(ValueError, match="eta must be >= 2, got 1"):
        make_pruner("gp", {"eta": 1})


def test_subprocess_workers_with_pruner_gp(tmp_path):
    """Two workers, a plain script that calls report(): the driver's model decides for both."""
    fake = str(Path(__file__).parent / "scripts" / "fake_train.py")
    path = xy_recipe(
        tmp_path,
        {"command": ["python", fake, "--how", "report", "--epochs", "8"]},
        trials=10,
        logdir=str(tmp_path / "logs"),
        sampler={"name": "gp", "n_init": 4},
        pruner={"name": "gp", "n_startup": 2},
        executor={"workers": 2},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = run_recipe(load_recipe(path))
        trials = study.trials
        study.close()
    assert not [w for w in caught if "TensorBoard output" in str(w.message)]
    assert len(trials) == 10 and all(t.state is not TrialState.FAILED for t in trials)
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    assert pruned, [t.note for t in trials]
    best = min(t.value for t in trials if t.state is TrialState.COMPLETE)
    for t in pruned:  # the script's curve: distance to (0.3, 0.7) plus 1/(epoch + 1)
        final = (t.params["x"] - 0.3) ** 2 + (t.params["y"] - 0.7) ** 2 + 1.0 / 8
        assert final > best and len(t.intermediate) < 8
        assert "predicted final loss" in t.note or "by rank" in t.note


def test_trials_side_by_side_are_ranked_before_any_completes(tmp_path):
    """The Python API with two trials at once (as workers run them): before either completes
    the model cannot forecast, so the worse one at the rung is stopped by rank, and its note
    and TensorBoard say so (the reason as text, no forecast scalars)."""
    study = Study("side", SPACE, pruner="gp", logdir=tmp_path / "logs", metric="loss", seed=0)
    fast, slow = study.ask(), study.ask()
    study.report(fast, loss(0.3, 1), 1)  # before any completes, ASHA's rank decides at 1 report
    assert not study.should_prune(fast)  # the first at the rung goes on
    study.report(slow, loss(0.9, 1), 1)
    assert study.should_prune(slow)
    study.tell(slow, state="pruned")
    note = study.trial(slow.number).note
    assert note == (
        "stopped after 1 report by rank, before the model forecasts: 1 of the 2 trials that "
        "reached 1 report were better"
    )
    study.tell(fast, loss(0.3, 1))
    study.close()
    acc = read(tmp_path / "logs" / "side" / f"trial_{slow.number:04d}" / "pruner_forecast")
    assert not acc.Tags()["scalars"]
    assert acc.Tensors("forecast/decision")[-1].tensor_proto.string_val[0].decode() == note


def test_a_trials_promise_without_its_own_reports_is_exact_and_prices_a_new_trial():
    """``new_trial: as_started`` prices a new trial at what the running trial's configuration
    promised before its reports: the posterior without its rows, from the cached inverse, is
    the posterior of a GP conditioned on the other rows alone."""
    gp = GPPruner(n_startup=3, new_trial="as_started")
    gp.bind(SPACE, "min")
    fast_bad = trial(11, 0.1, 4, TrialState.RUNNING)
    assert gp.prune(fast_bad, HISTORY, "min")
    model, decision = gp.model, gp.last_decision
    surrogate = model.surrogate
    x = surrogate.x
    own = x[:, 0] == 0.1  # the trial's rows, found by its configuration column
    assert int(own.sum()) == len(thinned_resources(4))
    _, values, _ = model._rows([*HISTORY, fast_bad])  # the rows in the order conditioned on
    y = torch.as_tensor(fit_warp(np.asarray(values), model._out.lmbda)[0])
    others = Surrogate(surrogate.encoding, surrogate.device, kernel=model._kernel_factory())
    others.hyper, others._base = surrogate.hyper, surrogate._base
    others.condition(x[~own], y[~own])
    query = model.encode([{"a": 0.1}, {"a": 0.5}], [1.0, 0.5])
    mean, var = surrogate.posterior_without(query, own)
    mean2, var2 = others.posterior(query)
    assert torch.allclose(mean, mean2, atol=1e-8) and torch.allclose(var, var2, atol=1e-6)
    # a new trial is priced at what this configuration promised: the hopeless one, nothing
    assert decision.forecast.gain == 0.0 and model.prior_gain(fast_bad) < 1e-6
    slow_good = trial(12, 0.8, 2, TrialState.RUNNING)  # beyond every finished configuration
    assert not gp.prune(slow_good, HISTORY, "min")
    promised = gp.model.prior_gain(slow_good)
    assert promised > 0.0
    assert gp.last_decision.new_rate == pytest.approx(promised / gp.model.horizon)
    with pytest.raises(ValueError, match="new_trial must be one of best, as_started"):
        GPPruner(new_trial="max")
