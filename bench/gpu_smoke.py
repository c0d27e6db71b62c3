"""GPU smoke check of the CUDA path: 2-iteration PLE runs on a tiny Llama built in code,
in bf16 and fp32, with LoRA and full fine-tuning, with dtype auto, gradient checkpointing and sdpa (beside
ple plan's memory estimate, and evaluated while it trains against `ple eval` of its snapshot), a 2-process launch
of PLE and of GRPO, and, where vLLM is installed, the vLLM colocate path.
Prints one table row per run.

    python bench/gpu_smoke.py            # needs a CUDA device; no download
    python bench/gpu_smoke.py cpu        # a dry run of this script on the CPU (vLLM: its CPU build)

The vLLM rows run 2-iteration PLE with generation_backend=vllm (greedy), push the final weights and
compare the engine's greedy answers with transformers' on the same policy: in fp32 they must be
equal; with vllm_enable_sleep_mode (CUDA only) too; in bf16 the agreement is shown, not required
(the two round differently). Each runs in its own process: vLLM's sleep mode allows one engine a process.
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ple.config import load_config
from ple.generation import generate
from ple.testing import WORDS, build_tiny_model
from ple.trainer import PLETrainer
from ple.vllm_backend import vllm_installed

REWARD = """
POSITIVE = {"good", "great", "wonderful", "fun", "brilliant", "loved", "best", "happy"}
def positivity(prompts, completions, **_):
    return [sum(w in POSITIVE for w in c.split()) / 4 for c in completions]
"""


def setup(root: Path) -> tuple[Path, Path]:
    """The tiny model (head size 64, which every vLLM attention backend takes) and 64 queries, under root."""
    model = root / "model"
    if not model.exists():
        build_tiny_model(model, hidden_size=128, intermediate_size=256)
        rng = random.Random(0)
        lines = [json.dumps({"prompt": " ".join(rng.choices(WORDS, k=5))}) + "\n" for _ in range(64)]
        (root / "queries.jsonl").write_text("".join(lines))
        (root / "toy_reward.py").write_text(REWARD)
    return model, root / "queries.jsonl"


def run_settings(root: Path, device: str, **changes) -> dict:
    """The settings every run here shares (the tiny model and queries under root, the toy reward, 2 iterations of
    16 new tokens), with `changes`."""
    return dict(
        model=str(root / "model"),
        dataset=str(root / "queries.jsonl"),
        principle="be good and great",
        device=device,
        reward=f"{root / 'toy_reward.py'}:positivity",
        iterations=2,
        max_new_tokens=16,
        **changes,
    )


def planned_peak(config, model: Path) -> int:
    """ple plan's per-GPU peak for `config` in one process (with gradient checkpointing when it is on)."""
    from ple.plan import Launch, memory_plan, model_shape, peak

    plan = memory_plan(model_shape(str(model)), config, Launch(), None, 0)
    return peak(plan, checkpointing=config.gradient_checkpointing)


def run_summary(metrics: list[dict]) -> tuple[str, str, str]:
    """A run's taus, its rank/wsft/skip counts and its last loss, as the table shows them."""
    taus = ",".join(str(m["tau"]) for m in metrics)
    branches = "/".join(str(sum(m[f"n_{b}"] for m in metrics)) for b in ("rank", "wsft", "skip"))
    return taus, branches, f"{metrics[-1]['loss']:.4f}"


def evaluation_gap(out: Path) -> float:
    """The largest relative difference between the metrics eval_steps wrote after the last iteration and those
    `ple eval` computes for the snapshot saved then (they should be equal: the same weights and seed)."""
    done = sorted((out / "evals").iterdir())[-1]
    snapshot = out / "snapshots" / done.name  # both step_NNN, NNN the iterations done
    command = [sys.executable, "-m", "ple", "eval", "--config", str(out / "config.yaml"), "--model", str(snapshot)]
    subprocess.run([*command, "--output-dir", str(out / "ple-eval")], check=True, capture_output=True)
    during = json.loads((done / "eval.json").read_text())["metrics"]
    after = json.loads((out / "ple-eval" / "eval.json").read_text())["metrics"]
    return max(abs(during[k]["value"] - v["value"]) / max(abs(v["value"]), 1e-9) for k, v in after.items())


def grpo_launch(root: Path, device: str) -> int:
    """GRPO (TRL's trainer) under a 2-process torchrun launch: the policy samples it drew (2 * 16 * 2 planned)."""
    out = root / "grpo-2"
    config_file = root / "grpo-2.yaml"
    settings = dict(method="grpo", queries_per_iteration=16, batch_size=4, learning_rate=1e-3, output_dir=str(out))
    config_file.write_text(json.dumps(run_settings(root, device, generation_backend="transformers", **settings)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "ple"]
    done = subprocess.run([*command, "train", "--config", str(config_file)], capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:])
        return -1
    return json.loads((out / "budget.json").read_text())["samples"]


VLLM_CASES = {"fp32": ("float32", False), "fp32 sleep": ("float32", True), "bf16": ("bfloat16", False)}


def vllm_case(root: Path, device: str, case: str) -> tuple:
    """One vLLM colocate run (in its own process): its table row, and the count of greedy answers equal to
    transformers' once the engine holds the final weights."""
    dtype, sleep = VLLM_CASES[case]
    _, queries = setup(root)
    config = load_config(
        overrides=run_settings(
            root,
            device,
            dtype=dtype,
            generation_backend="vllm",
            vllm_enable_sleep_mode=sleep,
            vllm_gpu_memory_utilization=0.25,
            queries_per_iteration=32,
            temperature=0.0,
            batch_size=8,
            learning_rate=1e-2,
            output_dir=str(root / f"vllm-{case.replace(' ', '-')}"),
        )
    )
    started = time.perf_counter()
    trainer = PLETrainer(args=config)
    metrics = trainer.train().metrics
    policy = trainer.policy
    ids = policy.encode([json.loads(line)["prompt"] for line in queries.read_text().splitlines()[:32]])
    policy.vllm.sync(policy.model, policy.version)
    engine = [s.response_ids for s in policy.vllm.generate(ids, 16, 0.0, 1.0, 0, seed=0)]
    reference = [s.response_ids for s in generate(policy.model, policy.tokenizer, ids, 16, 0.0, speedups=False)]
    equal = sum(a == b for a, b in zip(engine, reference))
    return (
        dtype,
        f"lora vllm {case}",
        *run_summary(metrics),
        f"greedy {equal}/{len(ids)}",
        device,
        f"pushes {policy.vllm.pushes}",
        f"{time.perf_counter() - started:.1f}",
    ), equal == len(ids) or dtype == "bfloat16"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("device", nargs="?", default="cuda", help="cuda, or cpu for a dry run of this script")
    parser.add_argument("--vllm-case", choices=sorted(VLLM_CASES), help=argparse.SUPPRESS)  # one case, in a child
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    if args.vllm_case:
        row, ok = vllm_case(Path(args.root), device, args.vllm_case)
        print("VLLM_ROW " + json.dumps([row, ok]))
        return 0
    root = Path(tempfile.mkdtemp())
    setup(root)
    rows, memory = [], []
    # dtype auto with gradient checkpointing and sdpa: the 7B defaults (ple.plan's estimate is printed beside
    # the peak it measures on a GPU).
    runs = [(d, lora, {}) for d in ("bfloat16", "float32") for lora in (True, False)]
    # ... and evaluated while it trains (eval_steps), to be compared with `ple eval` of its snapshot below.
    evaluated = {"eval_steps": 2, "eval_dataset": str(root / "queries.jsonl"), "eval_max_prompts": 16}
    evaluated["snapshot_every"] = 2
    runs.append(("auto", True, {"gradient_checkpointing": True, "attn_implementation": "sdpa", **evaluated}))
    for dtype, use_lora, extra in runs:
        out = root / f"run-{dtype}-{use_lora}-{len(extra)}"
        config = load_config(
            overrides=run_settings(
                root,
                device,
                dtype=dtype,
                generation_backend="transformers",  # vLLM has its own rows below
                use_lora=use_lora,
                queries_per_iteration=32,
                batch_size=8,
                learning_rate=1e-3,
                output_dir=str(out),
                **extra,
            )
        )
        trainer = PLETrainer(args=config)  # the model is built here, so its initial weights can be kept
        initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        metrics = trainer.train().metrics
        seconds = time.perf_counter() - started
        params = dict(trainer.model.named_parameters())
        changed = sum(not torch.equal(p0, params[n]) for n, p0 in initial.items())
        devices = {str(p.device) for p in params.values()}
        dtypes = {str(p.dtype).removeprefix("torch.") for p in params.values() if p.requires_grad}
        resolved = trainer.config.dtype  # auto resolved (bfloat16 on a GPU that has it), as config.yaml records
        label = ("lora" if use_lora else "full") + (" ckpt sdpa" if extra else "")
        rows.append(
            (
                dtype if dtype == resolved else f"{dtype}={resolved}",
                label,
                *run_summary(metrics),
                f"{changed}/{len(initial)}",
                ",".join(devices),
                ",".join(dtypes),
                f"{seconds:.1f}",
            )
        )
        if device == "cuda" and extra:
            memory.append((label, torch.cuda.max_memory_allocated(), planned_peak(trainer.config, root / "model")))
        if extra:
            eval_gap = evaluation_gap(out)
    # A 2-process launch (torchrun) against a 1-process run of the same config, greedy decoding, in fp32:
    # under bf16 the two runs' different micro-batches round differently, and greedy choices can then diverge.
    launch = {}
    for processes in (1, 2):
        out = root / f"launch-{processes}"
        config_file = root / f"launch-{processes}.yaml"
        config_file.write_text(
            json.dumps(
                run_settings(
                    root,
                    device,
                    dtype="float32",
                    generation_backend="transformers",
                    queries_per_iteration=16,
                    temperature=0.0,
                    batch_size=4,
                    learning_rate=1e-3,
                    output_dir=str(out),
                )
            )
        )
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            "-m",
            "ple",
            "train",
            "--config",
            str(config_file),
        ]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:])
            return 1
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        launch[processes] = [(m["tau"], m["n_rank"], m["n_wsft"], m["n_skip"]) for m in metrics]
        rows.append(
            (
                "float32",
                f"lora x{processes} proc",
                *run_summary(metrics),
                "-",
                device,
                "-",
                f"{time.perf_counter() - started:.1f}",
            )
        )
    grpo_samples = grpo_launch(root, device)
    vllm_ok = True
    if vllm_installed():
        for case in VLLM_CASES:
            if "sleep" in case and device != "cuda":
                continue  # vLLM ignores sleep mode on a CPU, and ple refuses it there
            command = [sys.executable, __file__, device, "--vllm-case", case, "--root", str(root)]
            done = subprocess.run(command, capture_output=True, text=True)
            found = [line for line in done.stdout.splitlines() if line.startswith("VLLM_ROW ")]
            if done.returncode != 0 or not found:
                print(f"vLLM case {case} failed:\n{(done.stdout + done.stderr)[-3000:]}")
                vllm_ok = False
                continue
            row, ok = json.loads(found[0].removeprefix("VLLM_ROW "))
            rows.append(tuple(row))
            vllm_ok &= ok
    header = ("dtype", "params", "taus", "rank/wsft/skip", "last loss", "changed", "device", "trained dtype", "s")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"\n{name} | torch {torch.__version__} | CUDA {torch.version.cuda}")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(row))
    trained = [r[5].split("/") for r in rows if r[5] != "-" and "vllm" not in r[1]]  # vLLM rows: greedy agreement
    ok = all(changed == total for changed, total in trained)
    print("all trainable parameters changed in every run" if ok else "SOME PARAMETERS DID NOT CHANGE")
    for label, measured, planned in memory:  # shown, not required: the plan is an estimate
        print(f"memory, {label}: measured peak {measured / 2**20:.0f} MiB, ple plan's peak {planned / 2**20:.0f} MiB")
    eval_same = eval_gap <= 1e-3
    print(
        f"eval_steps' evaluation {'equals' if eval_same else 'DIFFERS FROM'} ple eval of the snapshot (largest "
        f"relative difference {eval_gap:.2g})"
    )
    grpo_ok = grpo_samples == 64
    print(f"grpo under a 2-process launch: {grpo_samples} policy samples ({'as planned' if grpo_ok else 'NOT 64'})")
    ok = ok and eval_same and grpo_ok
    same = launch[1] == launch[2]
    print("2-process taus and branch counts equal the 1-process run" if same else f"LAUNCHES DIFFER: {launch}")
    if vllm_installed():
        print("vLLM: fp32 greedy answers equal transformers' after the push" if vllm_ok else "vLLM CHECK FAILED")
    else:
        print("vLLM is not installed: its colocate path was not checked")
    ok = ok and same and vllm_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
