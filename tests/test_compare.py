"""`ple compare`: the grid runs, writes its table and charts, and a rerun redoes only unfinished cells."""

import csv
import dataclasses
import json
import os
import shutil

import pytest
from conftest import tiny_config

from ple.cli import main
from ple.errors import PLEError
from ple.evaluation.grid import claim_grid_dir, run_grid
from ple.evaluation.grid_spec import load_grid
from ple.testing import build_tiny_model


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
        eval_rewards=[f"{reward_module}:positivity", f"{reward_module}:half_none"],  # the first one judges
    )
    return {
        "output_dir": str(tmp_path / "grid"),
        "methods": ["ple", "sft", "distill"],
        "seeds": [0, 1],
        "tie_margin": 0.0,
        "config": config,
    }


def test_grid_writes_table_and_charts_and_resumes(spec_raw, tmp_path, capsys):
    report = run_grid(load_grid(spec_raw))
    grid = tmp_path / "grid"
    summary = list(csv.DictReader(open(grid / "results.csv")))
    assert [r["method"] for r in summary] == ["ple", "sft", "distill"]
    assert all(r["seeds"] == "2" for r in summary)
    cells = list(csv.DictReader(open(grid / "cells.csv")))
    assert len(cells) == 6 and {c["step"] for c in cells} == {"1"} and {c["learning_rate"] for c in cells} == {"0.005"}
    long = list(csv.DictReader(open(grid / "results_long.csv")))
    assert set(long[0]) == {"method", "learning_rate", "seed", "step", "metric", "value"}
    ple0 = {r["metric"]: r["value"] for r in long if (r["method"], r["seed"]) == ("ple", "0")}
    evaluated = json.loads((grid / "cells/ple/lr_0.005/seed0/eval/step_001/eval.json").read_text())
    assert float(ple0["distinct_2"]) == evaluated["metrics"]["distinct_2"]["value"]
    by_method = {r["method"]: r for r in summary}
    assert float(by_method["ple"]["samples_mean"]) == 8 and float(by_method["sft"]["samples_mean"]) == 0
    assert by_method["sft"]["win_vs_sft_mean"] == ""  # sft is not judged against itself
    assert by_method["ple"]["win_vs_sft_mean"] != ""
    for name in ("win_rates.png", "heldout_vs_samples.png"):
        assert (grid / name).stat().st_size > 1000
    text = report.read_text()
    assert "| base model |" in text and "| ple |" in text and "Not finished" not in text
    vs_base = json.loads((grid / "cells/ple/lr_0.005/seed0/vs_base/compare.json").read_text())
    assert vs_base["n_prompts"] == 5 and vs_base["unscored"] == 0
    # half_none scores only the even answers: its mean and its n count those alone
    half = evaluated["metrics"][next(k for k in evaluated["metrics"] if k.endswith("half_none"))]
    rows = [json.loads(line) for line in open(grid / "cells/ple/lr_0.005/seed0/eval/step_001/completions.jsonl")]
    scored = [r[f"heldout:{spec_raw['config']['eval_rewards'][1]}"] for r in rows[::2]]
    assert half["n"] == 3 and half["value"] == pytest.approx(sum(scored) / 3)

    # A second run redoes only what is missing: one cell's evaluation is deleted, the rest is kept.
    kept = grid / "cells/sft/lr_0.005/seed1/eval/step_001/eval.json"
    stamp = kept.stat().st_mtime_ns
    redone = grid / "cells/ple/lr_0.005/seed1/eval/step_001"
    for path in redone.iterdir():
        path.unlink()
    redone.rmdir()
    run_grid(load_grid(spec_raw))
    assert kept.stat().st_mtime_ns == stamp
    assert (redone / "eval.json").is_file()
    assert len(list(csv.DictReader(open(grid / "cells.csv")))) == 6

    # A finished cell is not silently reused under a changed config (a learning rate is a cell of its own).
    spec_raw["config"]["max_new_tokens"] = 5
    with pytest.raises(PLEError, match="finished with another config \\(max_new_tokens\\)"):
        run_grid(load_grid(spec_raw))


def test_a_cell_killed_mid_training_resumes(spec_raw, tmp_path, monkeypatch):
    """Resumed, not restarted: iteration 0 is not trained again, and its generations stay as they were."""
    spec_raw.update(methods=["ple"], seeds=[0])
    spec_raw["config"]["iterations"] = 2
    grid = load_grid(spec_raw)
    (cell,) = grid.cells
    # Simulate a kill after iteration 0: train one iteration, then ask the grid for two.
    from ple.trainer import PLE, PLETrainer

    claim_grid_dir(grid.output_dir)  # as the killed grid run did first
    PLETrainer(args=dataclasses.replace(cell.config, iterations=1)).train()
    first = (cell.paths.root / "generations/iter_000.jsonl").read_text()
    ran = []
    original = PLE.iteration
    monkeypatch.setattr(PLE, "iteration", lambda self, t: ran.append(t) or original(self, t))
    run_grid(grid)
    assert ran == [1]
    assert (cell.paths.root / "generations/iter_000.jsonl").read_text() == first
    metrics = [json.loads(line) for line in (cell.paths.root / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1]


def test_compare_never_writes_into_a_users_folder(spec_raw, tmp_path):
    """A folder holding the user's own results.md (and their compare.yaml) is not a grid: refused before any work,
    nothing overwritten. A file as output_dir is one line too."""
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("results.md", "cells.csv", "compare.yaml"):
        (mine / name).write_text(f"the user's {name}")
    with pytest.raises(PLEError, match=r"output_dir .*mine is not empty and holds no ple compare grid \(cells.csv"):
        run_grid(load_grid({**spec_raw, "output_dir": str(mine)}))
    assert [(mine / n).read_text() for n in ("results.md", "cells.csv", "compare.yaml")] == [
        "the user's results.md",
        "the user's cells.csv",
        "the user's compare.yaml",
    ]
    assert sorted(p.name for p in mine.iterdir()) == ["cells.csv", "compare.yaml", "results.md"]
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(PLEError, match="is a file, not a directory"):
        run_grid(load_grid({**spec_raw, "output_dir": str(tmp_path / "a_file")}))
    grid = tmp_path / "grid"  # a grid whose base/ became a file: one line before any work, the file kept
    claim_grid_dir(grid)
    (grid / "base").write_text("the user's notes")
    with pytest.raises(PLEError, match="grid/base is a file where the grid keeps a folder"):
        run_grid(load_grid(spec_raw))
    assert (grid / "base").read_text() == "the user's notes"


def test_bad_compare_files_fail_with_one_line(spec_raw, tmp_path, capsys):
    with pytest.raises(PLEError, match="unknown method"):
        load_grid({**spec_raw, "methods": ["ple", "ppo"]})
    with pytest.raises(PLEError, match="seeds"):
        load_grid({**spec_raw, "seeds": "0"})
    with pytest.raises(PLEError, match="unknown compare key"):
        load_grid({**spec_raw, "method": ["ple"]})
    with pytest.raises(PLEError, match="learning_rates.* positive learning rates"):
        load_grid({**spec_raw, "learning_rates": [True]})  # YAML's `true` is no learning rate (it read as 1.0)
    with pytest.raises(PLEError, match="eval_dataset"):
        load_grid({**spec_raw, "config": {k: v for k, v in spec_raw["config"].items() if k != "eval_dataset"}})
    with pytest.raises(PLEError, match="cell sft/lr_0.005/seed0: .*sft_dataset"):
        load_grid({**spec_raw, "config": {k: v for k, v in spec_raw["config"].items() if k != "sft_dataset"}})
    assert main(["compare", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "compare file not found" in capsys.readouterr().err


def test_the_lr_grid_picks_each_methods_rate_on_validation_prompts_and_the_verdict_follows(
    spec_raw, tmp_path, queries_file, reward_module, monkeypatch
):
    """Each method trains at each rate, is scored on the validation prompts, and its cells train at the best rate;
    results.md then holds PLE's difference from each method, computed here by hand from the completions."""
    validation = tmp_path / "validation.jsonl"
    validation.write_text("".join(json.dumps({"prompt": f"validate {w}"}) + "\n" for w in ("a b", "c d", "e", "f g")))
    spec_raw["config"]["eval_rewards"] = f"{reward_module}:positivity"
    spec_raw.update(
        methods=["ple", "sft"],
        seeds=[0, 1],
        seeds_per_method={"sft": [0]},
        lr_grid={
            "rates": [1e-4, 5e-2],
            "iterations": 1,
            "queries_per_iteration": 4,
            "validation_dataset": str(validation),
        },
    )
    report = run_grid(load_grid(spec_raw)).read_text()
    grid = tmp_path / "grid"
    chosen = json.loads((grid / "lr_grid.json").read_text())
    assert set(chosen["scores"]) == {"ple", "sft"} and chosen["validation_prompts"] == 4
    for method in ("ple", "sft"):
        scores = chosen["scores"][method]
        assert set(scores) == {"0.0001", "0.05"}
        assert chosen["chosen"][method] == float(max(scores, key=scores.get))
        evaluated = [
            json.loads(line)["prompt"] for line in open(grid / "lr_grid" / method / "lr_0.05/eval/completions.jsonl")
        ]
        assert evaluated == [f"validate {w}" for w in ("a b", "c d", "e", "f g")]  # never the eval prompts
        rate = chosen["chosen"][method]
        cell_config = grid / "cells" / method / f"lr_{rate:g}" / "seed0" / "config.yaml"
        assert f"learning_rate: {rate}" in cell_config.read_text()
    assert not list(grid.glob("cells/sft/*/seed1"))  # sft runs its own seeds only

    def held_out(method):
        (path,) = grid.glob(f"cells/{method}/*/seed0/eval/step_001/completions.jsonl")
        rows = [json.loads(line) for line in open(path)]
        return [r[f"heldout:{reward_module}:positivity"] for r in rows]

    delta = sum(a - b for a, b in zip(held_out("ple"), held_out("sft"))) / len(held_out("ple"))  # seed 0 is shared
    (line,) = [row for row in report.splitlines() if row.startswith("| sft | ") and "/" in row]
    assert line.startswith(f"| sft | {delta:+.3f} | [")
    assert "## Learning rates" in report and "## PLE against each method" in report
    assert any(
        v in report
        for v in ("- PLE is ahead of sft.", "- sft is ahead of PLE.", "- no difference detected between PLE and sft.")
    )
    assert "The paper's claim" in report and (grid / "figure3.png").stat().st_size > 1000
    assert "distinct-2 fell by more than 10% of the base model's" in report
    assert "2 seed(s) per method (sft 1): mean" in report
    assert "### PLE's branches per iteration (mean over 2 seeds" in report
    (invocation,) = (grid / "invocations").glob("*.json")
    assert json.loads(invocation.read_text())["peak_rss_gb"] > 0 and "Wall time: " in report

    # The views compute nothing: `ple report` rewrites results.md and its CSVs from results.json alone.
    import ple.evaluation.results as results
    import ple.evaluation.stats as stats

    def no_statistics(*args, **kwargs):
        raise AssertionError("a view recomputed a statistic")

    for module in (results, stats):
        monkeypatch.setattr(module, "hierarchical_difference", no_statistics)
    for name in ("results.md", "differences.csv", "results.csv"):
        (grid / name).unlink()
    assert main(["report", str(grid)]) == 0
    assert (grid / "results.md").read_text() == report and (grid / "differences.csv").is_file()


def test_a_frontier_grid_evaluates_every_snapshot_and_draws_the_base_models_best_of_n(spec_raw, tmp_path):
    spec_raw["config"].update(iterations=2, snapshot_every=1, temperature=0.7)
    spec = {
        **spec_raw,
        "methods": ["ple", "dpo"],
        "seeds": [0],
        "evaluation": {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
        "best_of_n": [1, 3],
        "frontier": {"budgets": [0.5, 50.0], "resamples": 100, "max_top_sentence_share": 1.0},
    }
    grid = load_grid(spec)
    assert grid.base.temperature == 1.0 and grid.cells[0].config.temperature != 1.0  # evaluation only
    run_grid(grid)
    root = tmp_path / "grid"
    for method in ("ple", "dpo"):
        cell = root / "cells" / method / "lr_0.005" / "seed0"
        assert sorted(p.name for p in (cell / "eval").iterdir()) == ["step_001", "step_002"]
        first, last = (json.loads((cell / "eval" / s / "eval.json").read_text()) for s in ("step_001", "step_002"))
        assert first["model"].endswith("snapshots/step_001") and last["model"].endswith("final")
        assert "answers drawn from pi itself" in last["metrics"]["kl"]["between"]
    draws = sorted(p.name for p in (root / "base_draws").iterdir())
    assert draws == ["draw_01", "draw_02"]  # draw 0 is the base model's evaluation itself
    answers = [
        [json.loads(line)["completion"] for line in (d / "completions.jsonl").read_text().splitlines()]
        for d in (root / "base", root / "base_draws" / "draw_01")
    ]
    assert answers[0] != answers[1]  # another seed, other answers
    frontier = json.loads((root / "frontier.json").read_text())
    assert len(frontier["points"]) == 2 * 2 + 2  # two methods at two steps, best-of-1 and best-of-3
    assert [r["method"] for r in frontier["differences"]] == ["dpo", "dpo"]  # PLE minus dpo at each budget
    assert frontier["claim"].startswith("On the held-out judge, at matched KL")
    assert json.loads((root / "probe.json").read_text())["n"] == 5
    text = (root / "frontier.md").read_text()
    assert "## Verdict" in text and "| dpo |" in text
    assert "## The reward-KL frontier" in (root / "results.md").read_text()
    for plot in ("frontier.png", "frontier_diversity.png", "frontier_forest.png"):
        assert (root / plot).stat().st_size > 1000
    with pytest.raises(PLEError, match="evaluation"):
        load_grid({**spec, "evaluation": {"learning_rate": 1.0}})
    with pytest.raises(PLEError, match="best_of_n"):
        load_grid({**spec, "best_of_n": [0]})
    with pytest.raises(PLEError, match="budgets"):
        load_grid({**spec, "frontier": {"budgets": []}})


def test_a_rerun_redoes_what_changed_settings_made_stale_and_keeps_the_rest(spec_raw, tmp_path):
    """tie_margin changed: the pairs are judged again, the evaluations kept. Evaluation settings changed: every
    model is evaluated again. Eval prompts edited in place: a finished cell refuses in one line. The base model
    changed (cells deleted, as the refusal says): base re-evaluated."""
    spec_raw.update(methods=["ple"], seeds=[0])
    prompts_file = tmp_path / "eval_prompts.jsonl"  # apart from the training queries, which a cell checks on resume
    shutil.copy(spec_raw["config"]["eval_dataset"], prompts_file)
    spec_raw["config"]["eval_dataset"] = str(prompts_file)
    run_grid(load_grid(spec_raw))
    grid = tmp_path / "grid"
    cell_eval = grid / "cells/ple/lr_0.005/seed0/eval/step_001"
    vs_base = grid / "cells/ple/lr_0.005/seed0/vs_base"
    times = lambda: {p: (p / f).stat().st_mtime_ns for p, f in ((cell_eval, "eval.json"), (vs_base, "compare.json"))}  # noqa: E731
    first = times()

    run_grid(load_grid({**spec_raw, "tie_margin": 5.0}))
    second = times()
    assert second[cell_eval] == first[cell_eval] and second[vs_base] != first[vs_base]
    assert json.loads((vs_base / "made_from.json").read_text())["tie_margin"] == 5.0
    assert json.loads((vs_base / "compare.json").read_text())["rates"]["tie"]["value"] == 1.0  # every gap is < 5

    run_grid(load_grid({**spec_raw, "tie_margin": 5.0, "evaluation": {"max_new_tokens": 3}}))
    third = times()
    assert third[cell_eval] != second[cell_eval] and third[vs_base] != second[vs_base]
    rows = [json.loads(line) for line in (cell_eval / "completions.jsonl").read_text().splitlines()]
    assert max(r["n_tokens"] for r in rows) <= 3  # evaluated under the new settings
    assert max(json.loads(line)["n_tokens"] for line in (grid / "base/completions.jsonl").read_text().splitlines()) <= 3

    # Two eval prompts edited in place: the finished cell, whose inputs include them, refuses in one line rather
    # than stand beside models that answered other prompts.
    original = prompts_file.read_text()
    rows = [json.loads(line) for line in original.splitlines()]
    rows[0]["prompt"], rows[1]["prompt"] = "an edited prompt", "another edited prompt"
    prompts_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec_raw.update(tie_margin=5.0, evaluation={"max_new_tokens": 3})
    with pytest.raises(PLEError, match="eval_dataset file .*eval_prompts.jsonl changed since the run started"):
        run_grid(load_grid(spec_raw))

    # The base model changed alone (the prompts as before), the cells deleted as the refusal asks: the base model
    # is evaluated again.
    prompts_file.write_text(original)
    run_grid(load_grid(spec_raw))  # the base model answers the original prompts again; the cell is as it was
    other = build_tiny_model(tmp_path / "other_model", seed=7)
    shutil.rmtree(grid / "cells")
    run_grid(load_grid({**spec_raw, "config": {**spec_raw["config"], "model": str(other)}}))
    assert json.loads((grid / "base" / "eval.json").read_text())["model"] == str(other)
    made_from = json.loads((grid / "base" / "made_from.json").read_text())
    assert made_from["model"] == os.path.relpath(other, grid / "base")


def test_a_grid_whose_baseline_is_its_reference_or_whose_tie_margin_is_not_a_number_is_one_line(spec_raw):
    with pytest.raises(PLEError, match="baseline and reference are both ple; name another baseline"):
        load_grid({**spec_raw, "baseline": "ple"})
    for bad in ("abc", [0.1], -1, True):
        with pytest.raises(PLEError, match="`tie_margin` must be a number >= 0"):
            load_grid({**spec_raw, "tie_margin": bad})
    assert load_grid({**spec_raw, "tie_margin": "1e-3"}).tie_margin == 0.001  # PyYAML reads 1e-3 as text
    # Each of these was a traceback, one of them after every cell had trained.
    for change, message in (
        ({"config": ["a"]}, "`config` is a mapping"),
        ({"config": {**spec_raw["config"], "method": "dpo"}}, "each cell's method comes from `methods`"),
        ({"output_dir": None}, "`output_dir` must name a directory, got None"),
        ({"output_dir": 5}, "`output_dir` must name a directory, got 5"),
        ({"evaluation": {"temperature": -1}}, "temperature must be >= 0 .* \\(the evaluation's sampling settings\\)"),
        (
            {"lr_grid": {"rates": [1e-3], "validation_dataset": "v.jsonl", "validation_prompts": "100"}},
            "`lr_grid.validation_prompts` must be a positive integer, got '100'",
        ),
    ):
        with pytest.raises(PLEError, match=message):
            load_grid({**spec_raw, **change})
    assert load_grid({**spec_raw, "learning_rates": ["1e-3", 2e-4]}).learning_rates == (0.001, 0.0002)


def test_a_grid_moved_whole_keeps_its_cells_and_evaluations(spec_raw, tmp_path):
    spec_raw.update(methods=["ple"], seeds=[0])
    run_grid(load_grid(spec_raw))
    moved = tmp_path / "moved"
    (tmp_path / "grid").rename(moved)
    evaluation = moved / "cells/ple/lr_0.005/seed0/eval/step_001/eval.json"
    stamp = evaluation.stat().st_mtime_ns
    report = run_grid(load_grid({**spec_raw, "output_dir": str(moved)}))
    assert evaluation.stat().st_mtime_ns == stamp  # not retrained, not evaluated again
    assert "| ple |" in report.read_text()
    # As kept in git (results/.gitignore): without the weights, a finished cell is still finished.
    for weights in ("final", "checkpoints", "snapshots"):
        shutil.rmtree(moved / "cells/ple/lr_0.005/seed0" / weights, ignore_errors=True)
    run_grid(load_grid({**spec_raw, "output_dir": str(moved)}))
    assert evaluation.stat().st_mtime_ns == stamp
    assert not (moved / "cells/ple/lr_0.005/seed0/final").exists()  # nothing retrained


def test_a_grid_whose_reference_is_another_method_names_it_in_its_verdicts(spec_raw, tmp_path):
    spec_raw.update(methods=["ple-rank-only", "sft"], seeds=[0], reference="ple-rank-only")
    text = run_grid(load_grid(spec_raw)).read_text()
    verdicts = text[text.index("### Verdict") :].split("\n\n")[1]
    assert verdicts.startswith("- ") and "ple-rank-only" in verdicts and "PLE" not in verdicts
    assert "## ple-rank-only against each method" in text and "| ple-rank-only minus |" in text


def test_a_method_added_to_a_finished_grid_is_trained_alone_and_reported_as_added_later(spec_raw, tmp_path):
    spec_raw.update(methods=["ple"], seeds=[0])
    first = run_grid(load_grid(spec_raw)).read_text()
    assert "Added after the grid's first run" not in first
    grid = tmp_path / "grid"
    kept = grid / "cells/ple/lr_0.005/seed0/eval/step_001/eval.json"
    stamp = kept.stat().st_mtime_ns
    report = run_grid(load_grid({**spec_raw, "methods": ["ple", "sft"]})).read_text()
    assert kept.stat().st_mtime_ns == stamp  # ple's cell is not rerun
    records = sorted((grid / "invocations").glob("*.json"))
    assert [json.loads(p.read_text())["trained"] for p in records] == [
        ["cell ple/lr_0.005/seed0"],
        ["cell sft/lr_0.005/seed0"],
    ]
    day = lambda p: f"{p.name[:4]}-{p.name[4:6]}-{p.name[6:8]}"  # noqa: E731
    assert f"Added after the grid's first run (started {day(records[0])}): sft (trained {day(records[1])})" in report
