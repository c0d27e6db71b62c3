"""What a comparison grid says about its reference method (PLE unless the compare file names another) against
each other method: the difference in held-out score with an interval over seeds and prompts, and a verdict line
written from that interval, never by hand."""

import math

from ple.methods import claimed_baselines

AHEAD, BEHIND, NO_DIFFERENCE = (
    "{ref} is ahead of {x}",
    "{x} is ahead of {ref}",
    "no difference detected between {ref} and {x}",
)
FRONTIER_NO_DIFFERENCE = "no difference detected"  # a frontier table's cell, whose row names the method
# The demo's bar: a judge gain bought with a larger relative fall in distinct-2 is flagged next to the verdict.
DIVERSITY_FALL_LIMIT = 0.10


def display(method: str) -> str:
    """A method as the verdicts and tables name it."""
    return "PLE" if method == "ple" else method


def verdict(reference: str, method: str, difference: dict[str, float], no_difference: str = NO_DIFFERENCE) -> str:
    """The line an interval of `reference` minus `method` writes (`no_difference` where it holds 0)."""
    names = {"ref": display(reference), "x": display(method)}
    if difference["ci_low"] > 0:
        return AHEAD.format(**names)
    if difference["ci_high"] < 0:
        return BEHIND.format(**names)
    return no_difference.format(**names)


def claim_sentence(differences: dict[str, dict[str, float]], reference: str = "ple") -> str:
    """One sentence on the paper's claim, from `reference`'s verdicts against the baselines it names."""
    claimed = claimed_baselines()  # the paper's claim: PLE beats SFT, DPO, PPO-family RL and RAFT
    ref = display(reference)
    named = [m for m in claimed if m in differences]
    if not named:
        return f"The grid holds none of the baselines the paper's claim names ({', '.join(claimed)})."
    ahead = [m for m in named if differences[m]["ci_low"] > 0]
    behind = [m for m in named if differences[m]["ci_high"] < 0]
    if behind:
        return (
            f"The paper's claim does not hold on this task at this scale: {', '.join(behind)} "
            f"{'is' if len(behind) == 1 else 'are'} ahead of {ref}."
        )
    if len(ahead) == len(named):
        return f"The paper's claim holds on this task at this scale: {ref} is ahead of {', '.join(named)}."
    undecided = [m for m in named if m not in ahead]
    return (
        f"The paper's claim is not shown on this task at this scale: no difference was detected between {ref} and "
        f"{', '.join(undecided)}."
    )


def diversity_sentence(base_distinct_2: float, distinct_2: dict[str, float]) -> str:
    """The methods whose mean distinct-2 fell by more than DIVERSITY_FALL_LIMIT of the base model's: a held-out
    judge does not score variety, so the verdict lines alone cannot show a gain that came from repetition."""
    if not base_distinct_2 > 0:  # one-token answers (max_new_tokens 1) have no bigrams to lose
        return f"The base model's distinct-2 is {base_distinct_2:.3f}, so no fall in diversity can be measured."
    falls = {m: 1 - d / base_distinct_2 for m, d in distinct_2.items()}
    flagged = [m for m, fall in falls.items() if fall > DIVERSITY_FALL_LIMIT]
    limit = f"{DIVERSITY_FALL_LIMIT:.0%}"
    if not flagged:
        return f"No method's distinct-2 fell by more than {limit} of the base model's ({base_distinct_2:.3f})."
    shown = ", ".join(f"{m} ({distinct_2[m]:.3f}, -{falls[m]:.0%})" for m in flagged)
    return (
        f"The verdict reads the held-out judge only, which does not score variety: distinct-2 fell by more "
        f"than {limit} of the base model's {base_distinct_2:.3f} for {shown}."
    )


def frontier_verdict(reference: str, other: str, low: float, high: float, ref_envelope: float, envelope: float) -> str:
    """The frontier's line for `reference` minus `other` at one budget, from its interval [low, high] and the two
    envelopes (nan: no admissible point within the budget)."""
    missing = [display(m) for m, e in ((reference, ref_envelope), (other, envelope)) if math.isnan(e)]
    if missing:
        return f"n/a (no admissible point: {' and '.join(missing)})"
    if math.isnan(low) or math.isnan(high):
        return "n/a (no interval: too few defined resamples)"
    return verdict(reference, other, {"ci_low": low, "ci_high": high}, FRONTIER_NO_DIFFERENCE)


def frontier_claim(rows, reference: str, rules) -> str:
    """One sentence from the frontier's verdict lines (`rows`, one per method and budget), whichever way they go;
    `rules` are the frontier's (ple.evaluation.frontier.Rules)."""
    ref = display(reference)
    parts = []
    for budget in rules.budgets:
        mine = [r for r in rows if r["budget"] == budget]
        name = lambda r: display(r["method"])  # noqa: E731
        ahead = [name(r) for r in mine if r["verdict"] == AHEAD.format(ref=ref, x=name(r))]
        behind = [name(r) for r in mine if r["verdict"] == BEHIND.format(ref=ref, x=name(r))]
        na = [name(r) for r in mine if r["verdict"].startswith("n/a")]
        same = [name(r) for r in mine if r["verdict"] == FRONTIER_NO_DIFFERENCE]
        if na and len(na) == len(mine):
            parts.append(f"at KL <= {budget:g} nats nothing can be compared ({_names(na)} n/a)")
            continue
        bits = []
        if ahead:
            bits.append(f"ahead of {_names(ahead)}")
        if behind:
            bits.append(f"behind {_names(behind)}")
        if same:
            bits.append(f"not detectably different from {_names(same)}")
        if na:
            bits.append(f"n/a against {_names(na)}")
        parts.append(f"at KL <= {budget:g} nats {ref} is " + "; ".join(bits))
    gate_text = (
        f"distinct-2 at least {rules.min_distinct_ratio:g} x the base model's and a top-sentence share at most "
        f"{rules.max_top_sentence_share:.0%}"
    )
    return (
        f"On the held-out judge, at matched KL to the base model with diversity gated ({gate_text}), "
        f"{'; '.join(parts)} (Bonferroni-corrected {1 - rules.family_error:.0%} intervals over {len(rows)} "
        "comparisons)."
    )


def _names(names) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
