"""One checkpoint's full evaluation against generating the same answers alone, measured in one run.

    python bench/evaluation.py [--adapter DIR] [--prompts 200]    # SmolLM2-135M-Instruct from the ple cache
    python bench/evaluation.py --tiny                              # a tiny model built in code

Both sides answer the same prompts (the demo's held-out ones, 32 new tokens, temperature 1 as the frontier
samples; --temperature 0.7 --max-new-tokens 40 for the demo's settings) with the same
seed: first generation alone (`generate_rows` on the adapter merged into the base model, as the evaluation
generates), then `Evaluator.evaluate`: the same generation, both rewards, the perplexity pass, the KL pass (policy
and base model) and every registered metric with its bootstrap interval. The evaluator is built before the
timing (it loads once for many checkpoints). Prints a table last; the target is a ratio of at most 1.3.
"""

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from common import model_path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--adapter", help="a LoRA adapter directory to evaluate (default: the base model itself)")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0, help="1: the frontier's sampling (top_k 0, top_p 1)")
    args = parser.parse_args()

    from ple.config import load_config
    from ple.evaluation.evaluate import Evaluator, answering_model, generate_rows
    from ple.model import autocast

    if args.tiny:
        model = model_path(True)
        prompts = [{"prompt": f"the movie was {i}"} for i in range(args.prompts)]
        config = load_config(
            overrides=dict(model=model, dataset="unused.jsonl", principle="be kind", reward="vader", device="cpu"),
            validate=False,
        )
    else:
        from ple.demo.run import demo_config
        from ple.evaluation.evaluate import eval_prompts

        config = demo_config(
            {"output_dir": tempfile.mkdtemp(), "max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
        )
        model = config.model
        prompts = eval_prompts(config, None)[: args.prompts]
    name = args.adapter or model
    evaluator = Evaluator(config)
    evaluator.check(prompts)

    with evaluator.policy(name) as (policy, _, _):
        torch.manual_seed(0)
        started = time.perf_counter()
        with autocast(config.dtype, evaluator.device), answering_model(policy, config.dtype) as answering:
            rows = generate_rows(
                answering, evaluator.tokenizer, evaluator.builder, [p["prompt"] for p in prompts], config
            )
        generation = time.perf_counter() - started
    started = time.perf_counter()
    result = evaluator.evaluate(name, prompts, Path(tempfile.mkdtemp()), seed=0)
    evaluation = time.perf_counter() - started
    written = [r["completion"] for r in rows]

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"model: {name}; {len(prompts)} prompts x {config.max_new_tokens} new tokens")
    print(f"metrics: {', '.join(result['metrics'])}")
    print("| what | seconds |")
    print("|---|---:|")
    print(f"| generating the answers alone | {generation:.1f} |")
    print(f"| the full evaluation (same answers, every metric, KL) | {evaluation:.1f} |")
    print(f"| ratio | {evaluation / generation:.2f} |")
    assert len(written) == result["n_prompts"]


if __name__ == "__main__":
    main()
