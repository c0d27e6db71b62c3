import math

import pytest
import torch

from ple.losses import IGNORE_INDEX, assign_branch, rank_loss, sequence_logprobs, sft_weights, weighted_sft_loss


def test_sequence_logprobs_counts_only_response_tokens():
    # Vocabulary of 3. Logits at t predict token t+1.
    logits = torch.zeros(2, 4, 3)
    logits[0, 1] = torch.tensor([0.0, math.log(2.0), 0.0])  # p(token 1) = 2/4 at position 2
    labels = torch.tensor(
        [
            [IGNORE_INDEX, IGNORE_INDEX, 1, 2],  # 2-token prompt, 2-token response
            [IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX],  # 1-token prompt, 1 response token, 2 padding
        ]
    )
    sum_logp, n = sequence_logprobs(logits, labels)
    assert n.tolist() == [2, 1]
    assert sum_logp[0].item() == pytest.approx(math.log(0.5) + math.log(1 / 3))
    assert sum_logp[1].item() == pytest.approx(math.log(1 / 3))


def test_sequence_logprobs_ignores_prompt_and_padding_logits():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, IGNORE_INDEX]])
    base = torch.zeros(1, 4, 3)
    changed = base.clone()
    changed[0, 0] = torch.tensor([9.0, -9.0, 3.0])  # predicts a prompt token
    changed[0, 2] = torch.tensor([5.0, 1.0, -2.0])  # predicts a padding token
    changed[0, 3] = torch.tensor([1.0, 2.0, 3.0])  # after the last token
    assert torch.allclose(sequence_logprobs(base, labels)[0], sequence_logprobs(changed, labels)[0])


def test_length_normalisation_makes_mean_logprob_length_free():
    # Two responses with the same per-token probability but different lengths have equal l(y|x).
    logits = torch.zeros(2, 6, 4)
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 1:3] = 1
    labels[1, 1:6] = 1
    sum_logp, n = sequence_logprobs(logits, labels)
    mean = sum_logp / n
    assert n.tolist() == [2, 5]
    assert mean[0].item() == pytest.approx(mean[1].item()) == pytest.approx(math.log(0.25))


def test_hinge_rank_loss_by_hand():
    winner, loser = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert rank_loss(winner, loser, "hinge", margin=0.0).tolist() == pytest.approx([0.0, 1.0])
    assert rank_loss(winner, loser, "hinge", margin=1.0).tolist() == pytest.approx([0.5, 2.0])


def test_logistic_rank_loss_by_hand():
    winner, loser = torch.tensor([-1.0]), torch.tensor([-1.5])
    # -log sigmoid(2 * 0.5) = log(1 + e^-1)
    assert rank_loss(winner, loser, "logistic", beta=2.0).item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_rank_loss_rejects_unknown_kind():
    with pytest.raises(ValueError):
        rank_loss(torch.zeros(1), torch.zeros(1), "bogus")


def test_sft_weights_softmax_with_temperature():
    w_p, w = sft_weights(torch.tensor([1.0]), torch.tensor([0.0]), temperature=1.0)
    assert w_p.item() == pytest.approx(math.e / (1 + math.e))
    assert (w_p + w).item() == pytest.approx(1.0)
    w_p, _ = sft_weights(torch.tensor([1.0]), torch.tensor([0.0]), temperature=0.5)
    assert w_p.item() == pytest.approx(math.e**2 / (1 + math.e**2))


def test_weighted_sft_loss_by_hand():
    # y_p: 3 tokens, summed NLL 6; y: 1 token, NLL 2; weights 0.75 / 0.25.
    loss = weighted_sft_loss(
        torch.tensor([6.0]),
        torch.tensor([3]),
        torch.tensor([2.0]),
        torch.tensor([1]),
        torch.tensor([0.75]),
        torch.tensor([0.25]),
    )
    assert loss.item() == pytest.approx((0.75 * 6 + 0.25 * 2) / (0.75 * 3 + 0.25 * 1))
    only_guided = weighted_sft_loss(
        torch.tensor([6.0]),
        torch.tensor([3]),
        torch.tensor([2.0]),
        torch.tensor([1]),
        torch.tensor([1.0]),
        torch.tensor([0.0]),
    )
    assert only_guided.item() == pytest.approx(2.0)  # mean token NLL of y_p: context distillation


@pytest.mark.parametrize(
    "gap, negative_gap, expected",
    [
        (0.5, "rank", ("rank", "guided")),
        (0.2, "rank", ("wsft", None)),  # |gap| <= tau is a tie
        (0.0, "rank", ("wsft", None)),
        (-0.2, "rank", ("wsft", None)),
        (-0.5, "rank", ("rank", "plain")),
        (-0.5, "wsft", ("wsft", None)),
        (-0.5, "skip", ("skip", None)),
        (None, "rank", ("skip", None)),
        (float("nan"), "rank", ("skip", None)),
        (float("inf"), "rank", ("skip", None)),
    ],
)
def test_assign_branch(gap, negative_gap, expected):
    assert assign_branch(gap, 0.2, negative_gap) == expected


def test_minus_infinite_tau_ranks_every_finite_gap():
    for gap in (-5.0, 0.0, 3.0):
        assert assign_branch(gap, -math.inf) == ("rank", "guided")
    assert assign_branch(float("nan"), -math.inf) == ("skip", None)


def test_infinite_tau_sends_everything_to_wsft():
    for gap in (-5.0, 0.0, 3.0):
        assert assign_branch(gap, math.inf) == ("wsft", None)
