"""``hyper_select: loo``: the leave-one-out density, and the smooth fit it keeps on ripples."""

import math

import numpy as np
import pytest
import torch

from torchtune_hp import Float, Space, Study
from torchtune_hp.gp.encoding import GPEncoding
from torchtune_hp.gp.surrogate import Surrogate, _ExactGP, loo_log_densities

CPU = torch.device("cpu")


def test_loo_density_equals_predicting_each_point_from_the_others():
    enc = GPEncoding(Space({"a": Float(0, 1), "b": Float(0, 1)}))
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.random((15, 2)))
    y = torch.tensor(np.sin(5 * x[:, 0].numpy()) + rng.normal(0, 0.1, 15))
    model = _ExactGP(x, y, enc, deterministic=False).double()
    model.covar_module.base_kernel.lengthscale = torch.tensor([0.3, 0.6])
    model.likelihood.noise = 0.05
    model.mean_module.constant.data.fill_(0.2)
    total = 0.0
    with torch.no_grad():
        for i in range(len(y)):
            keep = torch.arange(len(y)) != i
            k = model.covar_module(x[keep]).to_dense() + 0.05 * torch.eye(len(y) - 1)
            kq = model.covar_module(x[i : i + 1], x[keep]).to_dense()[0]
            w = torch.linalg.solve(k, kq)
            mean = 0.2 + w @ (y[keep] - 0.2)
            var = model.covar_module(x[i : i + 1]).to_dense()[0, 0] - w @ kq + 0.05
            total += float(-0.5 * torch.log(2 * math.pi * var) - (y[i] - mean) ** 2 / (2 * var))
    # (gpytorch's lazy kernel evaluates distances another way: agreement to 1e-6)
    assert float(loo_log_densities(model, x, y).sum()) == pytest.approx(total, rel=1e-6)


def _trend(u: np.ndarray, ripple: float) -> np.ndarray:
    """A bowl plus, where ``ripple`` > 0, a cosine ripple too fine for 40 points to resolve."""
    return 3 * ((u - 0.3) ** 2).sum(1) + ripple * np.cos(2 * math.pi * 30 * u).mean(1)


def _fits(seed: int, ripple: float) -> list[tuple[float, float]]:
    """(noise, held-out log density per point) of the fit without and with ``smooth``."""
    enc = GPEncoding(Space({f"x{i}": Float(0, 1) for i in range(3)}))
    rng = np.random.default_rng(seed)
    u, held = rng.random((40, 3)), rng.random((200, 3))
    y = _trend(u, ripple)
    m, s = y.mean(), y.std()
    x, yt, yh = (
        torch.tensor(u),
        torch.tensor((y - m) / s),
        torch.tensor((_trend(held, ripple) - m) / s),
    )
    out = []
    for smooth in (False, True):
        sur = Surrogate(enc, CPU)
        hyper = sur.fit(x, yt, smooth=smooth)
        sur.condition(x, yt)
        mean, var = sur.posterior(torch.tensor(held))
        var = var + hyper.noise
        dens = -0.5 * torch.log(2 * math.pi * var) - (yh - mean) ** 2 / (2 * var)
        out.append((hyper.noise, float(dens.mean())))
    return out


def test_on_ripples_the_smooth_fit_is_kept_and_predicts_new_points_better():
    better = 0
    for seed in range(6):
        (_, plain), (noise, smooth) = _fits(seed, ripple=1.0)
        assert smooth >= plain - 1e-9  # never worse: the MAP fit is kept where it predicts
        if smooth > plain + 0.2:  # better by 0.2 nats a point: the ripple taken as noise
            better += 1
            assert noise > 0.1
    assert better >= 3  # 4 of 6 here when written


def test_on_a_smooth_objective_the_map_fit_stands():
    for seed in range(3):
        (noise_plain, plain), (noise, smooth) = _fits(seed, ripple=0.0)
        assert (noise, smooth) == (noise_plain, plain)
        assert noise < 1e-3


def test_a_study_with_hyper_select_loo_models_the_ripples_as_noise():
    """Through the Study API: under ``loo`` the GP takes the ripples as noise throughout;
    under ``loo_explore`` until the endgame (the last 30%: trials 17 to 24 of 25), where
    the marginal-likelihood fit returns to refine; under the default ``map`` it interpolates
    them at its noise prior's mode throughout."""
    space = Space({"x": Float(-3, 3), "y": Float(-3, 3)})

    def objective(t):  # a bowl under ripples of period 0.3
        x, y = t.params["x"], t.params["y"]
        return 0.3 * (x * x + y * y) + math.cos(20 * x) + math.cos(20 * y)

    noise: dict[str, dict[int, float]] = {}
    notes: dict[str, str] = {}
    for select in ("map", "loo", "loo_explore"):
        study = Study(
            "ripples",
            space,
            sampler="gp",
            seed=0,
            logdir=None,
            sampler_options={"hyper_select": select},
        )
        noise[select] = {}

        def record(study, trial, select=select):
            surrogate = study.sampler.surrogate
            if surrogate is not None:
                noise[select][trial.number] = surrogate.hyper.noise
            if trial.number == 12:
                notes[select] = study.sampler.explain(n_points=8).suggested_by

        study.optimize(objective, n_trials=25, callbacks=[record])
    explore = [n for n in noise["map"] if n < 17]
    assert max(noise["map"].values()) < 0.01
    assert noise["loo"][24] > 0.05
    assert max(noise["loo_explore"][n] for n in explore) > 0.05
    assert max(noise["loo_explore"][n] for n in range(17, 25)) < 0.01
    assert "leave-one-out" in notes["loo"] and "leave-one-out" in notes["loo_explore"]
    assert "leave-one-out" not in notes["map"]
    with pytest.raises(ValueError, match="hyper_select must be one of"):
        Study("bad", space, sampler="gp", logdir=None, sampler_options={"hyper_select": "cv"})
