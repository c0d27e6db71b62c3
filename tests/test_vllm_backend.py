"""The vLLM backend without a GPU: backend selection, weight names and merging, and when weights are pushed.

A fake `vllm` module stands in for the engine: it records every weight pushed and answers each prompt
with a fixed response, so the trainer's bookkeeping can be checked on the CPU.
"""

import sys
import types

import pytest
import torch
from conftest import tiny_config

from ple import vllm_backend
from ple.config import load_config
from ple.errors import PLEError
from ple.trainer import PLETrainer


class FakeEngineModel:
    def __init__(self):
        self.loading = {}

    def load_weights(self, weights):
        for name, tensor in weights:
            self.loading[name] = tensor.detach().clone()


class FakeLLM:
    instances: list["FakeLLM"] = []

    def __init__(self, model, **kwargs):
        self.model, self.kwargs, self.pushed, self.requests = model, kwargs, [], []
        self.engine = engine = FakeEngineModel()
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(
                driver_worker=types.SimpleNamespace(model_runner=types.SimpleNamespace(model=engine))
            )
        )
        FakeLLM.instances.append(self)

    def reset_prefix_cache(self):  # called once after each push: the pushed weights form one snapshot
        self.pushed.append(self.engine.loading)
        self.engine.loading = {}

    def generate(self, prompts, params, use_tqdm=True):
        self.requests.append((prompts, params))
        eos = self.kwargs["eos"]
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=[5, 6, eos])]) for _ in prompts]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: kw
    module.__spec__ = types.SimpleNamespace(name="vllm")
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    FakeLLM.instances.clear()
    return module


def test_backend_selection(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: False)
    assert vllm_backend.select_backend("auto", cuda) == "transformers"
    with pytest.raises(PLEError, match="vllm is not installed"):
        vllm_backend.select_backend("vllm", cuda)
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    assert vllm_backend.select_backend("auto", cuda) == "vllm"
    assert vllm_backend.select_backend("auto", cpu) == "transformers"
    assert vllm_backend.select_backend("transformers", cuda) == "transformers"
    with pytest.raises(PLEError, match="needs a CUDA device"):
        vllm_backend.select_backend("vllm", cpu)


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


def test_trainer_pushes_weights_once_per_change(
    tmp_path, tiny_chat_model, queries_file, reward_module, fake_vllm, monkeypatch
):
    monkeypatch.setattr("ple.training.policy.select_backend", lambda name, device: "vllm")
    config = load_config(
        overrides=tiny_config(
            tiny_chat_model, queries_file, tmp_path / "run", f"{reward_module}:positivity", generation_backend="vllm"
        )
    )
    monkeypatch.setattr(FakeLLM, "__init__", _init_with_eos(trainer_tokenizer_eos(tiny_chat_model)))
    trainer = PLETrainer(args=config)  # starts the engine
    original_generate = vllm_backend.VLLMGenerator.generate
    versions = []

    def generate(self, *args):
        versions.append((trainer.policy.version, self.synced_version, self.pushes))
        return original_generate(self, *args)

    monkeypatch.setattr(vllm_backend.VLLMGenerator, "generate", generate)
    trainer.train()

    llm = FakeLLM.instances[0]
    steps_per_iteration = 2  # 6 queries, batch 2 x accumulation 2
    # Iteration 0 pushes once (the engine holds nothing yet); iteration 1 pushes the updated policy once.
    assert versions == [(0, 0, 1), (steps_per_iteration, steps_per_iteration, 2)]
    assert len(llm.pushed) == 2
    # The second push is the policy after iteration 0's updates, LoRA merged: it differs from the first.
    changed = [n for n in llm.pushed[0] if not torch.equal(llm.pushed[0][n], llm.pushed[1][n])]
    assert changed and all("lora" not in n for n in llm.pushed[1])
    # Plain and guided prompts go in one call, each request with its own seed.
    prompts, params = llm.requests[0]
    assert len(prompts) == 12 and len({p["seed"] for p in params}) == 12


def trainer_tokenizer_eos(model_path):
    from ple.model import load_tokenizer

    return load_tokenizer(model_path).eos_token_id


def _init_with_eos(eos):
    original = FakeLLM.__init__

    def init(self, model, **kwargs):
        original(self, model, eos=eos, **kwargs)

    return init
