"""Means over images and their standard errors (``vaelab.evaluation.stats``)."""

from __future__ import annotations

import math

import pytest
import torch

from vaelab.evaluation.stats import MeanWithError, format_with_error


def test_standard_error_equals_std_over_sqrt_n_over_uneven_batches() -> None:
    g = torch.Generator().manual_seed(0)
    x = 95.0 + 7.0 * torch.randn(1003, generator=g)  # nats per image, a realistic spread
    m = MeanWithError()
    for chunk in torch.split(x, [1, 500, 2, 300, 200]):
        m.update(chunk)
    mean, se = m.compute()
    xd = x.double()
    assert float(mean) == pytest.approx(float(xd.mean()), rel=1e-12)
    assert float(se) == pytest.approx(float(xd.std() / math.sqrt(x.numel())), rel=1e-9)
    # Not the population std (n in the denominator): the two differ at this n by 5e-4.
    assert float(se) != pytest.approx(float(xd.std(correction=0) / math.sqrt(1003)), rel=1e-6)


def test_nan_is_reported_and_one_value_has_no_error() -> None:
    m = MeanWithError()
    m.update(torch.tensor([1.0, float("nan"), 3.0]))
    mean, se = m.compute()
    assert math.isnan(float(mean)) and math.isnan(float(se))
    one = MeanWithError()
    one.update(torch.tensor([4.0]))
    mean, se = one.compute()
    assert float(mean) == 4.0 and math.isnan(float(se))


def test_constant_values_have_zero_error() -> None:
    m = MeanWithError()
    m.update(torch.full((1000,), 86.123456789))
    assert float(m.compute()[1]) == 0.0


def test_format_with_error() -> None:
    assert format_with_error(98.6812, 0.2531) == "98.68 ± 0.25"
    assert format_with_error(1.0567, 0.0042) == "1.0567 ± 0.0042"
    assert format_with_error(86.5, None) == "86.5000"
