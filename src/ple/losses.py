"""PLE's losses and branch rule: small pure functions on tensors and floats (the log-probabilities they take
come from ple.logprobs).

Notation (docs/algorithm.md): l(y|x) is the mean per-token log-probability of y given x,
L(y|x) the summed token NLL. Everything is conditioned on the plain query x.
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
AUTO_TEMPERATURE_FLOOR = 1e-6
Branch = Literal["rank", "wsft", "skip"]


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of the labelled tokens of each sequence, and their count.

    `labels` is aligned with the input ids and holds IGNORE_INDEX on prompt and
    padding positions, so only response tokens count. Token t is predicted by the
    logits at t-1.

    Returns (sum_logp [B], n_tokens [B]); l(y|x) = sum_logp / n_tokens, L(y|x) = -sum_logp.
    """
    logits, labels = logits[:, :-1], labels[:, 1:]
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(labels.shape)
    mask = labels != IGNORE_INDEX
    return -(nll * mask).sum(-1), mask.sum(-1)


def rank_loss(
    logp_winner: torch.Tensor,
    logp_loser: torch.Tensor,
    kind: Literal["hinge", "logistic"] = "hinge",
    margin: float = 0.0,
    rank_beta: float = 2.0,
) -> torch.Tensor:
    """Ranking loss on mean token log-probs l(w|x), l(l|x), one value per pair.

    hinge:    max(0, margin - (l(w|x) - l(l|x)))     (margin = 0 is RRHF's form)
    logistic: -log sigmoid(rank_beta * (l(w|x) - l(l|x)))
    """
    diff = logp_winner - logp_loser
    if kind == "hinge":
        return torch.clamp(margin - diff, min=0.0)
    if kind == "logistic":
        return -F.logsigmoid(rank_beta * diff)
    raise ValueError(f"unknown rank loss {kind!r}")


def wsft_temperature(setting: float | str, tau: float) -> float:
    """The softmax temperature of the weighted-SFT weights at threshold tau.

    `auto` is tau itself, so a gap of exactly tau weighs sigmoid(1) = 0.73 against 0.27: the weights
    carry the reward gap on the scale at which the branch rule reads it. (With a fixed temperature of 1,
    gaps within tau <= 0.2 keep both weights in 0.45-0.55, plain SFT in disguise.) A tau that is not a
    positive number (0, or RLCD's -inf) would divide by zero, so it is floored at AUTO_TEMPERATURE_FLOOR:
    the weights then all but pick the better answer. A number fixes the temperature.
    """
    if setting != "auto":
        return float(setting)
    return max(tau, AUTO_TEMPERATURE_FLOOR)


def sft_weights(
    reward_guided: torch.Tensor, reward_plain: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """w_p, w = softmax([s_p, s] / temperature), per pair."""
    weights = torch.softmax(torch.stack([reward_guided, reward_plain], -1) / temperature, -1)
    return weights[..., 0], weights[..., 1]


def weighted_sft_loss(
    nll_guided: torch.Tensor,
    n_guided: torch.Tensor,
    nll_plain: torch.Tensor,
    n_plain: torch.Tensor,
    w_guided: torch.Tensor,
    w_plain: torch.Tensor,
) -> torch.Tensor:
    """Reward-weighted SFT on both responses, one value per pair.

    (w_p * L(y_p|x) + w * L(y|x)) / (w_p * |y_p| + w * |y|)

    i.e. the mean token NLL of the pair with each token weighted by its response's
    weight. With weights (1, 0) it is plain SFT on y_p (context distillation).
    """
    tokens = (w_guided * n_guided + w_plain * n_plain).clamp(min=1e-8)
    return (w_guided * nll_guided + w_plain * nll_plain) / tokens


def ple_loss(
    sum_logp_guided: torch.Tensor,
    n_guided: torch.Tensor,
    sum_logp_plain: torch.Tensor,
    n_plain: torch.Tensor,
    reward_guided: torch.Tensor,
    reward_plain: torch.Tensor,
    is_rank: torch.Tensor,
    guided_wins: torch.Tensor,
    *,
    rank_kind: Literal["hinge", "logistic"] = "hinge",
    margin: float = 0.0,
    rank_beta: float = 2.0,
    rank_coef: float = 1.0,
    sft_coef: float = 1.0,
    rank_sft_coef: float = 0.0,
    temperature: float = 1.0,
    all_weight_on_guided: bool = False,
) -> dict[str, torch.Tensor]:
    """PLE's per-query loss, every term conditioned on the plain query x. All inputs are [B].

    sum_logp_* and n_* are log p(y_p|x), |y_p| and log p(y|x), |y|; reward_* are s_p and s;
    is_rank marks the ranked queries and guided_wins their winner (y_p, or y in the symmetric variant).

        l_p = sum_logp_guided / n_guided,  l = sum_logp_plain / n_plain      (mean token log-probs)
        rank:  rank_coef * (rank_loss(l_w, l_l) - rank_sft_coef * l_w)       (w, l) = winner, loser
        wsft:  sft_coef * (w_p L(y_p|x) + w L(y|x)) / (w_p |y_p| + w |y|)   (w_p, w) = softmax([s_p, s] / T)

    all_weight_on_guided fixes (w_p, w) = (1, 0). Returns "loss" [B], the term each query's branch takes,
    and "rank_loss", "wsft_loss" [B], the uncoefficiented terms, NaN where the query is in the other branch.
    """
    n_guided, n_plain = n_guided.clamp(min=1), n_plain.clamp(min=1)
    mean_guided, mean_plain = sum_logp_guided / n_guided, sum_logp_plain / n_plain
    mean_winner = torch.where(guided_wins, mean_guided, mean_plain)
    mean_loser = torch.where(guided_wins, mean_plain, mean_guided)
    rank_term = rank_loss(mean_winner, mean_loser, rank_kind, margin, rank_beta) - rank_sft_coef * mean_winner

    if all_weight_on_guided:
        w_guided, w_plain = torch.ones_like(mean_guided), torch.zeros_like(mean_plain)
    else:
        # In the rewards' own precision (float64 from the trainer), so that a huge reward gives weights (1, 0).
        w_guided, w_plain = (w.to(mean_guided.dtype) for w in sft_weights(reward_guided, reward_plain, temperature))
    wsft_term = weighted_sft_loss(-sum_logp_guided, n_guided, -sum_logp_plain, n_plain, w_guided, w_plain)

    nan = torch.full_like(rank_term, float("nan"))
    return {
        "loss": torch.where(is_rank, rank_coef * rank_term, sft_coef * wsft_term),
        "rank_loss": torch.where(is_rank, rank_term, nan),
        "wsft_loss": torch.where(is_rank, nan, wsft_term),
    }


def assign_branch(
    gap: float | None, tau: float, negative_gap: Literal["rank", "wsft", "skip"] = "wsft"
) -> tuple[Branch, str | None]:
    """Branch of one query and, for a ranked pair, its winner ("guided" or "plain").

    The paper's Lemma 5.2 is one-sided: only a clear win of the guided answer is ranked.
    gap > tau: rank y_p over y.   otherwise: weighted SFT, whose reward weights favour the better answer.
    `negative_gap` changes only gap < -tau: wsft (the default, the paper's rule), rank y over y_p
    (the symmetric variant), or skip. A missing or non-finite gap is skipped.
    tau = -inf ranks every finite gap (RLCD).
    """
    if gap is None or not math.isfinite(gap):
        return "skip", None
    if gap > tau:
        return "rank", "guided"
    if gap >= -tau:
        return "wsft", None
    if negative_gap == "rank":
        return "rank", "plain"
    if negative_gap == "wsft":
        return "wsft", None
    return "skip", None
