"""The Python API in TRL's shape: objects in, no YAML; and the example script that shows it."""

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from ple import PLEConfig, PLEError, PLETrainer
from ple.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def longer_is_better(prompts, completions, **kwargs):
    return [len(c) / 10 for c in completions]


def test_objects_in_give_the_run_a_yaml_config_gives(tmp_path, tiny_chat_model, queries_file):
    """A Dataset, a function reward and a loaded model and tokenizer train exactly as the same run from files."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reward_file = tmp_path / "reward.py"
    reward_file.write_text("def f(prompts, completions, **kw):\n    return [len(c) / 10 for c in completions]\n")
    from_files = PLETrainer(
        args=load_config(overrides=tiny_config(tiny_chat_model, queries_file, tmp_path / "files", f"{reward_file}:f"))
    ).train()

    rows = [json.loads(line) for line in queries_file.read_text().splitlines()]
    settings = tiny_config(tiny_chat_model, queries_file, tmp_path / "objects", None)
    for key in ("model", "dataset", "reward"):
        settings.pop(key)
    trainer = PLETrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_chat_model),
        args=PLEConfig(**settings),
        reward_funcs=[longer_is_better],
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_chat_model),
    )
    assert trainer.config.dataset == "<in memory>" and trainer.config.model == tiny_chat_model
    from_objects = trainer.train()

    keys = ("iteration", "tau", "mean_s", "mean_s_p", "n_rank", "n_wsft", "loss")
    assert [[m[k] for k in keys] for m in from_objects.metrics] == [[m[k] for k in keys] for m in from_files.metrics]
    assert len(from_objects.metrics) == 2 and from_objects.final_model == tmp_path / "objects" / "final"
    from safetensors.torch import load_file

    a = load_file(from_files.final_model / "adapter_model.safetensors")
    b = load_file(from_objects.final_model / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_rewards_are_summed_and_the_method_preset_applies(tmp_path, tiny_chat_model, queries_file):
    settings = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", None, iterations=1)
    settings.pop("reward")
    trainer = PLETrainer(
        args=PLEConfig(**settings, method="ple-rank-only"),
        reward_funcs=[longer_is_better, lambda prompts, completions, **kw: [1.0] * len(completions)],
    )
    assert trainer.config.sft_coef == 0.0  # the preset, as `ple train --method ple-rank-only` sets it
    assert trainer.harness.reward_fn(["p", "q"], ["abcde", ""]) == [1.5, 1.0]
    named = PLETrainer(args=PLEConfig(**settings), reward_funcs="vader")
    assert named.config.reward == ["vader"]  # a reward given by name is recorded in config.yaml by name
    assert named.harness.reward_fn(["p"], ["a wonderful, brilliant film"])[0] > 0.5


def test_bad_objects_are_one_line(tmp_path, tiny_chat_model, queries_file):
    from datasets import Dataset

    settings = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", None)
    settings.pop("dataset")
    no_prompt = Dataset.from_dict({"q": ["x"]})
    with pytest.raises(PLEError, match="missing column 'prompt'"):
        PLETrainer(args=PLEConfig(**settings), reward_funcs=longer_is_better, train_dataset=no_prompt)
    with pytest.raises(PLEError, match="train_dataset holds no rows"):
        PLETrainer(args=PLEConfig(**settings), reward_funcs=longer_is_better, train_dataset=[])
    with pytest.raises(PLEError, match="dataset is required"):
        PLETrainer(args=PLEConfig(**settings), reward_funcs=longer_is_better)


def test_the_example_script_trains_from_python(tmp_path, tiny_chat_model, monkeypatch, capsys):
    out = tmp_path / "example"
    argv = ["train_from_python.py", "--model", tiny_chat_model, "--output-dir", str(out), "--iterations", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "examples" / "train_from_python.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "iteration 1: mean s=" in printed and f"final model: {out / 'final'}" in printed
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def read_scalars(logdir):
    """(tag, step) -> value from the TensorBoard event files under `logdir` (TFRecord framing, Event protos)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in Path(logdir).rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def test_report_to_tensorboard_gets_every_iterations_metrics_and_evaluation(tmp_path, tiny_chat_model, queries_file):
    settings = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", None, report_to="tensorboard")
    settings.update(eval_steps=1, eval_dataset=str(queries_file), eval_max_prompts=4)  # the in-memory reward too
    settings.pop("reward")
    metrics = PLETrainer(args=PLEConfig(**settings), reward_funcs=longer_is_better).train().metrics
    scalars = read_scalars(tmp_path / "run" / "trackers")
    for m in metrics:
        for key in ("mean_s", "tau", "eval/reward", "eval/kl", "eval/distinct_2"):
            assert scalars[(key, m["iteration"])] == pytest.approx(m[key], rel=1e-6), key
    with pytest.raises(PLEError, match="report_to: unknown tracker\\(s\\) tensorbored"):
        load_config(overrides={**settings, "reward": "vader", "report_to": "tensorbored"})


@pytest.mark.parametrize("use_lora", [False, True])
def test_a_model_given_in_float16_trains_in_the_runs_precision(tmp_path, tiny_chat_model, queries_file, use_lora):
    """float16 weights overflow under AdamW's updates (NaN in final/, with a finite loss logged) and clash with
    fp32 adapters: the policy trains in the precision ple loads models in."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    settings = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", None, iterations=1, use_lora=use_lora)
    settings.pop("model")
    trainer = PLETrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_chat_model, dtype=torch.float16),
        args=PLEConfig(**settings),
        reward_funcs=longer_is_better,
    )
    final = trainer.train().final_model
    weights = load_file(next(final.glob("*.safetensors")))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert {v.dtype for v in weights.values()} == {torch.float32}


def test_a_train_dataset_of_strings_is_one_line(tmp_path, tiny_chat_model, queries_file):
    settings = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", None)
    settings.pop("dataset")
    with pytest.raises(PLEError, match="train_dataset row 0 is a str, not a mapping of columns"):
        PLETrainer(args=PLEConfig(**settings), reward_funcs=longer_is_better, train_dataset=["a query", "another"])
