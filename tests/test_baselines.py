"""Each baseline trains on a tiny model, changes its weights, writes a loadable model, and keeps PLE's budget."""

import json

import pytest
import torch
from conftest import tiny_config

from ple.baselines import make_trainer
from ple.baselines.trl import iteration_rows
from ple.config import load_config
from ple.errors import PLEError
from ple.evaluation.evaluate import generate_rows
from ple.model import load_causal_lm, load_tokenizer
from ple.principles import PromptBuilder

ITERATIONS, QUERIES = 2, 6


@pytest.fixture
def sft_file(tmp_path):
    path = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"tell me {w}", "response": "good great fun"} for w in ("one", "two", "three", "four", "five")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train(method: str, tmp_path, model, queries, reward, **extra):
    out = tmp_path / method
    config = load_config(
        overrides=tiny_config(
            model, queries, out, reward, method=method, iterations=ITERATIONS, queries_per_iteration=QUERIES, **extra
        )
    )
    trainer = make_trainer(config)
    final = trainer.train().final_model
    return trainer, final, json.loads((out / "budget.json").read_text())


def changed(trainer) -> list[str]:
    now = dict(trainer.model.named_parameters())
    return [n for n, before in trainer.initial.items() if not torch.equal(before, now[n].detach())]


def check_outputs(final, config_dict) -> None:
    """The saved model loads and answers."""
    tokenizer = load_tokenizer(config_dict["model"])
    model = load_causal_lm(str(final))
    config = load_config(overrides=config_dict)
    rows = generate_rows(model, tokenizer, PromptBuilder.from_config(tokenizer, config), ["hello there"], config)
    assert len(rows) == 1 and isinstance(rows[0]["completion"], str) and rows[0]["response_ids"]


@pytest.mark.parametrize("method", ["raft", "dpo", "rloo", "grpo"])
def test_sampling_baselines_train_and_keep_ples_budget(
    method, tmp_path, tiny_chat_model, queries_file, reward_module, track_params
):
    reward = f"{reward_module}:positivity"
    extra = {"grpo_num_generations": 3} if method == "grpo" else {}  # 24 samples: 8 queries in 2 steps of 4
    trainer, final, budget = train(method, tmp_path, tiny_chat_model, queries_file, reward, **extra)
    assert changed(trainer), f"{method} changed no trainable parameter"
    zero = [n for n, p in trainer.model.named_parameters() if "lora_B" in n and p.requires_grad and p.abs().sum() == 0]
    assert not zero, zero  # B starts at zero: every one was trained
    check_outputs(final, tiny_config(tiny_chat_model, queries_file, tmp_path / "x", reward))
    assert not (final / "ref").exists()  # TRL's reference adapter is not saved with the policy
    log = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(ITERATIONS))  # one row per iteration, every method
    if method in ("dpo", "rloo", "grpo"):  # TRL's logging steps go to their own file
        steps = [json.loads(line) for line in (final.parent / "trl_log.jsonl").read_text().splitlines()]
        steps = [r for r in steps if "loss" in r]
        assert steps and sum(r["optimizer_steps"] for r in log) == len(steps)

    _, _, ple_budget = train("ple", tmp_path, tiny_chat_model, queries_file, reward)
    assert budget["samples"] == ple_budget["samples"] == 2 * QUERIES * ITERATIONS
    assert budget["reward_calls"] == budget["samples"]
    assert budget["gen_tokens"] > 0 and budget["seconds"] > 0


def test_trls_step_log_becomes_one_metrics_row_per_iteration():
    log = [
        {"loss": 1.0, "grad_norm": 2.0, "epoch": 0.2, "step": 1},
        {"loss": 3.0, "epoch": 0.4, "step": 2},
        {"loss": 5.0, "grad_norm": float("nan"), "rewards/chosen": 0.5, "step": 3},
        {"train_runtime": 9.0, "train_loss": 3.0, "step": 3},  # TRL's closing summary, not a step
    ]
    # 3 steps over 2 iterations: iteration 0 ends at step round(3 / 2) = 2, iteration 1 at step 3.
    assert iteration_rows(log, 2, 3) == [
        {"iteration": 0, "optimizer_steps": 2, "loss": 2.0, "grad_norm": 2.0},
        {"iteration": 1, "optimizer_steps": 1, "loss": 5.0, "rewards/chosen": 0.5},
    ]
    # More iterations than steps: ends at steps 1, 1, 2, 2, so iterations 1 and 3 take none.
    rows = iteration_rows(log[:2], 4, 2)
    assert [(r["iteration"], r["optimizer_steps"], r.get("loss")) for r in rows] == [
        (0, 1, 1.0),
        (1, 0, None),
        (2, 1, 3.0),
        (3, 0, None),
    ]


def test_raft_trains_on_the_best_of_k(tmp_path, tiny_chat_model, queries_file, reward_module):
    trainer, _, _ = train("raft", tmp_path, tiny_chat_model, queries_file, f"{reward_module}:positivity", raft_k=3)
    rows = [
        json.loads(line) for line in (tmp_path / "raft" / "generations" / "iter_000.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 2 * QUERIES // 3
    for row in rows:
        assert len(row["y"]) == len(row["s"]) == 3
        assert row["best"] == row["y"][max(range(3), key=lambda j: row["s"][j])]


def test_sft_baseline_trains_on_the_sft_set_and_draws_no_samples(
    tmp_path, tiny_chat_model, queries_file, sft_file, track_params
):
    trainer, final, budget = train("sft", tmp_path, tiny_chat_model, queries_file, None, sft_dataset=str(sft_file))
    assert changed(trainer)
    assert budget["samples"] == budget["reward_calls"] == budget["gen_tokens"] == 0
    metrics = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [m["sft_examples"] for m in metrics] == [2 * QUERIES] * ITERATIONS  # as many examples as PLE's pairs
    check_outputs(
        final, tiny_config(tiny_chat_model, queries_file, tmp_path / "x", None, method="sft", sft_dataset=str(sft_file))
    )


def test_dpo_uses_the_datas_preference_pairs_when_it_has_them(tmp_path, tiny_chat_model, track_params):
    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"say {w}", "chosen": "good great", "rejected": "bad awful"} for w in ("a", "b", "c", "d")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer, _, budget = train("dpo", tmp_path, tiny_chat_model, data, "vader")
    assert changed(trainer)
    assert budget["pair_source"] == "data" and budget["samples"] == 0
    pairs = [json.loads(line) for line in (tmp_path / "dpo" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == QUERIES * ITERATIONS and {p["chosen"] for p in pairs} == {"good great"}


def test_baselines_need_no_principle_but_sft_needs_data(tmp_path, tiny_chat_model, queries_file):
    config = tiny_config(tiny_chat_model, queries_file, tmp_path / "r", "vader", method="rloo")
    config.pop("principle")
    assert load_config(overrides=config).method == "rloo"
    with pytest.raises(PLEError, match="principle is required"):
        load_config(overrides={**config, "method": "ple"})
    with pytest.raises(PLEError, match="method=sft needs an sft_dataset"):
        load_config(overrides={**config, "method": "sft"})


def test_a_finished_trl_baseline_is_not_retrained(tmp_path, tiny_chat_model, queries_file, reward_module):
    reward = f"{reward_module}:positivity"
    _, final, budget = train("rloo", tmp_path, tiny_chat_model, queries_file, reward)
    stamp = (final / "adapter_model.safetensors").stat().st_mtime_ns
    config = load_config(overrides=tiny_config(tiny_chat_model, queries_file, tmp_path / "rloo", reward, method="rloo"))
    assert make_trainer(config).train(resume=True).final_model == final
    assert (final / "adapter_model.safetensors").stat().st_mtime_ns == stamp


class _Stop(Exception):
    """Raised by a stand-in TRL trainer once it has seen what it was given."""


@pytest.mark.parametrize(
    "method, trainer_name", [("dpo", "DPOTrainer"), ("rloo", "RLOOTrainer"), ("grpo", "GRPOTrainer")]
)
def test_trl_baselines_get_the_configs_learning_rate_beta_and_warm_up(
    method, trainer_name, tmp_path, tiny_chat_model, queries_file, reward_module, sft_file, monkeypatch
):
    """TRL receives the run's learning rate, KL beta and clipping, and, with sft_epochs > 0, the warmed-up adapter
    (which TRL copies as its reference)."""
    import trl
    from safetensors.torch import load_file

    seen = {}

    class Capture:
        def __init__(self, model, args, **kwargs):
            seen["args"] = args
            seen["lora_B"] = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
            raise _Stop

    monkeypatch.setattr(trl, trainer_name, Capture)
    out = tmp_path / method
    config = load_config(
        overrides=tiny_config(
            tiny_chat_model,
            queries_file,
            out,
            f"{reward_module}:positivity",
            method=method,
            iterations=2,
            queries_per_iteration=6,
            batch_size=3,
            learning_rate=3.7e-4,
            max_grad_norm=0.6,
            dpo_beta=0.37,
            rloo_beta=0.021,
            grpo_beta=0.033,
            grpo_num_generations=2,
            sft_dataset=str(sft_file),
            sft_epochs=1,
            report_to="tensorboard",
            lr_scheduler_type="constant",
            warmup_ratio=0.25,
        )
    )
    with pytest.raises(_Stop):
        make_trainer(config).train()
    args = seen["args"]
    assert (args.learning_rate, args.max_grad_norm, args.seed) == (3.7e-4, 0.6, 0)
    assert args.report_to == ["tensorboard"]
    assert (args.lr_scheduler_type, args.warmup_steps) == ("constant_with_warmup", 0.25)  # ple's constant + warm-up
    assert args.beta == {"dpo": 0.37, "rloo": 0.021, "grpo": 0.033}[method]
    warm = load_file(out / "checkpoints" / "warmup" / "adapter_model.safetensors")
    warm_b = {k: v for k, v in warm.items() if "lora_B" in k}
    assert warm_b and any(v.abs().sum() > 0 for v in warm_b.values())
    trained = {k.replace(".default", ""): v for k, v in seen["lora_B"].items()}
    assert trained.keys() == warm_b.keys()
    assert all(torch.equal(trained[k], warm_b[k]) for k in warm_b)


@pytest.mark.parametrize("method", ["sft", "raft", "distill"])
def test_every_iterating_method_counts_the_prompts_it_cut(
    method, tmp_path, tiny_chat_model, queries_file, sft_file, reward_module
):
    """The loop adds each iteration's cut prompts to every method's metrics row (PLE's: tests/test_trainer.py)."""
    reward = None if method in ("sft", "distill") else f"{reward_module}:positivity"
    counts = []
    template = 11 if method == "distill" else 3  # tokens of the (guided) prompt's template, principle included
    for limit in (template + 1, 512):  # every prompt is cut to one token of its query; none is
        out = tmp_path / f"{method}-{limit}"
        settings = dict(method=method, iterations=1, max_prompt_tokens=limit, sft_dataset=str(sft_file))
        config = load_config(overrides=tiny_config(tiny_chat_model, queries_file, out, reward, **settings))
        make_trainer(config).train()
        (m,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        counts.append(m["n_truncated_prompts"])
    assert counts == [2 * 6, 0]  # each method encodes 2 * queries_per_iteration prompts per iteration


def test_the_learning_rate_follows_its_schedule_across_iterations(tmp_path, tiny_chat_model, queries_file, sft_file):
    """sft draws 2 * 6 = 12 rows per iteration, 3 optimizer steps of 4: over 2 iterations, the last step of
    iteration t starts (t + 2/3) / 2 of the way through the run, where linear decay leaves 1 - that."""
    out = tmp_path / "run"
    settings = dict(method="sft", iterations=2, sft_dataset=str(sft_file), lr_scheduler_type="linear")
    trainer = make_trainer(load_config(overrides=tiny_config(tiny_chat_model, queries_file, out, None, **settings)))
    trainer.train()
    rates = [json.loads(line)["learning_rate"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rates == pytest.approx([5e-3 * 2 / 3, 5e-3 / 6])
    assert trainer.policy.optimizer.param_groups[0]["lr"] == pytest.approx(5e-3 / 6)  # what the optimizer used
