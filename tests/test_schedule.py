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


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_the_learning_rate_factor_is_transformers_schedule(kind):
    """Over 20 steps with a warm-up of 5, step k's factor equals transformers' scheduler at step k."""
    import torch
    from transformers import get_scheduler

    from ple.schedule import lr_factor

    name = "constant_with_warmup" if kind == "constant" else kind
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=5, num_training_steps=20)
    expected = []
    for _ in range(20):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [lr_factor(k / 20, kind, 0.25) for k in range(20)] == pytest.approx(expected)
