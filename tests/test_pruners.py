"""Pruners on synthetic learning curves (pure functions of the reports)."""

import pytest

from torchtune_hp import Float, Study, TrialState
from torchtune_hp.options import OptionError
from torchtune_hp.pruners import ASHAPruner, MedianPruner, make_pruner, value_at
from torchtune_hp.trial import FrozenTrial


def curve(number, values, state=TrialState.COMPLETE):
    return FrozenTrial(number=number, state=state, params={}, intermediate=dict(enumerate(values)))


def test_value_at_is_best_so_far_in_the_mode():
    t = curve(0, [3.0, 1.0, 2.0])
    assert value_at(t, 2, "min") == 1.0 and value_at(t, 3, "max") == 3.0
    assert value_at(t, 4, "min") is None


def test_median_prunes_worse_than_median_after_warmup_and_startup():
    others = [curve(i, [1.0, 0.8, 0.6]) for i in range(4)] + [curve(4, [2.0, 1.9, 1.8])]
    p = MedianPruner(n_startup=5, n_warmup=1)
    assert not p.prune(curve(9, [5.0]), others, "min")  # still warming up
    assert p.prune(curve(9, [5.0, 4.0]), others, "min")
    assert not p.prune(curve(9, [0.9, 0.7]), others, "min")
    assert not MedianPruner(n_startup=6).prune(curve(9, [5.0, 4.0]), others, "min")
    assert not p.prune(curve(9, [5.0, 4.0]), others, "max")  # higher is better there


def test_asha_keeps_the_top_third_at_each_rung():
    p = ASHAPruner(min_resource=1, eta=3)
    assert p.rungs(10) == [1, 3, 9]
    others = [curve(i, [v] * 9) for i, v in enumerate([0.1, 0.2, 0.3, 0.4, 0.5])]
    # at rung 1 with 6 values, the top 2 continue: 0.1 and 0.2 (and a newcomer at 0.15)
    assert not p.prune(curve(9, [0.15]), others, "min")
    assert p.prune(curve(9, [0.25]), others, "min")
    assert not p.prune(curve(9, [0.25, 0.05]), others, "min")  # between rungs: no decision
    assert not p.prune(curve(9, [0.25, 0.05, 0.01]), others, "min")  # rung 3: best
    # the first arrivals continue only while they are the best so far
    assert not p.prune(curve(1, [0.5]), [curve(0, [0.6])], "min")
    assert p.prune(curve(1, [0.7]), [curve(0, [0.6])], "min")
    assert p.prune(curve(9, [0.15]), others, "max")


@pytest.mark.parametrize(
    "pruner",
    [
        ASHAPruner(min_resource=2, eta=3, max_resource=6),  # rungs 2, 6: the last is the end
        MedianPruner(n_startup=3, n_warmup=1, max_resource=6),
        # in its startup (fewer than n_startup curves ended) ASHA's rank decides
        make_pruner("gp", {"startup_min_resource": 2, "eta": 3, "max_resource": 6, "n_startup": 5}),
    ],
)
def test_a_trial_that_made_its_full_trainings_reports_is_never_stopped(pruner):
    """A rung on the last epoch stopped a trial that had trained to the end: it was recorded
    PRUNED and its value left out of the best. With ``max_resource`` (Ray's max_t) given, the
    same curve is stopped one report earlier but not at the end."""
    if hasattr(pruner, "bind"):
        pruner.bind(Study("b", {"x": Float(0, 1)}, logdir=None).space, "min")

    def at(number, values):
        return FrozenTrial(
            number=number,
            state=TrialState.COMPLETE if number < 9 else TrialState.RUNNING,
            params={"x": number / 10},
            intermediate=dict(enumerate(values)),
        )

    others = [at(i, [v] * 6) for i, v in enumerate([0.1, 0.2, 0.3])]
    assert pruner.prune(at(9, [0.9] * 2), others, "min")
    assert not pruner.prune(at(9, [0.9] * 6), others, "min")
    assert ASHAPruner(min_resource=2, eta=3).prune(at(9, [0.9] * 6), others, "min")


def test_failed_trials_do_not_compete():
    others = [curve(0, [0.1], TrialState.FAILED), curve(1, [0.9])]
    assert not ASHAPruner(eta=2).prune(curve(9, [0.5]), others, "min")


@pytest.mark.parametrize(
    ("pruner", "options"),
    [
        ("asha", {"min_resource": 1, "eta": 2}),
        ("median", {"n_startup": 1, "n_warmup": 0}),
        ("gp", {"startup_min_resource": 1, "eta": 2}),  # ASHA's rank before curves end
    ],
)
def test_a_diverged_trial_ranks_worst_at_every_rung(pruner, options):
    """A run that was good for one report and then diverged is recorded as the worst: it
    must not stop a healthy trial at the rungs it passed, nor at later ones with its
    pre-divergence best (0.1 at two reports stopped [0.4, 0.2] before)."""
    study = Study("d", {"x": Float(0, 1)}, logdir=None, pruner=pruner, pruner_options=options)

    def run(curve):
        trial = study.ask()
        for step, value in enumerate(curve):
            study.report(trial, value, step)
            if study.should_prune(trial):
                return study.tell(trial, state="pruned")
        return study.tell(trial, curve[-1])

    diverged = run([0.1, float("nan")])
    assert diverged.state is TrialState.PRUNED and diverged.value == float("inf")
    healthy = run([0.4, 0.2, 0.15, 0.1])
    assert healthy.state is TrialState.COMPLETE and healthy.value == 0.1
    # a trial worse than a healthy one is still stopped: only the diverged one counts as worst
    if pruner != "median":  # the median of [0.4, inf] is inf: it stops none
        assert run([0.9, 0.8]).state is TrialState.PRUNED


def test_study_prunes_a_bad_trial_through_should_prune():
    study = Study(
        "p",
        {"x": Float(0, 1)},
        logdir=None,
        pruner="asha",
        pruner_options={"min_resource": 1, "eta": 2},
    )

    def objective(trial):
        bad = trial.number == 3
        for step in range(4):
            trial.report(10.0 + step if bad else 1.0 / (step + 1 + trial.number), step)
            if trial.should_prune():
                trial.pruned = True
                return None
        return 0.0

    study.optimize(objective, n_trials=4)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert study.trials[3].intermediate == {0: 10.0} and study.trials[3].value == 10.0


def test_bad_pruner_options():
    with pytest.raises(ValueError, match="unknown pruner"):
        make_pruner("hyperband")
    with pytest.raises(OptionError, match="eta must be >= 2, got 1") as e:
        make_pruner("asha", {"min_resource": 2, "eta": 1})
    assert e.value.key == "eta"  # the key at fault, not the first one the message mentions
    with pytest.raises(OptionError, match="startup_min_resource must be >= 1, got 0") as e:
        make_pruner("gp", {"min_resource": 2, "startup_min_resource": 0})
    assert e.value.key == "startup_min_resource"
    with pytest.raises(OptionError, match="n_warmup must be >= 0, got -1") as e:
        make_pruner("median", {"n_startup": 2, "n_warmup": -1})
    assert e.value.key == "n_warmup"
    with pytest.raises(OptionError, match="pruner 'median' has no option 'rate'") as e:
        make_pruner("median", {"rate": 2})
    assert e.value.key == "rate"
    with pytest.raises(OptionError, match="did you mean 'min_resource'") as e:
        make_pruner("asha", {"min_resourse": 2})
    with pytest.raises(OptionError, match="min_resource must be an integer, got 'one'") as e:
        make_pruner("asha", {"min_resource": "one"})
    assert e.value.key == "min_resource"
    for name, options in (("asha", {"min_resource": 3}), ("median", {"n_warmup": 3})):
        with pytest.raises(OptionError, match=r"max_resource must be an integer > 3 \(") as e:
            make_pruner(name, {**options, "max_resource": 3})  # nothing would be stopped
        assert e.value.key == "max_resource"
