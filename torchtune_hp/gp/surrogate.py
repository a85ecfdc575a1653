"""The surrogate: a GPyTorch exact GP over the GP encoding, fit by marginal likelihood.

Notation: ``X`` is ``(n, w)`` (see :mod:`torchtune_hp.gp.encoding`), ``y`` is ``(n,)`` already
warped (see :func:`warp`), lower is better. The kernel is a Matérn-5/2 with one ARD lengthscale
``l_j`` per parameter, on ``r^2 = sum_c ((x_c - x'_c) / l_{j(c)})^2`` (with ``trend_share`` > 0,
mixed with the same kernel at lengthscales of at least ``TREND_LENGTHSCALE * sqrt(d)``: the
trend, see :class:`MixedMatern52`), times an output scale ``s``, plus Gaussian noise
``sigma^2``.
Priors suit the unit cube: the dimension-scaled lengthscale prior
``LogNormal(sqrt(2) + log(d)/2, sqrt(3))`` of Hvarfner et al. (2024, the BoTorch default),
``Gamma(2, 0.15)`` on ``s`` and ``LogNormal(-4, 1)`` on ``sigma^2``.

Hyperparameters are fit with L-BFGS-B on GPyTorch's exact marginal log likelihood (Cholesky,
float64), warm-started from the previous fit. For the posterior the fitted kernel is factorized
once, ``K + sigma^2 I = L L^T``, and ``alpha = K^-1 (y - m)`` and ``K^-1`` are cached, so each
batch of query points costs one kernel matrix and one matrix product (no solves).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gpytorch
import numpy as np
import torch
from scipy.optimize import minimize
from scipy.stats import yeojohnson
from torch import Tensor

from torchtune_hp.gp.encoding import GPEncoding


class SurrogateError(RuntimeError):
    """A named numerical failure (non-PSD kernel matrix, fitting failure)."""


def warp(y: np.ndarray) -> np.ndarray:
    """Output warping, shape ``(n,)`` -> ``(n,)``, order preserved: standardize, then a
    Yeo-Johnson power transform with its exponent fit by maximum likelihood (as HEBO, the
    NeurIPS 2020 black-box challenge winner, does), then standardize again. Skewed objectives
    (a few diverging trials at 10x the loss of the rest, or a long tail of bad values) become
    close to Gaussian, so the outliers neither flatten the model nor dominate its scale."""
    return fit_warp(y)[0]


@dataclass(frozen=True)
class OutputWarp:
    """A fitted :func:`warp`, to apply again and to invert (forecasts back to study units)."""

    mean_y: float
    std_y: float
    lmbda: float | None  # the Yeo-Johnson exponent; None: no power transform
    mean_t: float
    std_t: float

    def inverse(self, w: np.ndarray) -> np.ndarray:
        """Warped values back to the original units (any real input: the Yeo-Johnson
        inverse is clipped where a value lies beyond what the transform can reach)."""
        t = np.asarray(w, dtype=np.float64) * self.std_t + self.mean_t
        lam = self.lmbda
        if lam is None:
            z = t
        else:
            with np.errstate(all="ignore"):
                pos = (
                    np.expm1(t)
                    if abs(lam) < 1e-12
                    else np.power(np.clip(lam * t + 1.0, 1e-300, None), 1.0 / lam) - 1.0
                )
                mu = 2.0 - lam
                neg = (
                    -np.expm1(-t)
                    if abs(mu) < 1e-12
                    else 1.0 - np.power(np.clip(1.0 - mu * t, 1e-300, None), 1.0 / mu)
                )
            z = np.where(t >= 0, pos, neg)
        return np.nan_to_num(z * self.std_y + self.mean_y, nan=self.mean_y)


def mean_std(y: np.ndarray) -> tuple[float, float]:
    """The mean and standard deviation of ``y`` (0, 0 for none) whatever its units: computed
    on ``y`` divided by the power of two above its largest magnitude, then scaled back (a
    power of two rounds nothing). Directly, values near 1e200 overflow when squared (every
    model-driven trial fell back to Sobol, and the gp pruner stopped nothing) and values
    near 1e-200 underflow (taken for a constant)."""
    y = np.asarray(y, dtype=np.float64)
    if not len(y):
        return 0.0, 0.0
    top = float(np.max(np.abs(y)))
    e = int(np.frexp(top)[1]) if 0 < top < math.inf else 0
    unit = np.ldexp(y, -e)
    with np.errstate(all="ignore"):  # inf or NaN among them: the callers check the result
        return float(np.ldexp(np.mean(unit), e)), float(np.ldexp(np.std(unit), e))


def fit_warp(y: np.ndarray, lmbda: float | None = None) -> tuple[np.ndarray, OutputWarp]:
    """:func:`warp` with the Yeo-Johnson exponent given (``lmbda``) or fit (None); returns the
    warped values and the fitted warp, so a caller that warps a slowly growing set many times
    can fit the exponent only now and then, and map forecasts back."""
    y = np.asarray(y, dtype=np.float64)
    mean, std = mean_std(y)
    if len(y) and not y.max() > y.min():  # equal values: their sd is rounding noise, if any
        std = 0.0
    if not std > 0 or len(y) < 3:
        scale = std if std > 0 else 1.0
        return (y - mean) / scale if std > 0 else np.zeros_like(y), OutputWarp(
            mean, scale, None, 0.0, 1.0
        )
    with np.errstate(all="ignore"):  # values beyond the float range: the caller says so
        z = (y - mean) / std
        if lmbda is None:
            t, lmbda = yeojohnson(z)
        else:
            t = yeojohnson(z, lmbda)
    if not np.all(np.isfinite(t)) or not np.std(t) > 0:
        t, lmbda = z, None
    t_mean, t_std = float(t.mean()), float(np.std(t))
    out = OutputWarp(mean, std, None if lmbda is None else float(lmbda), t_mean, t_std)
    return (t - t_mean) / t_std, out


# Input warping: concentrations a, b in [0.1, 10] with a LogNormal(0, sqrt(0.75)) prior (the
# BoTorch default: median 1, the identity warp), so a warp is learned only where the data
# ask for it; inputs are squeezed into [eps, 1 - eps] to keep u^a differentiable at 0.
WARP_PRIOR_SD = math.sqrt(0.75)
WARP_EPS = 1e-6


# The trend's lengthscales are sqrt(l^2 + (TREND_LENGTHSCALE sqrt(d))^2): at least this many
# sqrt(d) in the unit cube, a scale over which the trend cannot follow ripples.
TREND_LENGTHSCALE = 0.3


def matern52(d2: Tensor) -> Tensor:
    """Matérn-5/2 of the squared scaled distance ``d2`` (1 at 0)."""
    s5r = math.sqrt(5.0) * d2.clamp_min(1e-30).sqrt()
    return (1.0 + s5r + (5.0 / 3.0) * d2) * torch.exp(-s5r)


class MixedMatern52(gpytorch.kernels.Kernel):
    """Matérn-5/2 with per-parameter ARD lengthscales expanded over one-hot columns; with
    ``warp_inputs``, each numeric column first goes through a learned Kumaraswamy CDF.

    With ``trend_share`` > 0 the kernel is ``(1 - share) k_l + share k_L``: ``k_L`` is the same
    Matérn at lengthscales ``L = sqrt(l^2 + (TREND_LENGTHSCALE sqrt(d))^2)``. On a rugged
    objective (Levy's ripple on a bowl) the fitted lengthscale of a parameter falls to the
    ripple's scale, and a single stationary kernel then sees nothing of the bowl beyond the
    nearest trials: the search refines whichever ripple it sits in. The trend keeps a share of
    the covariance at a scale where the bowl shows, so the model can predict that moving that
    parameter a long way pays. The share is fixed, not fitted: the marginal likelihood, given
    the choice, puts it at 0 (Levy4 seed 4: 0.00 at every refit, the search stuck as without
    it). k(x, x) stays 1."""

    has_lengthscale = True
    stationary = True  # k(x, x) is 1 everywhere: the posterior needs no diagonal

    def __init__(
        self,
        encoding: GPEncoding,
        warp_inputs: bool = False,
        trend_share: float = 0.0,
        **kwargs: object,
    ) -> None:
        super().__init__(ard_num_dims=encoding.d, **kwargs)
        self.encoding = encoding
        self.trend_share = float(trend_share)
        self.warp_cols = encoding.cont_cols if warp_inputs else encoding.cont_cols[:0]
        if len(self.warp_cols):
            n = len(self.warp_cols)
            prior = gpytorch.priors.LogNormalPrior(0.0, WARP_PRIOR_SD)
            for name in ("a", "b"):
                bounds = gpytorch.constraints.Interval(0.1, 10.0)
                raw = bounds.inverse_transform(torch.ones(n))  # start at the identity
                self.register_parameter(f"raw_warp_{name}", torch.nn.Parameter(raw))
                self.register_constraint(f"raw_warp_{name}", bounds)
                self.register_prior(
                    f"warp_{name}_prior",
                    prior,
                    lambda m, name=name: m.warp_concentration(name),
                )

    def warp_concentration(self, name: str) -> Tensor:
        raw = getattr(self, f"raw_warp_{name}")
        return getattr(self, f"raw_warp_{name}_constraint").transform(raw)

    def warp(self, x: Tensor) -> Tensor:
        """The Kumaraswamy CDF ``1 - (1 - u^a)^b`` on the numeric columns (Snoek et al. 2014's
        input warping, the form HEBO and BoTorch use): a monotone bijection of [0, 1] that
        can stretch the region where the objective changes fast (a valley floor, small
        learning rates) so that one stationary lengthscale fits everywhere."""
        if not len(self.warp_cols):
            return x
        cols = self.warp_cols.to(x.device)
        a = self.warp_concentration("a").to(x.dtype)
        b = self.warp_concentration("b").to(x.dtype)
        u = x[..., cols].clamp(0.0, 1.0) * (1 - 2 * WARP_EPS) + WARP_EPS
        return x.index_copy(-1, cols, 1 - (1 - u.pow(a)).pow(b))

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, **params: object) -> Tensor:
        x1, x2 = self.warp(x1), self.warp(x2)
        scale = self.encoding.column_scale(self.lengthscale)
        k = matern52(self.covar_dist(x1 / scale, x2 / scale, diag=diag, square_dist=True))
        if not self.trend_share:
            return k
        long = (scale.square() + TREND_LENGTHSCALE**2 * self.encoding.d).sqrt()
        trend = matern52(self.covar_dist(x1 / long, x2 / long, diag=diag, square_dist=True))
        return (1.0 - self.trend_share) * k + self.trend_share * trend


# LogNormal(loc, scale) prior on the noise variance, in units of the warped (standardized) y:
# median e^-5 (sd 0.08), wide enough for noisy training runs to find their level; a tighter
# (-4, 1) capped how precisely a smooth deterministic objective (Branin) could be resolved.
NOISE_PRIOR = (-5.0, 1.5)

# The start of the smooth alternative fit (``fit(..., smooth=True)``): lengthscales of at least
# this many sqrt(d) in the unit cube and this noise variance (standardized units), the data
# explained as a slow trend plus noise.
SMOOTH_LENGTHSCALE = 0.8
SMOOTH_NOISE = 0.1


# Builds a base kernel other than the plain MixedMatern52 from the encoding and the lengthscale
# prior and constraint (keyword arguments): a subclass, so it keeps one lengthscale per
# parameter and says whether it is stationary.
KernelFactory = Callable[[GPEncoding, dict[str, Any]], MixedMatern52]


class _ExactGP(gpytorch.models.ExactGP):
    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        encoding: GPEncoding,
        deterministic: bool,
        warp_inputs: bool = False,
        kernel: KernelFactory | None = None,
        trend_share: float = 0.0,
    ) -> None:
        noise_prior = None if deterministic else gpytorch.priors.LogNormalPrior(*NOISE_PRIOR)
        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_prior=noise_prior, noise_constraint=gpytorch.constraints.GreaterThan(1e-7)
        )
        super().__init__(x, y, likelihood)
        d = encoding.d
        self.mean_module = gpytorch.means.ConstantMean()
        lengthscale = {
            "lengthscale_prior": gpytorch.priors.LogNormalPrior(
                math.sqrt(2.0) + 0.5 * math.log(d), math.sqrt(3.0)
            ),
            "lengthscale_constraint": gpytorch.constraints.GreaterThan(1e-3),
        }
        base = (
            MixedMatern52(encoding, warp_inputs, trend_share, **lengthscale)
            if kernel is None
            else kernel(encoding, lengthscale)
        )
        self.covar_module = gpytorch.kernels.ScaleKernel(
            base,
            outputscale_prior=gpytorch.priors.GammaPrior(2.0, 0.15),
        )
        if deterministic:
            likelihood.noise = 1e-6
            likelihood.raw_noise.requires_grad_(False)

    def forward(self, x: Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


@dataclass
class Hyper:
    """Fitted hyperparameters in their natural units, and the raw vector for warm starts."""

    lengthscale: Tensor  # (d,)
    outputscale: float
    noise: float
    mean: float
    raw: np.ndarray
    loss: float  # the fit's negative log marginal likelihood plus priors, over n; nan if reused


def neg_mll(model: _ExactGP, x: Tensor, y: Tensor, priors: list | None = None) -> Tensor:
    """GPyTorch's ``ExactMarginalLogLikelihood`` (log likelihood plus log priors, over ``n``),
    negated, evaluated with one dense Cholesky instead of LinearOperator dispatch: the same
    number (a test pins it to GPyTorch's) at a fraction of the per-call overhead, which
    dominates for the few hundred points a fit sees."""
    n = len(y)
    chol = _cholesky(model, x)
    r = (y - model.mean_module.constant).unsqueeze(-1)
    alpha = torch.cholesky_solve(r, chol)
    log_lik = (
        -0.5 * (r * alpha).sum() - chol.diagonal().log().sum() - 0.5 * n * math.log(2 * math.pi)
    )
    if priors is None:
        priors = list(model.named_priors())
    log_prior = sum(
        prior.log_prob(closure(module)).sum() for _, module, prior, closure, _ in priors
    )
    return -(log_lik + log_prior) / n


def loo_log_densities(model: _ExactGP, x: Tensor, y: Tensor) -> Tensor:
    """The leave-one-out log predictive density of each value ``(n,)``: each one predicted
    from all the others, in closed form (Rasmussen and Williams 2006, eq. 5.10-5.12). Unlike
    the marginal likelihood it scores how well the fit predicts points it has not seen, which
    is what a kernel that cannot represent the objective (ripples finer than any trial
    spacing) gets wrong: it interpolates them with short lengthscales and predicts badly in
    between."""
    with torch.no_grad():
        k_inv = torch.cholesky_inverse(_cholesky(model, x))
        alpha = k_inv @ (y - model.mean_module.constant)
        d = k_inv.diagonal()
        return 0.5 * torch.log(d) - alpha**2 / (2 * d) - 0.5 * math.log(2 * math.pi)


def _cholesky(model: _ExactGP, x: Tensor) -> Tensor:
    """The Cholesky factor of ``K(x, x) + sigma^2 I`` under the model's current values."""
    kernel = model.covar_module
    k = kernel.outputscale * kernel.base_kernel.forward(x, x)
    k = k + model.likelihood.noise * torch.eye(len(x), dtype=k.dtype, device=k.device)
    chol, info = torch.linalg.cholesky_ex(k)
    if int(info) != 0:
        raise SurrogateError(f"kernel matrix not positive definite during the fit (n={len(x)})")
    return chol


class Surrogate:
    """Fit on ``(X, y)``, then answer posterior mean and variance for batches of points."""

    def __init__(
        self,
        encoding: GPEncoding,
        device: torch.device,
        deterministic: bool = False,
        warp_inputs: bool = False,
        kernel: KernelFactory | None = None,
        trend_share: float = 0.0,
    ) -> None:
        """``trend_share``: see :class:`MixedMatern52` (the plain kernel only; a ``kernel``
        factory builds its own)."""
        self.encoding = encoding
        self.device = device
        self.deterministic = deterministic
        self.warp_inputs = warp_inputs
        self.kernel = kernel
        self.trend_share = trend_share
        self.hyper: Hyper | None = None
        self.x: Tensor | None = None

    # -- hyperparameters ---------------------------------------------------------------------
    def fit(
        self,
        x: Tensor,
        y: Tensor,
        warm: np.ndarray | None = None,
        max_iter: int = 200,
        smooth: bool = False,
    ) -> Hyper:
        """Maximize the marginal likelihood from ``warm`` (the previous fit's raw vector) when
        given; when there is none, or that fit fails, restart from two defaults (short and long
        lengthscales) and keep the better. ``max_iter=0`` with ``warm`` reuses those
        hyperparameters as they are. With ``smooth`` (a noisy model only) a second fit runs
        beside it, from the first one smoothed (lengthscales at least
        :data:`SMOOTH_LENGTHSCALE` sqrt(d), noise :data:`SMOOTH_NOISE`), and the one with the
        higher leave-one-out density (:func:`loo_log_densities`, summed) is used, and the next
        refit starts from it: the marginal likelihood alone leaves the noise at its prior and,
        on a rugged objective, takes the fit that interpolates the ripples.
        Raises SurrogateError when every start fails."""
        x = x.to(self.device, torch.float64)
        y = y.to(self.device, torch.float64)
        model = _ExactGP(
            x, y, self.encoding, self.deterministic, self.warp_inputs, self.kernel, self.trend_share
        ).to(self.device, torch.float64)
        params = [p for p in model.parameters() if p.requires_grad]
        defaults = []
        for ls in (0.2, 0.8):  # short and long lengthscales, relative to sqrt(d)
            model.covar_module.base_kernel.lengthscale = ls * math.sqrt(self.encoding.d)
            model.covar_module.outputscale = 1.0
            if not self.deterministic:
                model.likelihood.noise = 1e-3
            model.mean_module.constant.data.fill_(0.0)
            defaults.append(_flat(params))
        usable_warm = warm is not None and warm.size == defaults[0].size
        model.train()
        priors = list(model.named_priors())

        def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            _assign(params, theta)
            for p in params:
                p.grad = None
            loss = neg_mll(model, x, y, priors)
            loss.backward()
            grad = np.concatenate([p.grad.detach().cpu().numpy().ravel() for p in params])
            return float(loss.detach()), np.nan_to_num(grad)

        def run(starts: list[np.ndarray], iters: int) -> tuple[float, np.ndarray] | None:
            best: tuple[float, np.ndarray] | None = None
            for theta0 in starts:
                try:
                    res = minimize(
                        loss_and_grad,
                        theta0,
                        jac=True,
                        method="L-BFGS-B",
                        options={"maxiter": iters, "ftol": 1e-6},
                    )
                except (SurrogateError, RuntimeError, ValueError) as e:  # NaNs, non-PSD
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                if np.isfinite(res.fun) and (best is None or res.fun < best[0]):
                    best = (float(res.fun), res.x)
            return best

        errors: list[str] = []
        best: tuple[float, np.ndarray] | None = None
        if usable_warm and max_iter == 0:
            assert warm is not None
            best = (float("nan"), warm)
        elif usable_warm:
            assert warm is not None
            best = run([warm], max_iter)
        if best is None:  # no warm start, or it failed: restart from the defaults
            best = run(defaults, max(max_iter, 200))
        if best is None:
            raise SurrogateError("marginal-likelihood fit failed: " + "; ".join(errors))
        if smooth and max_iter and not self.deterministic:
            alt = self._smooth_fit(model, params, best[1], run, max(max_iter, 100))
            if alt is not None:
                best = self._by_loo(model, params, x, y, best, alt)
        _assign(params, best[1])
        model.requires_grad_(False)  # the posterior needs gradients in x only
        kernel = model.covar_module
        self.hyper = Hyper(
            lengthscale=kernel.base_kernel.lengthscale.detach().reshape(-1).clone(),
            outputscale=float(kernel.outputscale),
            noise=float(model.likelihood.noise),
            mean=float(model.mean_module.constant),
            raw=best[1],
            loss=best[0],
        )
        self._base = kernel.base_kernel
        self._model = model
        return self.hyper

    def loo_density(self, x: Tensor, y: Tensor) -> float:
        """The summed leave-one-out log predictive density of ``(x, y)`` under the fitted
        hyperparameters (:func:`loo_log_densities`): how well this model predicts each point
        from the others, comparable across kernels where the marginal likelihoods' priors are
        not. -inf where the kernel matrix is not positive definite."""
        assert self.hyper is not None, "fit first"
        try:
            dens = loo_log_densities(
                self._model, x.to(self.device, torch.float64), y.to(self.device, torch.float64)
            )
        except SurrogateError:
            return -math.inf
        return float(dens.sum())

    def _smooth_fit(
        self,
        model: _ExactGP,
        params: list[torch.nn.Parameter],
        fitted: np.ndarray,
        run: Callable[[list[np.ndarray], int], tuple[float, np.ndarray] | None],
        iters: int,
    ) -> tuple[float, np.ndarray] | None:
        """The marginal-likelihood fit from ``fitted`` smoothed: the nearest explanation of
        the data as a slow trend plus noise, where there is one."""
        _assign(params, fitted)
        base = model.covar_module.base_kernel
        floor = SMOOTH_LENGTHSCALE * math.sqrt(self.encoding.d)
        base.lengthscale = base.lengthscale.detach().clamp_min(floor)
        model.likelihood.noise = SMOOTH_NOISE
        return run([_flat(params)], iters)

    @staticmethod
    def _by_loo(
        model: _ExactGP,
        params: list[torch.nn.Parameter],
        x: Tensor,
        y: Tensor,
        *fits: tuple[float, np.ndarray],
    ) -> tuple[float, np.ndarray]:
        """The fit with the highest leave-one-out density (the first on ties)."""
        scores = []
        for _, theta in fits:
            _assign(params, theta)
            try:
                scores.append(float(loo_log_densities(model, x, y).sum()))
            except SurrogateError:
                scores.append(-math.inf)
        return fits[int(np.argmax(scores))]

    # -- posterior ---------------------------------------------------------------------------
    def condition(self, x: Tensor, y: Tensor) -> None:
        """Factorize ``K(X, X) + sigma^2 I`` for the fitted hyperparameters (any ``X`` with the
        same encoding: all observations, fantasies included). Retries with more jitter."""
        if self.hyper is None:
            raise SurrogateError("condition() before fit()")
        x = x.to(self.device, torch.float64)
        y = y.to(self.device, torch.float64)
        with torch.no_grad():
            k = self._k(x, x)
            k.diagonal().add_(self.hyper.noise)
            eye = torch.eye(len(x), dtype=k.dtype, device=k.device)
            for jitter in (0.0, 1e-8, 1e-6, 1e-4):
                chol, info = torch.linalg.cholesky_ex(k + jitter * eye)
                if int(info) == 0:
                    break
            else:
                raise SurrogateError(f"kernel matrix not positive definite (n={len(x)})")
        self.x = x
        self.alpha = torch.cholesky_solve((y - self.hyper.mean).unsqueeze(-1), chol).squeeze(-1)
        self.k_inv = torch.cholesky_inverse(chol)

    def _k(self, a: Tensor, b: Tensor) -> Tensor:
        """The fitted kernel as a dense ``(len(a), len(b))`` tensor, through the kernel's own
        ``forward`` (no lazy-tensor wrapping: it is called many times per suggestion)."""
        assert self.hyper is not None
        return self.hyper.outputscale * self._base.forward(a, b)

    def posterior(self, xq: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance ``(q,)`` at ``xq`` ``(q, w)``; differentiable in ``xq``."""
        assert self.hyper is not None and self.x is not None
        kq = self._k(xq, self.x)  # (q, n)
        mean = self.hyper.mean + kq @ self.alpha
        var = self._prior_var(xq) - ((kq @ self.k_inv) * kq).sum(-1)
        return mean, var.clamp_min(1e-12)

    def posterior_without(self, xq: Tensor, drop: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance ``(q,)`` at ``xq`` as if the conditioned rows ``drop`` (a boolean
        mask ``(n,)``) had not been observed, from the cached ``(K + sigma^2 I)^-1`` by the
        block-inverse identities (no new factorization): with ``P`` that inverse, ``R`` the
        rows kept and ``B`` those dropped, ``K_RR^-1 = P_RR - P_RB P_BB^-1 P_BR``."""
        assert self.hyper is not None and self.x is not None
        with torch.no_grad():
            # the cross-covariances with the dropped rows set to 0, so the full P serves as
            # P_RR without copying it out
            kq = self._k(xq, self.x).masked_fill(drop, 0.0)  # (q, n)
            p_bb_inv = torch.linalg.inv(self.k_inv[drop][:, drop])
            u = kq @ self.k_inv[:, drop]  # (q, b): k_qR P_RB
            mean = self.hyper.mean + kq @ self.alpha - u @ (p_bb_inv @ self.alpha[drop])
            quad = ((kq @ self.k_inv) * kq).sum(-1) - ((u @ p_bb_inv) * u).sum(-1)
            var = self._prior_var(xq) - quad
        return mean, var.clamp_min(1e-12)

    def _prior_var(self, xq: Tensor) -> Tensor | float:
        """``k(x, x)``: the output scale for a stationary kernel (the sampler's, on its hot
        path), the kernel's own diagonal otherwise (the freeze-thaw kernel's grows early)."""
        assert self.hyper is not None
        if self._base.stationary:
            return self.hyper.outputscale
        return self.hyper.outputscale * self._base.forward(xq, xq, diag=True)

    def joint_sample(self, xq: Tensor, generator: torch.Generator) -> Tensor:
        """One draw of the posterior over the points ``xq`` ``(q, w)`` jointly (Thompson)."""
        assert self.hyper is not None and self.x is not None
        with torch.no_grad():
            kq = self._k(xq, self.x)
            mean = self.hyper.mean + kq @ self.alpha
            cov = self._k(xq, xq) - kq @ self.k_inv @ kq.T
            cov = 0.5 * (cov + cov.T)
            cov.diagonal().add_(1e-8 * self.hyper.outputscale)
            chol, info = torch.linalg.cholesky_ex(cov)
            if int(info) != 0:
                chol = torch.diag(cov.diagonal().clamp_min(1e-12).sqrt())
            z = torch.randn(len(xq), generator=generator, dtype=cov.dtype).to(cov.device)
            return mean + chol @ z


def _flat(params: list[torch.nn.Parameter]) -> np.ndarray:
    return np.concatenate([p.detach().cpu().numpy().ravel() for p in params]).astype(np.float64)


def _assign(params: list[torch.nn.Parameter], theta: np.ndarray) -> None:
    i = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(torch.as_tensor(theta[i : i + n], dtype=p.dtype).reshape(p.shape))
            i += n
