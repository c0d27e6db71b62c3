import json

import pytest
import yaml
from conftest import tiny_config

from ple.cli import main


def test_train_then_generate(tmp_path, tiny_chat_model, queries_file, reward_module, capsys):
    out = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    settings = tiny_config(tiny_chat_model, queries_file, out, f"{reward_module}:positivity")
    settings.pop("iterations")
    config.write_text(yaml.safe_dump(settings))

    assert main(["train", "--config", str(config), "--set", "iterations=3"]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["tau"] for m in metrics] == [0.2, 0.18, 0.162]
    assert yaml.safe_load((out / "config.yaml").read_text())["iterations"] == 3
    assert f"final model: {out / 'final'}" in capsys.readouterr().out

    samples = tmp_path / "samples.jsonl"
    assert (
        main(
            [
                "generate",
                "--config",
                str(config),
                "--model",
                str(out / "final"),
                "--prompt",
                "the movie",
                "--prompt",
                "i loved",
                "--guided",
                "--output",
                str(samples),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["the movie", "i loved"] and all(r["guided"] for r in rows)
    assert all(isinstance(r["completion"], str) for r in rows)


def test_generate_errors_are_one_line(tmp_path, tiny_chat_model, capsys):
    assert main(["generate", "--model", tiny_chat_model]) == 2
    assert capsys.readouterr().err.strip() == "ple: error: give at least one --prompt or a --prompts-file"
    assert main(["generate", "--model", tiny_chat_model, "--prompt", "x", "--guided"]) == 2
    assert "needs a principle" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nothing"), "--prompt", "x"]) == 2
    assert capsys.readouterr().err.strip() == f"ple: error: model not found: {tmp_path / 'nothing'}"


def test_train_method_flag_runs_a_baseline(tmp_path, tiny_chat_model, queries_file, reward_module, capsys):
    out = tmp_path / "raft"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_chat_model, queries_file, out, f"{reward_module}:positivity")))
    assert main(["train", "--config", str(config), "--method", "raft", "--set", "iterations=1"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == "raft"
    assert json.loads((out / "budget.json").read_text())["samples"] == 12


@pytest.mark.parametrize(
    "command, hint",
    [("train", "`ple train --config ... --resume` continues"), ("compare", "rerunning the same `ple compare`")],
)
def test_ctrl_c_says_how_this_command_continues(command, hint, monkeypatch, capsys):
    import ple.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ple.cli, f"cmd_{command}", interrupted)
    argv = [command, "--config", "x.yaml"]
    assert ple.cli.main(argv) == 130
    assert hint in capsys.readouterr().err
