"""The GP sampler's output warps, each with the log-Jacobian that lets the data choose one.

* ``yeo_johnson``: :func:`~torchtune_hp.gp.surrogate.warp`, a Yeo-Johnson power transform of
  the standardized values (as HEBO). It treats the whole range alike, so where the values span
  orders of magnitude (Rosenbrock: 1e5 far out, 1 to 100 along the valley floor) the floor is
  squeezed into a sliver of the model's scale and the search cannot see which way it falls.
* ``floor``: a Box-Cox transform (exponent by maximum likelihood) of the distance to the best
  value in standard deviations, ``(y - min y) / sd + c`` with ``c`` = 0.01: log-like where
  the values are skewed, so the floor is spread over the model's scale. It depends only on
  differences of values, not on where zero lies. (An offset that follows the data, the
  distance from the best value to the tenth percentile, was measured and lost: see the
  README's Bayesian optimization section.)

Which one fits is what the data can tell: the GP's log marginal likelihood of the warped
values plus the log-Jacobian of the warp is the log density of the values themselves under
that model (the warped GPs of Snelson et al. 2004), so both are compared on one scale (each
warp's constants, the floor's shift to the best value among them, taken as fitted). The
sampler's ``output_warp: auto`` uses ``floor`` only where it wins by :data:`EVIDENCE` nats;
with a dozen observations either warp can win by chance, and a floor taken by chance early on
a rugged surface sends the search after one lucky point (see the README's Bayesian
optimization section).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy.stats import boxcox

from torchtune_hp.gp.surrogate import fit_warp, mean_std

# The margin, in nats of log density, by which ``floor`` must beat ``yeo_johnson``: "strong"
# evidence on Kass and Raftery's (1995) scale (a Bayes factor above e^3 = 20).
EVIDENCE = 3.0
# The floor's offset c, in standard deviations of the values: the log-like transform resolves
# differences from the best value down to about c sd and compresses those below.
FLOOR_OFFSET = 0.01


@dataclass(frozen=True)
class Warped:
    """Warped, standardized values ``(n,)`` and ``log |d warped / d value|`` per value, the
    warp's constants (standardization, exponent, offset) held at their fitted values."""

    values: np.ndarray
    log_jacobian: np.ndarray


def yeo_johnson(y: np.ndarray) -> Warped:
    """The Yeo-Johnson warp, :func:`~torchtune_hp.gp.surrogate.warp`, with its log-Jacobian."""
    y = np.asarray(y, dtype=np.float64)
    values, w = fit_warp(y)
    with np.errstate(all="ignore"):  # values that overflow: the sampler reports them
        z = (y - w.mean_y) / w.std_y
        if w.lmbda is None:
            slope = np.zeros_like(z)
        else:  # d YJ / dz: (1 + z)^(lambda - 1) above zero, (1 - z)^(1 - lambda) below
            slope = np.where(z >= 0, w.lmbda - 1.0, 1.0 - w.lmbda) * np.log1p(np.abs(z))
        return Warped(values, slope - np.log(w.std_y) - np.log(w.std_t))


@dataclass(frozen=True)
class FloorWarp:
    """The fitted constants of the ``floor`` warp, to apply it to any values."""

    low: float  # the best (lowest) value
    sd: float
    offset: float  # c, in units of sd
    lmbda: float
    mean_t: float
    std_t: float

    def shifted(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) - self.low) / self.sd + self.offset

    def apply(self, y: np.ndarray) -> np.ndarray:
        return (special.boxcox(self.shifted(y), self.lmbda) - self.mean_t) / self.std_t

    def log_jacobian(self, y: np.ndarray) -> np.ndarray:
        return (self.lmbda - 1.0) * np.log(self.shifted(y)) - np.log(self.sd * self.std_t)


def fit_floor(y: np.ndarray) -> FloorWarp | None:
    """The ``floor`` warp fitted to ``y``; None where it cannot be (fewer than 3 values, all
    equal, or a transform that overflows)."""
    y = np.asarray(y, dtype=np.float64)
    sd = mean_std(y)[1]
    # equal values can have a standard deviation of rounding noise (0.1 * 20: 1e-17)
    if len(y) < 3 or not 0 < sd < math.inf or not y.max() > y.min():
        return None
    low = float(y.min())
    offset = FLOOR_OFFSET
    with np.errstate(all="ignore"):
        try:
            t, lmbda = boxcox((y - low) / sd + offset)
        except ValueError:  # scipy refuses data that are constant after all
            return None
    if not (np.all(np.isfinite(t)) and np.std(t) > 0):
        return None
    return FloorWarp(low, sd, offset, float(lmbda), float(t.mean()), float(np.std(t)))


def floor(y: np.ndarray) -> Warped | None:
    """The ``floor`` warp of ``y`` with its log-Jacobian; None where it cannot be fitted."""
    w = fit_floor(y)
    if w is None:
        return None
    return Warped(w.apply(y), w.log_jacobian(y))


OUTPUT_WARPS: dict[str, Callable[[np.ndarray], Warped | None]] = {
    "yeo_johnson": yeo_johnson,
    "floor": floor,
}


def neg_log_density(fit_loss: float, warped: Warped, rows: np.ndarray) -> float:
    """The negative log density of the values at ``rows`` under a GP fitted to their warped
    values, whose fit reported ``fit_loss`` (the negative log marginal likelihood plus priors,
    over the number of rows, as :class:`~torchtune_hp.gp.surrogate.Hyper` keeps it)."""
    return fit_loss * len(rows) - float(warped.log_jacobian[rows].sum())
