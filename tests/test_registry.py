"""One place per concept: a method and a metric are each one registry entry, and every view reads the registry;
the evaluator loads what many models share once, and gives what a fresh load gives."""

import json

import pytest
import torch
import yaml
from conftest import response_kls, tiny_config

from ple.baselines import make_trainer
from ple.baselines.sft import SFT
from ple.cli import build_parser, main
from ple.config import load_config
from ple.errors import PLEError
from ple.evaluation import evaluate as evaluate_module
from ple.evaluation.evaluate import Evaluator, generate_rows
from ple.evaluation.metrics import METRICS, Metric, register_metric, response_nll
from ple.methods import METHODS, Method, get_method, register
from ple.model import load_causal_lm, load_tokenizer
from ple.principles import PromptBuilder
from ple.trainer import PLE, PLETrainer


class ToySFT(SFT):
    """SFT under another name: what a plug-in method looks like."""


@pytest.fixture
def toy_method():
    method = register(
        Method(
            "toy-sft",
            ToySFT,
            "a toy method registered by a test",
            needs_principle=False,
            needs_reward=False,
            needs_sft_set=True,
            checks=(lambda c: "toy-sft needs batch_size 2" if c.batch_size != 2 else None,),
        )
    )
    yield method
    del METHODS[method.name]


@pytest.fixture
def toy_metric():
    metric = register_metric(
        Metric("exclamations", "exclamation marks", lambda rows: sum(r["completion"].count("!") for r in rows) + 0.5)
    )
    yield metric
    del METRICS[metric.name]


def test_a_registered_method_reaches_the_cli_the_config_and_make_trainer(
    toy_method, tmp_path, tiny_chat_model, queries_file
):
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "toy-sft: a toy method registered by a test" in help_text
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": f"tell me {i}", "response": "good fun"}) + "\n" for i in range(4)))
    values = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", None, method="toy-sft", principle=None)
    with pytest.raises(PLEError, match="method=toy-sft needs an sft_dataset"):
        load_config(overrides=values)
    with pytest.raises(PLEError, match="toy-sft needs batch_size 2"):
        load_config(overrides={**values, "sft_dataset": str(sft), "batch_size": 3})
    config = load_config(overrides={**values, "sft_dataset": str(sft)})
    trainer = make_trainer(config)
    assert type(trainer.algorithm) is ToySFT
    trainer.train()
    assert (tmp_path / "run" / "final").is_dir()
    with pytest.raises(PLEError, match="already registered"):
        register(toy_method)


def test_an_unknown_method_is_one_line_and_never_falls_back_to_ple(tmp_path, tiny_chat_model, queries_file):
    values = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", "vader", method="ppo")
    with pytest.raises(PLEError, match="unknown method 'ppo'; known methods: ple, ple-symmetric"):
        load_config(overrides=values)
    config = load_config(overrides={**values, "method": "ple"})
    config.method = "ppo"  # a config changed after validation still finds no trainer
    with pytest.raises(PLEError, match="unknown method 'ppo'"):
        make_trainer(config)
    assert get_method("rlcd").algorithm_class() is PLE


def test_the_registry_says_what_each_method_needs(tmp_path, tiny_chat_model, queries_file):
    values = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", None)
    with pytest.raises(PLEError, match="reward is required for method=ple"):
        load_config(overrides=values)
    # The old silent path: PLE with rank_coef 0, all weight on y_p and no reward is context distillation.
    with pytest.raises(PLEError, match="is context distillation: use method=distill"):
        load_config(overrides={**values, "rank_coef": 0.0, "sft_weights": "guided"})
    assert load_config(overrides={**values, "method": "distill"}).reward is None
    with pytest.raises(PLEError, match="principle is required"):
        load_config(overrides={**values, "method": "distill", "principle": None})
    assert load_config(overrides={**values, "reward": "vader", "method": "raft", "principle": None}).principle is None


def test_a_registered_metric_reaches_ple_eval_the_demo_table_and_the_compare_table(
    toy_metric, tmp_path, tiny_chat_model, queries_file, reward_module, capsys
):
    from ple.demo.run import before_after

    config = tmp_path / "c.yaml"
    settings = tiny_config(
        tiny_chat_model, queries_file, tmp_path / "run", f"{reward_module}:positivity", eval_dataset=str(queries_file)
    )
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "eval"
    assert main(["eval", "--config", str(config), "--model", tiny_chat_model, "--output-dir", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert result["metrics"]["exclamations"]["value"] == sum(r["completion"].count("!") for r in rows) + 0.5
    assert "| exclamations |" in capsys.readouterr().out

    summary, labels = before_after(rows, rows, seed=0)
    assert labels["exclamations"] == "exclamation marks" and summary["exclamations"]["delta"] == 0

    from ple.evaluation.grid import run_grid
    from ple.evaluation.grid_spec import load_grid

    settings.pop("output_dir")
    grid = {"output_dir": str(tmp_path / "grid"), "methods": ["ple"], "seeds": [0], "config": settings}
    report = run_grid(load_grid(grid)).read_text()
    assert "exclamation marks" in report.splitlines()[4]  # the table's header


def _trained_adapters(tmp_path, model, queries, reward) -> list[str]:
    out = tmp_path / "run"
    config = load_config(overrides=tiny_config(model, queries, out, reward, iterations=2, keep_checkpoints=0))
    final = PLETrainer(args=config).train().final_model
    return [str(out / "checkpoints" / "iter_000"), str(final)]


def test_ple_eval_of_many_checkpoints_loads_the_base_model_and_the_rewards_once(
    tmp_path, tiny_chat_model, queries_file, reward_module, monkeypatch
):
    adapters = _trained_adapters(tmp_path, tiny_chat_model, queries_file, f"{reward_module}:positivity")
    loads, rewards = [], []
    real_load, real_reward = evaluate_module.load_causal_lm, evaluate_module.config_reward
    monkeypatch.setattr(evaluate_module, "load_causal_lm", lambda name, *a: loads.append(name) or real_load(name, *a))
    monkeypatch.setattr(evaluate_module, "config_reward", lambda *a: rewards.append(a[0]) or real_reward(*a))
    config = tmp_path / "c.yaml"
    settings = tiny_config(
        tiny_chat_model,
        queries_file,
        tmp_path / "unused",
        f"{reward_module}:positivity",
        eval_dataset=str(queries_file),
        eval_rewards=["vader"],
    )
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "eval"
    models = [*adapters, tiny_chat_model]
    assert main(["eval", "--config", str(config), "--model", *models, "--output-dir", str(out)]) == 0
    assert loads == [tiny_chat_model]  # three models, one base model loaded
    assert len(rewards) == 2  # the training reward and vader, once each
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*/eval.json"))]
    assert sorted(r["model"] for r in results) == sorted(models)


def test_the_evaluator_gives_what_a_fresh_load_gives(tmp_path, tiny_chat_model, queries_file, reward_module):
    """The adapter answers as the merged model `ple generate` loads does, its perplexity is under the untouched base
    model, and evaluating one adapter leaves the base model as it was for the next evaluation."""
    adapters = _trained_adapters(tmp_path, tiny_chat_model, queries_file, f"{reward_module}:positivity")
    config = load_config(
        overrides=tiny_config(
            tiny_chat_model, queries_file, tmp_path / "unused", f"{reward_module}:positivity", max_new_tokens=8
        )
    )
    prompts = [{"prompt": p} for p in ("the movie was", "i loved the", "this film is", "we watched")]
    evaluator = Evaluator(config)
    first = evaluator.evaluate(adapters[1], prompts, tmp_path / "e1", seed=3)
    base_after = evaluator.evaluate(tiny_chat_model, prompts, tmp_path / "e2", seed=3)
    again = Evaluator(config).evaluate(adapters[1], prompts, tmp_path / "e3", seed=3)
    assert first["metrics"] == again["metrics"]
    # KL to the base model: the adapter's is its distance from the untouched base, the base model's is 0.
    assert base_after["metrics"]["kl"]["value"] == 0.0 and base_after["metrics"]["kl_k1"]["value"] == 0.0
    assert first["metrics"]["kl"]["value"] > 0

    tokenizer = load_tokenizer(tiny_chat_model)
    builder = PromptBuilder.from_config(tokenizer, config)
    for model_name, out in ((adapters[1], "e1"), (tiny_chat_model, "e2")):
        loaded = load_causal_lm(model_name).eval()  # loading an adapter draws LoRA's initial weights: seed after
        torch.manual_seed(3)
        fresh = generate_rows(loaded, tokenizer, builder, [p["prompt"] for p in prompts], config)
        written = [json.loads(line) for line in (tmp_path / out / "completions.jsonl").read_text().splitlines()]
        assert [r["completion"] for r in written] == [r["completion"] for r in fresh]
        base = load_causal_lm(tiny_chat_model)
        nll = response_nll(base, fresh, tokenizer.pad_token_id)
        assert [r["nll"] for r in written] == pytest.approx([x for x, _ in nll], rel=1e-6)
        # The merged model against a fresh base, both teacher-forced; the evaluation takes the policy's side from
        # its generation's cached decode steps, which agree with a teacher-forced pass to float32 round-off.
        kls = response_kls(loaded, base, fresh, tokenizer.pad_token_id)
        assert [r["kl"] for r in written] == pytest.approx([e for e, _ in kls], rel=1e-4, abs=1e-5)
        assert [r["kl_k1"] for r in written] == pytest.approx([k for _, k in kls], rel=1e-4, abs=1e-5)
    fresh_base = Evaluator(config).evaluate(tiny_chat_model, prompts, tmp_path / "e4", seed=3)
    assert base_after["metrics"] == fresh_base["metrics"]
