import json

import pandas as pd
import pytest
from conftest import tiny_config

from ple.config import load_config
from ple.data import load_task_rows
from ple.errors import PLEError
from ple.tasks import parse_hh
from ple.trainer import PLETrainer

HH = [
    {  # several turns, extra whitespace
        "chosen": "\n\nHuman:  hi there \n\nAssistant: hello!  \n\nHuman: what is a good movie?\n\nAssistant:  Try Up.",
        "rejected": "\n\nHuman:  hi there \n\nAssistant: hello!  \n\nHuman: what is a good movie?\n\nAssistant: No.",
    },
    {  # the two sides differ before the last turn
        "chosen": "\n\nHuman: q1\n\nAssistant: a1\n\nHuman: q2\n\nAssistant: good",
        "rejected": "\n\nHuman: q1\n\nAssistant: other\n\nHuman: q2\n\nAssistant: bad",
    },
]


def test_parse_hh_turns():
    assert parse_hh("\n\nHuman: a\n\nAssistant: b") == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
    ]
    with pytest.raises(ValueError):
        parse_hh("no markers at all")


def test_hh_rows_from_a_local_file(tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HH))
    first, second = load_task_rows(str(path), "train", None, "hh")
    assert first["prompt"] == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "what is a good movie?"},
    ]
    assert (first["response"], first["chosen"], first["rejected"]) == ("Try Up.", "Try Up.", "No.")
    assert second["chosen"] == "good" and second["rejected"] is None  # no valid DPO pair


def test_imdb_prefixes(tmp_path):
    path = tmp_path / "imdb.parquet"
    pd.DataFrame(
        [{"text": "A truly<br />wonderful film with great acting and a story that works", "label": 1}] * 20
    ).to_parquet(path)
    rows = load_task_rows(str(path), "train", None, "imdb")
    assert all(2 <= len(r["prompt"].split()) <= 8 and "<br" not in r["prompt"] for r in rows)
    assert len({r["prompt"] for r in rows}) > 1


def test_tldr_both_schemas(tmp_path):
    trl = tmp_path / "tldr.jsonl"
    trl.write_text(
        json.dumps({"prompt": "SUBREDDIT: r/x\nTITLE: t\nPOST: p\nTL;DR:", "completion": " short one"}) + "\n"
    )
    (row,) = load_task_rows(str(trl), "train", None, "tldr")
    assert row["reference"] == row["response"] == "short one" and row["prompt"].endswith("TL;DR:")
    openai = tmp_path / "cmp.jsonl"
    openai.write_text(
        json.dumps(
            {
                "info": {"post": " my post ", "title": "T", "subreddit": "cats"},
                "summaries": [{"text": " worse"}, {"text": "better "}],
                "choice": 1,
            }
        )
        + "\n"
    )
    (row,) = load_task_rows(str(openai), "train", None, "tldr")
    assert row["prompt"] == "SUBREDDIT: r/cats\nTITLE: T\nPOST: my post\nTL;DR:"
    assert (row["chosen"], row["rejected"], row["reference"]) == ("better", "worse", "better")


def test_wrong_schema_is_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "hi"}\n')
    with pytest.raises(PLEError, match="row 0: task hh needs column\\(s\\) chosen, rejected"):
        load_task_rows(str(path), "train", None, "hh")
    with pytest.raises(PLEError, match="row 0: not a valid tldr row"):
        load_task_rows(str(path), "train", None, "tldr")


def test_train_on_hh_chat_prompts_with_sft_warmup(tmp_path, tiny_chat_model, reward_module):
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HH * 3))
    config = tiny_config(
        tiny_chat_model,
        path,
        tmp_path / "run",
        f"{reward_module}:positivity",
        task="hh",
        iterations=1,
        queries_per_iteration=4,
        sft_dataset=str(path),
        sft_epochs=1,
    )
    PLETrainer(args=load_config(overrides=config)).train()
    row = json.loads((tmp_path / "run" / "generations" / "iter_000.jsonl").read_text().splitlines()[0])
    assert isinstance(row["query"], list) and row["query"][-1]["role"] == "user"
    assert row["principle_prompt"].startswith("<|system|> be good") and "<|assistant|>" in row["prompt"]


@pytest.mark.parametrize("name", ["hh", "imdb", "tldr"])
def test_gpu_recipes_are_valid_configs(name):
    from pathlib import Path

    from ple.principles import load_principle

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / f"{name}.yaml")
    assert (config.task, config.tau0, config.alpha, config.lora_r, config.lora_alpha) == (name, 0.2, 0.9, 8, 16)
    assert config.dtype == "bfloat16" and config.lora_target_modules == "all-linear"
    assert load_principle(str(root / config.principle), config.principle_name)


def test_the_7b_recipe_is_the_hh_recipe_with_a_7b_model_and_checkpointing():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    hh, hh7b = (load_config(root / "configs" / f"{name}.yaml").to_dict() for name in ("hh", "hh7b"))
    differ = {k: hh7b[k] for k in hh if hh[k] != hh7b[k]}
    assert differ == {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "dtype": "auto",
        "gradient_checkpointing": True,
        "output_dir": "runs/hh7b",
    }
