"""The freeze-thaw kernel: a valid covariance whose curve term fades with training, so the
model forecasts a partial curve going on down to where its configuration ends."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchtune_hp import Float, TrialState
from torchtune_hp.gp.curve_kernel import FreezeThawKernel
from torchtune_hp.gp.curves import PROGRESS, CurveModel
from torchtune_hp.gp.encoding import GPEncoding
from torchtune_hp.space import Categorical, Space
from torchtune_hp.trial import FrozenTrial

SPACE = Space({"lr": Float(1e-4, 1e-1, log=True), "opt": Categorical(["sgd", "adam"])})


def inputs(enc: GPEncoding, rng: np.random.Generator) -> torch.Tensor:
    """Six configurations (one of them twice, as two trials) at ten progresses each."""
    configs = [{"lr": float(10 ** rng.uniform(-4, -1)), "opt": str(rng.choice(["sgd", "adam"]))}]
    configs += [{"lr": float(10 ** rng.uniform(-4, -1)), "opt": "sgd"} for _ in range(5)]
    configs.append(configs[0])
    rows = [{**c, PROGRESS: t} for c in configs for t in np.linspace(0.05, 1.0, 10)]
    return enc.from_params(rows)


@pytest.mark.parametrize("joint", [False, True])
def test_the_kernel_is_positive_semidefinite_and_its_diagonal_matches(joint):
    enc = GPEncoding(Space({**SPACE.params, PROGRESS: Float(0.0, 1.0)}))
    kernel = FreezeThawKernel(enc, enc.blocks[-1][0], joint).double()
    x = inputs(enc, np.random.default_rng(0))
    with torch.no_grad():
        k = kernel.forward(x, x)
        eig = torch.linalg.eigvalsh(k)
        diag = kernel.forward(x, x, diag=True)
    assert float(eig.min()) > -1e-9 * float(eig.max())
    assert torch.allclose(diag, k.diagonal())
    # without ``joint``, two rows of one curve covary by the Matérn of a configuration with
    # itself (1) plus the decay term, rho * (beta / (t + t' + beta)) ** alpha
    if not joint:
        with torch.no_grad():
            rho, alpha, beta = (kernel.decay_param(n).item() for n in ("rho", "alpha", "beta"))
        t0, t9 = float(x[0, -1]), float(x[9, -1])
        assert float(k[0, 9]) == pytest.approx(1.0 + rho * (beta / (t0 + t9 + beta)) ** alpha)
    # the curve term's prior variance shrinks as training goes on
    assert float(diag[0]) > float(diag[9])
    # two trials of one configuration share their curve: their rows covary exactly alike
    assert torch.allclose(k[0, :10], k[60, :10])


def curve(lr: float, epoch: int) -> float:
    """Small learning rates start slow and end low; large ones plateau early and high."""
    rate = math.log10(lr) + 4.0  # 0 .. 3
    final = 0.1 + 0.15 * rate
    tau = 0.5 + 4.0 * (3.0 - rate)
    return final + (2.0 - final) * math.exp(-epoch / tau)


@pytest.mark.parametrize("kernel", ["freeze_thaw", "matern_decay"])
def test_a_partial_curve_is_forecast_near_its_end_not_its_last_report(kernel):
    """With the curve term fading, a slow starter seen for 3 of 20 epochs is forecast near
    its true end (0.47) rather than near its last report (1.58)."""
    history = [
        FrozenTrial(
            i,
            TrialState.COMPLETE,
            {"lr": lr, "opt": "sgd"},
            value=min(curve(lr, e) for e in range(1, 21)),
            intermediate={e: curve(lr, e) for e in range(1, 21)},
        )
        for i, lr in enumerate([1e-4, 3e-4, 3e-3, 1e-2, 3e-2, 1e-1])
    ]
    partial = FrozenTrial(
        9,
        TrialState.RUNNING,
        {"lr": 1.5e-4, "opt": "sgd"},
        intermediate={1: curve(1.5e-4, 1), 2: curve(1.5e-4, 2), 3: curve(1.5e-4, 3)},
    )
    model = CurveModel(SPACE, "min", torch.device("cpu"), kernel=kernel)
    assert model.update([*history, partial])
    (f,) = model.forecast([partial])
    truth = curve(1.5e-4, 20)
    assert partial.intermediate[3] > 1.5 and f.mean == pytest.approx(truth, abs=0.1)
    assert 0.0 < f.sd < 0.3
    # an untried configuration's end is far less certain than a finished trial's
    _, sd = model.posterior(
        model.encode([{"lr": 1e-3, "opt": "adam"}, {"lr": 1e-2, "opt": "sgd"}], [1.0, 1.0])
    )
    assert sd[0] > 0.5 > 0.05 > sd[1]
