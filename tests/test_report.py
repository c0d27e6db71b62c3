"""`ple report`: a grid's frontier views re-rendered from its frontier.json alone, with no statistic recomputed."""

import json
import shutil
from pathlib import Path

import pytest

import ple.evaluation.frontier as frontier
from ple.cli import main

COMMITTED = Path(__file__).resolve().parents[1] / "results" / "sentiment-frontier"


def test_the_committed_frontier_re_renders_to_the_same_file_without_a_bootstrap(tmp_path, monkeypatch, capsys):
    def no_statistics(*args, **kwargs):
        raise AssertionError("a view recomputed a statistic")

    for name in ("bootstrap_envelopes", "compare", "envelope", "analyse"):
        monkeypatch.setattr(frontier, name, no_statistics)
    result = json.loads((COMMITTED / "frontier.json").read_text())
    # as written, and as a frontier.json from before it recorded its sampling (then read from compare.yaml)
    for case, written in (
        ("as_written", result),
        ("no_sampling", {k: v for k, v in result.items() if k != "sampling"}),
    ):
        out = tmp_path / case
        out.mkdir()
        (out / "frontier.json").write_text(json.dumps(written))
        shutil.copy(COMMITTED / "compare.yaml", out / "compare.yaml")
        assert main(["report", str(out)]) == 0
        assert (out / "frontier.md").read_text() == (COMMITTED / "frontier.md").read_text()
        assert (out / "frontier_points.csv").read_text() == (COMMITTED / "frontier_points.csv").read_text()
        assert all((out / f).stat().st_size > 1000 for f in ("frontier.png", "frontier_diversity.png"))


def test_the_committed_grid_re_renders_every_table_from_its_json_without_a_statistic(tmp_path, monkeypatch):
    import ple.evaluation.results as results
    import ple.evaluation.stats as stats

    def no_statistics(*args, **kwargs):
        raise AssertionError("a view recomputed a statistic")

    for module, name in ((frontier, "analyse"), (frontier, "bootstrap_envelopes"), (results, "analyse_results")):
        monkeypatch.setattr(module, name, no_statistics)
    for name in ("hierarchical_difference", "bootstrap_ci", "paired_bootstrap"):
        monkeypatch.setattr(stats, name, no_statistics)
    for name in ("results.json", "frontier.json", "compare.yaml"):
        shutil.copy(COMMITTED / name, tmp_path / name)
    shutil.copytree(COMMITTED / "invocations", tmp_path / "invocations")  # the cost line reads them
    assert main(["report", str(tmp_path)]) == 0
    for view in ("results.md", "results.csv", "results_long.csv", "cells.csv", "frontier.md", "frontier_points.csv"):
        assert (tmp_path / view).read_text() == (COMMITTED / view).read_text(), view


def test_an_evaluation_and_a_judging_re_render_to_the_same_files(tmp_path, monkeypatch):
    """eval.md from eval.json and compare.md from compare.json, as the committed grid's base and a judging hold
    them, with the statistics patched to raise."""
    import ple.evaluation.stats as stats

    monkeypatch.setattr(stats, "bootstrap_ci", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    judging = COMMITTED / "cells" / "ple-no-decay" / "lr_5e-05" / "seed0" / "vs_ple"
    for source, data, view in ((COMMITTED / "base", "eval.json", "eval.md"), (judging, "compare.json", "compare.md")):
        out = tmp_path / source.name
        out.mkdir()
        shutil.copy(source / data, out / data)
        assert main(["report", str(out)]) == 0
        assert (out / view).read_text() == (source / view).read_text()
    assert (tmp_path / "vs_ple" / "win_rate.png").stat().st_size > 1000


def test_report_on_a_folder_without_a_frontier_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "holds none of results.json, frontier.json, eval.json, compare.json" in capsys.readouterr().err
    (tmp_path / "frontier.json").write_text('{"points": [')
    assert main(["report", str(tmp_path)]) == 2
    assert "frontier.json is not valid JSON" in capsys.readouterr().err
    (tmp_path / "frontier.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "lacks what the views need" in err and "Traceback" not in err


def test_a_difference_without_an_interval_renders_as_nan_not_a_traceback(tmp_path):
    """strict JSON writes a nan as null: the view reads it back as nan (a judge that scored nothing), as the
    table showed before results.json existed."""
    from ple.evaluation.results_views import difference_section

    undefined = {"delta": None, "ci_low": None, "ci_high": None, "se": None, "detectable": None}
    result = {
        "base": {"metrics": {"distinct_2": {"value": None}}},
        "reference": "ple",
        "differences": {"sft": {**undefined, "seeds": 2, "prompts": 5, "pairwise": None}},
        "judge": "heldout:x",
        "tie_margin": 0.0,
        "detectable_median": None,
        "summary": [],
    }
    text = "\n".join(difference_section(tmp_path, result))
    assert "| sft | +nan | [+nan, +nan] | 2 | - | nan |" in text
    assert "- no difference detected between PLE and sft." in text
    assert "The base model's distinct-2 is nan" in text
    finite = {"delta": 0.1234, "ci_low": -0.0212, "ci_high": 0.2689, "se": 0.07, "detectable": 0.31}
    result["differences"]["sft"] |= finite
    text = "\n".join(difference_section(tmp_path, result))
    assert "| sft | +0.123 | [-0.021, +0.269] | 2 | - | 0.310 |" in text


def test_a_hand_edited_frontier_or_a_folder_in_place_of_a_view_is_one_line(tmp_path, capsys):
    result = json.loads((COMMITTED / "frontier.json").read_text())
    edited = tmp_path / "edited"  # a difference at a budget the rules do not name
    edited.mkdir()
    unknown_budget = [{**result["differences"][0], "budget": 99.0}]
    (edited / "frontier.json").write_text(json.dumps({**result, "differences": unknown_budget}))
    shutil.copy(COMMITTED / "compare.yaml", edited / "compare.yaml")
    assert main(["report", str(edited)]) == 2
    assert "lacks what the views need" in capsys.readouterr().err
    empty_grid = {"base": None, "rows": [], "summary": [], "columns": {}, "seeds": 1, "seeds_per_method": {}}
    empty_grid |= {"judge": "reward", "tie_margin": 0.0, "reference": "ple", "missing": [], "machine": "x"}
    empty_grid |= {
        "differences": {},
        "detectable_median": None,
        "ple_branches": {"seeds": 0, "iterations": []},
        "added_later": {},
    }
    (edited / "results.json").write_text(json.dumps({**empty_grid, "first_invocation": None}))
    (edited / "frontier.json").write_text(json.dumps(result))
    assert main(["report", str(edited)]) == 0  # an empty grid renders; frontier.json is not its own
    assert "## The reward-KL frontier" not in (edited / "results.md").read_text()
    (edited / "results.json").write_text(json.dumps({**empty_grid, "first_invocation": None, "frontier": True}))
    assert main(["report", str(edited)]) == 0
    assert "## The reward-KL frontier" in (edited / "results.md").read_text()
    (edited / "lr_grid.json").write_text('{"scores": 5}')  # the results views read it beside results.json
    assert main(["report", str(edited)]) == 2
    assert "lacks what the views need (AttributeError" in capsys.readouterr().err
    blocked = tmp_path / "blocked"  # frontier.md is a folder: its rename target, named
    blocked.mkdir()
    (blocked / "frontier.json").write_text(json.dumps(result))
    shutil.copy(COMMITTED / "compare.yaml", blocked / "compare.yaml")
    (blocked / "frontier.md").mkdir()
    assert main(["report", str(blocked)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {blocked / 'frontier.md'}: Is a directory" in err and "Traceback" not in err


def test_figure3_series_are_the_mean_and_range_over_seeds_of_the_iterations_all_seeds_reached():
    from ple.evaluation.results import branches_per_iteration

    runs = [
        [{"tau": 1.0, "mean_s": 0.2, "frac_rank": 0.5}, {"tau": 0.9, "mean_s": 0.6, "frac_rank": None}],
        [{"tau": 1.0, "mean_s": 0.4, "frac_rank": 0.25}, {"tau": 0.9, "mean_s": 0.8}, {"tau": 0.81}],
    ]
    branches = branches_per_iteration(runs)
    assert branches["seeds"] == 2 and len(branches["iterations"]) == 2  # the third iteration only one seed reached
    first, second = branches["iterations"]
    assert first["mean_s"] == pytest.approx({"mean": 0.3, "min": 0.2, "max": 0.4})
    assert first["frac_rank"] == pytest.approx({"mean": 0.375, "min": 0.25, "max": 0.5})
    assert second["frac_rank"] is None and second["mean_s_p"] is None  # logged by no seed
    assert branches_per_iteration([]) == {"seeds": 0, "iterations": []}
