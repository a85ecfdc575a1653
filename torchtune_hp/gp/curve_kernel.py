"""The freeze-thaw kernel: learning curves that decay towards a configuration's asymptote.

Swersky, Snoek and Adams (2014, "Freeze-Thaw Bayesian Optimization") model a trial's curve as
``y(x, t) = f(x) + g_x(t)``: ``f`` is a GP over configurations (where the curve ends up), and
each configuration's ``g_x`` is an independent GP over training progress ``t`` with the
*exponential-decay* kernel

    ``k_t(t, t') = (beta / (t + t' + beta)) ** alpha``,

the covariance of an infinite mixture of decaying exponentials ``exp(-lambda t)`` with
``lambda ~ Gamma(alpha, beta)``. Its variance ``(beta / (2t + beta)) ** alpha`` shrinks as
training goes on, so an early report says much about that trial's deviation and little about
its configuration's asymptote: a slow starter is not taken for a bad configuration, and other
trials' stopped curves still teach ``f`` with the discount their progress calls for. Unlike a
stationary kernel over ``t``, the forecast of a partial curve goes on decaying past its last
report instead of reverting to the mean.

Here ``K((x, t), (x', t')) = s * (m(x, x') + rho * [x == x'] * k_t(t, t'))``: ``m`` is the
sampler's Matérn-5/2 over the configuration columns (the progress column left out), ``s`` the
output scale and ``rho`` how large a curve's deviation is against the spread of asymptotes.
``[x == x']`` holds for the reports of one configuration (a trial's own curve, or repeats of
one configuration, which share their expected curve).

With ``joint``, ``m`` is the Matérn over configuration *and* progress (the model of
``kernel: matern``, MOBSTER's), and the decay term adds what that stationary kernel lacks: a
deviation of each curve from the shared surface that persists along the curve and fades as
training goes on (one seed's run above or below its configuration's usual curve).
"""

from __future__ import annotations

import math

import gpytorch
import torch
from torch import Tensor

from torchtune_hp.gp.encoding import GPEncoding
from torchtune_hp.gp.surrogate import MixedMatern52

# (name, constraint bounds, LogNormal prior (loc, scale), initial value). The prior medians:
# a curve's deviation as large as the spread of the configuration term (rho = 1), fading to
# (beta / (2 + beta)) ** alpha = 13% of its variance at the first report by the end of
# training (alpha = 1, beta = 0.3); the data move them, within the bounds.
DECAY_PARAMS = (
    ("rho", (1e-3, 1e3), (0.0, 1.5), 1.0),
    ("alpha", (0.05, 20.0), (0.0, 1.0), 1.0),
    ("beta", (1e-3, 10.0), (math.log(0.3), 1.0), 0.3),
)


class FreezeThawKernel(MixedMatern52):
    """``m(x, x') + rho * [x == x'] * k_t(t, t')`` over GP inputs whose column
    ``progress_col`` holds ``t`` (the rest encode the configuration)."""

    stationary = False  # the prior variance depends on t: see Surrogate.posterior

    def __init__(
        self, encoding: GPEncoding, progress_col: int, joint: bool = False, **kwargs: object
    ) -> None:
        super().__init__(encoding, **kwargs)
        self.progress_col = progress_col
        self.joint = joint
        for name, (lo, hi), (loc, scale), init in DECAY_PARAMS:
            bounds = gpytorch.constraints.Interval(lo, hi)
            raw = bounds.inverse_transform(torch.tensor(float(init)))
            self.register_parameter(f"raw_{name}", torch.nn.Parameter(raw))
            self.register_constraint(f"raw_{name}", bounds)
            self.register_prior(
                f"{name}_prior",
                gpytorch.priors.LogNormalPrior(loc, scale),
                lambda m, name=name: m.decay_param(name),
            )

    def decay_param(self, name: str) -> Tensor:
        return getattr(self, f"raw_{name}_constraint").transform(getattr(self, f"raw_{name}"))

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, **params: object) -> Tensor:
        c = self.progress_col
        t1, t2 = x1[..., c], x2[..., c]
        z1, z2 = x1.clone(), x2.clone()
        z1[..., c] = 0.0
        z2[..., c] = 0.0
        config = super().forward(*((x1, x2) if self.joint else (z1, z2)), diag=diag)
        # one configuration: a loose tolerance, as a row's distance to itself comes out of a
        # matrix product a little above 0, and a mixed answer would break positive definiteness
        same = self.covar_dist(z1, z2, diag=diag, square_dist=True) < 1e-10
        tsum = t1 + t2 if diag else t1.unsqueeze(-1) + t2.unsqueeze(-2)
        alpha, beta = self.decay_param("alpha"), self.decay_param("beta")
        decay = (beta / (tsum + beta)).pow(alpha)
        return config + self.decay_param("rho") * same.to(decay.dtype) * decay
