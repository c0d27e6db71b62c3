"""A 2-process CPU launch (gloo) matches a 1-process run with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import tiny_config
from safetensors.torch import load_file


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path, tiny_chat_model, queries_file, reward_module):
    # Greedy decoding, so each query's answers do not depend on which process samples them.
    common = dict(
        iterations=2, queries_per_iteration=8, temperature=0.0, gradient_accumulation_steps=1, keep_checkpoints=0
    )
    reward = f"{reward_module}:positivity"
    one = tmp_path / "one"
    config_one = tmp_path / "one.yaml"
    config_one.write_text(
        yaml.safe_dump(tiny_config(tiny_chat_model, queries_file, one, reward, batch_size=4, **common))
    )
    two = tmp_path / "two"
    config_two = tmp_path / "two.yaml"
    config_two.write_text(
        yaml.safe_dump(tiny_config(tiny_chat_model, queries_file, two, reward, batch_size=2, **common))
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "ple", "train", "--config", str(config_one)], check=True, env=env, capture_output=True
    )
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "ple",
            "train",
            "--config",
            str(config_two),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]

    assert {m["processes"] for m in _metrics(one)} == {1} and {m["processes"] for m in _metrics(two)} == {2}
    keys = ("iteration", "tau", "n_rank", "n_wsft", "n_skip", "mean_s", "mean_s_p", "optimizer_steps")
    assert [[m[k] for k in keys] for m in _metrics(one)] == [[m[k] for k in keys] for m in _metrics(two)]
    rows_one = (one / "generations" / "iter_001.jsonl").read_text().splitlines()
    rows_two = (two / "generations" / "iter_001.jsonl").read_text().splitlines()
    assert [json.loads(r)["index"] for r in rows_one] == [json.loads(r)["index"] for r in rows_two]
    final_one = load_file(one / "final" / "adapter_model.safetensors")
    final_two = load_file(two / "final" / "adapter_model.safetensors")
    assert final_one.keys() == final_two.keys()
    for key in final_one:
        assert torch.allclose(final_one[key], final_two[key], atol=1e-5), key
    initial_b = [v for k, v in final_one.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in initial_b)  # training happened at all


def test_a_deepspeed_or_fsdp_launch_is_refused_not_ignored(monkeypatch):
    from ple.dist import Dist
    from ple.errors import PLEError

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(PLEError, match="DeepSpeed, which PLE does not support yet"):
        Dist()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "1")
    with pytest.raises(PLEError, match="FSDP"):
        Dist()
