"""The checks of a Config: every field's choices and ranges, the combinations that cannot work, and the method's own
needs, each problem one line (ple.config.load_config runs them)."""

import dataclasses
import importlib.util
import math

from ple.config import Config
from ple.errors import PLEError
from ple.methods import get_method


def validate(config: "Config") -> "Config":
    """Every field's choices and ranges, the combinations that cannot work, and the method's own needs
    (ple.methods); one PLEError line for the first problem found. Returns the config."""
    problems = [*_choice_problems(config), *_range_problems(config), *_combination_problems(config)]
    problems += get_method(config.method).problems(config)
    if problems:
        raise PLEError(problems[0])
    check_tracker_names(config.report_to)
    return config


def tracker_names(report_to) -> list[str]:
    """The trackers `report_to` names (none: no tracker)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return [n for n in names if n != "none"]


def check_tracker_names(report_to) -> None:
    if not tracker_names(report_to):
        return
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    unknown = [n for n in tracker_names(report_to) if n not in LOGGER_TYPE_TO_CLASS]
    if unknown:
        raise PLEError(
            f"report_to: unknown tracker(s) {', '.join(map(str, unknown))}; choose none or from "
            f"{', '.join(LOGGER_TYPE_TO_CLASS)}"
        )


AT_LEAST_1 = (
    "iterations",
    "queries_per_iteration",
    "batch_size",
    "gradient_accumulation_steps",
    "epochs_per_iteration",
    "max_new_tokens",
    "reward_batch_size",
    "max_prompt_tokens",
    "raft_k",
    "grpo_num_generations",
    "max_nonfinite_steps",
)
AT_LEAST_0 = (
    "sft_epochs",
    "reward_max_length",
    "generation_batch_size",
    "keep_checkpoints",
    "snapshot_every",
    "eval_steps",
    "eval_max_prompts",
    "top_k",
    "temperature",
    "rank_coef",
    "sft_coef",
    "rank_sft_coef",
    "margin",
    "learning_rate",
    "weight_decay",
    "max_grad_norm",
    "lora_dropout",
    "rloo_beta",
    "grpo_beta",
)
SEED_LIMIT = 2**32  # numpy's seed sequences and torch's generator both take it, with iteration offsets added


def _choice_problems(config: "Config") -> list[str]:
    out = []
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices is not None and value not in choices:
            out.append(f"{f.name}={value!r} is not one of {', '.join(map(str, choices))}")
    if config.model is None:
        out.append("model is required: a local path or a hub id of a causal LM")
    if config.dataset is None:
        out.append("dataset is required: the query set (a file or a hub dataset name)")
    return out


def _range_problems(config: "Config") -> list[str]:
    def bad(name: str, low: float) -> bool:
        value = getattr(config, name)
        return not (value >= low)  # nan fails too

    out = [f"{n} must be >= 1, got {getattr(config, n)}" for n in AT_LEAST_1 if bad(n, 1)]
    out += [f"{n} must be >= 0, got {getattr(config, n)}" for n in AT_LEAST_0 if bad(n, 0)]
    checks = [
        (not math.isnan(config.tau0), f"tau0 must be a number (-inf is allowed), got {config.tau0}"),
        (0 < config.alpha <= 1, f"alpha must be in (0, 1], got {config.alpha}"),
        (0 <= config.tau_quantile <= 1, f"tau_quantile must be in [0, 1], got {config.tau_quantile}"),
        (0 <= config.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {config.warmup_ratio}"),
        (0 < config.top_p <= 1, f"top_p must be in (0, 1], got {config.top_p}"),
        (config.rank_beta > 0, f"rank_beta must be > 0, got {config.rank_beta}"),
        (config.dpo_beta > 0, f"dpo_beta must be > 0, got {config.dpo_beta}"),
        (0 <= config.seed < SEED_LIMIT, f"seed must be in [0, 2**32), got {config.seed}"),
        (
            0 < config.vllm_gpu_memory_utilization < 1,
            f"vllm_gpu_memory_utilization must be in (0, 1), got {config.vllm_gpu_memory_utilization}",
        ),
        (config.vllm_server_timeout >= 0, f"vllm_server_timeout must be >= 0, got {config.vllm_server_timeout}"),
        (
            config.wsft_temperature == "auto"
            or (not isinstance(config.wsft_temperature, str) and config.wsft_temperature > 0),
            f"wsft_temperature must be auto or a number > 0, got {config.wsft_temperature!r}",
        ),
        (not config.use_lora or config.lora_r >= 1, f"lora_r must be >= 1, got {config.lora_r}"),
    ]
    return out + [message for ok, message in checks if not ok]


def generation_problems(config: "Config") -> list[str]:
    """The generation settings alone (what `ple generate` and `ple eval` read)."""
    checks = [
        (config.temperature >= 0, f"temperature must be >= 0 (0 is greedy), got {config.temperature}"),
        (0 < config.top_p <= 1, f"top_p must be in (0, 1], got {config.top_p}"),
        (config.top_k >= 0, f"top_k must be >= 0 (0 is off), got {config.top_k}"),
        (config.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {config.max_new_tokens}"),
        (config.max_prompt_tokens >= 1, f"max_prompt_tokens must be >= 1, got {config.max_prompt_tokens}"),
        (config.generation_batch_size >= 0, f"generation_batch_size must be >= 0, got {config.generation_batch_size}"),
        (0 <= config.seed < SEED_LIMIT, f"seed must be in [0, 2**32), got {config.seed}"),
    ]
    return [message for ok, message in checks if not ok]


def _combination_problems(config: "Config") -> list[str]:
    checks = [
        (config.rank_coef > 0 or config.sft_coef > 0, "rank_coef and sft_coef are both 0: nothing would be trained"),
        (
            config.sft_epochs == 0 or config.sft_dataset is not None,
            f"sft_epochs={config.sft_epochs} needs an sft_dataset for the warm-up",
        ),
        (bool(config.output_dir.strip()), "output_dir is empty; name the run directory"),
        (not config.merge_lora or config.use_lora, "merge_lora needs use_lora: true"),
        (
            config.eval_steps == 0 or config.eval_dataset is not None,
            f"eval_steps={config.eval_steps} needs an eval_dataset to evaluate on",
        ),
        (
            config.attn_implementation != "flash_attention_2" or importlib.util.find_spec("flash_attn") is not None,
            "attn_implementation=flash_attention_2 needs the flash-attn package (pip install flash-attn, on a CUDA "
            "machine); or use sdpa",
        ),
        (
            config.principle is None or bool(config.principle.strip()),
            "principle is empty; give its text or a principles file",
        ),
    ]
    out = [message for ok, message in checks if not ok]
    out += template_problems("chat_principle_template", config.chat_principle_template, ("principle",))
    out += template_problems("text_principle_template", config.text_principle_template, ("principle", "query"))
    return out


def template_problems(name: str, template: str, fields: tuple[str, ...]) -> list[str]:
    """A str.format template must use each of `fields` and nothing else."""
    import string

    try:
        used = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        return [f"{name} is not a valid template ({e}); write a literal brace as {{{{ or }}}}"]
    unknown = [f for f in used if f not in fields]
    if unknown:
        allowed = ", ".join("{" + f + "}" for f in fields)
        return [f"{name} uses {{{unknown[0]}}}; it may use only {allowed} (a literal brace is {{{{ or }}}})"]
    missing = [f for f in fields if f not in used]
    return [f"{name} must contain {' and '.join('{' + f + '}' for f in missing)}"] if missing else []


def check_generation(config: "Config") -> None:
    """The generation settings that `ple generate` and `ple eval` use, checked as `ple train` checks them: the
    first problem, as one line."""
    problems = generation_problems(config)
    if problems:
        raise PLEError(problems[0])
