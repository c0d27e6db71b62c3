"""What every method trains with, read and built before any work so that bad input fails in seconds: the config,
the queries, the SFT set, the reward (checked on the first query), the policy and the run directory."""

import sys
import time
from collections.abc import Mapping
from pathlib import Path

from ple.config import Config, load_config
from ple.data import load_task_rows, query_rows, sft_rows
from ple.dist import Dist
from ple.errors import PLEError
from ple.methods import get_method
from ple.model import resolve_device, resolve_dtype
from ple.principles import load_principle
from ple.rewards import ClassifierReward, check_reward, config_reward, score, summed_reward
from ple.training.evaluation import TrainingEvaluation
from ple.training.policy import Policy
from ple.training.rundir import RunDir

IN_MEMORY = "<in memory>"  # what the config records as the dataset of a run given a Dataset object


def resolve_config(args: Config | None, model, reward_funcs, train_dataset, sft_dataset, peft_config) -> Config:
    """`args` with what the other arguments say, its method preset applied and validated (as `ple train` does)."""
    defaults = Config().to_dict()
    values = {k: v for k, v in (args or Config()).to_dict().items() if v != defaults[k]}
    if reward_funcs is not None and "reward" not in get_method(values.get("method", "ple")).preset:
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        values["reward"] = funcs if all(isinstance(f, str) for f in funcs) else IN_MEMORY  # names go in config.yaml
    if model is not None:
        values["model"] = str(model) if isinstance(model, (str, Path)) else model.name_or_path
    if train_dataset is not None:
        values["dataset"] = IN_MEMORY
    if sft_dataset is not None:
        values["sft_dataset"] = IN_MEMORY
    if peft_config is not None:
        values["use_lora"] = True
    return load_config(overrides=values)


def dataset_rows(dataset, name: str) -> list[dict] | None:
    """The rows of a `datasets.Dataset` or a list of dicts, checked as a file's rows are; None for no dataset."""
    if dataset is None:
        return None
    rows = list(dataset)
    if not rows:
        raise PLEError(f"{name} holds no rows")
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, Mapping)), None)
    if bad is not None:
        raise PLEError(
            f"{name} row {bad} is a {type(rows[bad]).__name__}, not a mapping of columns; pass a datasets.Dataset "
            'or a list of dicts such as {"prompt": ...}'
        )
    return [dict(row) for row in rows]


def make_reward(reward_funcs, config: Config, device):
    """One reward function: the sum of `reward_funcs` (functions, sequence-classification models or reward names),
    or the config's reward when there are none; None for a method that needs no reward."""
    if reward_funcs is None or config.reward != IN_MEMORY:  # names (resolve_config), or none for distill
        return config_reward(config.reward, config, device) if config.reward is not None else None
    parts = [
        config_reward(f, config, device)
        if isinstance(f, str)
        else ClassifierReward.from_model(f, device=device)
        if hasattr(f, "config") and hasattr(f, "forward")
        else f
        for f in (reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs])
    ]
    return parts[0] if len(parts) == 1 else summed_reward(parts)


class Harness:
    """A run's inputs and policy: `config` as resolve_config gives it, the other arguments as PLETrainer takes them
    (ple.training.loop). `samples_itself` is False for a method whose library generates (TRL's RLOO, GRPO);
    `optimizes_itself` is False for one whose library owns the optimizer and any DeepSpeed engine (TRL's trainers)."""

    def __init__(
        self,
        config: Config,
        model=None,
        reward_funcs=None,
        train_dataset=None,
        sft_dataset=None,
        processing_class=None,
        peft_config=None,
        samples_itself: bool = True,
        optimizes_itself: bool = True,
    ):
        self.config = config
        self.dist = Dist()
        self.device = self.dist.device(resolve_device(config.device))
        config.dtype = resolve_dtype(config.dtype, self.device)  # what config.yaml records
        self.principle = load_principle(config.principle, config.principle_name)
        column = config.prompt_column if config.task == "none" else "prompt"
        self.queries = query_rows(
            dataset_rows(train_dataset, "train_dataset")
            or load_task_rows(config.dataset, config.dataset_split, config.dataset_config, config.task, config.seed),
            config.dataset,
            column,
        )
        self.sft_set = []
        if config.sft_epochs > 0 or get_method(config.method).needs_sft_set:
            self.sft_set = sft_rows(
                dataset_rows(sft_dataset, "sft_dataset")
                or load_task_rows(config.sft_dataset, config.sft_split, None, config.task, config.seed),
                config.sft_dataset,
                column,
            )
        if config.queries_per_iteration > len(self.queries) and self.dist.main:
            print(
                f"ple: warning: queries_per_iteration={config.queries_per_iteration} is more than the "
                f"{len(self.queries)} queries in {config.dataset}; an iteration repeats queries",
                file=sys.stderr,
            )
        self.reward_fn = make_reward(reward_funcs, config, self.device)
        if self.reward_fn is not None:
            check_reward(self.reward_fn, self.queries[0])
        self.run_dir = RunDir(Path(config.output_dir), self.dist.main)
        loaded = model if model is not None and not isinstance(model, (str, Path)) else None
        self.policy = Policy(
            config,
            self.dist,
            self.device,
            self.principle,
            samples_itself,
            optimizes_itself,
            loaded,
            processing_class,
            peft_config,
        )
        self.evaluation = TrainingEvaluation(self) if config.eval_steps else None

    def score(self, rows: list[dict], completions: list[str]) -> tuple[list[float | None], float]:
        """The training reward of each completion against its row's plain query (other columns passed along), and
        the seconds it took."""
        if not rows:
            return [], 0.0
        self.policy.progress.phase("scoring")
        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
        started = time.perf_counter()
        scores = score(self.reward_fn, [r["prompt"] for r in rows], completions, **columns)
        return scores, time.perf_counter() - started
