import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from ple.config import load_config
from ple.errors import PLEError
from ple.losses import assign_branch
from ple.trainer import PLE, PLETrainer, query_order

ROW_FIELDS = {
    "iteration",
    "index",
    "query",
    "prompt",
    "principle_prompt",
    "y",
    "y_p",
    "s",
    "s_p",
    "gap",
    "branch",
    "winner",
    "tau",
}


def run(config: dict, resume: bool = False) -> PLETrainer:
    trainer = PLETrainer(args=load_config(overrides=config))
    trainer.train(resume=resume)
    return trainer


def read_rows(run_dir):
    return [
        json.loads(line)
        for path in sorted((run_dir / "generations").glob("iter_*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_iterations_end_to_end(tmp_path, tiny_chat_model, queries_file, reward_module, track_params):
    out = tmp_path / "run"
    trainer = run(tiny_config(tiny_chat_model, queries_file, out, f"{reward_module}:positivity"))

    changed = {n: not torch.equal(p0, dict(trainer.model.named_parameters())[n]) for n, p0 in trainer.initial.items()}
    assert changed and all(changed.values()), [n for n, c in changed.items() if not c]
    assert all("lora" in n for n in changed)  # LoRA: only the adapter trains

    rows, metrics = read_rows(out), read_metrics(out)
    assert [m["iteration"] for m in metrics] == [0, 1]
    assert [m["tau"] for m in metrics] == [0.2, 0.18]
    assert len(rows) == 12
    for row in rows:
        assert set(row) == ROW_FIELDS
        assert row["principle_prompt"].startswith("<|system|> be good and great and wonderful")
        assert "be good" not in row["prompt"]
        assert row["gap"] == pytest.approx(row["s_p"] - row["s"])
        assert (row["branch"], row["winner"]) == assign_branch(row["gap"], row["tau"], "wsft")
        assert row["winner"] != "plain"  # one-sided by default: a clear win of y is weighted SFT, not ranked
    for m in metrics:
        mine = [r for r in rows if r["iteration"] == m["iteration"]]
        for branch in ("rank", "wsft", "skip"):
            assert m[f"n_{branch}"] == sum(r["branch"] == branch for r in mine)
            assert m[f"frac_{branch}"] == pytest.approx(m[f"n_{branch}"] / len(mine))
        assert m["mean_s"] == pytest.approx(sum(r["s"] for r in mine) / len(mine))
        assert m["optimizer_steps"] == math.ceil((6 - m["n_skip"]) / 4)
        assert m["n_trained"] == 6 - m["n_skip"] and m["n_truncated_prompts"] == 0
        assert m["wsft_temperature"] == m["tau"]  # auto
    assert (out / "config.yaml").is_file() and (out / "final" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["iter_000", "iter_001"]


def test_query_order_walks_passes_and_wraps():
    order = [query_order(5, t, 3, seed=1) for t in range(4)]  # 12 draws from 5 queries
    flat = sum(order, [])
    for start in (0, 5):
        assert sorted(flat[start : start + 5]) == list(range(5))  # each pass is a permutation
    assert flat[:5] != flat[5:10]  # reshuffled each pass
    assert query_order(5, 1, 3, seed=1) == order[1]  # a pure function of t: resume sees the same queries
    assert query_order(5, 0, 7, seed=1, shuffle=False) == [0, 1, 2, 3, 4, 0, 1]


@pytest.mark.parametrize("scaling", ["raw", "standardized"])
def test_resume_matches_uninterrupted_run(tmp_path, tiny_chat_model, queries_file, reward_module, monkeypatch, scaling):
    reward = f"{reward_module}:positivity"
    full = tmp_path / "full"
    run(tiny_config(tiny_chat_model, queries_file, full, reward, iterations=3, reward_scaling=scaling))

    killed = tmp_path / "killed"
    config = tiny_config(tiny_chat_model, queries_file, killed, reward, iterations=3, reward_scaling=scaling)
    original = PLE.iteration

    def kill_at_2(self, t):
        if t == 2:
            raise KeyboardInterrupt
        return original(self, t)

    monkeypatch.setattr(PLE, "iteration", kill_at_2)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    monkeypatch.setattr(PLE, "iteration", original)
    assert len(read_metrics(killed)) == 2
    # A kill mid-write leaves a torn metrics line and a stray file; resume must shrug both off.
    with open(killed / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 2, "tau"')
    (killed / "generations" / "iter_002.jsonl").write_text("garbage")

    with pytest.raises(PLEError, match="already holds a run"):
        run(config)
    resumed = run(config, resume=True)

    a, b = read_metrics(full), read_metrics(killed)
    keys = ("iteration", "tau", "n_rank", "n_wsft", "n_skip", "mean_s", "mean_s_p", "reward_scale", "mean_gap")
    assert [[m[k] for k in keys] for m in a] == [[m[k] for k in keys] for m in b]
    if scaling == "standardized":  # the running std carried over the kill, not restarted from iteration 2's rewards
        assert len({m["reward_scale"] for m in b}) == 3
    rows_a, rows_b = read_rows(full), read_rows(killed)
    assert [(r["index"], r["y"], r["y_p"]) for r in rows_a] == [(r["index"], r["y"], r["y_p"]) for r in rows_b]
    from safetensors.torch import load_file

    final_a = load_file(full / "final" / "adapter_model.safetensors")
    final_b = load_file(killed / "final" / "adapter_model.safetensors")
    assert all(torch.allclose(final_a[k], final_b[k], atol=1e-6) for k in final_a)
    assert resumed.model is not None


def test_resume_refuses_a_changed_config(tmp_path, tiny_chat_model, queries_file, reward_module):
    config = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", f"{reward_module}:positivity", iterations=1)
    run(config)
    with pytest.raises(PLEError, match="config changed \\(tau0\\)"):
        run({**config, "tau0": 0.5}, resume=True)
    more = run({**config, "iterations": 2}, resume=True)  # extending a finished run is fine
    assert [m["iteration"] for m in read_metrics(tmp_path / "run")] == [0, 1]
    assert more.model is not None


def test_resume_names_a_checkpoint_from_a_deepspeed_run(tmp_path, tiny_chat_model, queries_file, reward_module):
    config = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", f"{reward_module}:positivity", iterations=1)
    run(config)
    checkpoint = tmp_path / "run" / "checkpoints" / "iter_000"
    (checkpoint / "optimizer.pt").unlink()  # what a ZeRO run leaves: its optimizer state is in deepspeed/
    with pytest.raises(PLEError, match="iter_000: it holds no optimizer.pt \\(was it a DeepSpeed run\\?\\)"):
        run({**config, "iterations": 2}, resume=True)


def test_a_reward_that_scores_nothing_stops_the_run_with_one_line(
    tmp_path, tiny_chat_model, queries_file, reward_module
):
    """All NaN: before, the run "succeeded" with zero optimizer steps and a final model equal to the base."""
    out = tmp_path / "run"
    with pytest.raises(PLEError, match="iteration 0: the reward gave no valid score .* of the 6 queries"):
        run(tiny_config(tiny_chat_model, queries_file, out, f"{reward_module}:always_nan", iterations=1))
    assert not (out / "final").exists() and not (out / "metrics.jsonl").exists()
    with pytest.raises(PLEError, match="no valid score"):
        run(tiny_config(tiny_chat_model, queries_file, tmp_path / "raft", f"{reward_module}:always_nan", method="raft"))


def test_partly_missing_rewards_are_counted(tmp_path, tiny_chat_model, queries_file, reward_module):
    out = tmp_path / "run"
    run(
        tiny_config(
            tiny_chat_model, queries_file, out, f"{reward_module}:half_none", iterations=1, queries_per_iteration=4
        )
    )
    (m,) = read_metrics(out)
    # half_none gives None to every odd completion of [y_0..y_3, y_p0..y_p3]: queries 1 and 3 lose both.
    assert m["n_invalid_reward"] == 2 and m["n_skip"] == 2


@pytest.mark.parametrize(
    "options",
    [
        {"rank_loss": "logistic", "rank_sft_coef": 0.5, "negative_gap": "skip"},
        {"schedule": "quantile", "tau_quantile": 0.5, "reward_scaling": "standardized"},
        {"negative_gap": "rank", "epochs_per_iteration": 2, "wsft_temperature": 0.5},
        {"method": "ple-symmetric"},
        {"use_lora": False, "learning_rate": 1e-3},
        {"method": "rlcd"},
        {"method": "ple-wsft-only"},
        {"generation_batch_size": 5, "temperature": 0.0},
        {"max_prompt_tokens": 14},
        {"gradient_checkpointing": True, "attn_implementation": "eager"},
    ],
)
def test_options_follow_the_spec(tmp_path, tiny_chat_model, queries_file, reward_module, track_params, options):
    out = tmp_path / "run"
    trainer = run(
        tiny_config(tiny_chat_model, queries_file, out, f"{reward_module}:positivity", iterations=1, **options)
    )
    config = trainer.config
    rows = read_rows(out)
    (m,) = read_metrics(out)
    for row in rows:
        assert row["gap"] == pytest.approx((row["s_p"] - row["s"]) / m["reward_scale"])
        tau = -math.inf if row["tau"] is None else row["tau"]  # strict JSON writes RLCD's -inf as null
        assert (row["branch"], row["winner"]) == assign_branch(row["gap"], tau, config.negative_gap)
    assert (m["n_truncated_prompts"] > 0) == (config.max_prompt_tokens == 14)
    if config.schedule == "quantile":
        import numpy as np

        assert m["tau"] == pytest.approx(float(np.quantile([abs(r["gap"]) for r in rows], 0.5)))
    if config.method == "rlcd":
        assert m["tau"] is None and all(r["branch"] == "rank" and r["winner"] == "guided" for r in rows)
    if config.temperature == 0:  # greedy: the same query gives the same answer
        by_query = {}
        for r in rows:
            assert by_query.setdefault(r["index"], r["y"]) == r["y"]
    params = dict(trainer.model.named_parameters())
    unchanged = [n for n, p0 in trainer.initial.items() if torch.equal(p0, params[n])]
    changed = len(unchanged) < len(trainer.initial)
    if m["loss"] != 0 and m["optimizer_steps"] >= 2:  # LoRA's A moves from the second step on (B starts at 0)
        # Every trainable parameter moved, as TRL's tests demand; in full fine-tuning the embedding rows of words
        # no batch holds get no gradient, so the embedding (tied to the LM head) is left out.
        assert [n for n in unchanged if "embed_tokens" not in n] == []
    if config.rank_coef * m["n_rank"] + config.sft_coef * m["n_wsft"] == 0:  # no pair in a branch the method keeps
        assert not changed and m["loss"] is None and m["n_trained"] == 0


def test_rank_only_ignores_wsft_pairs(tmp_path, tiny_chat_model, queries_file, track_params):
    # A constant reward puts every pair in the wsft branch; with sft_coef = 0 nothing may change.
    reward = tmp_path / "const.py"
    reward.write_text("def f(prompts, completions, **kw):\n    return [0.5] * len(completions)\n")
    out = tmp_path / "run"
    trainer = run(tiny_config(tiny_chat_model, queries_file, out, f"{reward}:f", iterations=1, method="ple-rank-only"))
    (m,) = read_metrics(out)
    assert m["n_wsft"] == 6 and m["n_trained"] == 0 and m["optimizer_steps"] == 0 and m["loss"] is None
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(p0, params[n]) for n, p0 in trainer.initial.items())


def test_context_distillation_needs_no_reward(tmp_path, tiny_chat_model, queries_file, track_params):
    from ple.baselines import make_trainer

    out = tmp_path / "run"
    trainer = make_trainer(
        load_config(overrides=tiny_config(tiny_chat_model, queries_file, out, None, method="distill"))
    )
    trainer.train()
    rows = read_rows(out)
    # No y is needed, so each iteration draws y_p for 2 * 6 queries: PLE's 12 samples, and no reward at all.
    assert len(rows) == 24 and all(
        set(r) == {"iteration", "index", "query", "prompt", "principle_prompt", "y_p"} for r in rows
    )
    assert [r["index"] for r in rows] == query_order(12, 0, 24, seed=0)
    budget = json.loads((out / "budget.json").read_text())
    assert budget["samples"] == 24 and budget["reward_calls"] == 0
    params = dict(trainer.model.named_parameters())
    assert all(not torch.equal(p0, params[n]) for n, p0 in trainer.initial.items())


def test_plain_lm_gets_a_text_prefix_and_sft_warmup(tmp_path, tiny_text_model, queries_file, reward_module):
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": "the movie", "response": "was good"}) + "\n" for _ in range(5)))
    out = tmp_path / "run"
    trainer = run(
        tiny_config(
            tiny_text_model,
            queries_file,
            out,
            f"{reward_module}:positivity",
            iterations=1,
            sft_dataset=str(sft),
            sft_epochs=2,
            keep_checkpoints=0,
        )
    )
    assert not trainer.policy.builder.chat
    row = read_rows(out)[0]
    assert row["principle_prompt"] == f"be good and great and wonderful\n\n{row['prompt']}"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["iter_000", "warmup"]
    # The warm-up trained: its adapter differs from LoRA's zero-initialised B.
    from safetensors.torch import load_file

    warm = load_file(out / "checkpoints" / "warmup" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in warm.items())


def test_bad_inputs_fail_before_any_work(tmp_path, tiny_chat_model, queries_file, reward_module):
    good = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", f"{reward_module}:positivity")
    with pytest.raises(PLEError, match="data file not found"):
        PLETrainer(args=load_config(overrides={**good, "dataset": str(tmp_path / "missing.jsonl")}))
    no_column = tmp_path / "q2.jsonl"
    no_column.write_text('{"text": "hello"}\n')
    with pytest.raises(PLEError, match="missing column 'prompt'"):
        PLETrainer(args=load_config(overrides={**good, "dataset": str(no_column)}))
    empty = tmp_path / "q3.jsonl"
    empty.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    with pytest.raises(PLEError, match="row 1: empty prompt"):
        PLETrainer(args=load_config(overrides={**good, "dataset": str(empty)}))
    with pytest.raises(PLEError, match="model not found"):
        run({**good, "model": str(tmp_path / "no-model")})
    assert not (tmp_path / "run" / "generations").exists()


def test_gradient_checkpointing_on_a_model_without_it_is_one_line(
    tmp_path, tiny_chat_model, queries_file, reward_module, monkeypatch
):
    from transformers import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "supports_gradient_checkpointing", False)
    config = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", f"{reward_module}:positivity")
    with pytest.raises(PLEError, match="gradient_checkpointing: LlamaForCausalLM cannot recompute its layers"):
        PLETrainer(args=load_config(overrides={**config, "gradient_checkpointing": True}))


def test_an_optimizer_step_is_the_same_queries_whatever_the_number_of_processes():
    from ple.config import Config
    from ple.training.policy import step_share

    config = Config(batch_size=4, gradient_accumulation_steps=2)  # 8 queries per optimizer step
    assert [step_share(config, world) for world in (1, 2, 4, 8)] == [(8, 4), (4, 4), (2, 2), (1, 1)]
    with pytest.raises(PLEError, match=r"=8 queries per optimizer step do not split evenly over 3 processes"):
        step_share(config, 3)


def test_push_to_hub_uploads_the_final_model_and_an_unreachable_hub_is_one_line(
    tmp_path, tiny_chat_model, queries_file, reward_module, monkeypatch, capsys
):
    """The Hub cannot be reached from here: a stand-in HfApi records what would be uploaded, then refuses."""
    import huggingface_hub
    import yaml

    from ple.cli import main

    calls = []

    class StandIn:
        def create_repo(self, repo, exist_ok=False):
            calls.append(("create", repo, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", StandIn)
    settings = tiny_config(tiny_chat_model, queries_file, tmp_path / "my-run", f"{reward_module}:positivity")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**settings, "iterations": 1, "push_to_hub": True}))
    assert main(["train", "--config", str(config)]) == 0
    assert calls[0] == ("create", "my-run", True) and calls[1][:2] == ("upload", "my-run")
    assert "adapter_model.safetensors" in calls[1][2]

    class Offline(StandIn):
        def create_repo(self, repo, exist_ok=False):
            raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    config.write_text(yaml.safe_dump({**settings, "iterations": 1, "push_to_hub": True, "hub_model_id": "me/x"}))
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--set", f"output_dir={tmp_path / 'other'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ple: error: push_to_hub: could not upload to me/x (Failed to resolve 'huggingface.co')")
    assert (tmp_path / "other" / "final" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "other" / "budget.json").is_file()
