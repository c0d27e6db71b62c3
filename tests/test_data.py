import json

import pandas as pd
import pytest

from ple.data import load_rows, prompt_text, query_rows, sft_rows
from ple.errors import PLEError
from ple.principles import PromptBuilder, load_principle

ROWS = [
    {"prompt": [{"role": "user", "content": "hello"}], "id": 0},
    {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}], "id": 1},
]


def test_jsonl_csv_parquet_load_the_same_rows(tmp_path):
    flat = [{"prompt": "the movie was", "id": 0}, {"prompt": "i loved", "id": 1}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flat))
    pd.DataFrame(flat).to_csv(tmp_path / "q.csv", index=False)
    pd.DataFrame(flat).to_parquet(tmp_path / "q.parquet")
    (tmp_path / "q.json").write_text(json.dumps(flat))
    for name in ("q.jsonl", "q.csv", "q.parquet", "q.json"):
        rows = query_rows(load_rows(str(tmp_path / name)), name)
        assert [r["prompt"] for r in rows] == ["the movie was", "i loved"]
        assert [int(r["id"]) for r in rows] == [0, 1]


def test_chat_prompts_survive_parquet(tmp_path):
    pd.DataFrame(ROWS).to_parquet(tmp_path / "q.parquet")
    rows = query_rows(load_rows(str(tmp_path / "q.parquet")), "q")
    assert rows[1]["prompt"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(PLEError, match="data file not found: .*nope.jsonl"):
        load_rows(str(tmp_path / "nope.jsonl"))


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(PLEError, match="line 2 is not valid JSON"):
        load_rows(str(path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(PLEError, match="holds no rows"):
        load_rows(str(path))


def test_missing_column_is_named():
    with pytest.raises(PLEError, match="missing column 'prompt' \\(columns: text\\)"):
        query_rows([{"text": "x"}], "q.jsonl")


def test_empty_prompt_names_the_row():
    with pytest.raises(PLEError, match="q.jsonl row 1: empty prompt"):
        query_rows([{"prompt": "fine"}, {"prompt": "   "}], "q.jsonl")
    with pytest.raises(PLEError, match="row 0: prompt must be text"):
        query_rows([{"prompt": 3}], "q.jsonl")


def test_sft_rows_from_response_or_messages():
    rows = sft_rows(
        [
            {"prompt": "say hi", "response": "hi"},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        ],
        "sft",
    )
    assert rows[0] == {"prompt": "say hi", "response": "hi"}
    assert rows[1] == {"prompt": [{"role": "user", "content": "q"}], "response": "a"}
    with pytest.raises(PLEError, match="row 0: empty response"):
        sft_rows([{"prompt": "x", "response": ""}], "sft")
    with pytest.raises(PLEError, match="need 'prompt' and 'response'"):
        sft_rows([{"prompt": "x"}], "sft")


def test_unknown_hub_dataset_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PLEError, match="could not load dataset 'no-such-org/no-such-set'"):
        load_rows("no-such-org/no-such-set")


def test_principle_file_with_names(tmp_path):
    path = tmp_path / "principles.yaml"
    path.write_text("kind: Be kind.\nbrief:\n  text: Be brief.\n")
    assert load_principle(str(path), "brief") == "Be brief."
    with pytest.raises(PLEError, match="set principle_name to one of: kind, brief"):
        load_principle(str(path))
    with pytest.raises(PLEError, match="'rude' is not in"):
        load_principle(str(path), "rude")
    with pytest.raises(PLEError, match="principles file not found"):
        load_principle(str(tmp_path / "none.yaml"))
    assert load_principle("Be helpful.") == "Be helpful."


class _ChatTokenizer:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + (
            "|assistant:" if add_generation_prompt else ""
        )


def test_principle_is_a_system_message_for_chat_models():
    builder = PromptBuilder(_ChatTokenizer(), "Be kind.")
    assert builder.render("hello") == "user:hello|assistant:"
    assert builder.render("hello", guided=True) == "system:Be kind.|user:hello|assistant:"
    existing = [{"role": "system", "content": "You are a bot."}, {"role": "user", "content": "hello"}]
    assert builder.render(existing, guided=True) == "system:Be kind.\n\nYou are a bot.|user:hello|assistant:"


def test_principle_is_a_prefix_for_plain_lms():
    class Plain:
        chat_template = None

    builder = PromptBuilder(Plain(), "Be kind.", text_template="Rule: {principle}\n{query}")
    assert builder.render("the movie") == "the movie"
    assert builder.render("the movie", guided=True) == "Rule: Be kind.\nthe movie"
    with pytest.raises(PLEError, match="no chat template"):
        PromptBuilder(Plain(), "p", prompt_format="chat")


def test_prompt_text_of_messages():
    assert (
        prompt_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
        == "user: a\n\nassistant: b"
    )


def test_a_line_separator_inside_a_string_is_not_a_line_break(tmp_path):
    """A model's answer can hold U+2028 or U+0085, which json.dumps(ensure_ascii=False) writes unescaped and
    str.splitlines splits at; run files, judge caches and datasets split JSONL at newlines only."""
    from ple.io import atomic_write_jsonl, read_jsonl

    rows = [{"prompt": "a\u2028b", "completion": "c\x85d\x0ce"}, {"prompt": "f", "completion": "g"}]
    path = tmp_path / "rows.jsonl"
    atomic_write_jsonl(path, rows)
    assert "\u2028" in path.read_text(encoding="utf-8")  # written raw, so the reader must cope
    assert read_jsonl(path) == rows
    assert load_rows(str(path)) == rows


@pytest.mark.parametrize("text", ["", "\n", "a", "a\n", "a\r\nb\rc\n\nd\n", "x\vy\fz\x1cw\x1d\x1ev\n\n", "a\r\n\r\n"])
def test_jsonl_lines_are_splitlines_wherever_json_cannot_hold_the_break(text):
    """CRLF and CR-only files, blank lines and a final break read as before; only U+0085/U+2028/U+2029 differ."""
    from ple.io import jsonl_lines

    assert jsonl_lines(text) == text.splitlines()
