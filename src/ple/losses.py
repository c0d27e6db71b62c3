"""PLE's losses and branch rule: small pure functions on tensors and floats.

Notation (PLE-SPEC): l(y|x) is the mean per-token log-probability of y given x,
L(y|x) the summed token NLL. Everything is conditioned on the plain query x.
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
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
    beta: float = 2.0,
) -> torch.Tensor:
    """Ranking loss on mean token log-probs l(w|x), l(l|x), one value per pair.

    hinge:    max(0, margin - (l(w|x) - l(l|x)))     (margin = 0 is RRHF's form)
    logistic: -log sigmoid(beta * (l(w|x) - l(l|x)))
    """
    diff = logp_winner - logp_loser
    if kind == "hinge":
        return torch.clamp(margin - diff, min=0.0)
    if kind == "logistic":
        return -F.logsigmoid(beta * diff)
    raise ValueError(f"unknown rank loss {kind!r}")


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


def assign_branch(
    gap: float | None, tau: float, negative_gap: Literal["rank", "wsft", "skip"] = "rank"
) -> tuple[Branch, str | None]:
    """Branch of one query and, for a ranked pair, its winner ("guided" or "plain").

    gap > tau: rank y_p over y.   |gap| <= tau: weighted SFT.
    gap < -tau: `negative_gap` decides (rank y over y_p, wsft, or skip).
    A missing or non-finite gap is skipped. tau = -inf ranks every finite gap (RLCD).
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
