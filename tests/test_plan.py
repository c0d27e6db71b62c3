"""`ple plan`: its arithmetic against numbers worked by hand for the tiny test model."""

import pytest
from conftest import tiny_config

from ple.cli import main
from ple.config import load_config
from ple.plan import Launch, memory_plan, model_shape, peak


@pytest.fixture
def shape(tiny_chat_model):
    return model_shape(tiny_chat_model)


def test_the_model_is_counted_from_its_config(shape):
    h, i, layers, v = 32, 64, 2, shape.vocab  # the tiny Llama: hidden 32, MLP 64, 2 layers, untied head
    per_layer = 4 * h * h + 3 * h * i + 2 * h  # q, k, v, o; gate, up, down; two norms
    assert (shape.hidden, shape.layers) == (h, layers)
    assert shape.parameters == 2 * v * h + layers * per_layer + h  # embeddings, layers, final norm, head


def test_the_memory_plan_by_hand(tmp_path, tiny_chat_model, queries_file, shape):
    h, layers, v = 32, 2, shape.vocab
    values = dict(batch_size=4, gradient_accumulation_steps=2, max_prompt_tokens=100, max_new_tokens=20, lora_r=8)
    config = load_config(overrides=tiny_config(tiny_chat_model, queries_file, tmp_path, "vader", **values))
    # LoRA r=8 on q, k, v, o (32 -> 32), gate, up (32 -> 64) and down (64 -> 32), per layer:
    trained = layers * 8 * (4 * (32 + 32) + 2 * (32 + 64) + (64 + 32))
    assert trained == 8704
    one = memory_plan(shape, config, Launch(), None, 0)
    assert one["trained_parameters"] == trained
    assert one["weights"] == shape.parameters * 2 + 4 * trained  # dtype auto: a bf16 base on a GPU, fp32 adapters
    assert (one["gradients"], one["optimizer"], one["gather"]) == (4 * trained, 8 * trained, 0)
    # One process, micro-batch 4: 8 sequences of 120 tokens; the logits of 21 response positions in fp32.
    tokens, logits = 8 * 120, 8 * 21 * v * 4
    assert one["activations"] == 34 * tokens * h * layers + logits
    assert one["activations_checkpointed"] == tokens * h * (2 * layers + 34) + logits

    # Under DeepSpeed in bf16 the engine holds bf16 weights (base and adapters) and gradients; its optimizer holds
    # fp32 master weights and two fp32 moments: 2 + 2 + 12 bytes per trained parameter.
    zero3 = memory_plan(shape, config, Launch(processes=4, zero_stage=3), None, 1000)
    assert zero3["weights"] == 2 * (shape.parameters + trained) // 4
    assert (zero3["gradients"], zero3["optimizer"]) == (2 * trained // 4, 12 * trained // 4)
    assert zero3["gather"] == 2 * (shape.parameters + trained)
    tokens = 2 * 2 * 120  # 8 queries a step over 4 processes: micro-batches of 2
    assert zero3["activations"] == 34 * tokens * h * layers + 2 * 2 * 21 * v * 4
    assert zero3["reward"] == 1000 * 2
    held = sum(zero3[k] for k in ("weights", "gradients", "optimizer", "reward"))
    assert peak(zero3, checkpointing=False) == held + max(zero3["activations"], zero3["gather"])
    assert peak(zero3, checkpointing=True) == held + max(zero3["activations_checkpointed"], zero3["gather"])

    bf16_full = load_config(overrides={**config.to_dict(), "use_lora": False, "dtype": "bfloat16"})
    sharded = memory_plan(shape, bf16_full, Launch(processes=8, zero_stage=3), None, 0)
    p = shape.parameters
    assert (sharded["weights"], sharded["gradients"], sharded["optimizer"]) == (2 * p // 8, 2 * p // 8, 12 * p // 8)
    assert sharded["gather"] == 2 * p  # not fp32's 4 P
    full = load_config(overrides={**config.to_dict(), "use_lora": False, "dtype": "float32"})
    offloaded = memory_plan(shape, full, Launch(processes=2, zero_stage=2, offload_optimizer=True), None, 0)
    assert offloaded["weights"] == 4 * shape.parameters  # fp32 master weights, not sharded below ZeRO-3
    assert (offloaded["gradients"], offloaded["optimizer"]) == (4 * shape.parameters // 2, 0)


def test_ple_plan_prints_the_table_and_refuses_an_unreadable_model(tmp_path, tiny_chat_model, queries_file, capsys):
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_chat_model, queries_file, tmp_path / "run", "vader")))
    assert main(["plan", "--config", str(config), "--processes", "2", "--zero-stage", "3", "--gpu-memory", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 process(es), ZeRO stage 3" in out and "| ZeRO-3 gather (generation, saving) |" in out
    assert "(fits)" in out
    config.write_text(yaml.safe_dump(tiny_config(str(tmp_path / "nowhere"), queries_file, tmp_path / "run", "vader")))
    assert main(["plan", "--config", str(config)]) == 2
    assert "plan: " + str(tmp_path / "nowhere") + " does not exist" in capsys.readouterr().err
    for flags, message in (
        (["--processes", "0"], "--processes must be >= 1"),
        (["--gpu-memory", "-1"], "--gpu-memory"),
    ):
        assert main(["plan", "--config", str(config), *flags]) == 2
        assert message in capsys.readouterr().err
