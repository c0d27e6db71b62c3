"""`ple demo`: align SmolLM2-135M-Instruct towards positive movie reviews with PLE, offline,
and report what changed on held-out prompts."""

import json
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from ple import assets
from ple.config import load_config
from ple.data import load_rows, query_rows
from ple.evaluation import distinct_n, generate_rows, paired_bootstrap, perplexity, response_nll
from ple.io import atomic_write_jsonl, read_jsonl
from ple.model import load_causal_lm, load_tokenizer
from ple.principles import PromptBuilder
from ple.progress import Progress
from ple.report import write_report
from ple.rewards import vader_reward
from ple.sentiment import PRINCIPLES, SentimentJudge, prepare
from ple.trainer import PLETrainer

PRESET = Path(__file__).parent / "presets" / "demo.yaml"
COMPARE_PRESET = Path(__file__).parent / "presets" / "compare_sentiment.yaml"
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
    "judge_positive_prob": lambda rows: statistics.fmean(r["judge_p"] for r in rows),
    "judge_positive_rate": lambda rows: statistics.fmean(r["judge_p"] > 0.5 for r in rows),
    "distinct_1": lambda rows: distinct_n([r["completion"] for r in rows], 1),
    "distinct_2": lambda rows: distinct_n([r["completion"] for r in rows], 2),
    "mean_length": lambda rows: statistics.fmean(len(r["completion"].split()) for r in rows),
    "perplexity": perplexity,
}


def demo_config(overrides: dict):
    """The preset, pointed at the cached assets; overrides win."""
    data = assets.cache_dir() / "sentiment"
    train, evaluation = prepare(data)
    raw = yaml.safe_load(PRESET.read_text())
    raw.update(model=str(assets.smollm2_path()), dataset=str(train), principle=str(PRINCIPLES))
    raw.update(overrides)
    n_eval = int(raw.pop("eval_prompts", 200))
    return load_config(overrides=raw), evaluation, n_eval


def compare_preset() -> dict:
    """The embedded sentiment compare grid, its config pointed at the cached assets."""
    data = assets.cache_dir() / "sentiment"
    train, evaluation = prepare(data)
    raw = yaml.safe_load(COMPARE_PRESET.read_text())
    raw["config"].update(
        model=str(assets.smollm2_path()),
        dataset=str(train),
        sft_dataset=str(data / "sft.jsonl"),
        eval_dataset=str(evaluation),
        principle=str(PRINCIPLES),
    )
    return raw


def evaluate(name: str, config, prompts: list, out: Path, judge, progress) -> list[dict]:
    """Plain-prompt completions of `name` on the eval prompts, scored, with their perplexity under the
    untrained model; cached in `out`."""
    if out.is_file():
        return read_jsonl(out)
    torch.manual_seed(config.seed + 12345)
    tokenizer = load_tokenizer(config.model)
    base_model = load_causal_lm(config.model, config.dtype).eval()
    model = base_model if name == config.model else load_causal_lm(name, config.dtype).eval()
    builder = PromptBuilder.from_config(tokenizer, config)
    rows = generate_rows(model, tokenizer, builder, prompts, config, progress=progress, phase=f"evaluating {out.stem}")
    completions = [r["completion"] for r in rows]
    rewards = vader_reward(prompts, completions)
    judged = judge.positive_probability(completions)
    nll = response_nll(base_model, rows, tokenizer.pad_token_id)
    for row, reward, p, (total, n) in zip(rows, rewards, judged, nll):
        row.update(reward=reward, judge_p=p, nll=total, n_tokens=n)
    atomic_write_jsonl(out, rows)
    return rows


def run_demo(overrides: dict) -> Path:
    started = time.perf_counter()
    config, eval_file, n_eval = demo_config(overrides)
    run_dir = Path(config.output_dir)
    judge = SentimentJudge()
    prompts = [r["prompt"] for r in query_rows(load_rows(str(eval_file)), str(eval_file))][:n_eval]
    trainer = PLETrainer(config)  # reads the data and the reward first, so bad input fails before any work
    # Training first: the run directory is the trainer's (ple.rundir), and the base model's evaluation does not
    # depend on when it runs.
    final = trainer.train(resume=(run_dir / "config.yaml").is_file())
    del trainer  # the policy and optimizer are on disk now; free their memory before evaluating
    with Progress(total=1, description="baseline eval") as progress:
        before = evaluate(config.model, config, prompts, run_dir / "eval" / "before.jsonl", judge, progress)
        progress.advance()
    with Progress(total=1, description="final eval") as progress:
        after = evaluate(str(final), config, prompts, run_dir / "eval" / "after.jsonl", judge, progress)
        progress.advance()

    summary = {key: paired_bootstrap(before, after, fn, seed=config.seed) for key, fn in METRICS.items()}
    seconds = time.perf_counter() - started
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
        {"reward": "VADER reward", "judge_p": "held-out judge P(positive)"},
        notes,
    )
