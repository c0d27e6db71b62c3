import torch

from ple.losses import IGNORE_INDEX, sequence_logprobs
from ple.model import response_logprobs


def test_left_padded_response_logprobs_equal_a_plain_forward_per_sequence(tiny_chat_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model).eval()
    batch = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14]), ([5, 6, 7, 8, 9, 10], [11])]
    with torch.no_grad():
        sum_logp, n = response_logprobs(model, batch, pad_id=0)
        for i, (prompt, response) in enumerate(batch):  # one unpadded sequence at a time, all logits
            ids = torch.tensor([prompt + response])
            labels = torch.full_like(ids, IGNORE_INDEX)
            labels[0, len(prompt) :] = torch.tensor(response)
            expected, count = sequence_logprobs(model(input_ids=ids).logits, labels)
            assert n[i].item() == count.item() == len(response)
            assert torch.allclose(sum_logp[i], expected[0], atol=1e-5)
