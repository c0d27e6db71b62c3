"""A 2-process CPU launch (gloo) of a config matches a 1-process run of the same config."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config
from safetensors.torch import load_file


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


REPO = Path(__file__).resolve().parents[1]
COMMON = dict(iterations=2, queries_per_iteration=8, temperature=0.0, gradient_accumulation_steps=1, keep_checkpoints=0)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run_one_process(tmp_path, model, queries, reward):
    """The reference: one process, 4 queries per optimizer step, greedy decoding (so an answer does not depend on which
    process samples it)."""
    one = tmp_path / "one"
    config = tmp_path / "one.yaml"
    config.write_text(yaml.safe_dump(tiny_config(model, queries, one, reward, batch_size=4, **COMMON)))
    subprocess.run([sys.executable, "-m", "ple", "train", "--config", str(config)], check=True, env=ENV)
    return one


def _assert_same_run(one, two, processes, atol):
    assert {m["processes"] for m in _metrics(one)} == {1} and {m["processes"] for m in _metrics(two)} == {processes}
    keys = ("iteration", "tau", "n_rank", "n_wsft", "n_skip", "mean_s", "mean_s_p", "optimizer_steps")
    assert [[m[k] for k in keys] for m in _metrics(one)] == [[m[k] for k in keys] for m in _metrics(two)]
    rows_one = (one / "generations" / "iter_001.jsonl").read_text().splitlines()
    rows_two = (two / "generations" / "iter_001.jsonl").read_text().splitlines()
    assert [json.loads(r)["index"] for r in rows_one] == [json.loads(r)["index"] for r in rows_two]
    final_one = load_file(one / "final" / "adapter_model.safetensors")
    final_two = load_file(two / "final" / "adapter_model.safetensors")
    assert final_one.keys() == final_two.keys()
    for key in final_one:
        assert torch.allclose(final_one[key], final_two[key], atol=atol), key
    initial_b = [v for k, v in final_one.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in initial_b)  # training happened at all


def test_two_processes_match_one(tmp_path, tiny_chat_model, queries_file, reward_module):
    reward = f"{reward_module}:positivity"
    one = _run_one_process(tmp_path, tiny_chat_model, queries_file, reward)
    two = tmp_path / "two"
    config_two = tmp_path / "two.yaml"
    config_two.write_text(
        yaml.safe_dump(tiny_config(tiny_chat_model, queries_file, two, reward, batch_size=4, **COMMON))
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
        env=ENV,
        capture_output=True,
        text=True,
    )
    _assert_ok(launched)
    _assert_same_run(one, two, 2, atol=1e-5)


def _assert_ok(launched: subprocess.CompletedProcess) -> None:
    """The launch exited 0; else its `ple:` lines (which the launcher's traceback can push out of a tail) and tail."""
    ple_lines = [line for line in launched.stderr.splitlines() if "ple: " in line]
    assert launched.returncode == 0, "\n".join(ple_lines) + "\n...\n" + launched.stderr[-3000:]


def _accelerate_launch(config_file: Path, port: int, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    command += ["--num_processes", "2", "--main_process_port", str(port), "-m", "ple", *args]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_matches_one_process_and_resumes(tmp_path, tiny_chat_model, queries_file, reward_module, stage):
    """The shipped ZeRO config, launched with 2 CPU processes and killed after its first iteration, resumes from
    its sharded optimizer state to the same run as one process with the same config."""
    pytest.importorskip("deepspeed", reason='DeepSpeed is in the test extra: pip install -e ".[test]"')
    reward = f"{reward_module}:positivity"
    # 5 queries in steps of 2: the last step has 1 pair, so one process runs an idle micro-batch in lockstep.
    settings = dict(COMMON, queries_per_iteration=5)
    one = tmp_path / "one"
    config_one = tmp_path / "one.yaml"
    config_one.write_text(
        yaml.safe_dump(tiny_config(tiny_chat_model, queries_file, one, reward, batch_size=2, **settings))
    )
    subprocess.run([sys.executable, "-m", "ple", "train", "--config", str(config_one)], check=True, env=ENV)

    zero = tmp_path / "zero"
    config_zero = tmp_path / "zero.yaml"
    accelerate_config = REPO / "configs" / "accelerate" / f"zero{stage}.yaml"
    for iterations, extra in ((1, ()), (2, ("--resume",))):  # the first launch stands for a killed run
        config_zero.write_text(
            yaml.safe_dump(
                tiny_config(
                    tiny_chat_model, queries_file, zero, reward, batch_size=2, **dict(settings, iterations=iterations)
                )
            )
        )
        launched = _accelerate_launch(
            accelerate_config, 29600 + 10 * stage + iterations, "train", "--config", str(config_zero), *extra
        )
        _assert_ok(launched)
        assert (zero / "checkpoints" / f"iter_{iterations - 1:03d}" / "deepspeed").is_dir()
    assert [m["n_skip"] for m in _metrics(one)] == [0, 0]  # so that every step of 2 pairs ends in a step of 1
    _assert_same_run(one, zero, 2, atol=1e-5)


def test_an_fsdp_launch_is_refused_not_ignored(monkeypatch):
    from ple.dist import Dist
    from ple.errors import PLEError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "1")
    with pytest.raises(PLEError, match="FSDP, which PLE does not support"):
        Dist()


def test_a_diverging_zero_run_stops_with_one_line_before_a_non_finite_step(
    tmp_path, tiny_chat_model, queries_file, reward_module
):
    """Under ZeRO the engine reduces and steps as one, so a non-finite loss stops the run before that step."""
    pytest.importorskip("deepspeed", reason='DeepSpeed is in the test extra: pip install -e ".[test]"')
    run_dir = tmp_path / "zero"
    config = tmp_path / "zero.yaml"
    settings = dict(COMMON, queries_per_iteration=4, iterations=3, learning_rate=1e30)
    config.write_text(
        yaml.safe_dump(tiny_config(tiny_chat_model, queries_file, run_dir, f"{reward_module}:positivity", **settings))
    )
    launched = _accelerate_launch(
        REPO / "configs" / "accelerate" / "zero2.yaml", 29650, "train", "--config", str(config)
    )
    assert launched.returncode != 0
    errors = [line for line in launched.stderr.splitlines() if line.startswith("ple: error: ")]
    assert errors and all("non-finite loss" in e or "probabilities are NaN" in e for e in errors), errors
    for checkpoint in (run_dir / "checkpoints").glob("iter_*"):
        weights = load_file(checkpoint / "adapter_model.safetensors")
        assert all(torch.isfinite(v).all() for v in weights.values())


def test_deepspeed_cpu_offload_of_the_optimizer_trains(tmp_path, tiny_chat_model, queries_file, reward_module):
    """docs/scaling.md's offload setting, on the shipped ZeRO-2 file: accelerate gives DeepSpeed its CPU Adam in
    place of the policy's torch AdamW (which DeepSpeed refuses under offload), and the run trains."""
    pytest.importorskip("deepspeed", reason='DeepSpeed is in the test extra: pip install -e ".[test]"')
    shipped = (REPO / "configs" / "accelerate" / "zero2.yaml").read_text()
    assert "offload_optimizer_device: none" in shipped
    accelerate_config = tmp_path / "zero2-offload.yaml"
    accelerate_config.write_text(shipped.replace("offload_optimizer_device: none", "offload_optimizer_device: cpu"))
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    settings = dict(COMMON, iterations=1)
    config.write_text(
        yaml.safe_dump(tiny_config(tiny_chat_model, queries_file, out, f"{reward_module}:positivity", **settings))
    )
    launched = _accelerate_launch(accelerate_config, 29650, "train", "--config", str(config))
    _assert_ok(launched)
    final = load_file(out / "final" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in final.items() if "lora_B" in k)  # B starts at zero: it was trained


def _pairs_file(path: Path) -> Path:
    """Preference pairs in the data, so that DPO's training does not depend on which process samples what."""
    from ple.testing import WORDS

    rng = random.Random(1)
    rows = [
        {
            "prompt": " ".join(rng.choices(WORDS, k=3)),
            "chosen": " ".join(rng.choices(WORDS, k=4)),
            "rejected": " ".join(rng.choices(WORDS, k=5)),
        }
        for _ in range(16)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _zero_config(tmp_path: Path, launch: str) -> Path:
    """The shipped ZeRO-2 file; for ZeRO-3 one that partitions every parameter, as a 7B model's LoRA weights are
    (DeepSpeed keeps a parameter under 10 * hidden_size elements whole on each process, so all of the tiny model's
    LoRA weights would be)."""
    if launch == "zero2":
        return REPO / "configs" / "accelerate" / "zero2.yaml"
    ds = tmp_path / "ds3.json"
    zero = {"stage": 3, "stage3_param_persistence_threshold": 0}
    batch = dict.fromkeys(("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"), "auto")
    ds.write_text(json.dumps({"zero_optimization": zero, "gradient_clipping": "auto", **batch}))
    shipped = yaml.safe_load((REPO / "configs" / "accelerate" / "zero3.yaml").read_text())
    shipped["deepspeed_config"] = {"deepspeed_config_file": str(ds), "zero3_init_flag": False}
    shipped.pop("mixed_precision", None)  # the JSON file holds every DeepSpeed setting
    path = tmp_path / "zero3-all-partitioned.yaml"
    path.write_text(yaml.safe_dump(shipped))
    return path


@pytest.mark.parametrize("method,launch", [("dpo", "torchrun"), ("dpo", "zero3"), ("rloo", "zero3"), ("grpo", "zero2")])
def test_trl_baselines_run_under_a_launch_as_in_one_process(
    tmp_path, tiny_chat_model, queries_file, reward_module, method, launch
):
    """TRL's trainers under torchrun and ZeRO (2 CPU processes): the same optimizer steps and policy samples as one
    process, snapshots with the whole trained weights (gathered under ZeRO-3), and for DPO on the data's pairs the
    1-process run's final weights (to 1e-5)."""
    if launch != "torchrun":
        pytest.importorskip("deepspeed", reason='DeepSpeed is in the test extra: pip install -e ".[test]"')
    data = _pairs_file(tmp_path / "pairs.jsonl") if method == "dpo" else queries_file
    settings = dict(
        method=method,
        iterations=2,
        queries_per_iteration=8,
        batch_size=2,
        gradient_accumulation_steps=2,
        keep_checkpoints=0,
        snapshot_every=1,
        temperature=1.0,
    )
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"run{processes}"
        config = tmp_path / f"run{processes}.yaml"
        config.write_text(
            yaml.safe_dump(tiny_config(tiny_chat_model, data, out, f"{reward_module}:positivity", **settings))
        )
        if processes == 1:
            subprocess.run([sys.executable, "-m", "ple", "train", "--config", str(config)], check=True, env=ENV)
        elif launch == "torchrun":
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
            launched = subprocess.run(
                command + ["-m", "ple", "train", "--config", str(config)], env=ENV, capture_output=True, text=True
            )
            _assert_ok(launched)
        else:
            port = 29660 + 5 * ["dpo", "rloo", "grpo"].index(method)
            launched = _accelerate_launch(_zero_config(tmp_path, launch), port, "train", "--config", str(config))
            _assert_ok(launched)
        runs[processes] = out
    one, two = runs[1], runs[2]
    steps = {run: [m["optimizer_steps"] for m in _metrics(run)] for run in (one, two)}
    assert steps[one] == steps[two] == ([1, 1] if method == "grpo" else [2, 2]), steps  # grpo: 4 answers per query
    budget_one, budget_two = (json.loads((run / "budget.json").read_text()) for run in (one, two))
    assert budget_one["samples"] == budget_two["samples"] == (0 if method == "dpo" else 32)
    final_one = load_file(one / "final" / "adapter_model.safetensors")
    for run in (one, two):
        for saved in ("snapshots/step_001", "snapshots/step_002", "final"):
            weights = load_file(run / saved / "adapter_model.safetensors")
            assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in final_one.items()}, saved
            assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k), saved  # trained, not empty
    if method == "dpo":
        final_two = load_file(two / "final" / "adapter_model.safetensors")
        for key in final_one:
            assert torch.allclose(final_one[key], final_two[key], atol=1e-5), key


def test_evaluation_during_a_zero2_launch_is_ple_eval_of_the_snapshot_and_zero3_is_one_line(
    tmp_path, tiny_chat_model, queries_file, reward_module
):
    """eval_steps under 2 processes: the main one evaluates the replicated weights (ZeRO-2) as `ple eval` evaluates
    the snapshot saved at the same iteration; under ZeRO-3, whose forward hooks are collective, one line."""
    pytest.importorskip("deepspeed", reason='DeepSpeed is in the test extra: pip install -e ".[test]"')
    from ple.cli import main

    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    settings = dict(COMMON, iterations=1, eval_steps=1, eval_dataset=str(queries_file), eval_max_prompts=4)
    config.write_text(
        yaml.safe_dump(
            tiny_config(tiny_chat_model, queries_file, out, f"{reward_module}:positivity", snapshot_every=1, **settings)
        )
    )
    launched = _accelerate_launch(
        REPO / "configs" / "accelerate" / "zero2.yaml", 29680, "train", "--config", str(config)
    )
    _assert_ok(launched)
    during = json.loads((out / "evals" / "step_001" / "eval.json").read_text())["metrics"]
    assert (
        main(
            [
                "eval",
                "--config",
                str(config),
                "--model",
                str(out / "snapshots" / "step_001"),
                "--output-dir",
                str(tmp_path / "ple-eval"),
            ]
        )
        == 0
    )
    by_ple_eval = json.loads((tmp_path / "ple-eval" / "eval.json").read_text())["metrics"]
    assert {k: v["value"] for k, v in during.items()} == pytest.approx({k: v["value"] for k, v in by_ple_eval.items()})
    assert _metrics(out)[0]["eval/kl"] == during["kl"]["value"] > 0

    launched = _accelerate_launch(
        REPO / "configs" / "accelerate" / "zero3.yaml",
        29685,
        "train",
        "--config",
        str(config),
        "--set",
        f"output_dir={tmp_path / 'zero3'}",
    )
    errors = [line for line in launched.stderr.splitlines() if line.startswith("ple: error: ")]
    assert launched.returncode != 0 and errors and all("eval_steps under DeepSpeed ZeRO-3" in e for e in errors)


def test_a_bf16_zero_launch_keeps_bf16_weights_and_fp32_master_weights(
    tmp_path, tiny_chat_model, queries_file, reward_module
):
    """dtype: bfloat16 under the shipped ZeRO-2 file: DeepSpeed's bf16 mode (bf16 weights, half the memory and
    traffic of fp32 ones), fp32 master weights in its optimizer shards, and a final model in bf16 that trained."""
    pytest.importorskip("deepspeed", reason='DeepSpeed is in the test extra: pip install -e ".[test]"')
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    settings = dict(COMMON, iterations=1, use_lora=False, dtype="bfloat16", learning_rate=1e-3)
    config.write_text(
        yaml.safe_dump(tiny_config(tiny_chat_model, queries_file, out, f"{reward_module}:positivity", **settings))
    )
    launched = _accelerate_launch(
        REPO / "configs" / "accelerate" / "zero2.yaml", 29690, "train", "--config", str(config)
    )
    _assert_ok(launched)
    state_dir = out / "checkpoints" / "iter_000" / "deepspeed" / "state"
    engine_weights = torch.load(state_dir / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert {v.dtype for v in engine_weights.values()} == {torch.bfloat16}  # what the engine holds and moves
    shards = sorted(state_dir.glob("*optim_states.pt"))
    assert len(shards) == 2
    for shard in shards:
        state = torch.load(shard, weights_only=False)["optimizer_state_dict"]
        assert {t.dtype for t in state["single_partition_of_fp32_groups"]} == {torch.float32}
    final = load_file(out / "final" / "model.safetensors")
    base = load_file(Path(tiny_chat_model) / "model.safetensors")
    assert {v.dtype for v in final.values()} == {torch.bfloat16}
    assert any(not torch.equal(final[k], base[k].to(torch.bfloat16)) for k in final)  # it trained
