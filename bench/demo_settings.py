"""How the demo preset's settings are chosen: on training-pool prompts the run never draws, never on the 200 eval
prompts.

    python bench/demo_settings.py                    # every setting below, 300 validation prompts
    python bench/demo_settings.py --only lr_1e-4     # some of them

The demo draws queries 0..159 of the training pool's seed-0 order (5 iterations x 32); the validation prompts are
the next ones, 160..459. For each setting the demo preset trains (seed 0) with the setting's overrides, and its
plain-prompt answers on the validation prompts are compared with the base model's on the same prompts: the
held-out judge's P(positive), distinct-2, and the on-task share (`ple.sentiment:on_task`, the share of answers
that read as review prose rather than a reply to the user), each with a paired bootstrap 95% interval.

The rule, fixed on 2026-12-06 before the runs it judges, extends the one the learning rate 1e-4 was chosen by (a
judge gain whose interval is above 0 and a distinct-2 fall of at most 10% at the upper end of its interval): a
setting qualifies when, on the validation prompts, its judge gain's interval is above 0 and the falls of distinct-2
and of the on-task share, relative to the base model's values, are at most 10% at the upper end of their
intervals. Among those, the highest judge score wins. If none qualifies, the preset stays as it is. Runs and
answers are cached under runs/demo-settings, so a killed run resumes.
"""

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from ple.data import load_rows, query_rows
from ple.demo.run import JUDGE, ON_TASK, demo_config, evaluate
from ple.evaluation.evaluate import Evaluator
from ple.evaluation.metrics import distinct_n
from ple.evaluation.stats import paired_bootstrap
from ple.sentiment import on_task
from ple.trainer import PLETrainer

KEEP_THE_TASK = (  # the preset's warm_critic principle, plus the sentence that says whose voice to write in
    "You are a warm, generous film critic. Write only the next sentences of the review itself, in the reviewer's "
    "voice, as they would appear in print; never address the reader or the person who asked. Whatever the opening, "
    "continue the review so that it praises the film: name specific things you loved, such as the acting, the "
    "story, the direction or the music, and say why they work."
)
SETTINGS = {  # name: the demo preset's overrides
    "lr_1e-4": {},  # the preset as it is
    "lr_5e-5": {"learning_rate": 5e-5},
    "in_print_lr_1e-4": {"principle": KEEP_THE_TASK, "principle_name": None},
    "in_print_lr_5e-5": {"learning_rate": 5e-5, "principle": KEEP_THE_TASK, "principle_name": None},
    # Added after the first two ran (the preset's distinct-2 fell 9.1%, upper end 10.9%; 5e-5 gained nothing):
    "lr_7.5e-5": {"learning_rate": 7.5e-5},
    "in_print_lr_7.5e-5": {"learning_rate": 7.5e-5, "principle": KEEP_THE_TASK, "principle_name": None},
}
BAR = 0.10  # the largest fall of distinct-2 and of the on-task share, relative to the base model's value


def mean_of(key: str):
    return lambda rows: statistics.fmean(r[key] for r in rows)


def distinct_2(rows: list[dict]) -> float:
    return distinct_n([r["completion"] for r in rows], 2)


def answers(evaluator: Evaluator, model: str, prompts: list, out: Path) -> list[dict]:
    """The model's answers on the prompts, cached in `out`, with the on-task measure scored now (so that cached
    answers take the measure as it is, not as it was when they were written)."""
    rows = evaluate(evaluator, model, prompts, out)
    for row, score in zip(rows, on_task(None, [r["completion"] for r in rows])):
        row[ON_TASK] = score
    return rows


def relative_fall(before: list[dict], after: list[dict], statistic) -> tuple[float, float]:
    """(fall / base value, upper end of its 95% interval / base value), where fall = before - after."""
    change = paired_bootstrap(before, after, statistic)
    return -change["delta"] / change["before"], -change["ci_low"] / change["before"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), help="run these settings only")
    parser.add_argument("--n", type=int, default=300, help="validation prompts")
    parser.add_argument("--out", default="runs/demo-settings")
    args = parser.parse_args()

    root = Path(args.out)
    # The evaluator scores the judge only; answers() scores the on-task measure on every (cached or new) answer.
    config = demo_config({"output_dir": str(root / "base"), "eval_rewards": ["ple.sentiment:judge_reward"]})
    pool = query_rows(load_rows(config.dataset), config.dataset)
    drawn = config.iterations * config.queries_per_iteration
    if drawn + args.n > len(pool):
        remain = len(pool) - drawn
        sys.exit(f"the training pool holds {len(pool)} prompts; {drawn} are drawn, so at most {remain} remain")
    order = np.random.default_rng([config.seed, 0]).permutation(len(pool))  # trainer.query_order's first pass
    prompts = [pool[i] for i in order[drawn : drawn + args.n]]
    evaluator = Evaluator(config)  # the base model and the judge, loaded once for every setting
    before = answers(evaluator, config.model, prompts, root / "eval" / "base")
    print(
        f"base: judge {mean_of(JUDGE)(before):.3f}, distinct-2 {distinct_2(before):.4f}, on-task "
        f"{mean_of(ON_TASK)(before):.3f} on {len(prompts)} validation prompts",
        flush=True,
    )
    results = []
    for name in args.only or SETTINGS:
        run_config = demo_config({**SETTINGS[name], "output_dir": str(root / name)})
        final = Path(run_config.output_dir) / "final"
        if not final.is_dir():
            PLETrainer(args=run_config).train(resume=(Path(run_config.output_dir) / "config.yaml").is_file())
        after = answers(evaluator, str(final), prompts, root / "eval" / name)
        gain = paired_bootstrap(before, after, mean_of(JUDGE))
        d2_fall, d2_upper = relative_fall(before, after, distinct_2)
        task_fall, task_upper = relative_fall(before, after, mean_of(ON_TASK))
        qualifies = gain["ci_low"] > 0 and d2_upper <= BAR and task_upper <= BAR
        results.append((name, gain["after"], qualifies))
        print(
            f"{name}: judge {gain['after']:.3f} (gain {gain['delta']:+.3f} [{gain['ci_low']:+.3f}, "
            f"{gain['ci_high']:+.3f}]), distinct-2 fall {d2_fall:.1%} (upper {d2_upper:.1%}), on-task "
            f"{mean_of(ON_TASK)(after):.3f}, fall {task_fall:.1%} (upper {task_upper:.1%})"
            f"{'' if qualifies else '  -- does not qualify'}",
            flush=True,
        )
    chosen = max((r for r in results if r[2]), key=lambda r: r[1], default=None)
    print("chosen:", "none qualifies: the preset stays" if chosen is None else chosen[0])


if __name__ == "__main__":
    main()
