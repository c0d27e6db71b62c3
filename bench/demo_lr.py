"""How the demo preset's learning rate is chosen: on training-pool prompts the run never draws, never on the
200 eval prompts.

    python bench/demo_lr.py                      # the grid below, 300 validation prompts
    python bench/demo_lr.py --lr 1e-4 1.25e-4    # other rates

The demo draws queries 0..159 of the training pool's seed-0 order (5 iterations x 32); the validation prompts
are the next ones, 160..459. For each learning rate the demo preset trains (seed 0) and its plain-prompt
completions on the validation prompts are scored by the held-out judge, with distinct-2 against the base
model's completions on the same prompts.

The rule, fixed before the runs: the demo's bar is a judge gain whose 95% CI is above 0 and a distinct-2 fall of
at most 10% (relative) on the eval prompts, a fresh sample. So a rate qualifies when, on validation, the upper end
of its distinct-2 fall's 95% interval is at most 10% and the lower end of its judge gain's interval is above 0;
among those, the highest judge score wins. Runs and completions are cached under runs/demo-lr, so a killed run
resumes.
"""

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from ple.data import load_rows, query_rows
from ple.demo.run import JUDGE, demo_config, evaluate
from ple.evaluation.evaluate import Evaluator
from ple.evaluation.metrics import distinct_n
from ple.evaluation.stats import paired_bootstrap
from ple.trainer import PLETrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-4, 1.125e-4, 1.25e-4])
    parser.add_argument("--n", type=int, default=300, help="validation prompts")
    parser.add_argument("--out", default="runs/demo-lr")
    args = parser.parse_args()

    root = Path(args.out)
    config = demo_config({"output_dir": str(root / "base")})
    pool = query_rows(load_rows(config.dataset), config.dataset)
    drawn = config.iterations * config.queries_per_iteration
    if drawn + args.n > len(pool):
        sys.exit(
            f"the training pool holds {len(pool)} prompts; {drawn} are drawn, so at most {len(pool) - drawn} remain"
        )
    order = np.random.default_rng([config.seed, 0]).permutation(len(pool))  # trainer.query_order's first pass
    prompts = [pool[i] for i in order[drawn : drawn + args.n]]
    evaluator = Evaluator(config)  # the base model and the rewards, loaded once for every rate
    before = evaluate(evaluator, config.model, prompts, root / "eval" / "base")
    judge_p = lambda rows: statistics.fmean(r[JUDGE] for r in rows)  # noqa: E731
    distinct_2 = lambda rows: distinct_n([r["completion"] for r in rows], 2)  # noqa: E731
    base_d2 = distinct_2(before)
    print(f"base: judge {judge_p(before):.3f}, distinct-2 {base_d2:.4f} on {len(prompts)} validation prompts")
    results = []
    for lr in args.lr:
        run_config = demo_config({"learning_rate": lr, "output_dir": str(root / f"lr_{lr:g}")})
        final = Path(run_config.output_dir) / "final"
        if not final.is_dir():
            PLETrainer(args=run_config).train(resume=(Path(run_config.output_dir) / "config.yaml").is_file())
        after = evaluate(evaluator, str(final), prompts, root / "eval" / f"lr_{lr:g}")
        gain = paired_bootstrap(before, after, judge_p)
        d2 = paired_bootstrap(before, after, distinct_2)
        fall = (-d2["delta"] / base_d2, -d2["ci_low"] / base_d2)  # (estimate, upper end of the interval)
        qualifies = fall[1] <= 0.10 and gain["ci_low"] > 0
        results.append((lr, gain, fall, qualifies))
        print(
            f"lr {lr:g}: judge {gain['after']:.3f} (gain {gain['delta']:+.3f} [{gain['ci_low']:+.3f}, "
            f"{gain['ci_high']:+.3f}]), distinct-2 fall {fall[0]:.1%} (upper {fall[1]:.1%})"
            f"{'' if qualifies else '  -- does not qualify'}",
            flush=True,
        )
    chosen = max((r for r in results if r[3]), key=lambda r: r[1]["after"], default=None)
    print("chosen:", "none qualifies" if chosen is None else f"lr {chosen[0]:g}")


if __name__ == "__main__":
    main()
