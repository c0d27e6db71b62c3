"""A hostile user's inputs (issue: "nothing lost, nothing silently wrong"). Each test plants the user's file or the
torn run file first and checks that nothing the user wrote is deleted or changed, and that the answer is one line
(a PLEError, or `ple: error: ...` with exit code 2) rather than a traceback or a silent wrong result."""

import json
import re
import shutil

import pytest
import yaml
from conftest import tiny_config, write_queries

from ple.cli import main
from ple.config import load_config
from ple.errors import PLEError
from ple.evaluation.judges import RewardJudge
from ple.evaluation.pairwise import judge_pair, load_completions
from ple.trainer import PLETrainer


def run(config: dict, resume: bool = False) -> PLETrainer:
    trainer = PLETrainer(args=load_config(overrides=config))
    trainer.train(resume=resume)
    return trainer


def snapshot(root) -> dict[str, bytes]:
    """Every file under root with its bytes, for 'nothing the user wrote changed'."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def config(tmp_path, tiny_chat_model, queries_file, reward_module):
    return tiny_config(tiny_chat_model, queries_file, tmp_path / "run", f"{reward_module}:positivity", iterations=2)


def one_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # progress bars may stand before it
    assert last.startswith("ple: error: ") and "Traceback" not in err and err.count("ple: error") == 1, err
    return last


# ---------------------------------------------------------------------------------------------- data loss
def test_a_folder_with_a_file_named_config_yaml_is_not_a_run(config, tmp_path):
    user = tmp_path / "run"
    (user / "generations").mkdir(parents=True)
    (user / "config.yaml").write_text("services: {}\n")
    (user / "generations" / "iter_003.jsonl").write_text("{}\n")
    before = snapshot(user)
    for resume in (False, True):
        with pytest.raises(PLEError, match="is not empty and holds no ple run"):
            run(config, resume=resume)
    assert snapshot(user) == before


def test_pruning_and_resume_delete_only_what_ple_wrote(config, tmp_path):
    run({**config, "keep_checkpoints": 1})
    root = tmp_path / "run"
    shutil.copytree(root / "checkpoints" / "iter_001", root / "checkpoints" / "best")
    (root / "checkpoints" / "checkpoint-500").mkdir()  # another tool's directory
    (root / "generations" / "iter_005_annotated.jsonl").write_text('{"note": "mine"}\n')
    (root / "generations" / "iter_best.jsonl").write_text('{"note": "mine too"}\n')
    user = {p: (root / p).read_bytes() for p in ("generations/iter_005_annotated.jsonl", "generations/iter_best.jsonl")}
    user |= {
        str(p.relative_to(root)): p.read_bytes() for p in (root / "checkpoints" / "best").rglob("*") if p.is_file()
    }
    run({**config, "iterations": 4, "keep_checkpoints": 1}, resume=True)
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["best", "checkpoint-500", "iter_003"]
    assert all((root / p).read_bytes() == b for p, b in user.items())


def test_generate_never_writes_over_its_prompts_file(tmp_path, tiny_chat_model, capsys):
    prompts = write_queries(tmp_path / "prompts.jsonl", n=3)
    before = prompts.read_bytes()
    err = one_line(
        capsys, ["generate", "--model", tiny_chat_model, "--prompts-file", str(prompts), "--output", str(prompts)]
    )
    assert "is the --prompts-file" in err and prompts.read_bytes() == before


def test_a_second_ple_eval_never_replaces_the_first(tmp_path, tiny_chat_model, config, capsys):
    run(config)
    settings = tmp_path / "c.yaml"
    settings.write_text(yaml.safe_dump({**config, "eval_dataset": config["dataset"], "output_dir": "unused"}))
    out = tmp_path / "eval"
    assert main(["eval", "--config", str(settings), "--model", tiny_chat_model, "--output-dir", str(out)]) == 0
    first = snapshot(out)
    final = str(tmp_path / "run" / "final")
    err = one_line(capsys, ["eval", "--config", str(settings), "--model", final, "--output-dir", str(out)])
    assert f"holds the evaluation of {tiny_chat_model}" in err and snapshot(out) == first
    # The same model again is a re-evaluation, not another model's results.
    assert main(["eval", "--config", str(settings), "--model", tiny_chat_model, "--output-dir", str(out)]) == 0


# ---------------------------------------------------------------------------------------------- torn run files
def test_a_resume_whose_metrics_lost_a_checkpointed_iteration_is_refused(config, tmp_path):
    run(config)
    metrics = tmp_path / "run" / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text(rows[1] + "\n")  # iteration 0's row is gone
    with pytest.raises(PLEError, match="metrics.jsonl has no row for iteration\\(s\\) 0"):
        run({**config, "iterations": 3}, resume=True)
    metrics.unlink()
    with pytest.raises(PLEError, match="no row for iteration\\(s\\) 0, 1"):
        run({**config, "iterations": 3}, resume=True)
    metrics.write_text(rows[0] + "\n" + '{"tau": 0.1}\n' + rows[1] + "\n")
    with pytest.raises(PLEError, match="row 2 has no iteration number"):
        run({**config, "iterations": 3}, resume=True)


def test_a_trainer_state_that_disagrees_with_its_directory_is_refused(config, tmp_path):
    run(config)
    state = tmp_path / "run" / "checkpoints" / "iter_001" / "trainer_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "iteration": 7}))
    with pytest.raises(PLEError, match="says iteration 7 in trainer_state.json, not 1"):
        run({**config, "iterations": 9}, resume=True)


@pytest.mark.parametrize("damage", ["torn", "no reward_std"])
def test_a_damaged_newest_trainer_state_falls_back_to_the_checkpoint_before(config, tmp_path, damage, capsys):
    run({**config, "keep_checkpoints": 0})
    state = tmp_path / "run" / "checkpoints" / "iter_001" / "trainer_state.json"
    state.write_text('{"iteration": 1, "rew' if damage == "torn" else '{"iteration": 1}')
    run({**config, "iterations": 3, "keep_checkpoints": 0}, resume=True)
    assert "iter_001 is unreadable" in capsys.readouterr().err
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1, 2]  # iteration 1 redone from iteration 0's checkpoint


def test_resume_of_a_directory_that_never_ran_is_one_line(config, tmp_path):
    with pytest.raises(PLEError, match="nothing to resume in .*drop --resume"):
        run({**config, "output_dir": str(tmp_path / "typo")}, resume=True)
    assert not (tmp_path / "typo").exists()


def test_editing_the_rewards_code_is_noticed_on_resume(config, tmp_path, reward_module):
    run(config)
    with open(reward_module, "a") as f:
        f.write("\n# edited\n")
    with pytest.raises(PLEError, match="reward .*toy_reward.py:positivity file .* changed since the run started"):
        run({**config, "iterations": 3}, resume=True)


# ---------------------------------------------------------------------------------------------- rewards
def test_a_reward_that_exits_is_one_line_never_a_silent_exit(tmp_path, config, capsys):
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\ndef reward(prompts, completions, **kw):\n    sys.exit(0)\n")
    argv = tmp_path / "argv.py"
    argv.write_text("import argparse\nargparse.ArgumentParser().parse_args(['--nope'])\ndef reward(**kw): pass\n")
    for spec, message in (
        (f"{exits}:reward", "called sys.exit(0)"),
        (f"{argv}:reward", "exited while it was imported"),
    ):
        settings = tmp_path / "c.yaml"
        settings.write_text(yaml.safe_dump({**config, "reward": spec}))
        capsys.readouterr()
        assert message in one_line(capsys, ["train", "--config", str(settings)])


def test_a_module_with_no_function_is_named_as_such(config):
    with pytest.raises(PLEError, match="is not of the form module:function .*name the function"):
        run({**config, "reward": "toy_reward:"})


def test_a_compare_never_counts_an_unscored_pair_as_a_tie_and_says_what_it_left_out(tmp_path, reward_module):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "good"}) + "\n" for i in (0, 1, 2, 2)))
    b.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "bad"}) + "\n" for i in (0, 1, 3)))

    def none_for_p1(prompts, completions, **kw):
        return [None if p == "p1" else (1.0 if c == "good" else 0.0) for p, c in zip(prompts, completions)]

    result = judge_pair(
        load_completions(str(a)), load_completions(str(b)), RewardJudge(none_for_p1), "a", "b", tmp_path / "out"
    )
    assert result["n_prompts"] == 1 and result["rates"]["win"]["value"] == 1.0  # p0 only; p1 left out, not a tie
    assert result["unscored"] == 1 and result["only_in_a"] == 1 and result["only_in_b"] == 1
    assert any("repeated" in n for n in result["notes"]) and any("not counted as ties" in n for n in result["notes"])
    assert result["rates"]["win"]["ci_low"] != result["rates"]["win"]["ci_low"]  # one prompt: no interval, no crash


# ---------------------------------------------------------------------------------------------- config and data
@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": -1}, r"seed must be in \[0, 2\*\*32\)"),
        ({"seed": 10**20}, r"seed must be in"),
        ({"text_principle_template": "{principle} {query} {foo}"}, r"uses \{foo\}; it may use only"),
        ({"text_principle_template": "{principle} { {query}"}, "is not a valid template"),
        ({"text_principle_template": "{0} {principle} {query}"}, r"uses \{0\}"),
        ({"principle": "   "}, "principle is empty"),
        ({"beta": 0.5}, "'beta' was renamed to rank_beta"),
    ],
)
def test_bad_settings_are_one_line(config, change, message):
    with pytest.raises(PLEError, match=message):
        load_config(overrides={**config, **change})


def test_config_files_that_cannot_be_read_are_one_line(tmp_path, capsys, config):
    twice = tmp_path / "twice.yaml"
    twice.write_text(yaml.safe_dump(config) + "learning_rate: 5.0\n")
    assert "key 'learning_rate' is given twice" in one_line(capsys, ["train", "--config", str(twice)])
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"principle: caf\xe9\n")
    assert "is not UTF-8 text" in one_line(capsys, ["train", "--config", str(latin)])
    assert "is a directory; name a file" in one_line(capsys, ["train", "--config", str(tmp_path)])
    principles = tmp_path / "p.yaml"
    principles.write_bytes(b"warm: caf\xe9\n")
    with pytest.raises(PLEError, match="principles file .* is not UTF-8"):
        run({**config, "principle": str(principles)})


def test_an_inline_principle_ending_in_json_is_text(config, tmp_path):
    trainer = run({**config, "iterations": 1, "principle": "Answer as the reviewers at example.json would."})
    assert trainer.harness.principle == "Answer as the reviewers at example.json would."


@pytest.mark.parametrize(
    "prompt, message",
    [
        ([{"role": "user", "content": None}], "content must be text, got NoneType"),
        ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "content must be text, got list"),
        ([{"role": "narrator", "content": "hi"}], "role 'narrator' is not one of system, user, assistant"),
    ],
)
def test_chat_rows_are_checked(config, tmp_path, prompt, message):
    data = tmp_path / "chat.jsonl"
    data.write_text(
        json.dumps({"prompt": [{"role": "user", "content": "fine"}]}) + "\n" + json.dumps({"prompt": prompt})
    )
    with pytest.raises(PLEError, match=f"chat.jsonl row 1 message 0: {message}"):
        run({**config, "dataset": str(data)})


@pytest.mark.parametrize("column", ["completions", "prompts"])
def test_a_column_that_collides_with_the_rewards_arguments_is_one_line(config, tmp_path, column):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "the movie", column: "x"}) + "\n")
    with pytest.raises(PLEError, match=f"a column named '{column}' would collide"):
        run({**config, "dataset": str(data)})


def test_more_queries_per_iteration_than_the_dataset_is_said(config, capsys):
    run({**config, "iterations": 1, "queries_per_iteration": 14})  # the file holds 12
    assert "queries_per_iteration=14 is more than the 12 queries" in capsys.readouterr().err


@pytest.mark.parametrize(
    "setting, message",
    [
        ("temperature=-1", "temperature must be >= 0"),
        ("top_p=0", r"top_p must be in \(0, 1\]"),
        ("top_k=-5", "top_k must be >= 0"),
        ("max_new_tokens=0", "max_new_tokens must be >= 1"),
        ("max_new_tokens=5000", "exceeds the model's 1024 positions"),
    ],
)
def test_generate_and_eval_check_their_sampling_settings(tmp_path, tiny_chat_model, capsys, setting, message):
    prompts = write_queries(tmp_path / "p.jsonl", n=2)
    eval_args = ["eval", "--prompts-file", str(prompts), "--output-dir", str(tmp_path / "e")]
    for command in (["generate", "--prompt", "the movie"], eval_args):
        argv = [*command, "--model", tiny_chat_model, "--set", setting, "--set", "reward=vader"]
        assert re.search(message, one_line(capsys, argv))


def test_a_bad_reference_model_fails_before_any_generation(tmp_path, tiny_chat_model, capsys, monkeypatch):
    from ple.evaluation import evaluate

    monkeypatch.setattr(evaluate, "generate_rows", lambda *a, **k: pytest.fail("generated before checking"))
    prompts = write_queries(tmp_path / "p.jsonl", n=2)
    argv = ["eval", "--model", tiny_chat_model, "--prompts-file", str(prompts), "--set", "reward=vader"]
    err = one_line(capsys, [*argv, "--reference-model", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "e")])
    assert "model not found" in err


def test_a_chat_role_the_models_template_rejects_is_one_line(config, tmp_path, tiny_chat_model):
    """Some chat templates have no system role (the principle's place): the template's own error, on one line."""
    model = tmp_path / "no_system"
    shutil.copytree(tiny_chat_model, model)
    settings = json.loads((model / "tokenizer_config.json").read_text())
    template = "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
    template += "{% endif %}{{ m['content'] }} {% endfor %}"
    (model / "chat_template.jinja").write_text(template)
    settings.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(settings))
    with pytest.raises(PLEError, match="chat template refused a prompt with roles system, user: no system role"):
        run({**config, "model": str(model), "iterations": 1})


def test_yaml_merge_keys_and_damaged_result_files(tmp_path):
    """`<<: *anchor` is YAML, not an error (a key given twice still is); a JSON file damaged after ple wrote it is
    one line naming it, and a damaged evaluation counts as unfinished, so a rerun redoes it."""
    from ple.evaluation.grid import is_current
    from ple.io import load_yaml, read_json, read_jsonl

    merged = load_yaml("base: &b\n  x: 1\nother:\n  <<: *b\n  y: 2\n", "compare file")
    assert merged["other"] == {"x": 1, "y": 2}
    with pytest.raises(PLEError, match="key 'x' is given twice"):
        load_yaml("other:\n  x: 1\n  x: 2\n", "compare file")
    torn = tmp_path / "eval.json"
    torn.write_text('{"model": "m", "metr')
    with pytest.raises(PLEError, match="eval.json is not valid JSON .*delete it, and a rerun redoes it"):
        read_json(torn)
    assert not is_current(tmp_path, "eval.json", {})
    rows = tmp_path / "completions.jsonl"
    rows.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(PLEError, match="completions.jsonl line 2 is not valid JSON"):
        read_jsonl(rows)
