"""ple.evaluation.stats against values worked by hand or read from a normal table."""

import math

import pytest

from ple.evaluation.stats import detectable_difference, standard_error, z_value


def test_z_values_are_the_normal_tables_with_bonferroni():
    assert z_value() == pytest.approx(1.959964, abs=1e-6)  # the 97.5th percentile
    assert z_value(0.10) == pytest.approx(1.644854, abs=1e-6)
    assert z_value(0.05, 30) == pytest.approx(3.143980, abs=1e-6)  # 1 - 0.05/60: the frontier's 30 comparisons


def test_detectable_difference_is_80_percent_power_at_the_5_percent_level():
    assert detectable_difference(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-6)
    assert detectable_difference(0.01) == pytest.approx(0.028016, abs=1e-6)
    assert math.isnan(detectable_difference(math.nan))


def test_the_standard_error_leaves_undefined_draws_out():
    # 1, 2, 3: mean 2, squared deviations 1 + 0 + 1 over n - 1 = 2 -> variance 1
    assert standard_error([1.0, 2.0, 3.0, math.nan]) == pytest.approx(1.0)
    assert standard_error([0.5, 0.5]) == 0.0
    assert math.isnan(standard_error([1.0, math.nan]))
