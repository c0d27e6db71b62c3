"""Nothing lost, nothing mixed: run-directory safety, resume checks, corrupt checkpoints, non-finite numbers and
rewards that fail, each ending in one line that names the cause."""

import json
import math

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from ple.cli import main
from ple.config import Config, load_config, save_config
from ple.errors import PLEError
from ple.trainer import PLETrainer
from ple.training.rundir import MARKER, config_changes, lock_run_dir, refuse_foreign, write_input_hashes


def run(config: dict, resume: bool = False) -> PLETrainer:
    trainer = PLETrainer(args=load_config(overrides=config))
    trainer.train(resume=resume)
    return trainer


def strict_rows(path):
    """Rows parsed as strict JSON parsers do: NaN and Infinity are not JSON."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.fixture
def config(tmp_path, tiny_chat_model, queries_file, reward_module):
    return tiny_config(tiny_chat_model, queries_file, tmp_path / "run", f"{reward_module}:positivity", iterations=1)


def test_a_second_run_on_a_locked_directory_stops_with_one_line(config, tmp_path):
    held = lock_run_dir(tmp_path / "run")  # another run holds the directory
    try:
        with pytest.raises(PLEError, match=r"run is in use by another run \(pid \d+\)"):
            run(config)
        assert not (tmp_path / "run" / "config.yaml").exists()
    finally:
        held.close()
    # A lock file left by a run that died holds no OS lock: the next run goes ahead.
    assert (tmp_path / "run" / ".lock").is_file()
    run(config)
    assert len(strict_rows(tmp_path / "run" / "metrics.jsonl")) == 1


@pytest.mark.parametrize("stray", ["final/precious.txt", "generations/iter_007.jsonl", "metrics.jsonl"])
def test_a_new_run_never_writes_into_a_directory_it_does_not_own(config, tmp_path, stray):
    path = tmp_path / "run" / stray
    path.parent.mkdir(parents=True)
    path.write_text("mine")
    for resume in (False, True):
        with pytest.raises(PLEError, match="is not empty and holds no ple run"):
            run(config, resume=resume)
    assert path.read_text() == "mine" and sorted(p.name for p in (tmp_path / "run").iterdir()) == [stray.split("/")[0]]


def test_a_process_of_the_same_launch_writing_the_marker_is_not_a_foreign_folder(tmp_path):
    """Under accelerate every process checks the new directory while the main one writes the marker: the marker's
    half-written temporary file (the name atomic_write_text uses) must not read as a user's folder; anything else
    still does."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / f".{MARKER}.tmp").write_text("a ple run dir")
    (run_dir / ".lock").write_text("")
    refuse_foreign(run_dir)
    (run_dir / ".notes.tmp").write_text("mine")
    with pytest.raises(PLEError, match="is not empty and holds no ple run"):
        refuse_foreign(run_dir)


def test_the_marker_renamed_between_the_check_and_the_listing_is_not_a_foreign_folder(tmp_path, monkeypatch):
    """An interleaving a launch can hit (the likely cause of a CI failure where rank 1 exited with a ple error): the
    other process asks whether the marker is there (not yet), the main process renames it into place, the other
    process lists the directory and finds it."""
    import ple.training.rundir as rundir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text("")
    first_look = rundir.holds_ple_run

    def main_process_renames_the_marker_now(path):
        held = first_look(path)
        (path / MARKER).write_text("a ple run dir")
        return held

    monkeypatch.setattr(rundir, "holds_ple_run", main_process_renames_the_marker_now)
    refuse_foreign(run_dir)


def test_output_dir_that_is_empty_or_a_file_is_one_line(config, tmp_path):
    with pytest.raises(PLEError, match="output_dir is empty"):
        load_config(overrides={**config, "output_dir": ""})
    (tmp_path / "file").write_text("x")
    with pytest.raises(PLEError, match="output_dir .*file is a file, not a directory"):
        run({**config, "output_dir": str(tmp_path / "file")})


def test_a_run_that_failed_before_its_first_checkpoint_restarts_with_a_corrected_config(
    config, tmp_path, reward_module
):
    with pytest.raises(PLEError, match="returned 1 scores for 12 completions"):
        run({**config, "reward": f"{reward_module}:wrong_length"})
    assert (tmp_path / "run" / "config.yaml").is_file() and not (tmp_path / "run" / "checkpoints").exists()
    run(config)  # no --resume needed, and the config may change
    assert [m["iteration"] for m in strict_rows(tmp_path / "run" / "metrics.jsonl")] == [0]


def test_resume_checks_what_matters(config, tmp_path, queries_file):
    run({**config, "iterations": 2})
    # Another spelling of the same directory, or a moved one, is the same run.
    run({**config, "iterations": 2, "output_dir": str(tmp_path / "run") + "/"}, resume=True)
    (tmp_path / "run").rename(tmp_path / "moved")
    run({**config, "iterations": 2, "output_dir": str(tmp_path / "moved")}, resume=True)
    moved = {**config, "output_dir": str(tmp_path / "moved")}
    with pytest.raises(PLEError, match="with iterations=1: it has finished 2"):
        run({**moved, "iterations": 1}, resume=True)
    with open(queries_file, "a") as f:
        f.write('{"prompt": "a new query", "id": 99}\n')
    with pytest.raises(PLEError, match=f"dataset file {queries_file} changed since the run started"):
        run({**moved, "iterations": 3}, resume=True)


def test_a_principles_file_reinstalled_elsewhere_is_the_same_setting(tmp_path):
    # A preset's principles file lives inside the installed package, so a reinstall moves it (the old copy is
    # usually gone); the content hash the run recorded decides.
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("kind: be kind\n")
    second.write_text("kind: be kind\n")
    saved = tmp_path / "config.yaml"
    save_config(Config(principle=str(first)), saved)
    write_input_hashes(tmp_path, Config(principle=str(first)))
    first.unlink()
    assert config_changes(saved, Config(principle=str(second))) == []
    second.write_text("kind: be blunt\n")
    assert config_changes(saved, Config(principle=str(second))) == ["principle"]
    assert config_changes(saved, Config(principle=str(tmp_path / "missing.yaml"))) == ["principle"]
    # A directory is compared by where it is: another spelling of it is the same, another directory is not.
    save_config(Config(model=str(tmp_path)), saved)
    assert config_changes(saved, Config(model=str(tmp_path) + "/")) == []
    assert config_changes(saved, Config(model=str(tmp_path.parent))) == ["model"]


def test_an_inline_principle_longer_than_a_file_name_is_text(tmp_path):
    # 400 characters: no file can be named so (the stat of it fails with "File name too long", which the run
    # directory's input hashes once raised).
    long, other = "Write as a critic would. " * 16, "Write as a fan would. " * 18
    saved = tmp_path / "config.yaml"
    save_config(Config(principle=long), saved)
    write_input_hashes(tmp_path, Config(principle=long))
    assert "principle" not in json.loads((tmp_path / "inputs.json").read_text())
    assert config_changes(saved, Config(principle=long)) == []
    assert config_changes(saved, Config(principle=other)) == ["principle"]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(config, tmp_path, capsys):
    full = tmp_path / "full"
    run({**config, "iterations": 3, "output_dir": str(full)})
    run({**config, "iterations": 2})
    newest = tmp_path / "run" / "checkpoints" / "iter_001" / "adapter_model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # what a full disk leaves
    run({**config, "iterations": 3}, resume=True)
    assert "ple: warning: checkpoint" in capsys.readouterr().err  # iter_001 ... is unreadable
    a = load_file(full / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "run" / "final" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # iteration 1 redone from iter_000
    for checkpoint in (tmp_path / "run" / "checkpoints").iterdir():
        (checkpoint / "optimizer.pt").write_bytes(b"torn")
    with pytest.raises(PLEError, match="no checkpoint in .* could be read"):
        run({**config, "iterations": 4}, resume=True)


def test_a_huge_reward_gives_finite_losses_and_strict_json(config, tmp_path):
    reward = tmp_path / "huge.py"
    reward.write_text("def f(prompts, completions, **kw):\n    return [S * (len(c) % 3 - 1) for c in completions]\n")
    reward.write_text(reward.read_text() + "S = 1e39\n")
    run({**config, "reward": f"{reward}:f"})
    (m,) = strict_rows(tmp_path / "run" / "metrics.jsonl")
    assert m["skipped_steps"] == 0 and math.isfinite(m["loss"])  # the weights are (1, 0), not NaN

    reward.write_text(reward.read_text().replace("S = 1e39", "S = 1e308"))
    trainer = run({**config, "reward": f"{reward}:f", "output_dir": str(tmp_path / "overflow")})
    rows = strict_rows(tmp_path / "overflow" / "generations" / "iter_000.jsonl")
    overflowed = [r for r in rows if r["s"] is not None and r["s_p"] is not None and abs(r["s_p"] - r["s"]) > 1e308]
    assert overflowed and all(r["gap"] is None and r["branch"] == "skip" for r in overflowed)
    strict_rows(tmp_path / "overflow" / "metrics.jsonl")
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_a_diverging_learning_rate_never_reaches_a_checkpoint(config, tmp_path, capsys):
    import yaml

    path = tmp_path / "diverge.yaml"
    path.write_text(yaml.safe_dump({**config, "learning_rate": 1e30, "iterations": 3, "max_nonfinite_steps": 1}))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert err.startswith("ple: error: ") and ("non-finite loss or gradient" in err or "probabilities are NaN" in err)
    for checkpoint in (tmp_path / "run" / "checkpoints").glob("iter_*"):
        weights = load_file(checkpoint / "adapter_model.safetensors")
        assert all(torch.isfinite(v).all() for v in weights.values())


def test_a_nan_loss_step_is_skipped_counted_and_stops_the_run_after_the_limit(config, tmp_path, monkeypatch):
    from ple import trainer as trainer_module

    original = trainer_module.ple_loss

    def nan_loss(*args, **kwargs):
        out = original(*args, **kwargs)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(trainer_module, "ple_loss", nan_loss)
    # 6 queries in steps of 4: two steps, both NaN, with room for two in a row.
    trainer = run({**config, "max_nonfinite_steps": 3})
    (m,) = strict_rows(tmp_path / "run" / "metrics.jsonl")
    assert (m["skipped_steps"], m["optimizer_steps"]) == (2, 0)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    with pytest.raises(PLEError, match="2 optimizer steps in a row had a non-finite loss or gradient"):
        run({**config, "max_nonfinite_steps": 2, "output_dir": str(tmp_path / "two")})


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "def f(prompts, completions, **kw):\n    raise RuntimeError('server down')\n",
            "raised RuntimeError: server down",
        ),
        ("def f(prompts, completions):\n    return [0.0] * len(completions)\n", "does not take the dataset's columns"),
        ("def f(prompts, completions, **kw)\n    return []\n", "could not be loaded: expected ':'"),
        ("import no_such_module_here\n", "could not be loaded: .*No module named 'no_such_module_here'"),
    ],
)
def test_a_broken_reward_fails_before_any_work_with_one_line(config, tmp_path, body, message, capsys):
    reward = tmp_path / "bad_reward.py"
    reward.write_text(body)
    with pytest.raises(PLEError, match=message):
        PLETrainer(args=load_config(overrides={**config, "reward": f"{reward}:f"}))
    assert not (tmp_path / "run").exists()


def test_a_reward_that_raises_inside_ple_eval_is_one_line(tmp_path, tiny_chat_model, queries_file, capsys, monkeypatch):
    import yaml

    from ple.evaluation import evaluate

    def no_generation(*args, **kwargs):
        raise AssertionError("generation ran before the reward was checked")

    monkeypatch.setattr(evaluate, "generate_rows", no_generation)

    reward = tmp_path / "flaky.py"
    reward.write_text("def f(prompts, completions, **kw):\n    raise ValueError('no scores today')\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_chat_model, queries_file, tmp_path / "run", f"{reward}:f")))
    out = tmp_path / "eval"
    args = ["eval", "--config", str(config), "--model", tiny_chat_model, "--prompts-file", str(queries_file)]
    assert main([*args, "--output-dir", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "ple: error: reward f raised ValueError: no scores today"


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path, tiny_chat_model, capsys, monkeypatch):
    from ple.evaluation import evaluate

    def no_generation(*args, **kwargs):
        raise AssertionError("generation ran before the output was checked")

    monkeypatch.setattr(evaluate, "generate_rows", no_generation)
    (tmp_path / "a_file").write_text("x")
    assert main(["generate", "--model", tiny_chat_model, "--prompt", "x", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"ple: error: --output {tmp_path} is a directory; name a .jsonl file"
    assert main(["eval", "--model", tiny_chat_model, "--output-dir", str(tmp_path / "a_file")]) == 2
    assert (
        capsys.readouterr().err.strip() == f"ple: error: --output-dir {tmp_path / 'a_file'} is a file, not a directory"
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "a_file"]  # no stray .tmp


def test_a_null_completion_in_a_compare_file_is_one_line(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "x", "completion": null}\n')
    assert main(["eval", "--compare", str(rows), str(rows), "--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"ple: error: {rows} row 0: 'completion' must be text, got NoneType"


def test_a_lone_surrogate_in_a_prompt_is_one_line(config, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "broken \\ud800 text"}\n')
    with pytest.raises(PLEError, match="bad.jsonl row 1: the prompt holds an invalid character"):
        PLETrainer(args=load_config(overrides={**config, "dataset": str(bad)}))


def test_prompt_and_generation_longer_than_the_model_are_refused_at_start_up(config, tmp_path):
    with pytest.raises(
        PLEError, match="max_prompt_tokens \\+ max_new_tokens = 1030 exceeds the model's 1024 positions"
    ):
        run({**config, "max_prompt_tokens": 1024})
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_full_disk_is_one_line_and_keeps_what_was_written(config, tmp_path, capsys, monkeypatch):
    import errno

    import yaml

    from ple.training import rundir

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**config, "iterations": 2}))
    assert main(["train", "--config", str(path), "--set", "iterations=1"]) == 0
    before = (tmp_path / "run" / "metrics.jsonl").read_text()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "generations"))

    monkeypatch.setattr(rundir, "atomic_write_jsonl", full)
    capsys.readouterr()
    assert main(["train", "--config", str(path), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"ple: error: cannot write {tmp_path / 'run' / 'generations'}: No space left on device"
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_a_disk_that_fills_during_a_checkpoint_is_one_line_and_the_run_resumes(config, tmp_path, capsys, monkeypatch):
    """torch.save reports a full disk as a RuntimeError (PytorchStreamWriter failed writing file): one line, the
    finished checkpoint whole, and the resumed run ends as an uninterrupted one."""
    import yaml

    from ple.training import policy

    full = tmp_path / "full"
    run({**config, "iterations": 2, "output_dir": str(full)})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**config, "iterations": 2}))
    saves = []
    real_save = torch.save

    def filling(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) == 2:  # iteration 1's checkpoint
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(policy.torch, "save", filling)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ple: error: cannot write the checkpoint's optimizer state") and "free space" in err
    monkeypatch.setattr(policy.torch, "save", real_save)
    assert main(["train", "--config", str(path), "--resume"]) == 0
    a = load_file(full / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "run" / "final" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
