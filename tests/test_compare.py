"""`ple compare`: the grid runs, writes its table and charts, and a rerun redoes only unfinished cells."""

import csv
import json

import pytest
from conftest import tiny_config

from ple.cli import main
from ple.compare import load_spec, run_compare
from ple.errors import PLEError


@pytest.fixture
def spec_raw(tmp_path, tiny_chat_model, queries_file, reward_module):
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": f"tell me {i}", "response": "good fun"}) + "\n" for i in range(4)))
    config = tiny_config(tiny_chat_model, queries_file, tmp_path / "unused", f"{reward_module}:positivity")
    config.pop("output_dir")
    config.update(
        iterations=1,
        queries_per_iteration=4,
        sft_dataset=str(sft),
        eval_dataset=str(queries_file),
        eval_max_prompts=5,
        eval_rewards=f"{reward_module}:half_none",
    )
    return {
        "output_dir": str(tmp_path / "grid"),
        "methods": ["ple", "sft", "distill"],
        "seeds": [0, 1],
        "tie_margin": 0.0,
        "config": config,
    }


def test_grid_writes_table_and_charts_and_resumes(spec_raw, tmp_path, capsys):
    report = run_compare(load_spec(spec_raw))
    grid = tmp_path / "grid"
    summary = list(csv.DictReader(open(grid / "results.csv")))
    assert [r["method"] for r in summary] == ["ple", "sft", "distill"]
    assert all(r["seeds"] == "2" for r in summary)
    cells = list(csv.DictReader(open(grid / "cells.csv")))
    assert len(cells) == 6
    by_method = {r["method"]: r for r in summary}
    assert float(by_method["ple"]["samples_mean"]) == 8 and float(by_method["sft"]["samples_mean"]) == 0
    assert by_method["sft"]["win_vs_sft_mean"] == ""  # sft is not judged against itself
    assert by_method["ple"]["win_vs_sft_mean"] != ""
    for name in ("win_rates.png", "heldout_vs_samples.png"):
        assert (grid / name).stat().st_size > 1000
    text = report.read_text()
    assert "| base model |" in text and "| ple |" in text and "Not finished" not in text
    assert json.loads((grid / "cells/ple/seed0/vs_base/compare.json").read_text())["n_prompts"] == 5

    # A second run redoes only what is missing: one cell's evaluation is deleted, the rest is kept.
    kept = grid / "cells/sft/seed1/eval/eval.json"
    stamp = kept.stat().st_mtime_ns
    redone = grid / "cells/ple/seed1/eval"
    for path in redone.iterdir():
        path.unlink()
    redone.rmdir()
    run_compare(load_spec(spec_raw))
    assert kept.stat().st_mtime_ns == stamp
    assert (redone / "eval.json").is_file()
    assert len(list(csv.DictReader(open(grid / "cells.csv")))) == 6

    # A finished cell is not silently reused under a changed config.
    spec_raw["config"]["learning_rate"] = 1e-3
    with pytest.raises(PLEError, match="finished with another config \\(learning_rate\\)"):
        run_compare(load_spec(spec_raw))


def test_a_cell_killed_mid_training_resumes(spec_raw, tmp_path):
    spec_raw.update(methods=["ple"], seeds=[0])
    spec_raw["config"]["iterations"] = 2
    spec = load_spec(spec_raw)
    cell = tmp_path / "grid/cells/ple/seed0"
    # Simulate a kill after iteration 0: train one iteration, then ask the grid for two.
    from ple.trainer import PLETrainer

    PLETrainer(spec["cells"][("ple", 0)].__class__(**{**spec["cells"][("ple", 0)].to_dict(), "iterations": 1})).train()
    run_compare(spec)
    metrics = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1]


def test_bad_compare_files_fail_with_one_line(spec_raw, tmp_path, capsys):
    with pytest.raises(PLEError, match="unknown method"):
        load_spec({**spec_raw, "methods": ["ple", "ppo"]})
    with pytest.raises(PLEError, match="seeds"):
        load_spec({**spec_raw, "seeds": "0"})
    with pytest.raises(PLEError, match="unknown compare key"):
        load_spec({**spec_raw, "method": ["ple"]})
    with pytest.raises(PLEError, match="eval_dataset"):
        load_spec({**spec_raw, "config": {k: v for k, v in spec_raw["config"].items() if k != "eval_dataset"}})
    with pytest.raises(PLEError, match="cell sft/seed0: .*sft_dataset"):
        load_spec({**spec_raw, "config": {k: v for k, v in spec_raw["config"].items() if k != "sft_dataset"}})
    assert main(["compare", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "compare file not found" in capsys.readouterr().err
