"""GPU smoke check of the CUDA path: 2-iteration PLE runs on a tiny Llama built in code,
in bf16 and fp32, with LoRA and full fine-tuning. Prints one table row per run.

    python bench/gpu_smoke.py            # needs a CUDA device; no download
"""

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ple.config import load_config
from ple.testing import WORDS, build_tiny_model
from ple.trainer import PLETrainer

REWARD = """
POSITIVE = {"good", "great", "wonderful", "fun", "brilliant", "loved", "best", "happy"}
def positivity(prompts, completions, **_):
    return [sum(w in POSITIVE for w in c.split()) / 4 for c in completions]
"""


def main() -> int:
    device = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # `cpu` for a dry run of this script
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    root = Path(tempfile.mkdtemp())
    model = build_tiny_model(root / "model")
    rng = random.Random(0)
    queries = root / "queries.jsonl"
    queries.write_text("".join(json.dumps({"prompt": " ".join(rng.choices(WORDS, k=5))}) + "\n" for _ in range(64)))
    (root / "toy_reward.py").write_text(REWARD)
    rows = []
    for dtype in ("bfloat16", "float32"):
        for use_lora in (True, False):
            out = root / f"run-{dtype}-{use_lora}"
            config = load_config(
                overrides=dict(
                    model=str(model),
                    dataset=str(queries),
                    principle="be good and great",
                    device=device,
                    dtype=dtype,
                    reward=f"{root / 'toy_reward.py'}:positivity",
                    use_lora=use_lora,
                    iterations=2,
                    queries_per_iteration=32,
                    max_new_tokens=16,
                    batch_size=8,
                    learning_rate=1e-3,
                    output_dir=str(out),
                )
            )
            trainer = PLETrainer(args=config)  # the model is built here, so its initial weights can be kept
            initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
            started = time.perf_counter()
            metrics = trainer.train().metrics
            seconds = time.perf_counter() - started
            params = dict(trainer.model.named_parameters())
            changed = sum(not torch.equal(p0, params[n]) for n, p0 in initial.items())
            devices = {str(p.device) for p in params.values()}
            dtypes = {str(p.dtype).removeprefix("torch.") for p in params.values() if p.requires_grad}
            rows.append(
                (
                    dtype,
                    "lora" if use_lora else "full",
                    ",".join(str(m["tau"]) for m in metrics),
                    "/".join(str(sum(m[f"n_{b}"] for m in metrics)) for b in ("rank", "wsft", "skip")),
                    f"{metrics[-1]['loss']:.4f}",
                    f"{changed}/{len(trainer.initial)}",
                    ",".join(devices),
                    ",".join(dtypes),
                    f"{seconds:.1f}",
                )
            )
    # A 2-process launch (torchrun) against a 1-process run with the same global batch, greedy decoding, in fp32:
    # under bf16 the two runs' different micro-batches round differently, and greedy choices can then diverge.
    launch = {}
    for processes, batch in ((1, 4), (2, 2)):
        out = root / f"launch-{processes}"
        config_file = root / f"launch-{processes}.yaml"
        config_file.write_text(
            json.dumps(
                dict(
                    model=str(model),
                    dataset=str(queries),
                    principle="be good and great",
                    device=device,
                    dtype="float32",
                    reward=f"{root / 'toy_reward.py'}:positivity",
                    iterations=2,
                    queries_per_iteration=16,
                    temperature=0.0,
                    max_new_tokens=16,
                    batch_size=batch,
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
                ",".join(str(m["tau"]) for m in metrics),
                "/".join(str(sum(m[f"n_{b}"] for m in metrics)) for b in ("rank", "wsft", "skip")),
                f"{metrics[-1]['loss']:.4f}",
                "-",
                device,
                "-",
                f"{time.perf_counter() - started:.1f}",
            )
        )
    header = ("dtype", "params", "taus", "rank/wsft/skip", "last loss", "changed", "device", "trained dtype", "s")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"\n{name} | torch {torch.__version__} | CUDA {torch.version.cuda}")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(row))
    ok = all(r[5].split("/")[0] == r[5].split("/")[1] for r in rows if r[5] != "-")
    print("all trainable parameters changed in every run" if ok else "SOME PARAMETERS DID NOT CHANGE")
    same = launch[1] == launch[2]
    print("2-process taus and branch counts equal the 1-process run" if same else f"LAUNCHES DIFFER: {launch}")
    ok = ok and same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
