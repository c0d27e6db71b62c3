"""The `ple` command: train, generate, eval, demo, compare, plan, report."""

import argparse
import errno
import json
import sys
from pathlib import Path

from ple.cli_eval import cmd_eval
from ple.config import config_reference, load_config
from ple.config_checks import check_generation
from ple.config_values import parse_overrides
from ple.errors import PLEError
from ple.io import writable_dir
from ple.methods import METHODS, method_names
from ple.progress import quiet_libraries


def _config_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--config", required=required, help="YAML file whose keys are config fields (listed below)")
    _set_arg(parser, "override one config field; repeatable")


def _set_arg(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ple", description="Progressively Label Enhancement for LLM alignment.")
    sub = parser.add_subparsers(dest="command", required=True)
    epilog = "config fields:\n" + config_reference()
    for add in (_add_train, _add_generate, _add_eval, _add_demo, _add_compare, _add_plan, _add_report):
        add(sub, epilog)
    return parser


def _subcommand(sub, name: str, help: str, epilog: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_train(sub, epilog: str) -> None:
    methods = "\n".join(f"  {m.name}: {m.summary}" for m in METHODS.values())
    train = _subcommand(
        sub, "train", "run PLE, an ablation or a baseline from a config", f"methods:\n{methods}\n\n{epilog}"
    )
    _config_args(train, required=True)
    train.add_argument(
        "--method", choices=method_names(), help="PLE, an ablation or a baseline (same as --set method=...)"
    )
    train.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")


def _add_generate(sub, epilog: str) -> None:
    gen = _subcommand(sub, "generate", "sample from a model, a checkpoint or a run's final model", epilog)
    _config_args(gen, required=False)
    gen.add_argument("--model", help="model path or id, checkpoint or adapter dir (default: the config's model)")
    gen.add_argument("--prompt", action="append", default=[], help="a prompt; repeatable")
    gen.add_argument("--prompts-file", help="a .jsonl/.csv/.parquet file with a prompt column")
    gen.add_argument("--guided", action="store_true", help="insert the config's principle into each prompt")
    gen.add_argument("--output", help="write {prompt, completion} rows to this JSONL file")


def _add_eval(sub, epilog: str) -> None:
    ev = _subcommand(
        sub, "eval", "evaluate models on the eval prompts, or judge two models / generation files pairwise", epilog
    )
    _config_args(ev, required=False)
    ev.add_argument(
        "--model",
        nargs="+",
        help="models to evaluate (paths or ids, checkpoints or adapter dirs); the base model and the rewards load "
        "once for all of them",
    )
    ev.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="win rate of A over B; each is a model or a JSONL file of {prompt, completion} rows",
    )
    ev.add_argument("--prompts-file", help="eval prompts (default: the config's eval_dataset)")
    ev.add_argument("--guided", action="store_true", help="generate with the principle in the prompt")
    ev.add_argument("--reference-model", help="model for the perplexity of generations (default: the base model)")
    ev.add_argument(
        "--judge",
        choices=("reward", "llm"),
        default="reward",
        help="pairwise judge for --compare: reward is the first held-out reward (eval_rewards), else the training "
        "reward, as in `ple compare`",
    )
    ev.add_argument("--judge-url", help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    ev.add_argument("--judge-model", help="the judge model's name at that endpoint")
    ev.add_argument("--tie-margin", type=float, default=0.0, help="reward judge: differences up to this are ties")
    ev.add_argument("--judge-timeout", type=float, default=120.0, help="llm judge: seconds to wait for a reply")
    ev.add_argument(
        "--judge-concurrency", type=int, default=4, help="llm judge: requests in flight (1 after a timeout)"
    )
    ev.add_argument("--judge-max-retries", type=int, default=3, help="llm judge: retries of a failed request")
    ev.add_argument("--judge-max-tokens", type=int, default=512, help="llm judge: max_tokens of each reply")
    ev.add_argument("--output-dir", default="runs/eval", help="where results go (default runs/eval)")


def _add_demo(sub, epilog: str) -> None:
    demo = _subcommand(
        sub,
        "demo",
        "the embedded default: PLE on SmolLM2-135M, offline, with a before/after report",
        "Extra key: eval_prompts (default 200), the number of held-out prompts.\n\n" + epilog,
    )
    demo.add_argument("--output-dir", help="run directory (default runs/demo); rerunning resumes it")
    _set_arg(demo, "override one field of the demo preset; repeatable")


def _add_compare(sub, epilog: str) -> None:
    from ple.presets import COMPARE_PRESETS

    compare = sub.add_parser(
        "compare",
        help="run a methods x learning rates x seeds grid under one budget, evaluate every model, write the results",
        description="A compare file holds output_dir, methods, seeds, tie_margin, config (shared training "
        "config) and overrides (per method). See `ple.evaluation.grid_spec` or docs/guide.md.",
    )
    source = compare.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="compare file (YAML)")
    source.add_argument(
        "--preset",
        choices=tuple(COMPARE_PRESETS),
        help="an embedded grid on the offline assets: "
        + "; ".join(f"{name} ({what})" for name, (_, what) in COMPARE_PRESETS.items()),
    )
    compare.add_argument("--output-dir", help="where the grid goes (default: the compare file's output_dir)")
    _set_arg(compare, "override one field of the shared training config; repeatable")


def cmd_demo(args) -> int:
    from ple.demo.run import run_demo

    overrides = parse_overrides(args.overrides)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    report = run_demo(overrides)
    print(f"report: {report}")
    return 0


def cmd_compare(args) -> int:
    from ple.evaluation.grid import run_grid
    from ple.evaluation.grid_spec import load_grid, read_grid_file

    if args.preset:
        from ple.demo.run import compare_preset

        raw = compare_preset(args.preset)
    else:
        raw = read_grid_file(args.config)
    if args.output_dir:
        raw["output_dir"] = args.output_dir
    report = run_grid(load_grid(raw, parse_overrides(args.overrides)))
    print(report.read_text())
    print(f"results: {report}")
    return 0


def cmd_train(args) -> int:
    from ple.baselines import make_trainer
    from ple.training.rundir import METRICS_JSONL

    overrides = parse_overrides(args.overrides)
    if args.method:
        overrides["method"] = args.method
    config = load_config(args.config, overrides)
    trainer = make_trainer(config)
    final = trainer.train(resume=args.resume).final_model
    if trainer.harness.dist.main:  # under torchrun or accelerate launch, once
        print(f"final model: {final}")
        print(f"metrics: {Path(config.output_dir) / METRICS_JSONL}")
    return 0


def cmd_generate(args) -> int:
    import torch

    from ple.data import load_rows, query_rows
    from ple.evaluation.evaluate import generate_rows
    from ple.io import atomic_write_jsonl
    from ple.model import adapter_base, autocast, load_causal_lm, load_tokenizer, resolve_device, resolve_dtype
    from ple.principles import PromptBuilder

    config = load_config(args.config, parse_overrides(args.overrides), validate=False)
    check_generation(config)
    name = args.model or config.model
    if name is None:
        raise PLEError("give --model, or a config with a model")
    if args.output and args.prompts_file and Path(args.output).resolve() == Path(args.prompts_file).resolve():
        raise PLEError(f"--output {args.output} is the --prompts-file; name another file, so the prompts are kept")
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += [
            r["prompt"] for r in query_rows(load_rows(args.prompts_file), args.prompts_file, config.prompt_column)
        ]
    if not prompts:
        raise PLEError("give at least one --prompt or a --prompts-file")
    if any(isinstance(p, str) and not p.strip() for p in prompts):
        raise PLEError("empty prompt")
    if args.guided and config.principle is None:
        raise PLEError("--guided needs a principle (in the config, or --set principle=...)")
    if args.output:
        if Path(args.output).is_dir():
            raise PLEError(f"--output {args.output} is a directory; name a .jsonl file")
        writable_dir(Path(args.output).parent, "--output's folder")
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    tokenizer = load_tokenizer(adapter_base(name) or name)
    dtype = resolve_dtype(config.dtype, device)
    model = load_causal_lm(name, dtype, config.attn_implementation).to(device)
    builder = PromptBuilder.from_config(tokenizer, config)
    with autocast(dtype, device):
        rows = generate_rows(model, tokenizer, builder, prompts, config, guided=args.guided)
    rows = [{"prompt": r["prompt"], "completion": r["completion"], "guided": args.guided} for r in rows]
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    if args.output:
        atomic_write_jsonl(Path(args.output), rows)
    return 0


def _add_plan(sub, epilog: str) -> None:
    plan = _subcommand(
        sub,
        "plan",
        "per-GPU memory of a training config, from the model's config alone (nothing downloaded but configs)",
        epilog,
    )
    _config_args(plan, required=True)
    plan.add_argument("--processes", type=int, help="GPUs the run uses (default: the launch's WORLD_SIZE, or 1)")
    plan.add_argument(
        "--zero-stage", type=int, choices=(0, 1, 2, 3), help="DeepSpeed ZeRO stage (default: the launch's)"
    )
    plan.add_argument("--offload-optimizer", action="store_true", help="the optimizer state lives in CPU memory")
    plan.add_argument("--gpu-memory", type=float, help="GiB per GPU to check against (default: this machine's GPU)")


def cmd_plan(args) -> int:
    from ple.plan import plan_report

    config = load_config(args.config, parse_overrides(args.overrides))
    print(plan_report(config, args.processes, args.zero_stage, args.offload_optimizer, args.gpu_memory))
    return 0


def _add_report(sub, epilog: str) -> None:
    report = sub.add_parser(
        "report",
        help="re-render the views of a compare grid, an evaluation or a judging from their JSON, computing nothing",
        description="Rewrites the views of a `ple compare` grid directory (results.md, frontier.md, their CSVs "
        "and plots) from its results.json and frontier.json alone (no bootstrap, no model), or an evaluation's "
        "eval.md from eval.json, or a judging's compare.md and chart from compare.json: for a changed view, or a "
        "directory copied without them.",
    )
    report.add_argument("directory", help="a `ple compare` grid, a `ple eval` directory, or a judging's directory")


def cmd_report(args) -> int:
    from ple.evaluation.evaluation_views import render_comparison, render_evaluation
    from ple.evaluation.frontier_views import render_frontier
    from ple.evaluation.layout import COMPARE_JSON, EVAL_JSON, FRONTIER_JSON, RESULTS_JSON
    from ple.evaluation.results_views import render_results

    directory = Path(args.directory)
    if not directory.is_dir():
        raise PLEError(f"report: {directory} is not a directory")
    try:  # results.md renders frontier.md too; a grid from before results.json has its frontier alone
        paths = [render_results(directory) or render_frontier(directory)]
        paths += [
            render(directory)
            for name, render in ((EVAL_JSON, render_evaluation), (COMPARE_JSON, render_comparison))
            if (directory / name).is_file()
        ]
    except (KeyError, TypeError, ValueError, AttributeError, StopIteration) as e:  # JSON from another version
        raise PLEError(f"report: the JSON in {directory} lacks what the views need ({e!r})") from None
    paths = [p for p in paths if p is not None]
    if not paths:
        raise PLEError(
            f"report: {directory} holds none of {RESULTS_JSON}, {FRONTIER_JSON}, {EVAL_JSON}, {COMPARE_JSON}; run "
            "`ple compare` or `ple eval` first"
        )
    for path in paths:
        print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    commands = {
        "train": cmd_train,
        "generate": cmd_generate,
        "demo": cmd_demo,
        "eval": cmd_eval,
        "compare": cmd_compare,
        "plan": cmd_plan,
        "report": cmd_report,
    }
    try:
        return commands[args.command](args)
    except PLEError as e:
        print(f"ple: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM, errno.EISDIR):
            raise
        # Every run file is written to a temporary name and renamed, so what was written before stays whole.
        where = (e.filename2 if e.errno == errno.EISDIR else None) or e.filename  # a rename's target is the folder
        print(f"ple: error: cannot write {where or 'a file'}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ple: interrupted; {RESUMING[args.command]}", file=sys.stderr)
        return 130


RESUMING = {  # what continues each command after a Ctrl-C
    "train": "`ple train --config ... --resume` continues from the last checkpoint",
    "compare": "rerunning the same `ple compare` continues the grid: finished cells are kept, a killed one resumes",
    "demo": "rerunning `ple demo` continues from the last checkpoint",
    "eval": "nothing was written for the model being evaluated; rerun `ple eval` (a judge's replies are cached)",
    "generate": "rerun `ple generate`",
    "plan": "rerun `ple plan`",
    "report": "rerun `ple report`",
}


if __name__ == "__main__":
    raise SystemExit(main())
