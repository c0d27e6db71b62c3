"""The real thing, shortened: SmolLM2 + VADER + the MiniLM judge. Needs the cached assets; `pytest -m slow`."""

import json

import pytest

from ple.demo import assets

pytestmark = pytest.mark.slow


def test_short_demo_on_the_real_model(tmp_path):
    for name in ("SmolLM2-135M-Instruct", "all-MiniLM-L6-v2", "pang-lee", "chatterbot-corpus"):
        if not (assets.cache_dir() / name / assets.MARKER).is_file():
            pytest.skip(f"{name} is not cached; run `ple demo` once")
    from ple.demo.run import run_demo

    report = run_demo(
        {
            "output_dir": str(tmp_path / "demo"),
            "iterations": 1,
            "queries_per_iteration": 4,
            "eval_prompts": 6,
            "max_new_tokens": 12,
        }
    )
    from ple.demo.run import JUDGE, ON_TASK

    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    shown = {"reward", JUDGE, ON_TASK, "distinct_2", "generation_perplexity", "kl", "repeated_4grams"}
    shown.add("top_sentence_share")
    assert set(summary) >= shown
    assert summary["kl"]["before"] == 0.0  # the base model against itself
    assert all(set(v) == {"before", "after", "delta", "ci_low", "ci_high"} for v in summary.values())
    assert report.is_file() and "## Examples" in report.read_text()


def test_short_compare_preset_on_the_real_model(tmp_path, monkeypatch):
    for name in ("SmolLM2-135M-Instruct", "all-MiniLM-L6-v2", "pang-lee"):
        if not (assets.cache_dir() / name / assets.MARKER).is_file():
            pytest.skip(f"{name} is not cached; run `ple demo` once")
    from ple.cli import main

    args = ["compare", "--preset", "sentiment", "--output-dir", str(tmp_path / "grid")]
    settings = dict(iterations=1, queries_per_iteration=4, batch_size=4, eval_max_prompts=6, max_new_tokens=12)
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    methods = ["ple", "sft", "dpo", "rloo", "raft"]
    from ple.demo import run as demo

    preset = demo.compare_preset

    def small(name):
        raw = preset(name)
        grid = {**raw["lr_grid"], "rates": [1e-4, 4e-4], "iterations": 1, "queries_per_iteration": 4}
        return {
            **raw,
            "methods": methods,
            "seeds": [0],
            "seeds_per_method": {},
            "lr_grid": {**grid, "validation_prompts": 6},
        }

    monkeypatch.setattr(demo, "compare_preset", small)
    assert main(args) == 0
    grid = tmp_path / "grid"
    rows = (grid / "results.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == methods
    assert (grid / "win_rates.png").is_file() and (grid / "figure3.png").is_file()
    validation = [json.loads(line)["prompt"] for line in open(grid / "lr_grid/ple/lr_0.0001/eval/completions.jsonl")]
    from ple.evaluation.grid_spec import CellPaths

    (cell,) = (grid / "cells" / "ple").glob("lr_*/seed0")  # the one rate the lr grid chose
    evaluated = [json.loads(line)["prompt"] for line in open(CellPaths(cell).eval(1) / "completions.jsonl")]
    trained = [json.loads(line)["query"] for line in open(cell / "generations/iter_000.jsonl")]
    assert len(validation) == 6 and not set(validation) & (set(evaluated) | set(trained))
    assert "### Verdict" in (grid / "results.md").read_text()
