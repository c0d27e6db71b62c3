"""The `ple eval` command: the folder each model's evaluation goes to (one that holds another model's results is
refused), the evaluation of several models with one Evaluator, and the pairwise comparison of two."""

import sys
from pathlib import Path

from ple.config import load_config
from ple.config_checks import check_generation
from ple.config_values import parse_overrides
from ple.errors import PLEError
from ple.io import read_json, writable_dir


def eval_dirs(names: list[str], out: Path) -> list[Path]:
    """Where each model's evaluation goes: `out` for one model, out/<name> for several (a name taken twice gets
    a number). A directory holding another model's results is refused, so that no evaluation replaces another."""
    dirs = [out] if len(names) == 1 else []
    for name in names if len(names) > 1 else []:
        stem, n = Path(name.rstrip("/")).name or "model", 1
        label = stem
        while out / label in dirs:
            n += 1
            label = f"{stem}-{n}"
        dirs.append(out / label)
    for name, d in zip(names, dirs):
        refuse_others_results(name, d)
    return dirs


def model_name(name: str) -> str:
    """A model as `ple eval` records it: a local directory by its absolute path (`m` run from two directories is
    two models), a hub id as it is."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def refuse_others_results(name: str, out: Path) -> None:
    """One line when `out` holds the evaluation of a model other than `name` (as model_name gives it): no
    evaluation replaces another. A relative name recorded before is read from the current directory."""
    from ple.evaluation.layout import EVAL_JSON

    held = read_json(out / EVAL_JSON).get("model") if (out / EVAL_JSON).is_file() else name
    if held != name and model_name(str(held)) != name:
        raise PLEError(f"{out} holds the evaluation of {held}; choose another --output-dir, so that it is kept")


def refuse_other_comparison(a: str, b: str, out: Path) -> None:
    """One line when `out` holds the comparison of another pair: no comparison replaces another."""
    from ple.evaluation.layout import COMPARE_JSON

    if (out / COMPARE_JSON).is_file():
        held = read_json(out / COMPARE_JSON)
        if (held.get("a"), held.get("b")) != (a, b):
            raise PLEError(
                f"{out} holds the comparison of {held.get('a')} with {held.get('b')}; choose another --output-dir, "
                "so that it is kept"
            )


def evaluate_models(names: list[str], config, prompts: list, args, dirs: list[Path]) -> None:
    """`ple eval` of a list of models with one Evaluator (the tokenizer, rewards and base model loaded once)."""
    from ple.evaluation.evaluate import Evaluator
    from ple.progress import Progress

    evaluator = Evaluator(config, args.reference_model, args.guided)
    with Progress(total=len(names), description="eval") as progress:
        for name, out in zip(names, dirs):
            progress.log(f"evaluating {name}")
            evaluator.evaluate(name, prompts, out, progress=progress)
            progress.advance()


def cmd_eval(args) -> int:
    from ple.evaluation.evaluate import eval_prompts
    from ple.evaluation.layout import EVAL_JSON, EVAL_MD

    config = load_config(args.config, parse_overrides(args.overrides), validate=False)
    check_generation(config)
    out = writable_dir(Path(args.output_dir), "--output-dir")  # checked before any work, not after it
    if args.compare is not None:
        return compare_two(config, args, out)
    names = [model_name(n) for n in args.model or ([config.model] if config.model else [])]
    if not names:
        raise PLEError("give --model (or a config with a model), or --compare A B")
    config = _with_base_model(config, names[0])
    dirs = eval_dirs(names, out)
    evaluate_models(names, config, eval_prompts(config, args.prompts_file), args, dirs)
    for name, d in zip(names, dirs):
        print(f"## {name}\n" if len(names) > 1 else "", end="")
        print((d / EVAL_MD).read_text())
        print(f"results: {d / EVAL_JSON}")
    return 0


def _with_base_model(config, name: str):
    """The config, with a base model for the evaluator when it names none: the adapter's base, or the model."""
    import dataclasses

    from ple.model import adapter_base

    return config if config.model else dataclasses.replace(config, model=adapter_base(name) or name)


def compare_two(config, args, out: Path) -> int:
    """`ple eval --compare A B`: a model is generated on the eval prompts, a .jsonl file is judged as it is."""
    from ple.evaluation.evaluate import eval_prompts
    from ple.evaluation.evaluation_views import comparison_table
    from ple.evaluation.layout import COMPLETIONS
    from ple.evaluation.pairwise import judge_pair, load_completions, make_judge

    compared = [model_name(name) for name in args.compare]
    labelled = list(zip(("a", "b"), compared))
    refuse_other_comparison(*compared, out)
    models = [(name, out / label) for label, name in labelled if not name.endswith(".jsonl")]
    if models:
        config = _with_base_model(config, models[0][0])
        for name, d in models:
            refuse_others_results(name, d)
        names, dirs = [n for n, _ in models], [d for _, d in models]
        evaluate_models(names, config, eval_prompts(config, args.prompts_file), args, dirs)
    sides = [
        load_completions(name if name.endswith(".jsonl") else str(out / label / COMPLETIONS))
        for label, name in labelled
    ]
    limits = dict(
        timeout=args.judge_timeout,
        concurrency=args.judge_concurrency,
        max_retries=args.judge_max_retries,
        max_tokens=args.judge_max_tokens,
    )
    judge = make_judge(
        args.judge, config, args.judge_url, args.judge_model, args.tie_margin, out / "judge_cache.jsonl", limits
    )
    a, b = compared
    try:
        result = judge_pair(sides[0], sides[1], judge, a, b, out)
    finally:  # what the judge did, also when it gave no verdict at all
        if getattr(judge, "stats", None):
            stats = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in judge.stats.items())
            print(f"judge: {stats}", file=sys.stderr)
    for note in result["notes"]:
        print(f"ple: note: {note}", file=sys.stderr)
    print(f"A = {a}\nB = {b}\n{result['n_prompts']} prompts, both orders\n")
    print(comparison_table(result))
    print(f"\nchart: {out / 'win_rate.png'}")
    return 0
