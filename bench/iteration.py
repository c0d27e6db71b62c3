"""Cost per completion: a PLE iteration against TRL's RLOOTrainer, measured in one run.

    python bench/iteration.py            # SmolLM2-135M-Instruct from the ple cache
    python bench/iteration.py --tiny     # a tiny model built in code

Both sides use the same model, prompts, reward (VADER), 32 new tokens sampled at
temperature 1, LoRA r8/alpha16 on all linear layers, and 16 completions per step (PLE: 8
queries x {plain, guided}; RLOO: 8 prompts x 2 generations). Each side runs in its own
process, so its peak RSS is its own. The first step of each side is a warm-up and is not
timed. Prints a table last.
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PRINCIPLE, PROMPTS, model_path


def run_ple(model: str, steps: int) -> dict:
    from ple.config import load_config
    from ple.trainer import PLETrainer

    queries = Path(tempfile.mkdtemp()) / "queries.jsonl"
    queries.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    config = load_config(
        overrides=dict(
            model=model,
            dataset=str(queries),
            reward="vader",
            iterations=steps + 1,
            queries_per_iteration=len(PROMPTS),
            max_new_tokens=32,
            temperature=1.0,
            batch_size=len(PROMPTS),
            learning_rate=1e-4,
            device="cpu",
            principle=PRINCIPLE,
            output_dir=str(Path(tempfile.mkdtemp()) / "run"),
            keep_checkpoints=1,
        )
    )
    metrics = PLETrainer(args=config).train().metrics[1:]

    def mean(key):
        return sum(m[key] for m in metrics) / len(metrics)

    return {
        "seconds_per_step": mean("seconds"),
        "completions_per_step": 2 * len(PROMPTS),
        "generation": mean("gen_seconds"),
        "scoring": mean("score_seconds"),
        "training": mean("train_seconds"),
    }


def run_rloo(model: str, steps: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from ple.rewards import vader_reward

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kw):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.started)

    timer = StepTimer()
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS] * (steps + 1))
    args = RLOOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=2 * len(PROMPTS),
        num_generations=2,
        max_completion_length=32,
        temperature=1.0,
        learning_rate=1e-4,
        max_steps=steps + 1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        shuffle_dataset=False,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = RLOOTrainer(
        model=model, reward_funcs=vader_reward, args=args, train_dataset=dataset, peft_config=lora, callbacks=[timer]
    )
    trainer.train()
    timed = timer.times[1:]
    return {
        "seconds_per_step": sum(timed) / len(timed),
        "completions_per_step": 2 * len(PROMPTS),
        "generation": None,
        "scoring": None,
        "training": None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model built in code instead of SmolLM2")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side, after one warm-up step")
    parser.add_argument("--only", choices=("ple", "rloo"), help=argparse.SUPPRESS)  # child-process mode
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.only:
        result = (run_ple if args.only == "ple" else run_rloo)(args.model, args.steps)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print("RESULT " + json.dumps(result))
        return 0

    import torch
    import transformers
    import trl

    model = model_path(args.tiny)
    results = {}
    for side in ("ple", "rloo"):
        done = subprocess.run(
            [sys.executable, __file__, "--only", side, "--model", model, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
        )
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            print(f"{side} failed:\n{done.stderr[-3000:]}")
            return 1
        results[side] = json.loads(line[len("RESULT ") :])

    def fmt(value):
        return "-" if value is None else f"{value:.2f}"

    print(
        f"\nmachine: {platform.machine()}, {torch.get_num_threads()} threads | torch {torch.__version__} | "
        f"transformers {transformers.__version__} | trl {trl.__version__} | model {Path(model).name}"
    )
    print(
        "| trainer | s/step | completions/step | s/completion | generation s | scoring s | training s | peak RSS GB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for side, r in results.items():
        per = r["seconds_per_step"] / r["completions_per_step"]
        r["per_completion"] = per
        print(
            f"| {side} | {r['seconds_per_step']:.2f} | {r['completions_per_step']} | {per:.3f} | "
            f"{fmt(r['generation'])} | {fmt(r['scoring'])} | {fmt(r['training'])} | {r['peak_rss_gb']:.2f} |"
        )
    ratio = results["ple"]["per_completion"] / results["rloo"]["per_completion"]
    print(f"\nPLE / RLOO seconds per completion: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
