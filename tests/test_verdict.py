"""The comparison's differences, verdict lines and claim sentence, on data whose answer is known."""

import numpy as np
import pytest

from ple.evaluation.stats import detectable_difference, hierarchical_difference
from ple.evaluation.verdict import claim_sentence, diversity_sentence, verdict


def test_a_constant_difference_has_no_spread():
    a = {0: np.full(50, 0.7), 1: np.full(50, 0.6)}
    b = {0: np.full(50, 0.5), 1: np.full(50, 0.4)}
    d = hierarchical_difference(a, b)
    assert d["delta"] == pytest.approx(0.2) and d["ci_low"] == pytest.approx(0.2) and d["ci_high"] == pytest.approx(0.2)
    assert (d["seeds"], d["prompts"]) == (2, 50)


def test_seed_to_seed_variation_widens_the_interval():
    """Seeds that disagree (+0.3, -0.3, +0.05) with no prompt noise at all: the mean is +0.017, and only resampling
    the seeds can say that this could as well be negative."""
    b = {s: np.zeros(200) for s in range(3)}
    a = {0: np.full(200, 0.3), 1: np.full(200, -0.3), 2: np.full(200, 0.05)}
    d = hierarchical_difference(a, b)
    assert d["delta"] == pytest.approx(0.05 / 3)
    assert d["ci_low"] < -0.1 and d["ci_high"] > 0.1  # the seed means span [-0.3, 0.3]
    assert verdict("ple", "x", d) == "no difference detected between PLE and x"


def test_prompt_noise_gives_about_the_normal_interval():
    rng = np.random.default_rng(0)
    b = {0: rng.normal(0.5, 0.2, 400)}
    a = {0: b[0] + 0.05 + rng.normal(0, 0.1, 400)}
    d = hierarchical_difference(a, b)
    se = (a[0] - b[0]).std(ddof=1) / np.sqrt(400)
    assert d["se"] == pytest.approx(se, rel=0.1)
    assert d["ci_low"] == pytest.approx(d["delta"] - 1.96 * se, abs=0.2 * se)
    assert verdict("ple", "x", d) == "PLE is ahead of x"
    assert verdict("ple", "x", hierarchical_difference(b, a)) == "x is ahead of PLE"
    # A grid whose reference is another method names that method, not PLE.
    assert verdict("ple-rank-only", "x", d) == "ple-rank-only is ahead of x"
    assert detectable_difference(se) == pytest.approx(2.8 * se, rel=1e-3)


def test_only_shared_seeds_are_paired():
    a = {0: np.ones(5), 1: np.ones(5), 2: np.full(5, 9.0)}
    b = {0: np.zeros(5), 1: np.zeros(5)}
    assert hierarchical_difference(a, b)["delta"] == pytest.approx(1.0)  # seed 2 has no partner
    with pytest.raises(ValueError, match="share no seed"):
        hierarchical_difference({0: np.ones(5)}, {1: np.ones(5)})


def test_the_claim_sentence_follows_the_baselines_it_names():
    ahead, tie, behind = ({"ci_low": lo, "ci_high": hi} for lo, hi in ((0.01, 0.1), (-0.05, 0.05), (-0.1, -0.01)))
    all_ahead = {m: ahead for m in ("sft", "dpo", "rloo", "raft")}
    assert claim_sentence({**all_ahead, "distill": behind}).startswith("The paper's claim holds")  # distill: not named
    assert "does not hold" in claim_sentence({**all_ahead, "rloo": behind}) and "rloo is ahead" in claim_sentence(
        {**all_ahead, "rloo": behind}
    )
    assert "not shown" in claim_sentence({**all_ahead, "dpo": tie})
    assert "none of the baselines" in claim_sentence({"distill": ahead})
    assert claim_sentence(all_ahead, "ple-symmetric").endswith("ple-symmetric is ahead of sft, dpo, rloo, raft.")


def test_the_diversity_sentence_flags_falls_past_ten_percent_of_the_base():
    # base 0.800: 0.680 is a 15% fall (flagged), 0.730 an 8.75% fall (not), 0.200 a 75% fall (flagged).
    sentence = diversity_sentence(0.8, {"ple": 0.2, "dpo": 0.73, "distill": 0.68})
    assert sentence.endswith("for ple (0.200, -75%), distill (0.680, -15%).")
    assert "dpo" not in sentence
    assert (
        diversity_sentence(0.8, {"dpo": 0.73})
        == "No method's distinct-2 fell by more than 10% of the base model's (0.800)."
    )
    # One-token answers (max_new_tokens 1) have no bigrams: a sentence, not a ZeroDivisionError after the grid.
    assert "no fall in diversity can be measured" in diversity_sentence(0.0, {"ple": 0.0})
