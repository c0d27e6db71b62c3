"""eval_steps: the policy evaluated while it trains gives what `ple eval` gives for the same policy saved, and
training draws the same with and without it."""

import json

import pytest
import yaml
from conftest import tiny_config
from safetensors.torch import load_file

from ple.cli import main
from ple.config import load_config
from ple.errors import PLEError


def _train(tmp_path, name, model, queries, reward, **settings) -> tuple:
    out = tmp_path / name
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(tiny_config(model, queries, out, reward, iterations=2, **settings)))
    assert main(["train", "--config", str(config)]) == 0
    return out, config


@pytest.mark.parametrize(
    "method,settings",
    [("ple", {}), ("ple", {"use_lora": False, "learning_rate": 1e-3}), ("grpo", {"grpo_num_generations": 3})],
    ids=["ple-lora", "ple-full", "grpo"],
)
def test_evaluation_during_training_is_ple_eval_of_the_saved_policy(
    tmp_path, tiny_chat_model, queries_file, reward_module, method, settings
):
    reward = f"{reward_module}:positivity"
    settings = dict(settings, method=method, eval_dataset=str(queries_file), eval_max_prompts=5, snapshot_every=1)
    run, config = _train(tmp_path, "run", tiny_chat_model, queries_file, reward, eval_steps=1, **settings)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for done in (1, 2):
        snapshot = run / "snapshots" / f"step_{done:03d}"
        out = tmp_path / f"ple-eval-{done}"
        assert main(["eval", "--config", str(config), "--model", str(snapshot), "--output-dir", str(out)]) == 0
        by_ple_eval = json.loads((out / "eval.json").read_text())["metrics"]
        during = json.loads((run / "evals" / f"step_{done:03d}" / "eval.json").read_text())["metrics"]
        assert set(during) == set(by_ple_eval) >= {"reward", "kl", "distinct_2", "generation_perplexity"}
        for name, result in by_ple_eval.items():
            assert during[name]["value"] == pytest.approx(result["value"], rel=1e-5, abs=1e-7), name
            assert metrics[done - 1][f"eval/{name}"] == during[name]["value"]
    assert metrics[-1]["eval/kl"] > 0  # trained away from the base model, and measured against it

    plain, _ = _train(tmp_path, "plain", tiny_chat_model, queries_file, reward, **settings)
    assert "eval/kl" not in json.loads((plain / "metrics.jsonl").read_text().splitlines()[0])
    name = "adapter_model.safetensors" if settings.get("use_lora", True) else "model.safetensors"
    with_eval, without = load_file(run / "final" / name), load_file(plain / "final" / name)
    assert all((with_eval[k] == without[k]).all() for k in without)  # evaluating changed no training draw


def test_eval_steps_needs_an_eval_set(tmp_path, tiny_chat_model, queries_file):
    settings = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", "vader", eval_steps=2)
    with pytest.raises(PLEError, match="eval_steps=2 needs an eval_dataset"):
        load_config(overrides=settings)
