import math

import pytest
import torch

from ple.losses import (
    IGNORE_INDEX,
    assign_branch,
    ple_loss,
    rank_loss,
    sequence_logprobs,
    sft_weights,
    weighted_sft_loss,
    wsft_temperature,
)


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
    assert rank_loss(winner, loser, "logistic", rank_beta=2.0).item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_rank_loss_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown rank loss 'bogus'"):
        rank_loss(torch.zeros(1), torch.zeros(1), "bogus")


def test_loss_defaults_are_the_documented_ones():
    winner, loser = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert rank_loss(winner, loser).tolist() == pytest.approx([0.0, 1.0])  # hinge, margin 0
    assert rank_loss(winner, loser, "logistic").tolist() == pytest.approx(
        [math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(2.0))]  # beta 2
    )
    w_p, _ = sft_weights(torch.tensor([1.0]), torch.tensor([0.0]))
    assert w_p.item() == pytest.approx(math.e / (1 + math.e))  # temperature 1
    # l_p = -2 / 2 = -1 and l = -4.5 / 3 = -1.5 (d = 0.5); s_p = 1, s = 0.
    pair = [torch.tensor([v]) for v in (-2.0, 2, -4.5, 3, 1.0, 0.0)]
    ranked, guided_wins = torch.tensor([True]), torch.tensor([True])
    assert ple_loss(*pair, ranked, guided_wins)["loss"].item() == 0.0  # hinge, margin 0
    logistic = ple_loss(*pair, ranked, guided_wins, rank_kind="logistic")["loss"].item()
    assert logistic == pytest.approx(math.log(1 + math.exp(-1.0)))  # beta 2
    w_p = math.e / (1 + math.e)  # temperature 1
    wsft = ple_loss(*pair, torch.tensor([False]), guided_wins)["loss"].item()
    assert wsft == pytest.approx((w_p * 2 + (1 - w_p) * 4.5) / (w_p * 2 + (1 - w_p) * 3))


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
        (0.5, "wsft", ("rank", "guided")),
        (-0.5, "wsft", ("wsft", None)),  # the default is one-sided: a clear win of y is not ranked
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


def test_the_default_branch_rule_is_one_sided():
    assert assign_branch(-0.5, 0.2) == ("wsft", None)
    assert assign_branch(0.5, 0.2) == ("rank", "guided")


def test_auto_temperature_is_tau_so_a_gap_at_the_threshold_weighs_sigmoid_one():
    assert wsft_temperature("auto", 0.18) == 0.18
    assert wsft_temperature(0.7, 0.18) == 0.7
    w_p, w = sft_weights(torch.tensor([0.3 + 0.18]), torch.tensor([0.3]), wsft_temperature("auto", 0.18))
    assert w_p.item() == pytest.approx(1 / (1 + math.exp(-1))) and w.item() == pytest.approx(1 / (1 + math.e))
    # tau = 0 or RLCD's -inf is floored to a tiny positive temperature: finite weights that pick the better answer.
    for tau in (0.0, -math.inf):
        w_p, w = sft_weights(torch.tensor([0.2]), torch.tensor([0.1]), wsft_temperature("auto", tau))
        assert w_p.item() == pytest.approx(1.0) and w.item() == pytest.approx(0.0)
    w_p, w = sft_weights(torch.tensor([0.2]), torch.tensor([0.1]), wsft_temperature("auto", math.inf))
    assert w_p.item() == w.item() == 0.5


def test_ple_loss_by_hand():
    # Two queries. log p(y_p|x) = -2 over 2 tokens, log p(y|x) = -6 over 3 tokens (l_p = -1, l = -2), and the
    # reverse for the second. Query 0 is ranked (y_p wins), query 1 is in weighted SFT with s_p = 0.1, s = 0.4.
    sum_p, n_p = torch.tensor([-2.0, -6.0]), torch.tensor([2, 3])
    sum_y, n_y = torch.tensor([-6.0, -2.0]), torch.tensor([3, 2])
    s_p64, s64 = torch.tensor([0.9, 0.1], dtype=torch.float64), torch.tensor([0.1, 0.4], dtype=torch.float64)
    out = ple_loss(sum_p, n_p, sum_y, n_y, s_p64, s64, torch.tensor([False, False]), torch.tensor([True, False]))
    assert out["loss"].dtype == torch.float32  # float64 rewards weigh float32 log-probs without upcasting them
    s_p, s = torch.tensor([0.9, 0.1]), torch.tensor([0.1, 0.4])
    is_rank, guided_wins = torch.tensor([True, False]), torch.tensor([True, False])
    out = ple_loss(sum_p, n_p, sum_y, n_y, s_p, s, is_rank, guided_wins, margin=1.5, temperature=0.2, rank_coef=2.0)
    # rank: 2 * max(0, 1.5 - (-1 - -2)) = 1.0
    assert out["rank_loss"][0].item() == pytest.approx(0.5)
    # wsft: w_p = 1 / (1 + e^((0.4 - 0.1) / 0.2)), loss = (w_p * 6 + w * 2) / (w_p * 3 + w * 2)
    w_p = 1 / (1 + math.exp(1.5))
    wsft = (w_p * 6 + (1 - w_p) * 2) / (w_p * 3 + (1 - w_p) * 2)
    assert out["wsft_loss"][1].item() == pytest.approx(wsft)
    assert out["loss"].tolist() == pytest.approx([1.0, wsft])
    assert math.isnan(out["rank_loss"][1].item()) and math.isnan(out["wsft_loss"][0].item())

    # The symmetric variant's winner is y; logistic loss with an extra NLL on the winner; all weight on y_p.
    # One-token responses: l = log p itself, nothing clamped away.
    out = ple_loss(
        torch.tensor([-3.0]),
        torch.tensor([1]),
        torch.tensor([-0.5]),
        torch.tensor([1]),
        torch.tensor([0.1]),
        torch.tensor([0.4]),
        torch.tensor([True]),
        torch.tensor([False]),
        rank_kind="logistic",
        rank_beta=3.0,
        rank_sft_coef=0.5,
    )
    # winner y (l = -0.5), loser y_p (l = -3): -log sigmoid(3 * 2.5) - 0.5 * -0.5
    assert out["loss"].item() == pytest.approx(math.log(1 + math.exp(-7.5)) + 0.25)
    out = ple_loss(sum_p, n_p, sum_y, n_y, s_p, s, torch.tensor([False, False]), guided_wins, all_weight_on_guided=True)
    assert out["loss"].tolist() == pytest.approx([1.0, 2.0])  # the mean token NLL of y_p
