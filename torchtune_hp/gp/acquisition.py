"""Acquisition functions, all to be maximized, for minimization of the (warped) objective.

Notation: posterior mean ``mu`` and standard deviation ``sigma`` at the query points, shape
``(q,)``; ``best`` is the lowest warped value observed; ``z = (best - xi - mu) / sigma``.

* ``logei`` (default): ``log EI``, computed stably for very negative ``z`` (Ament et al. 2023,
  "Unexpected improvements to expected improvement"): plain EI's value and gradient underflow
  to zero far from the incumbent, which leaves the optimizer blind.
* ``ei``: ``sigma * h(z)`` with ``h(z) = phi(z) + z Phi(z)``.
* ``pi``: ``log Phi(z)``.
* ``ucb``: ``-(mu - sqrt(beta) sigma)``, the lower confidence bound of a minimization.
* ``thompson`` draws one joint posterior sample over candidates instead (see the sampler).

The exploration-exploitation knob is ``beta`` for ``ucb`` (larger explores more; default 2)
and ``xi`` for ``ei``/``logei``/``pi`` (a required improvement margin in standardized units;
larger explores more; default 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchtune_hp.options import check_choice

ACQUISITIONS = ("logei", "ei", "pi", "ucb", "thompson", "mace")
CLOSED_FORM = ("logei", "ei", "pi", "ucb")

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_SQRT_PI_DIV_2 = math.sqrt(math.pi / 2)
_INV_SQRT_2 = 1 / math.sqrt(2)


def _log_phi(z: Tensor) -> Tensor:
    return -0.5 * z * z - _LOG_SQRT_2PI


def _h(z: Tensor) -> Tensor:
    """phi(z) + z Phi(z): EI / sigma."""
    return torch.exp(_log_phi(z)) + z * torch.special.ndtr(z)


def _log1mexp(w: Tensor) -> Tensor:
    """log(1 - exp(w)) for w < 0, accurate on both sides of -log 2."""
    return torch.where(w > -math.log(2.0), torch.log(-torch.expm1(w)), torch.log1p(-torch.exp(w)))


def log_h(z: Tensor) -> Tensor:
    """log(phi(z) + z Phi(z)) without underflow (BoTorch's ``_log_ei_helper`` construction).

    For z <= -1: h(z) = phi(z) (1 - |z| Phi(z)/phi(z)) and Phi(z)/phi(z) = sqrt(pi/2)
    erfcx(-z/sqrt 2), so log h = log phi(z) + log1mexp(log(|z| sqrt(pi/2) erfcx(-z/sqrt 2)))."""
    upper = torch.log(_h(z.clamp_min(-1.0)))
    z_low = z.clamp(-1e6, -1.0)
    w = torch.log(torch.special.erfcx(-_INV_SQRT_2 * z_low) * z_low.abs()) + math.log(
        _SQRT_PI_DIV_2
    )
    lower = _log_phi(z_low) + torch.where(z_low > -1e6, _log1mexp(w), -2 * z_low.abs().log())
    return torch.where(z > -1.0, upper, lower)


def acquisition_value(
    name: str, mean: Tensor, var: Tensor, best: float, beta: float, xi: float
) -> Tensor:
    """The acquisition ``(q,)`` from posterior ``mean`` and ``var`` ``(q,)``: one of the four
    closed forms (``thompson`` draws from the posterior and ``mace`` combines these)."""
    check_choice("acquisition", name, CLOSED_FORM)
    sigma = var.sqrt()
    if name == "ucb":
        return -(mean - math.sqrt(beta) * sigma)
    z = (best - xi - mean) / sigma
    if name == "logei":
        return log_h(z) + sigma.log()
    if name == "ei":
        return sigma * _h(z)
    return torch.special.log_ndtr(z)  # pi
