import json

import yaml
from conftest import tiny_config

from ple.cli import main


def _write_eval_set(path, n=8):
    rows = [
        {"prompt": f"the movie was {w}", "reference": f"it was {w} and fun"}
        for w in ("good", "bad", "great", "dull", "fun", "sad", "best", "awful")[:n]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_a_model_reports_every_metric_with_a_ci(tmp_path, tiny_chat_model, queries_file, reward_module, capsys):
    config = tmp_path / "c.yaml"
    settings = tiny_config(
        tiny_chat_model,
        queries_file,
        tmp_path / "run",
        f"{reward_module}:positivity",
        eval_dataset=str(_write_eval_set(tmp_path / "eval.jsonl")),
        eval_rewards=["vader"],
        eval_max_prompts=6,
    )
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "eval"
    assert main(["eval", "--config", str(config), "--model", tiny_chat_model, "--output-dir", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["n_prompts"] == 6
    expected = {
        "reward",
        "heldout:vader",
        "distinct_1",
        "distinct_2",
        "mean_length",
        "generation_perplexity",
        "kl",
        "kl_k1",
        "repeated_4grams",
        "top_sentence_share",
        "bleu",
        "reference_perplexity",
    }
    assert set(result["metrics"]) == expected
    for m in result["metrics"].values():
        assert m["ci_low"] <= m["value"] <= m["ci_high"]
    assert result["metrics"]["generation_perplexity"]["value"] > 1
    assert result["metrics"]["kl"]["value"] == 0.0  # the base model itself: no distance from the base model
    assert all(m["n"] == 6 for m in result["metrics"].values())
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all({"prompt", "completion", "reward", "heldout:vader"} <= set(r) for r in rows)
    assert "| distinct_2 |" in capsys.readouterr().out


def test_compare_generation_files_with_the_reward_judge(tmp_path, tiny_chat_model, queries_file, reward_module, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(tiny_config(tiny_chat_model, queries_file, tmp_path / "run", f"{reward_module}:positivity"))
    )
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    prompts = [f"p{i}" for i in range(10)]
    a.write_text("".join(json.dumps({"prompt": p, "completion": "good great fun"}) + "\n" for p in prompts))
    b.write_text(
        "".join(
            json.dumps({"prompt": p, "completion": "bad" if i < 8 else "good great fun"}) + "\n"
            for i, p in enumerate(prompts)
        )
    )
    out = tmp_path / "cmp"
    assert main(["eval", "--config", str(config), "--compare", str(a), str(b), "--output-dir", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["n_prompts"] == 10
    assert result["rates"]["win"]["value"] == 0.8 and result["rates"]["tie"]["value"] == 0.2
    assert result["rates"]["loss"]["value"] == 0.0
    assert (out / "win_rate.png").stat().st_size > 1000
    assert "| win | 0.800 |" in capsys.readouterr().out
    # The same pair again may rewrite its own comparison; another pair into the same folder is refused.
    assert main(["eval", "--config", str(config), "--compare", str(a), str(b), "--output-dir", str(out)]) == 0
    before = (out / "compare.json").read_text()
    assert main(["eval", "--config", str(config), "--compare", str(b), str(a), "--output-dir", str(out)]) == 2
    assert "holds the comparison of" in capsys.readouterr().err and (out / "compare.json").read_text() == before


def test_compare_errors(tmp_path, capsys):
    assert main(["eval", "--compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 2
    assert "generation file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert main(["eval", "--compare", str(bad), str(bad)]) == 2
    assert "row 0: needs 'prompt' and 'completion'" in capsys.readouterr().err
    assert main(["eval", "--model", "x"]) == 2
    assert "no eval prompts" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "x", "completion": "y"}\n')
    for name, args in (("eval.json", ["--model", "x"]), ("compare.json", ["--compare", str(good), str(good)])):
        torn = tmp_path / f"torn_{name}"  # an earlier result damaged since: one line, and it is kept
        torn.mkdir()
        (torn / name).write_text('{"model": "x", "a": ')
        assert main(["eval", *args, "--output-dir", str(torn), "--set", "reward=vader"]) == 2
        assert f"{name} is not valid JSON" in capsys.readouterr().err
        assert (torn / name).read_text() == '{"model": "x", "a": '


def test_compare_a_model_with_itself_is_all_ties(tmp_path, tiny_chat_model, queries_file, reward_module):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            tiny_config(
                tiny_chat_model,
                queries_file,
                tmp_path / "run",
                f"{reward_module}:positivity",
                eval_dataset=str(_write_eval_set(tmp_path / "eval.jsonl")),
            )
        )
    )
    out = tmp_path / "cmp"
    assert (
        main(["eval", "--config", str(config), "--compare", tiny_chat_model, tiny_chat_model, "--output-dir", str(out)])
        == 0
    )
    result = json.loads((out / "compare.json").read_text())
    assert result["n_prompts"] == 8 and result["rates"]["tie"]["value"] == 1.0  # same seed, same answers
    assert (out / "a" / "completions.jsonl").read_text() == (out / "b" / "completions.jsonl").read_text()


def test_one_relative_model_name_run_from_two_directories_is_two_models(
    tmp_path, tiny_chat_model, queries_file, reward_module, capsys, monkeypatch
):
    """`ple eval --model m --output-dir /abs/X` from directory A, then from directory B whose `m` is another model:
    refused, A's evaluation kept."""
    import shutil

    config = tmp_path / "c.yaml"
    settings = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", f"{reward_module}:positivity")
    config.write_text(yaml.safe_dump({**settings, "eval_dataset": str(_write_eval_set(tmp_path / "e.jsonl", 2))}))
    for folder in ("A", "B"):
        shutil.copytree(tiny_chat_model, tmp_path / folder / "m")
    out = tmp_path / "X"
    monkeypatch.chdir(tmp_path / "A")
    assert main(["eval", "--config", str(config), "--model", "m", "--output-dir", str(out)]) == 0
    kept = (out / "eval.json").read_text()
    assert json.loads(kept)["model"] == str(tmp_path / "A" / "m")
    monkeypatch.chdir(tmp_path / "B")
    assert main(["eval", "--config", str(config), "--model", "m", "--output-dir", str(out)]) == 2
    assert "holds the evaluation of" in capsys.readouterr().err and (out / "eval.json").read_text() == kept
    monkeypatch.chdir(tmp_path / "A")  # the same model again may rewrite its own evaluation
    assert main(["eval", "--config", str(config), "--model", "m", "--output-dir", str(out)]) == 0


def test_a_model_on_another_tokenizer_is_one_line(tmp_path, tiny_chat_model, queries_file, reward_module, capsys):
    """`ple eval --model A C`, C with another vocabulary: one line, not an IndexError in the KL against the base."""
    import shutil

    from transformers import AutoTokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_chat_model, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["cinematography"])
    tokenizer.save_pretrained(other)
    config = tmp_path / "c.yaml"
    settings = tiny_config(tiny_chat_model, queries_file, tmp_path / "run", f"{reward_module}:positivity")
    config.write_text(yaml.safe_dump({**settings, "eval_dataset": str(_write_eval_set(tmp_path / "e.jsonl", 2))}))
    argv = [
        "eval",
        "--config",
        str(config),
        "--model",
        tiny_chat_model,
        str(other),
        "--output-dir",
        str(tmp_path / "x"),
    ]
    assert main(argv) == 2
    assert "has another tokenizer than the base model" in capsys.readouterr().err
