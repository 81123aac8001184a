"""Noise schedules of the variational diffusion model: ``gamma(t)``, with ``SNR(t) = exp(-gamma(t))``
and, variance preserving, ``alpha_t^2 = sigmoid(-gamma(t))``, ``sigma_t^2 = sigmoid(gamma(t))``.

Reference:
    Kingma, Salimans, Poole & Ho (2021), Variational Diffusion Models, sec. 3 and appendix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# -- noise schedules ---------------------------------------------------------------------------
class NoiseSchedule(nn.Module):
    """``gamma(t) = -log SNR(t)``, increasing on ``[0, 1]``, from ``gamma_0`` to ``gamma_1``.

    Subclasses implement ``shape(t)``, increasing with ``shape(0) = 0`` and ``shape(1) = 1``;
    ``gamma(t) = gamma_0 + (gamma_1 - gamma_0) shape(t)``. The endpoints are parameters
    (``learn_endpoints``) or buffers; ``gamma_1 - gamma_0`` is kept positive (a softplus).

    Args:
        gamma_min: initial ``gamma_0`` (paper: -13.3).
        gamma_max: initial ``gamma_1`` (paper: 5.0).
        learn_endpoints: train ``gamma_0`` and ``gamma_1`` on the ELBO.
    """

    def __init__(
        self, gamma_min: float = -13.3, gamma_max: float = 5.0, learn_endpoints: bool = True
    ) -> None:
        super().__init__()
        if not gamma_max > gamma_min:
            raise ValueError(
                f"noise schedule: gamma_max ({gamma_max}) must exceed gamma_min ({gamma_min})"
            )
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)
        g0 = torch.tensor(float(gamma_min))
        # softplus^-1 of the width: gamma_1 = gamma_0 + softplus(raw) stays above gamma_0.
        raw = torch.tensor(float(gamma_max - gamma_min)).expm1().log()
        if learn_endpoints:
            self.gamma_0 = nn.Parameter(g0)
            self.raw_width = nn.Parameter(raw)
        else:
            self.register_buffer("gamma_0", g0)
            self.register_buffer("raw_width", raw)
        self.learn_endpoints = bool(learn_endpoints)

    def shape(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def endpoints(self) -> tuple[Tensor, Tensor]:
        """``(gamma_0, gamma_1)``."""
        return self.gamma_0, self.gamma_0 + F.softplus(self.raw_width)

    def forward(self, t: Tensor) -> Tensor:
        """``gamma(t)``, same shape as ``t``."""
        g0, g1 = self.endpoints()
        return g0 + (g1 - g0) * self.shape(t)

    def shape_derivative(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``d shape / dt``, same shape as ``t``."""
        raise NotImplementedError

    def with_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(gamma(t), gamma'(t))``, both differentiable in the parameters.

        The derivative is written out, not taken by autograd, so it works under
        ``torch.inference_mode`` (Lightning's evaluation) and costs one more small pass.
        """
        g0, g1 = self.endpoints()
        return g0 + (g1 - g0) * self.shape(t), (g1 - g0) * self.shape_derivative(t)


class LinearSchedule(NoiseSchedule):
    """``gamma(t) = gamma_0 + (gamma_1 - gamma_0) t`` (the paper's fixed baseline)."""

    def shape(self, t: Tensor) -> Tensor:
        return t

    def shape_derivative(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


class MonotoneLinear(nn.Linear):
    """A Linear layer with non-negative weights (``|W|``): increasing in every input."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.abs(), self.bias)


class LearnedSchedule(NoiseSchedule):
    """The paper's monotone network: ``g(t) = l1(t) + l3(phi(l2(t))) / n``, ``phi`` a sigmoid.

    Every layer has non-negative weights, so ``g`` increases; ``shape(t) = (g(t) - g(0)) /
    (g(1) - g(0))`` fixes the endpoints to ``gamma_0``, ``gamma_1`` (learned or not), so the
    network learns the interior only. Initialised near linear.

    Args:
        hidden: width ``n`` of the sigmoid layer (paper: 1024); 0: no sigmoid layer, the
            linear schedule (the paper's fixed baseline when the endpoints are fixed too).
        gamma_min: ``gamma(0)``, as ``NoiseSchedule``.
        gamma_max: ``gamma(1)``, as ``NoiseSchedule``.
        learn_endpoints: learn ``gamma(0)`` and ``gamma(1)``, as ``NoiseSchedule``.
    """

    def __init__(
        self,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        learn_endpoints: bool = True,
        hidden: int = 1024,
    ) -> None:
        super().__init__(gamma_min, gamma_max, learn_endpoints)
        self.hidden = int(hidden)
        if self.hidden < 0:
            raise ValueError(f"model.schedule.hidden must be >= 0, got {hidden}")
        self.l1 = MonotoneLinear(1, 1)
        if self.hidden > 0:
            self.l2 = MonotoneLinear(1, self.hidden)
            self.l3 = MonotoneLinear(self.hidden, 1, bias=False)
        with torch.no_grad():
            self.l1.weight.fill_(1.0)
            self.l1.bias.zero_()

    def _g(self, t: Tensor) -> Tensor:
        u = t.reshape(-1, 1)  # (N, 1)
        h = self.l1(u)
        if self.hidden == 0:
            return h.reshape(t.shape)
        h = h + self.l3(2.0 * (torch.sigmoid(self.l2(2.0 * (u - 0.5))) - 0.5)) / self.hidden
        return h.reshape(t.shape)

    def _dg(self, t: Tensor) -> Tensor:
        """``g'(t)``: ``|w1| + (1/n) sum_j |w3_j| 4 |w2_j| phi'(...)``, ``phi' = phi (1 - phi)``."""
        u = t.reshape(-1, 1)  # (N, 1)
        d = self.l1.weight.abs().reshape(()).expand(u.shape[0])  # (N,)
        if self.hidden > 0:
            w2 = self.l2.weight.abs().reshape(1, -1)  # (1, n)
            p = torch.sigmoid(self.l2(2.0 * (u - 0.5)))  # (N, n)
            d = d + (4.0 * p * (1 - p) * w2) @ self.l3.weight.abs().reshape(-1) / self.hidden
        return d.reshape(t.shape)

    def shape(self, t: Tensor) -> Tensor:
        ends = self._g(torch.tensor([0.0, 1.0], device=t.device, dtype=t.dtype))
        return (self._g(t) - ends[0]) / (ends[1] - ends[0])

    def shape_derivative(self, t: Tensor) -> Tensor:
        ends = self._g(torch.tensor([0.0, 1.0], device=t.device, dtype=t.dtype))
        return self._dg(t) / (ends[1] - ends[0])


# -- the model ---------------------------------------------------------------------------------


__all__ = ["LearnedSchedule", "LinearSchedule", "MonotoneLinear", "NoiseSchedule"]
