"""The reward-KL frontier's rules against values worked out by hand: the gate, the split-half envelope, the
corrected intervals and the verdict lines, best-of-n's KL bound, and the judge probe."""

import math

import numpy as np
import pytest

from ple.errors import PLEError
from ple.evaluation.frontier import (
    Features,
    Gated,
    Point,
    Rules,
    best_of_n_kl_bound,
    choose,
    compare,
    envelope,
    most_common_sentence,
    probe_texts,
    rules_from,
)
from ple.evaluation.metrics import distinct_n, top_sentence_share


def point(judge, kl, texts, seed=0, method="m") -> Point:
    p = Point(method, 1e-4, seed, 2, np.array(judge, dtype=float), np.array(kl, dtype=float), texts)
    p.features = Features(texts, VOCABULARY)
    return p


VOCABULARY: dict = {}


def unique_texts(tag: str, n: int = 4) -> list[str]:
    return [f"{tag}{i}a {tag}{i}b {tag}{i}c." for i in range(n)]


def test_best_of_n_kl_bound_by_hand():
    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl_bound(16) == pytest.approx(2.772589 - 0.9375, abs=1e-6)


def test_the_gates_features_match_the_metrics_on_any_resample():
    texts = ["Great film. I loved it!", "great film.  A bore.", "the plot is thin", "I loved it! Great film."]
    features = Features(texts, {})
    for idx in ([0, 1, 2, 3], [0, 0, 1], [3, 3, 3, 2], [2]):
        chosen = [texts[i] for i in idx]
        assert features.distinct_2(np.array(idx)) == pytest.approx(distinct_n(chosen, 2))
        assert features.top_sentence_share(np.array(idx)) == pytest.approx(top_sentence_share(chosen))
    # By hand: "great film." is in answers 0, 1 and 3 of the four.
    assert features.top_sentence_share(np.arange(4)) == 0.75


def test_choose_takes_the_best_admissible_point_within_the_budget():
    gated = [Gated(0.9, 0.5, False), Gated(0.6, 1.0, True), Gated(0.8, 3.0, True), Gated(0.6, 0.2, True)]
    assert choose(gated, 2.0) == 1  # the 0.9 fails the gate, the 0.8 is over budget; the first of equals
    assert choose(gated, 3.0) == 2
    assert choose(gated, 0.1) is None


def test_the_envelope_chooses_on_one_half_and_scores_on_the_other():
    """Prompts 0-1 and 2-3 are the halves. Within KL 2: choosing on the first half takes P1 (0.5 there), which
    scores 0.2 on the second; choosing on the second takes P2 (0.6), which scores 0.3 on the first: (0.2 + 0.3)
    / 2 = 0.25, below the 0.45 of the best point on all prompts (the winner's curse it guards against). The
    collapsed point (one sentence everywhere) would win on both halves but fails the gate, and so does the
    repetitive one (distinct-2 3/12 on each half against the base model's 1); P4 is over budget."""
    base = Features(unique_texts("base"), VOCABULARY)
    points = [
        point([0.9, 0.1, 0.2, 0.2], [1, 1, 1, 1], unique_texts("p1")),
        point([0.3, 0.3, 0.6, 0.6], [1, 1, 1, 1], unique_texts("p2")),
        point([1.0, 1.0, 1.0, 1.0], [0.5] * 4, ["Great film. Great film."] * 4),
        point([0.8, 0.8, 0.8, 0.8], [3, 3, 3, 3], unique_texts("p4")),
        # Every answer its own sentence (the top-sentence share passes), all repeating one bigram: distinct-2 fails.
        point([1.0, 1.0, 1.0, 1.0], [0.5] * 4, [f"good good good good good good x{i}." for i in range(4)]),
    ]
    rules = Rules(budgets=(0.4, 2.0, 4.0), max_top_sentence_share=0.5)  # with 2 answers a half, 1/2 is the least
    halves = (np.array([0, 1]), np.array([2, 3]))
    got = envelope(points, halves, base, rules)
    assert math.isnan(got[0.4])  # nothing admissible under 0.4 nats
    assert got[2.0] == pytest.approx(0.25)
    assert got[4.0] == pytest.approx(0.8)


def test_the_interval_is_bonferroni_corrected_and_writes_the_verdict():
    """Two comparisons at one budget: z = Phi^-1(1 - 0.05 / 4) = 2.2414. PLE's replicates 0.7, 0.9, 0.8, 0.8
    against x's constant 0.5: differences 0.2, 0.4, 0.3, 0.3 with standard deviation sqrt(0.02 / 3) = 0.08165,
    so 0.3 ± 0.1830."""
    rules = Rules(budgets=(1.0,))
    full = {"ple": {1.0: 0.8}, "x": {1.0: 0.5}, "y": {1.0: math.nan}}
    replicates = {
        "ple": [{1.0: v} for v in (0.7, 0.9, 0.8, 0.8)],
        "x": [{1.0: 0.5}] * 4,
        "y": [{1.0: math.nan}] * 4,
    }
    rows = compare(full, replicates, "ple", ["x", "y"], rules)
    x, y = rows
    assert x["z"] == pytest.approx(2.2414, abs=1e-4)
    assert x["se"] == pytest.approx(math.sqrt(0.02 / 3))
    assert (x["ci_low"], x["ci_high"]) == pytest.approx((0.3 - 0.1830, 0.3 + 0.1830), abs=1e-4)
    assert x["verdict"] == "PLE is ahead of x"
    assert y["verdict"] == "n/a (no admissible point: y)"
    behind = compare(
        {"ple": {1.0: 0.5}, "x": {1.0: 0.8}}, {"ple": replicates["x"], "x": replicates["ple"]}, "ple", ["x"], rules
    )
    assert behind[0]["verdict"] == "x is ahead of PLE"
    wide = compare(full, {"ple": [{1.0: v} for v in (0.2, 1.4, 0.8, 0.8)], "x": replicates["x"]}, "ple", ["x"], rules)
    assert wide[0]["verdict"] == "no difference detected"


def test_the_probe_appends_the_most_common_sentence_as_written():
    texts = ["I loved it!  So glad. Nice.", "so glad. Bad.", "Odd. So   glad."]
    assert most_common_sentence(texts) == ("So glad.", 1.0)
    assert probe_texts(["The plot is thin. ", ""], "So glad.") == ["The plot is thin. So glad.", "So glad."]


def test_bad_rules_are_one_line():
    assert rules_from({"budgets": [3, 0.5]}).budgets == (0.5, 3.0)
    wrong_level = {"budgets": [1], "family_error": 2}
    for bad in ({}, {"budgets": []}, {"budgets": [0]}, {"budgets": [1], "gate": 1}, wrong_level):
        with pytest.raises(PLEError, match="frontier"):
            rules_from(bad)


def test_the_family_error_level_is_read_under_its_old_name_alpha():
    """Compare files and frontier.json written before the rename say `alpha` (beside the config's tau decay,
    also `alpha`); they still load, to the same level."""
    assert rules_from({"budgets": [1], "alpha": 0.1}).family_error == 0.1
    assert rules_from({"budgets": [1]}).family_error == 0.05
    with pytest.raises(PLEError, match="0 < family_error < 1"):
        rules_from({"budgets": [1], "alpha": 2})
    with pytest.raises(PLEError, match="gives alpha and family_error; keep the second"):
        rules_from({"budgets": [1], "alpha": 0.05, "family_error": 0.1})
    for key in ("family_error", "resamples", "min_distinct_ratio"):
        with pytest.raises(PLEError, match=f"`frontier.{key}` must be a number, got '0.05'"):
            rules_from({"budgets": [1], key: "0.05"})


def test_the_bootstrap_resamples_prompts_jointly_for_every_method():
    """Two methods with the same points differ by exactly 0 in every replicate only if every method sees the same
    resampled prompts; their envelopes still vary from replicate to replicate. Answers that are all different pass
    the gate in every replicate, though a resample repeats some of them (the gate counts each prompt once)."""
    from ple.evaluation.frontier import bootstrap_envelopes, split_halves

    rng = np.random.default_rng(0)
    n = 200
    base = Features([f"b{i}a b{i}b b{i}c." for i in range(n)], VOCABULARY)
    judge = rng.random(n)
    texts = [f"t{i}a t{i}b t{i}c." for i in range(n)]
    same = {m: [point(judge, np.full(n, 0.3), texts, method=m)] for m in ("ple", "x")}
    rules = Rules(budgets=(1.0,), resamples=100)
    replicates = bootstrap_envelopes(same, base, split_halves(n, 0), rules)
    ple, x = ([r[1.0] for r in replicates[m]] for m in ("ple", "x"))
    assert ple == x
    assert not np.isnan(ple).any() and np.std(ple) > 0.005
    a, b = split_halves(n, 0)
    assert len(a) == len(b) == 100 and not set(a) & set(b)
