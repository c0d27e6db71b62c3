import pytest
import torch
import yaml
from conftest import tiny_config

from ple.logprobs import response_logprobs
from ple.losses import IGNORE_INDEX, sequence_logprobs
from ple.model import load_causal_lm


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


def test_merged_lora_gives_the_adapted_model_and_restores_the_base_bit_for_bit(tiny_chat_model):
    from peft import LoraConfig, get_peft_model

    from ple.model import load_causal_lm, merged_lora

    torch.manual_seed(0)
    model = get_peft_model(load_causal_lm(tiny_chat_model), LoraConfig(r=4, target_modules="all-linear")).eval()
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; a trained adapter does not
            param.data.normal_(0, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    adapted = model(input_ids=ids).logits
    with model.disable_adapter():
        assert not torch.allclose(model(input_ids=ids).logits, adapted, atol=1e-3)  # the adapter matters
    with merged_lora(model) as merged:
        assert all(layer.disable_adapters for layer in merged.modules() if hasattr(layer, "merged_adapters"))
        merged_logits = merged(input_ids=ids).logits
        base_changed = [n for n, p in merged.named_parameters() if "base_layer" in n and not torch.equal(p, before[n])]
    assert torch.allclose(merged_logits, adapted, atol=1e-5)
    assert base_changed  # the adapter really was folded in
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not any(layer.disable_adapters for layer in model.modules() if hasattr(layer, "merged_adapters"))
    assert torch.equal(model(input_ids=ids).logits, adapted)  # the adapter is back in the forward


def test_an_adapter_loads_merged_in_fp32_and_separate_in_bf16(tmp_path, tiny_chat_model):
    from peft import LoraConfig, PeftModel, get_peft_model

    from ple.model import load_causal_lm

    torch.manual_seed(0)
    adapted = get_peft_model(load_causal_lm(tiny_chat_model), LoraConfig(r=4, target_modules="all-linear")).eval()
    for name, param in adapted.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    adapted.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
        merged = load_causal_lm(str(tmp_path / "adapter")).eval()
        assert not isinstance(merged, PeftModel)
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
    assert isinstance(load_causal_lm(str(tmp_path / "adapter"), "bfloat16"), PeftModel)


def test_shared_prompt_logprobs_and_gradients_equal_separate_sequences(tiny_chat_model):
    from peft import LoraConfig, get_peft_model

    from ple.logprobs import shared_prompt_logprobs
    from ple.model import load_causal_lm

    torch.manual_seed(0)
    model = get_peft_model(load_causal_lm(tiny_chat_model), LoraConfig(r=4, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    prompts = [[5, 6, 7], [10], [5, 6, 7, 8, 9, 10]]
    guided = [[8, 9], [11, 12, 13, 14], [11]]
    plain = [[20, 21, 22], [23], [24, 25]]

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    separate, n_separate = response_logprobs(model, list(zip(prompts + prompts, guided + plain)), pad_id=0)
    separate_grads = grads((separate * torch.arange(1.0, 7.0)).sum())
    shared, n_shared = shared_prompt_logprobs(model, prompts, [guided, plain], pad_id=0)
    shared_grads = grads((shared * torch.arange(1.0, 7.0)).sum())
    assert n_shared.tolist() == n_separate.tolist() == [2, 4, 1, 3, 1, 2]
    assert torch.allclose(shared, separate, atol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(shared_grads, separate_grads))
    assert any(g.abs().sum() > 0 for g in shared_grads)


def test_gradient_checkpointing_gives_the_shared_prompt_logprobs_and_gradients_without_it(tiny_chat_model):
    """Checkpointed layers drop a KV cache, so the shared-prompt forward must run each pair as its own sequence
    there; values and gradients equal those of the uncheckpointed shared forward."""
    from peft import LoraConfig, get_peft_model

    from ple.logprobs import shared_prompt_logprobs
    from ple.model import load_causal_lm

    torch.manual_seed(0)
    model = get_peft_model(load_causal_lm(tiny_chat_model), LoraConfig(r=4, target_modules="all-linear")).train()
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    prompts, guided, plain = [[5, 6, 7], [10], [5, 6, 7, 8]], [[8, 9], [11, 12, 13], [11]], [[20, 21], [23], [24]]
    weights = torch.arange(1.0, 7.0)
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad()
        logp, _ = shared_prompt_logprobs(model, prompts, [guided, plain], pad_id=0)
        (logp * weights).sum().backward()
        results.append((logp.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (plain_logp, plain_grads), (checkpointed_logp, checkpointed_grads) = results
    assert torch.allclose(checkpointed_logp, plain_logp, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(checkpointed_grads, plain_grads))
    assert any(g.abs().sum() > 0 for g in checkpointed_grads)


def test_dtype_auto_and_the_attention_setting(tiny_chat_model, monkeypatch):
    from ple.errors import PLEError
    from ple.model import load_causal_lm, resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) == "float32"
    assert resolve_dtype("bfloat16", torch.device("cpu")) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "an old GPU")
    for supported, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert resolve_dtype("auto", torch.device("cuda")) == expected
        assert resolve_dtype("float32", torch.device("cuda")) == "float32"
    with pytest.raises(PLEError, match="dtype=bfloat16, but an old GPU has no bf16; use auto or float32"):
        resolve_dtype("bfloat16", torch.device("cuda"))
    assert load_causal_lm(tiny_chat_model, attn_implementation="eager").config._attn_implementation == "eager"


def test_a_process_with_no_prompts_samples_nothing(tiny_chat_model):
    """More processes than queries leaves one with no prompts; it still takes part, with empty results."""
    from ple.generation import generate
    from ple.model import load_causal_lm, load_tokenizer
    from ple.principles import PromptBuilder

    tokenizer = load_tokenizer(tiny_chat_model)
    assert PromptBuilder(tokenizer, "be kind").encode([], True, 16) == ([], 0)
    assert generate(load_causal_lm(tiny_chat_model), tokenizer, [], max_new_tokens=4) == []


def test_a_bf16_full_fine_tuning_saves_its_final_model_in_bf16(tmp_path, tiny_chat_model, queries_file, reward_module):
    """The weights train in fp32 (master weights) under bf16 compute; final/ holds them rounded to bf16, with a
    config that says so, and the checkpoints keep fp32 for resuming."""
    import json

    from safetensors.torch import load_file

    from ple.cli import main

    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    settings = dict(use_lora=False, dtype="bfloat16", learning_rate=1e-3, keep_checkpoints=0)
    config.write_text(
        yaml.safe_dump(tiny_config(tiny_chat_model, queries_file, out, f"{reward_module}:positivity", **settings))
    )
    assert main(["train", "--config", str(config)]) == 0
    final = load_file(out / "final" / "model.safetensors")
    master = load_file(out / "checkpoints" / "iter_001" / "model.safetensors")
    assert final.keys() == master.keys() and {v.dtype for v in master.values()} == {torch.float32}
    for key, value in master.items():
        assert torch.equal(final[key], value.to(torch.bfloat16)), key
    assert json.loads((out / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_causal_lm(str(out / "final"), "bfloat16").dtype == torch.bfloat16
