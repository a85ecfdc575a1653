"""The additive GP of the Thompson step: its kernel, its exact minimizer, and its turn."""

import math

import gpytorch
import numpy as np
import torch

from torchtune_hp import Categorical, Float, Space, Study
from torchtune_hp.gp.additive import AdditiveMatern52, additive_draw, additive_kernel
from torchtune_hp.gp.encoding import GPEncoding
from torchtune_hp.gp.surrogate import Surrogate, warp
from torchtune_hp.samplers.sobol import sobol_points


def _two_wells(u: float) -> float:
    """A deep well at 0.2 and a shallower one at 0.8 (Styblinski-Tang's shape in one
    coordinate): the term of a separable objective."""
    return -math.exp(-(((u - 0.2) / 0.08) ** 2)) - 0.6 * math.exp(-(((u - 0.8) / 0.08) ** 2))


def test_the_additive_kernel_is_the_mean_of_one_parameter_materns():
    space = Space({"a": Float(0, 1), "b": Float(0, 1), "c": Categorical(["x", "y", "z"])})
    enc = GPEncoding(space)
    kernel = AdditiveMatern52(enc).double()
    kernel.lengthscale = torch.tensor([0.3, 1.5, 0.7])
    x1 = enc.from_unit(torch.tensor(sobol_points(3, 0, 0, 7)))
    x2 = enc.from_unit(torch.tensor(sobol_points(3, 1, 0, 5)))
    expected = torch.zeros(7, 5, dtype=torch.float64)
    for i, (col, width) in enumerate(enc.blocks):
        one = gpytorch.kernels.MaternKernel(nu=2.5).double()
        one.lengthscale = float(kernel.lengthscale[0, i].detach())
        cols = slice(col, col + width)
        expected += one.forward(x1[:, cols], x2[:, cols]) / 3
    with torch.no_grad():
        got = kernel.forward(x1, x2)
        assert torch.allclose(got, expected, atol=1e-10)
        assert torch.allclose(kernel.forward(x1, x1, diag=True), torch.ones(7, dtype=x1.dtype))


def test_the_draw_moves_a_coordinate_out_of_the_shallow_well():
    """On a separable objective whose best trial has its first coordinate in the shallow
    well, a draw of the fitted additive GP is minimized with every coordinate in the deep
    one: the additive model pools each coordinate's evidence over all trials."""
    space = Space({f"x{i}": Float(0, 1) for i in range(3)})
    enc = GPEncoding(space)
    u = np.vstack([sobol_points(3, 0, 0, 40), [[0.8, 0.2, 0.2], [0.8, 0.21, 0.19]]])
    values = np.array([sum(_two_wells(v) for v in row) for row in u])
    assert np.argmin(values) >= 40  # the best trial sits in the shallow well in x0
    x = enc.from_unit(torch.tensor(u))
    y = torch.as_tensor(warp(values))
    surrogate = Surrogate(enc, torch.device("cpu"), deterministic=True, kernel=additive_kernel)
    surrogate.fit(x, y)
    for seed in range(5):  # every coordinate in the deep well (0.2), none in the shallow (0.8)
        point = additive_draw(surrogate, x, y, None, torch.Generator().manual_seed(seed))
        assert np.allclose(enc.to_unit(point)[0].numpy(), 0.2, atol=0.2), seed


def test_alternate_takes_the_additive_draw_on_every_second_thompson_step():
    """``thompson_every: 4`` after a design of 5 trials: the Thompson steps are draws 7, 11,
    15, ...; under ``alternate`` the 2nd, 4th, ... draw from the additive GP, under
    ``additive`` all of them, and explain() says so; ``full`` (the default) never does."""
    space = Space({"x0": Float(0, 1), "x1": Float(0, 1)})
    for model, additive_at in (("alternate", {11}), ("additive", {7, 11}), ("full", set())):
        study = Study(
            "s", space, sampler="gp", seed=0, logdir=None, sampler_options={"thompson_model": model}
        )
        seen = set()
        for k in range(13):
            trial = study.ask()
            study.tell(trial, _two_wells(trial.params["x0"]) + _two_wells(trial.params["x1"]))
            expl = study.sampler.explain(n_points=5)
            if expl is not None and "additive" in expl.suggested_by:
                seen.add(k)
                assert "Thompson draw" in expl.suggested_by
        assert seen == additive_at, model


def test_evidence_draws_from_the_additive_gp_only_where_it_predicts_better():
    """``thompson_model: evidence``: each Thompson step fits the additive GP and takes its
    draw when it predicts the observations better leave-one-out than the full GP. On a sum
    of one-parameter wells that is most steps; on sin(8 x0 x1), an interaction no sum of
    one-parameter functions can follow, none."""
    space = Space({"x0": Float(0, 1), "x1": Float(0, 1)})
    objectives = {
        "separable": lambda p: _two_wells(p["x0"]) + _two_wells(p["x1"]),
        "interaction": lambda p: math.sin(8 * p["x0"] * p["x1"]),
    }
    additive_steps = {}
    for name, f in objectives.items():
        study = Study(
            "s",
            space,
            sampler="gp",
            seed=0,
            logdir=None,
            sampler_options={"thompson_model": "evidence"},
        )
        steps = []
        for _ in range(19):
            trial = study.ask()
            study.tell(trial, f(trial.params))
            expl = study.sampler.explain(n_points=5)
            if expl is not None and "Thompson draw" in expl.suggested_by:
                steps.append("Thompson draw of the additive GP" in expl.suggested_by)
                assert "leave-one-out log density of the trials: additive GP" in expl.suggested_by
        assert len(steps) == 3, (name, steps)  # draws 7, 11 and 15
        additive_steps[name] = sum(steps)
    assert additive_steps["separable"] >= 2 and additive_steps["interaction"] == 0, additive_steps
