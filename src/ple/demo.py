"""`ple demo`: align SmolLM2-135M-Instruct towards positive movie reviews with PLE, offline, and report what
changed on held-out prompts: evaluate the base model, train, evaluate the trained model, report."""

import json
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from ple import assets
from ple.config import load_config
from ple.evaluation.evaluate import eval_prompts, evaluate_model
from ple.evaluation.metrics import distinct_n, paired_bootstrap, perplexity
from ple.evaluation.report import write_report
from ple.io import read_jsonl
from ple.progress import Progress
from ple.sentiment import PRINCIPLES, prepare, shared_judge
from ple.trainer import PLETrainer

PRESET = Path(__file__).parent / "presets" / "demo.yaml"
COMPARE_PRESETS = {
    "sentiment": Path(__file__).parent / "presets" / "compare_sentiment.yaml",
    "sentiment-quick": Path(__file__).parent / "presets" / "compare_sentiment_quick.yaml",
}
JUDGE = "heldout:ple.sentiment:judge_reward"  # the held-out judge's column in the evaluation rows
EVAL_SEED_OFFSET = 12345  # the evaluation's sampling seed is the run's seed plus this
LABELS = {
    "reward": "training reward (VADER)",
    "judge_positive_prob": "held-out judge P(positive)",
    "judge_positive_rate": "held-out judge positive rate",
    "distinct_1": "distinct-1",
    "distinct_2": "distinct-2",
    "mean_length": "mean length (words)",
    "perplexity": "perplexity under the untrained model",
}
METRICS = {
    "reward": lambda rows: statistics.fmean(r["reward"] for r in rows),
    "judge_positive_prob": lambda rows: statistics.fmean(r[JUDGE] for r in rows),
    "judge_positive_rate": lambda rows: statistics.fmean(r[JUDGE] > 0.5 for r in rows),
    "distinct_1": lambda rows: distinct_n([r["completion"] for r in rows], 1),
    "distinct_2": lambda rows: distinct_n([r["completion"] for r in rows], 2),
    "mean_length": lambda rows: statistics.fmean(len(r["completion"].split()) for r in rows),
    "perplexity": perplexity,
}


def demo_config(overrides: dict):
    """The preset, pointed at the cached assets and evaluated by the held-out judge; overrides win."""
    data = assets.cache_dir() / "sentiment"
    train, evaluation = prepare(data)
    raw = yaml.safe_load(PRESET.read_text())
    raw.update(
        model=str(assets.smollm2_path()),
        dataset=str(train),
        principle=str(PRINCIPLES),
        eval_dataset=str(evaluation),
        eval_rewards="ple.sentiment:judge_reward",
    )
    raw.update(overrides)
    raw["eval_max_prompts"] = int(raw.pop("eval_prompts", 200))
    return load_config(overrides=raw)


def compare_preset(name: str = "sentiment") -> dict:
    """An embedded sentiment compare grid, its config pointed at the cached assets. A grid that tunes learning
    rates on validation prompts trains on the pool without them."""
    data = assets.cache_dir() / "sentiment"
    train, evaluation = prepare(data)
    raw = yaml.safe_load(COMPARE_PRESETS[name].read_text())
    tuned = "lr_grid" in raw
    raw["config"].update(
        model=str(assets.smollm2_path()),
        dataset=str(data / "compare_train.jsonl" if tuned else train),
        sft_dataset=str(data / ("compare_sft.jsonl" if tuned else "sft.jsonl")),
        eval_dataset=str(evaluation),
        principle=str(PRINCIPLES),
    )
    if tuned:
        raw["lr_grid"]["validation_dataset"] = str(data / "validation.jsonl")
    return raw


def evaluate(model: str, config, prompt_rows: list[dict], out: Path) -> list[dict]:
    """Plain-prompt completions of `model` on the eval prompts, scored, with their perplexity under the untrained
    model; cached in `out`."""
    if not (out / "eval.json").is_file():
        with Progress(total=1, description=f"{out.name} eval") as progress:
            evaluate_model(
                model, config, prompt_rows, False, out, progress=progress, seed=config.seed + EVAL_SEED_OFFSET
            )
            progress.advance()
    return read_jsonl(out / "completions.jsonl")


def run_demo(overrides: dict) -> Path:
    started = time.perf_counter()
    config = demo_config(overrides)
    run_dir = Path(config.output_dir)
    prompt_rows = eval_prompts(config, None)
    trainer = PLETrainer(args=config)  # reads the data and the reward first, so bad input fails before any work
    # Training first: the run directory is the trainer's (ple.training.rundir), and the base model's evaluation
    # does not depend on when it runs.
    final = trainer.train(resume=(run_dir / "config.yaml").is_file()).final_model
    del trainer  # the policy and optimizer are on disk now; free their memory before evaluating
    before = evaluate(config.model, config, prompt_rows, run_dir / "eval" / "before")
    after = evaluate(str(final), config, prompt_rows, run_dir / "eval" / "after")

    summary = {key: paired_bootstrap(before, after, fn, seed=config.seed) for key, fn in METRICS.items()}
    seconds = time.perf_counter() - started
    judge = shared_judge()
    notes = [
        f"Policy: SmolLM2-135M-Instruct with LoRA r={config.lora_r}, alpha={config.lora_alpha} on all linear layers; "
        f"{config.iterations} PLE iterations x {config.queries_per_iteration} queries; training reward VADER; "
        f"tau0={config.tau0}, alpha={config.alpha}.",
        f"Held-out judge: MiniLM-L6 embeddings + logistic regression trained on the Pang & Lee sentences; "
        f"held-out accuracy {judge.accuracy:.1%}. It never takes part in training.",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
        f"This invocation took {seconds / 60:.1f} min (a resumed run counts only its own part).",
    ]
    (run_dir / "demo.json").write_text(
        json.dumps({"seconds_this_invocation": seconds, "judge_accuracy": judge.accuracy})
    )
    return write_report(
        run_dir,
        summary,
        LABELS,
        before,
        after,
        {"reward": "VADER reward", JUDGE: "held-out judge P(positive)"},
        notes,
    )
