"""The GP sampler: surrogate accuracy, acquisitions, mixed spaces, pending trials, failures."""

import json
import math
import warnings

import gpytorch
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchtune_hp import Categorical, Fixed, Float, Int, Space, Study, TrialPruned, TrialState
from torchtune_hp.gp.acquisition import acquisition_value, log_h
from torchtune_hp.gp.encoding import GPEncoding
from torchtune_hp.gp.surrogate import Surrogate, _ExactGP, neg_mll, warp
from torchtune_hp.samplers.gp import GPSampler, trust_radius

BRANIN_MIN = 0.397887


def branin(p):
    x1, x2 = p["x1"], p["x2"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def g(x: float) -> float:
    return math.sin(6 * x) + x * x


def test_surrogate_interpolates_a_smooth_function():
    space = Space({"x": Float(0.0, 1.0)})
    enc = GPEncoding(space)
    xs = torch.linspace(0, 1, 12, dtype=torch.float64).unsqueeze(-1)
    ys = torch.tensor([g(v) for v in xs[:, 0].tolist()], dtype=torch.float64)
    mu, sd = ys.mean(), ys.std()
    s = Surrogate(enc, torch.device("cpu"), deterministic=True)
    s.fit(xs, (ys - mu) / sd)
    s.condition(xs, (ys - mu) / sd)
    held = torch.linspace(0.04, 0.96, 23, dtype=torch.float64).unsqueeze(-1)
    truth = torch.tensor([g(v) for v in held[:, 0].tolist()], dtype=torch.float64)
    mean, var = s.posterior(held)
    mean, std = mean * sd + mu, var.sqrt() * sd
    assert (mean - truth).abs().max() < 0.02
    assert bool(((truth - mean).abs() <= 3 * std + 1e-9).all())


def test_lean_mll_equals_gpytorchs():
    space = Space({"x": Float(0, 1), "c": Categorical(["a", "b", "c"]), "n": Int(1, 8)})
    enc = GPEncoding(space)
    rng = np.random.default_rng(0)
    x = enc.from_unit(torch.tensor(rng.random((20, 3))))
    y = torch.tensor(rng.standard_normal(20))
    model = _ExactGP(x, y, enc, deterministic=False).double()
    model.covar_module.base_kernel.lengthscale = torch.tensor([0.3, 0.7, 1.1])
    model.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    with gpytorch.settings.max_cholesky_size(10_000):
        theirs = -mll(model(x), y)
    assert float(neg_mll(model, x, y)) == pytest.approx(float(theirs), rel=1e-9, abs=1e-9)


def test_categorical_distance_is_hamming():
    enc = GPEncoding(Space({"c": Categorical(["a", "b", "c", "d"])}))
    x = enc.from_params([{"c": "a"}, {"c": "b"}, {"c": "d"}])
    d2 = torch.cdist(x, x).square()
    assert d2[0, 1] == pytest.approx(1.0) and d2[0, 2] == pytest.approx(1.0) and d2[0, 0] == 0


def test_log_ei_is_finite_where_ei_underflows():
    z = torch.tensor([-40.0, -10.0, -1.5, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    v = log_h(z)
    assert torch.isfinite(v).all()
    h = torch.exp(-0.5 * z[2:] ** 2) / math.sqrt(2 * math.pi) + z[2:] * torch.special.ndtr(z[2:])
    assert v[2:].detach() == pytest.approx(torch.log(h).detach(), rel=1e-9)
    v.sum().backward()
    assert torch.isfinite(z.grad).all() and (z.grad > 0).all()


@pytest.mark.parametrize("name", ["logei", "ei", "pi", "ucb"])
def test_acquisitions_prefer_lower_mean_and_more_uncertainty(name):
    mean = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    var = torch.tensor([0.01, 0.01, 1.0], dtype=torch.float64)
    a = acquisition_value(name, mean, var, best=-0.5, beta=2.0, xi=0.0)
    assert a[1] > a[0] and a[2] > a[0]


def test_warp_keeps_order_and_does_not_let_outliers_flatten_the_rest():
    y = np.r_[np.linspace(1.0, 2.0, 17), [20.0, 25.0, 30.0]]  # 3 diverging trials, 10x+
    w = warp(y)
    assert np.all(np.diff(w) > 0)
    plain = (y - y.mean()) / y.std()
    assert w[16] - w[0] > 5 * (plain[16] - plain[0])  # the good trials keep their spread
    assert w[16] - w[0] > 0.8


def test_gp_reaches_branin_regret_below_0_05_in_40_evaluations():
    study = Study("b", {"x1": Float(-5, 10), "x2": Float(0, 15)}, sampler="gp", seed=0, logdir=None)
    study.optimize(lambda t: branin(t.params), n_trials=40)
    assert study.best_value - BRANIN_MIN < 0.05
    design = [t.note for t in study.trials if t.note is not None]  # no fallback happened
    assert len(design) == 5, design  # 2.5 per parameter, at least 5: the table tells them apart
    assert design[0] == "initial design (Sobol): the GP starts once 5 trials have values, 0 so far"
    assert all(t.note is None for t in study.trials[5:])


def test_gp_beats_random_when_only_x_matters_and_importance_says_so():
    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}

    def f(t):
        return g(t.params["x"]) + 0.01 * math.cos(7 * t.params["y"])

    best = {}
    for sampler in ("gp", "random"):
        study = Study(sampler, space, sampler=sampler, seed=3, logdir=None)
        study.optimize(f, n_trials=20)
        best[sampler] = study.best_value
        if sampler == "gp":
            imp = study.importance()
    true_min = min(g(x) for x in np.linspace(0, 1, 100001)) - 0.01
    assert best["gp"] - true_min < 0.01
    assert best["gp"] < best["random"]
    assert imp["x"] > 0.8 and imp["y"] < 0.2 and sum(imp.values()) == pytest.approx(1.0)


def branin_study(seed: int, **kwargs) -> Study:
    space = {"x1": Float(-5, 10), "x2": Float(0, 15)}
    return Study("b", space, sampler="gp", seed=seed, logdir=None, **kwargs)


def test_mode_max_maximizes():
    study = branin_study(1, mode="max")
    study.optimize(lambda t: -branin(t.params), n_trials=30)
    assert -study.best_value - BRANIN_MIN < 0.1


def test_k_pending_asks_give_k_distinct_spread_out_points():
    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}
    study = Study("p", space, sampler="gp", seed=0, logdir=None)
    study.optimize(lambda t: (t.params["x"] - 0.3) ** 2 + (t.params["y"] - 0.6) ** 2, 10)
    pending = [study.ask() for _ in range(6)]
    pts = np.array([[t.params["x"], t.params["y"]] for t in pending])
    dists = np.linalg.norm(pts[:, None] - pts[None], axis=-1)[np.triu_indices(6, 1)]
    assert len({tuple(p) for p in pts}) == 6
    assert dists.min() > 0.01


def test_every_trial_is_new_in_a_small_discrete_space():
    space = {"n": Int(1, 4), "c": Categorical(["a", "b", "c"])}  # 12 points
    study = Study("d", space, sampler="gp", seed=0, logdir=None, sampler_options={"n_init": 3})
    study.optimize(lambda t: t.params["n"] + (t.params["c"] == "b"), n_trials=12)
    seen = [(t.params["n"], t.params["c"]) for t in study.trials]
    assert len(set(seen)) == 12
    assert study.best_params == {"n": 1, "c": "a"}


spaces = st.fixed_dictionaries(
    {
        "lr": st.just(Float(1e-5, 1.0, log=True)),
        "width": st.sampled_from([Int(16, 512, log=True), Int(8, 64, step=8), Int(1, 3)]),
        "opt": st.sampled_from([Categorical(["sgd", "adam"]), Categorical([True, 1, 2.5, None])]),
        "drop": st.sampled_from([Float(0.0, 0.5, step=0.1), Float(0.0, 0.5)]),
        "epochs": st.just(Fixed(3)),
    }
)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=spaces, seed=st.integers(0, 1000))
def test_mixed_spaces_only_produce_valid_values(space, seed):
    study = Study("h", space, sampler="gp", seed=seed, logdir=None, sampler_options={"n_init": 3})
    sp = Space(space)

    def f(t):
        p = t.params
        assert sp.validate(p) == p  # in range, on the step grid, a real choice
        assert type(p["width"]) is int and p["epochs"] == 3
        return math.log10(p["lr"]) ** 2 + p["drop"] + (p["opt"] == "sgd") + p["width"] / 512

    study.optimize(f, n_trials=7)
    assert all(t.state is TrialState.COMPLETE for t in study.trials)


def test_a_study_failing_on_half_the_space_converges_to_the_good_half():
    def f(t):
        x, y = t.params["x"], t.params["y"]
        if x > 0.5:
            raise RuntimeError("diverged")
        return (x - 0.35) ** 2 + (y - 0.5) ** 2

    study = Study(
        "f", {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}, sampler="gp", seed=0, logdir=None
    )
    with pytest.warns(UserWarning, match="diverged"):
        study.optimize(f, n_trials=30)
    later = study.trials[10:]
    failed_later = sum(t.state is TrialState.FAILED for t in later) / len(later)
    assert study.best_value < 1e-3
    assert failed_later < 0.25


def test_numerical_failure_falls_back_to_sobol_visibly():
    """Values at the edge of the float range (±1.7e308: their differences overflow; values of
    1e300 no longer do, as the standardization works in units of the largest) make the
    output warp fail: the suggestion falls back to Sobol with a warning and a recorded
    reason, and the study goes on."""
    study = Study(
        "n",
        {"x": Float(0.0, 1.0)},
        sampler="gp",
        seed=0,
        logdir=None,
        sampler_options={"n_init": 2},
    )
    study.add({"x": 0.1}, 1.7e308)
    study.add({"x": 0.9}, -1.7e308)
    study.add({"x": 0.5}, 1.7e308)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trial = study.ask()
    assert [str(w.message)[:29] for w in caught] == ["gp fell back to Sobol for thi"]
    frozen = study.tell(trial, 0.5)
    assert frozen.state is TrialState.COMPLETE and "fell back to Sobol" in frozen.note


def test_the_trend_keeps_the_bowl_under_ripples_in_view():
    """A bowl falling toward x = 1 under ripples of period 0.04, observed on [0, 0.45]: the
    fitted lengthscale falls to the ripples' scale, and the single kernel (trend_share 0, the
    default) then predicts the average a little beyond the trials, as if nothing lay that way;
    with the trend (trend_share 0.3) it predicts the bowl's fall there."""
    enc = GPEncoding(Space({"x": Float(0.0, 1.0)}))
    x = np.sort(np.random.default_rng(0).uniform(0.0, 0.45, 30))
    f = 4 * (x - 1) ** 2 + 0.5 * np.sin(2 * math.pi * x / 0.04)
    X, y = torch.as_tensor(x[:, None]), torch.as_tensor(warp(f))
    beyond = torch.tensor([[0.5], [0.6]], dtype=torch.float64)
    means = {}
    assert GPSampler().trend_share == 0.0
    for share in (0.0, 0.3):
        surrogate = Surrogate(enc, torch.device("cpu"), trend_share=share)
        hyper = surrogate.fit(X, y)
        surrogate.condition(X, y)
        assert float(hyper.lengthscale[0]) < 0.04  # the ripples
        means[share] = surrogate.posterior(beyond)[0]
        k = surrogate._k(X, X) / hyper.outputscale
        assert torch.allclose(k.diagonal(), torch.ones(len(x), dtype=torch.float64))
    plain, trend = means[0.0], means[0.3]
    assert plain.abs().max() < 0.05  # the mean of the standardized values: nothing seen
    assert trend.max() < -0.3 and trend[0] < trend[1]  # lower, and lowest nearest the trials
    # the option reaches the model a study fits (the recipe key sampler.trend_share alike)
    for share in (0.0, 0.3):
        study = Study(
            "t",
            {"x": Float(0.0, 1.0)},
            sampler="gp",
            seed=0,
            logdir=None,
            sampler_options={"trend_share": share},
        )
        study.optimize(lambda t: (t.params["x"] - 0.7) ** 2, n_trials=7)
        assert study.sampler.surrogate._base.trend_share == share


def test_gp_options_are_checked():
    for bad, message in [
        ({"acquisition": "bogus"}, "acquisition must be one of"),
        ({"beta": -1.0}, "beta must be >= 0"),
        ({"xi": -0.5}, "xi must be >= 0"),
        ({"n_init": 0}, "n_init must be >= 1"),
        ({"device": "tpu"}, "device must be auto, cpu or cuda"),
        ({"n_restarts": 0}, "n_restarts must be an integer >= 1"),
        ({"warp_inputs": "maybe"}, "warp_inputs must be true, false or auto"),
        ({"endgame": 1.0}, "endgame must be a number in"),
        ({"thompson_model": "sum"}, "thompson_model must be one of"),
        ({"trend_share": 1.0}, "trend_share must be a number in"),
    ]:
        with pytest.raises(ValueError, match=message):
            GPSampler(**bad)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_surrogate_matches_cpu():
    space = {"x1": Float(-5, 10), "x2": Float(0, 15)}
    study = Study("c", space, sampler="gp", seed=0, logdir=None, sampler_options={"device": "cuda"})
    study.optimize(lambda t: branin(t.params), n_trials=25)
    assert study.sampler.surrogate.x.device.type == "cuda"
    assert study.best_value - BRANIN_MIN < 0.2


def test_the_gp_learns_from_pruned_and_failed_trials_as_documented():
    from torchtune_hp.samplers.gp import observations
    from torchtune_hp.trial import FrozenTrial, Interruption

    def t(n, state, value=None, interruption=None):
        return FrozenTrial(n, state, {"x": n / 10}, value, interruption=interruption)

    obs = observations(
        [
            t(0, TrialState.COMPLETE, 1.0),
            t(1, TrialState.COMPLETE, 3.0),
            t(2, TrialState.PRUNED, 2.5),  # its last reported value
            t(3, TrialState.PRUNED),  # pruned before any report (an invalid setting): worst
            t(4, TrialState.FAILED),  # the worst observed value
            t(5, TrialState.FAILED, interruption=Interruption.DIED),  # not its fault: ignored
            t(6, TrialState.PRUNED, math.inf),  # diverged (a NaN report is stored as inf): worst
        ],
        mode="min",
    )
    assert [p["x"] for p in obs.params] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.6]
    assert obs.values.tolist() == [1.0, 3.0, 2.5, 3.0, 3.0, 3.0]


def test_a_study_whose_runs_diverge_on_half_the_space_learns_to_avoid_it():
    """A run that diverges reports NaN, the pruner stops it, and the trial holds inf: the model
    must count it as bad (it used to leave it out, and kept sampling where runs diverge)."""

    def objective(trial):
        x, y = trial.params["x"], trial.params["y"]
        for epoch in range(3):
            loss = math.nan if x > 0.5 else (x - 0.45) ** 2 + (y - 0.5) ** 2 + 1 / (epoch + 1)
            trial.report(loss, epoch)
            if trial.should_prune():
                raise TrialPruned()
        return loss

    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}
    study = Study("d", space, sampler="gp", pruner="median", seed=0, logdir=None)
    study.optimize(objective, n_trials=30)
    later = study.trials[10:]
    assert sum(t.params["x"] > 0.5 for t in later) <= 5  # before: 18 of these 20
    assert study.best_value < 0.34


def test_pareto_front_keeps_exactly_the_non_dominated_rows():
    from torchtune_hp.samplers.gp import pareto_front

    values = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.4, 0.4, 0.0], [1.0, 0.0, 0.0]]
    )
    # row 3 is dominated by row 2; rows 0 and 4 tie (neither dominates the other)
    assert pareto_front(values).tolist() == [0, 1, 2, 4]


def test_input_warping_starts_at_the_identity_and_learns_a_stretch():
    """The Kumaraswamy warp begins as the identity (a = b = 1), so it changes nothing until
    the likelihood asks; on a function that varies only near x = 0 it learns a < 1, which
    stretches that end of the axis."""
    from torchtune_hp.gp.surrogate import MixedMatern52

    enc = GPEncoding(Space({"x": Float(0.0, 1.0), "c": Categorical(["a", "b"])}))
    kernel = MixedMatern52(enc, warp_inputs=True)
    x = enc.from_unit(torch.tensor(np.random.default_rng(0).random((5, 2))))
    assert torch.allclose(kernel.warp(x), x, atol=1e-5)
    xs = torch.linspace(0, 1, 25, dtype=torch.float64).unsqueeze(-1)
    ys = torch.sin(12 * torch.exp(-6 * xs[:, 0]))  # wiggles near 0, flat near 1
    enc1 = GPEncoding(Space({"x": Float(0.0, 1.0)}))
    s = Surrogate(enc1, torch.device("cpu"), deterministic=True, warp_inputs=True)
    s.fit(xs, (ys - ys.mean()) / ys.std())
    assert float(s._base.warp_concentration("a")) < 0.9


def test_warp_inputs_auto_warps_only_where_the_likelihood_asks_for_it():
    """``warp_inputs: auto`` fits the GP with and without the warp and keeps the better fitted
    log posterior: a function that wiggles near one end of its range gets the warp, a smooth
    one does not, and both are optimized. (On the Yeo-Johnson output warp: with the floor warp
    that ``output_warp: auto`` may take, the same data can favour other input warps.)"""
    cases = {
        "wiggle": lambda x: math.sin(12 * math.exp(-6 * x)),
        "smooth": lambda x: math.sin(6 * x) + x * x,
    }
    chosen = {}
    for name, f in cases.items():
        study = Study(
            name,
            {"x": Float(0.0, 1.0)},
            sampler="gp",
            seed=0,
            logdir=None,
            sampler_options={"warp_inputs": "auto", "output_warp": "yeo_johnson"},
        )
        study.optimize(lambda t, f=f: f(t.params["x"]), n_trials=20)
        chosen[name] = study.sampler._warped[1]
        assert study.best_value < {"wiggle": -0.999, "smooth": -0.41}[name]
    assert chosen == {"wiggle": True, "smooth": False}


def test_mace_suggests_new_points_explains_itself_and_solves_branin():
    study = branin_study(0, sampler_options={"acquisition": "mace", "thompson_every": 0})
    study.optimize(lambda t: branin(t.params), n_trials=30)
    assert study.best_value - BRANIN_MIN < 0.05
    params = [json.dumps(t.params, sort_keys=True) for t in study.trials]
    assert len(set(params)) == len(params)
    expl = study.sampler.explain(n_points=10)
    assert expl is not None and "MACE" in expl.suggested_by


def _distance_to_the_best_five(study: Study, i: int) -> float:
    """Unit-cube max-norm distance from trial ``i`` to the nearest of the 5 best before it."""
    u = np.array(study.space.encode(study.trials[i].params))
    best = sorted(study.trials[:i], key=lambda t: t.value)[:5]
    return min(float(np.abs(u - np.array(study.space.encode(t.params))).max()) for t in best)


def test_the_last_share_of_a_study_refines_near_its_best_trials():
    """``endgame: 0.3`` of ``optimize(n_trials=30)``: trials 21-29 search around the best
    ones (no Thompson step, no global candidates); without it some of them explore far (on the
    Yeo-Johnson output warp: ``auto`` takes the floor warp on Branin's late trials, and that
    search stays near its best even without the endgame)."""
    runs = {}
    for endgame in (0.3, 0.0):
        options = {"endgame": endgame, "output_warp": "yeo_johnson"}
        study = branin_study(0, sampler_options=options)
        study.optimize(lambda t: branin(t.params), n_trials=30)
        runs[endgame] = [_distance_to_the_best_five(study, i) for i in range(21, 30)]
        how = study.sampler.explain(n_points=5).suggested_by  # of the 30th trial
        assert ("endgame" in how) is (endgame > 0)  # the loop told the sampler its total ...
        assert study.sampler.horizon is None  # ... while it ran: ask/tell after it explores
        assert study.best_value - BRANIN_MIN < 0.01
    assert np.median(runs[0.3]) < 0.02 < 0.1 < np.median(runs[0.0])


def test_the_endgame_radius_follows_turbos_trust_region_rule():
    """From 0.05: two endgame trials in a row that beat the best double it, three in a row
    that do not halve it, within 0.005 to 0.2; trials before ``start`` only set the best."""
    assert trust_radius([5.0, 4.0, 3.0], start=3) == 0.05  # no endgame trial yet
    assert trust_radius([5.0, 4.0, 3.0], start=1) == 0.1
    assert trust_radius([5.0, 4.0, 3.0, 2.0], start=1) == 0.1  # the count starts again
    assert trust_radius([5.0, 5.0, 6.0, 7.0], start=1) == 0.025
    assert trust_radius([5.0, math.inf, math.inf, math.inf], start=1) == 0.025  # failed: a miss
    assert trust_radius([5.0, 4.999, 4.998, 4.997], start=1) == 0.025  # < 1e-3 of the best
    assert trust_radius([5.0, 4.0, 9.0, 3.0, 2.0], start=1) == 0.1  # a miss breaks the run
    assert trust_radius([5.0] + [6.0] * 30, start=1) == 0.005
    assert trust_radius([50.0 - i for i in range(40)], start=1) == 0.2
    assert trust_radius([3.0, 2.0], start=0) == 0.1  # the first finite value is a success


def test_the_sampler_reads_the_endgame_radius_from_its_trials():
    """The radius is a function of the finished trials (so a resumed study keeps it), read
    in trial order, and the explanation of an endgame suggestion names it."""
    study = branin_study(0, sampler_options={"endgame": 0.3})
    study.optimize(lambda t: branin(t.params), n_trials=30)
    sampler = study.sampler
    assert sampler.endgame_radius(study.trials) == 0.05  # no known total: no endgame
    sampler.horizon = 30
    values = [t.value for t in sorted(study.trials, key=lambda t: t.number)]
    expected = trust_radius(values, start=21)
    assert expected < 0.05  # near Branin's optimum most refinements miss: the radius shrank
    assert sampler.endgame_radius(list(reversed(study.trials))) == expected
    t = study.ask()  # the 31st: past the horizon, so in the endgame
    how = sampler.explain(n_points=5).suggested_by
    assert f"endgame, radius {expected:.3g}" in how
    study.tell(t, branin(t.params))


def test_the_endgame_counts_pending_trials_and_needs_a_known_total():
    study = branin_study(0)
    sampler = study.sampler
    for _ in range(6):
        t = study.ask()
        study.tell(t, branin(t.params))
    finished = list(study.finished_trials)
    assert not sampler.in_endgame(finished, [])  # ask/tell alone: no total, no endgame
    sampler.horizon = 10  # the last round(0.3 * 10) = 3 trials: the 8th to the 10th
    assert not sampler.in_endgame(finished, [])
    pending = study.ask()
    assert sampler.in_endgame(finished, [study.trials[pending.number]])


@pytest.mark.parametrize("constant", [1.0, 0.1, 1 / 3, 123456.789])
def test_a_constant_objective_is_modelled_without_falling_back(constant, recwarn):
    """Equal values have a standard deviation of rounding noise (0.1: 1e-17, 123456.789:
    1e-11); the output warps used to take it for spread and fail on every trial."""
    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}
    study = Study("c", space, sampler="gp", seed=0, logdir=None)
    study.optimize(lambda t: constant, n_trials=14)
    notes = [t.note for t in study.trials if t.note]
    assert [n for n in notes if not n.startswith("initial design (Sobol)")] == []
    assert not [
        w
        for w in recwarn
        if issubclass(w.category, (RuntimeWarning, UserWarning)) and "jit" not in str(w.message)
    ]
    assert len({json.dumps(t.params) for t in study.trials}) == 14


def test_importance_is_not_swayed_by_failures_that_have_nothing_to_do_with_the_parameters():
    study = Study("f", {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}, seed=0, logdir=None)
    with pytest.warns(UserWarning):
        study.optimize(lambda t: t.params["x"] if t.number % 2 else 1 / 0, n_trials=16, fail_fast=0)
    shares = study.importance()  # the old code, fitting the failures as the worst value: y 0.95
    assert shares["x"] > 0.8, shares


def test_importance_gives_nothing_to_a_parameter_the_trials_never_varied():
    space = {"c": Categorical(["only"]), "x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}
    study = Study("i", space, seed=0, logdir=None)
    study.optimize(lambda t: (t.params["x"] - 0.3) ** 2, n_trials=30)
    shares = study.importance()
    assert shares["c"] == 0.0 and shares["x"] > 0.9 and sum(shares.values()) == pytest.approx(1)
    flat = Study("f", space, seed=0, logdir=None)
    flat.optimize(lambda t: 2.0, n_trials=5)
    with pytest.raises(ValueError, match="every finished trial has 2.0"):
        flat.importance()


@pytest.mark.parametrize("seed", [1, 2])
def test_a_lucky_draw_does_not_send_the_endgame_to_the_corners(seed):
    """A user's 300-trial noisy study: half the endgame's suggestions went to the space's
    corners (lr=1, width 16, 6 layers) while the best trials sat mid-space and the sampler
    said it searched near them. EI measured improvement against the lowest observation, a
    lucky draw far below what the model expects anywhere near it, so only the corners'
    variance promised any. Against the lowest posterior mean at an observed point (the
    default's, in the endgame) it stays at the optimum; the old incumbent, an option, does
    not."""
    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0), "z": Float(0.0, 1.0)}
    rng = np.random.default_rng(seed)
    study = Study("noisy", space, sampler="sobol", seed=0, logdir=None)
    for i in range(66):  # 60 around the optimum, 6 close to it, each value with noise
        point = rng.uniform(0.2, 0.8, 3) if i < 60 else 0.5 + rng.normal(0, 0.02, 3)
        params = dict(zip(space, map(float, point), strict=True))
        study.add(params, sum((v - 0.5) ** 2 for v in params.values()) + rng.normal(0, 0.05))
    study.add({"x": 0.5, "y": 0.5, "z": 0.5}, -0.4)  # the lucky draw, at the optimum
    away = {}
    for incumbent in ("auto", "observed"):
        sampler = GPSampler(seed=0, incumbent=incumbent)
        sampler.horizon = 70  # in its endgame
        params = sampler.sample(study.space, study.trials, [])
        assert sampler.explain().suggested_by.startswith("log EI maximizer, searched near")
        away[incumbent] = max(abs(v - 0.5) for v in params.values())
    assert away["auto"] < 0.1
    assert away["observed"] == 0.5  # a corner, for all its "searched near the best trials"
