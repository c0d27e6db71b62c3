"""`ple demo`: align SmolLM2-135M-Instruct towards positive movie reviews with PLE, offline, and report what
changed on held-out prompts: evaluate the base model, train, evaluate the trained model, report."""

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ple.config import load_config
from ple.demo import assets
from ple.demo.on_task import FALSE_REPLY_RATE, shared_on_task_judge
from ple.demo.sentiment import PRINCIPLES, prepare, shared_judge
from ple.evaluation.evaluate import Evaluator, eval_prompts, heldout_key
from ple.evaluation.layout import COMPLETIONS, EVAL_JSON
from ple.evaluation.metrics import Metric, applicable, reward_metric
from ple.evaluation.report import write_report
from ple.evaluation.stats import paired_bootstrap
from ple.io import read_jsonl, read_yaml_file
from ple.presets import COMPARE_PRESETS, DEMO
from ple.progress import Progress
from ple.trainer import PLETrainer
from ple.training.rundir import CONFIG

JUDGE = heldout_key("ple.sentiment:judge_reward")  # the held-out judge's column in the evaluation rows
ON_TASK = heldout_key("ple.sentiment:on_task")  # 1.0 where an answer reads as the review's continuation
EVAL_SEED_OFFSET = 12345  # the evaluation's sampling seed is the run's seed plus this
# The demo's rewards, named for its report; every registered metric (ple.evaluation.metrics) follows them.
DEMO_METRICS = (
    reward_metric("reward", "training reward (VADER)"),
    reward_metric(JUDGE, "held-out judge P(positive)"),
    Metric(
        "judge_positive_rate",
        "held-out judge positive rate",
        lambda rows: statistics.fmean(r[JUDGE] > 0.5 for r in rows),
        needs=JUDGE,
        counts=lambda r: r[JUDGE] is not None,
    ),
    reward_metric(ON_TASK, "on-task share (continues the review, not a reply)"),
)


def demo_config(overrides: dict):
    """The preset, pointed at the cached assets and evaluated by the held-out judge and the on-task measure;
    overrides win."""
    data = assets.cache_dir() / "sentiment"
    train, evaluation = prepare(data)
    raw = read_yaml_file(DEMO, "demo preset")
    raw.update(
        model=str(assets.smollm2_path()),
        dataset=str(train),
        principle=str(PRINCIPLES),
        eval_dataset=str(evaluation),
        eval_rewards=["ple.sentiment:judge_reward", "ple.sentiment:on_task"],
    )
    raw.update(overrides)
    raw["eval_max_prompts"] = int(raw.pop("eval_prompts", 200))
    return load_config(overrides=raw)


def compare_preset(name: str = "sentiment") -> dict:
    """An embedded sentiment compare grid, its config pointed at the cached assets. A grid that tunes learning
    rates on validation prompts trains on the pool without them."""
    data = assets.cache_dir() / "sentiment"
    train, evaluation = prepare(data)
    raw = read_yaml_file(COMPARE_PRESETS[name][0], "compare preset")
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


def evaluate(evaluator: Evaluator, model: str, prompt_rows: list[dict], out: Path) -> list[dict]:
    """Plain-prompt completions of `model` on the eval prompts, scored, with their perplexity under the untrained
    model; cached in `out`."""
    if not (out / EVAL_JSON).is_file():
        with Progress(total=1, description=f"{out.name} eval") as progress:
            evaluator.evaluate(model, prompt_rows, out, evaluator.config.seed + EVAL_SEED_OFFSET, progress)
            progress.advance()
    return read_jsonl(out / COMPLETIONS)


def before_after(before: list[dict], after: list[dict], seed: int) -> tuple[dict, dict]:
    """Each metric before and after, with a paired bootstrap CI of its change (summary.json), and the labels."""
    metrics = applicable(before, DEMO_METRICS)
    summary = {}
    for m in metrics:
        pairs = [(b, a) for b, a in zip(before, after) if m.counted([b]) and m.counted([a])]
        summary[m.name] = paired_bootstrap([b for b, _ in pairs], [a for _, a in pairs], m.compute, seed=seed)
    return summary, {m.name: m.label for m in metrics}


def run_demo(overrides: dict) -> Path:
    started = time.perf_counter()
    config = demo_config(overrides)
    run_dir = Path(config.output_dir)
    prompt_rows = eval_prompts(config, None)
    trainer = PLETrainer(args=config)  # reads the data and the reward first, so bad input fails before any work
    # Training first: the run directory is the trainer's (ple.training.rundir), and the base model's evaluation
    # does not depend on when it runs.
    final = trainer.train(resume=(run_dir / CONFIG).is_file()).final_model
    del trainer  # the policy and optimizer are on disk now; free their memory before evaluating
    evaluator = Evaluator(config)  # the tokenizer, the rewards and the base model, loaded once for both
    before = evaluate(evaluator, config.model, prompt_rows, run_dir / "eval" / "before")
    after = evaluate(evaluator, str(final), prompt_rows, run_dir / "eval" / "after")
    summary, labels = before_after(before, after, config.seed)
    seconds = time.perf_counter() - started
    judge, on_task = shared_judge(), shared_on_task_judge()
    notes = [
        f"Policy: SmolLM2-135M-Instruct with LoRA r={config.lora_r}, alpha={config.lora_alpha} on all linear layers; "
        f"{config.iterations} PLE iterations x {config.queries_per_iteration} queries; training reward VADER; "
        f"tau0={config.tau0}, alpha={config.alpha}.",
        f"Held-out judge: MiniLM-L6 embeddings + logistic regression trained on the Pang & Lee sentences; "
        f"held-out accuracy {judge.accuracy:.1%}. It never takes part in training.",
        "On-task measure: the base model's log-likelihood ratio of the answer under a review frame and a reply frame, "
        f"thresholded so that {FALSE_REPLY_RATE:.0%} of Pang & Lee review sentences read as replies; on held-out "
        f"halves it reads {on_task.reviews_read_on_task:.1%} of review sentences as on-task and "
        f"{on_task.dialogue_read_as_replies:.1%} of chatterbot-corpus dialogue lines as replies. It never takes part "
        "in training; examples it reads as replies are marked *(reply)*.",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
        f"This invocation took {seconds / 60:.1f} min (a resumed run counts only its own part).",
    ]
    (run_dir / "demo.json").write_text(
        json.dumps(
            {"seconds_this_invocation": seconds, "judge_accuracy": judge.accuracy, "on_task_accuracy": on_task.accuracy}
        )
    )
    return write_report(
        run_dir,
        summary,
        labels,
        before,
        after,
        {"reward": "VADER reward", JUDGE: "held-out judge P(positive)"},
        notes,
        flag=(ON_TASK, 0.0, "*(reply)* "),
    )
