"""Snapshots along training: every method saves its policy after the iterations config.snapshot_every names (TRL's
DPO and RLOO at the matching optimizer step), and the last one is the final model."""

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from ple.baselines import make_trainer
from ple.baselines.trl import snapshot_step
from ple.config import load_config
from ple.training.rundir import snapshot_steps


def adapter_weights(path):
    return load_file(str(path / "adapter_model.safetensors"))


def steps(**settings) -> list[int]:
    return snapshot_steps(load_config(overrides=dict(model="m", dataset="d.jsonl", **settings), validate=False))


def test_snapshot_steps_and_their_optimizer_steps_by_hand():
    assert steps(iterations=6, snapshot_every=2) == [2, 4, 6]
    assert steps(iterations=5, snapshot_every=2) == [2, 4]
    assert steps(iterations=6) == []
    # RLOO in the frontier preset: 6 x 32 queries, 2 answers each, 16 answers a step: 24 steps, 4 per iteration.
    assert [snapshot_step(d, 6, 24) for d in (2, 4, 6)] == [8, 16, 24]
    # DPO with 181 pairs in batches of 8: 23 steps; iteration 2 of 6 is at step 7.67.
    assert [snapshot_step(d, 6, 23) for d in (2, 4, 6)] == [8, 15, 23]
    assert snapshot_step(1, 6, 2) == 1  # never step 0, which has not trained


@pytest.mark.parametrize("method", ["ple", "rloo", "dpo"])
def test_every_method_snapshots_along_training_and_ends_on_its_final_model(
    method, tmp_path, tiny_chat_model, queries_file, reward_module
):
    out = tmp_path / method
    settings = tiny_config(tiny_chat_model, queries_file, out, f"{reward_module}:positivity", method=method)
    config = load_config(overrides={**settings, "iterations": 2, "snapshot_every": 1})
    final = make_trainer(config).train().final_model
    saved = sorted(p.name for p in (out / "snapshots").iterdir())
    assert saved == ["step_001", "step_002"]
    first, last = (adapter_weights(out / "snapshots" / s) for s in saved)
    trained = adapter_weights(final)
    assert last.keys() == trained.keys() and all(torch.equal(last[k], trained[k]) for k in last)
    assert any(not torch.equal(first[k], last[k]) for k in first)  # the first snapshot is from before the end
    assert not any(".tmp" in p.name for p in (out / "snapshots").iterdir())
