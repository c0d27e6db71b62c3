import math

import pytest

from ple.schedule import threshold


def test_exponential_matches_paper_defaults():
    assert [threshold(t) for t in range(3)] == pytest.approx([0.2, 0.18, 0.162])


def test_constant():
    assert [threshold(t, "constant", 0.3) for t in range(4)] == [0.3] * 4


def test_quantile_uses_finite_absolute_gaps():
    gaps = [0.1, -0.3, None, float("nan"), 0.5, float("inf")]
    assert threshold(0, "quantile", quantile=0.5, gaps=gaps) == pytest.approx(0.3)
    assert threshold(0, "quantile", quantile=1.0, gaps=gaps) == pytest.approx(0.5)
    assert threshold(0, "quantile", gaps=gaps) == pytest.approx(0.3)  # the default quantile is the median
    assert threshold(0, "quantile", tau0=0.7, gaps=[None]) == 0.7  # nothing to take a quantile of


def test_minus_infinity_survives_the_exponential_schedule():
    assert threshold(5, "exponential", -math.inf, 0.9) == -math.inf


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        threshold(0, "linear")
