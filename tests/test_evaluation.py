import json
import math

import numpy as np
import pytest

from ple.evaluation.metrics import corpus_perplexity, distinct_n
from ple.evaluation.report import write_report
from ple.evaluation.stats import bootstrap_ci, paired_bootstrap


def test_distinct_n_by_hand():
    texts = ["the cat the cat", "a dog"]
    # unigrams: the cat the cat a dog -> 4 unique of 6; bigrams: (the cat)(cat the)(the cat)(a dog) -> 3 of 4
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one"], 2) == 0.0


def test_perplexity_pools_tokens():
    rows = [{"nll": 2.0, "n_tokens": 1}, {"nll": 4.0, "n_tokens": 3}]
    assert corpus_perplexity("nll", "n_tokens")(rows) == pytest.approx(math.exp(6 / 4))


def test_paired_bootstrap_brackets_a_real_shift_and_zero_for_none():
    before = [{"x": float(i % 5)} for i in range(200)]
    shifted = [{"x": r["x"] + 1.0} for r in before]

    def mean(rows):
        return sum(r["x"] for r in rows) / len(rows)

    s = paired_bootstrap(before, shifted, mean)
    assert s["delta"] == pytest.approx(1.0) and s["ci_low"] == pytest.approx(1.0) and s["ci_high"] == pytest.approx(1.0)
    noisy = [{"x": r["x"] + (0.5 if i % 2 else -0.5)} for i, r in enumerate(before)]
    s = paired_bootstrap(before, noisy, mean)
    assert s["ci_low"] < 0 < s["ci_high"]
    with pytest.raises(ValueError):
        paired_bootstrap(before, before[:10], mean)


def test_bootstrap_ci_of_a_mean_matches_the_normal_interval():
    """For a mean of 400 values the bootstrap interval is close to mean +- 1.96 * sd / sqrt(n)."""
    rng = np.random.default_rng(3)
    rows = [{"x": float(v)} for v in rng.normal(2.0, 3.0, 400)]
    values = np.array([r["x"] for r in rows])
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    ci = bootstrap_ci(rows, lambda rs: sum(r["x"] for r in rs) / len(rs))
    assert ci["value"] == pytest.approx(values.mean())
    assert ci["ci_low"] == pytest.approx(values.mean() - half, abs=0.1 * half)
    assert ci["ci_high"] == pytest.approx(values.mean() + half, abs=0.1 * half)


def test_a_distinct_n_change_is_inside_its_interval():
    """Distinct-n falls on nearly every resample that repeats rows; an interval that trusted the resamples' centre
    (or BCa's bias correction, which degenerates here) would miss the estimate."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    before = [{"completion": " ".join(rng.choice(words, 20))} for _ in range(200)]
    after = [{"completion": " ".join(rng.choice(words[:150], 20))} for _ in range(200)]  # a smaller vocabulary

    def d2(rows):
        return distinct_n([r["completion"] for r in rows], 2)

    s = paired_bootstrap(before, after, d2)
    assert s["delta"] < 0 and s["ci_low"] < s["delta"] < s["ci_high"] < 0


def test_report_writes_table_plots_and_summary(tmp_path):
    metrics = [
        {
            "iteration": t,
            "tau": 0.2 * 0.9**t,
            "mean_s": 0.1 * t,
            "mean_s_p": 0.3,
            "frac_rank": 0.5,
            "frac_wsft": 0.5,
            "frac_skip": 0.0,
            "n_rank": 4,
            "n_wsft": 4,
            "n_skip": 0,
            "loss": 1.0,
            "seconds": 2.0,
        }
        for t in range(3)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    before = [{"prompt": f"p{i}", "completion": "bad film", "reward": -0.5} for i in range(12)]
    after = [{"prompt": f"p{i}", "completion": "good | film", "reward": 0.5} for i in range(12)]
    summary = {"reward": {"before": -0.5, "after": 0.5, "delta": 1.0, "ci_low": 1.0, "ci_high": 1.0}}
    report = write_report(tmp_path, summary, {"reward": "VADER"}, before, after, {"reward": "VADER"}, ["a note"])
    text = report.read_text()
    assert "| VADER | -0.5000 | 0.5000 | +1.0000 | [+1.0000, +1.0000] |" in text
    examples = [line for line in text.splitlines() if line.startswith("| p") and line[3].isdigit()]
    assert len(examples) == 6 and all("good \\| film" in line for line in examples)
    for png in ("reward_per_iteration.png", "tau_and_branches.png", "reward_distributions.png"):
        assert (tmp_path / png).stat().st_size > 1000 and f"]({png})" in text
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
