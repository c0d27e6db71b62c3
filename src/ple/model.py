"""Loading the policy (any AutoModelForCausalLM, optionally with LoRA) and saving it."""

import contextlib
import copy
import json
from pathlib import Path

import torch

from ple.errors import PLEError, first_line

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PLEError(f"device={name!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PLEError(f"device={name!r}, but torch sees no CUDA device")
    return device


def resolve_dtype(name: str, device: torch.device) -> str:
    """The compute dtype a run on `device` uses for the config's `dtype`: auto is bfloat16 on a CUDA device that
    has it, else float32."""
    if device.type != "cuda":
        return "float32" if name == "auto" else name
    supported = torch.cuda.is_bf16_supported()
    if name == "bfloat16" and not supported:
        raise PLEError(f"dtype=bfloat16, but {torch.cuda.get_device_name(device)} has no bf16; use auto or float32")
    return ("bfloat16" if supported else "float32") if name == "auto" else name


def attention(setting: str) -> dict:
    """from_pretrained's keyword for the config's attn_implementation (auto: transformers' own choice)."""
    return {} if setting == "auto" else {"attn_implementation": setting}


def check_exists(name: str) -> None:
    """A name that is plainly a local path (absolute, ./ or ~) must exist; anything else may be a hub id."""
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().exists():
        raise PLEError(f"model not found: {name}")


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    check_exists(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise PLEError(f"could not load the tokenizer of '{name}': {first_line(e)}") from None
    return prepare_tokenizer(tokenizer, name)


def prepare_tokenizer(tokenizer, name: str):
    """A pad token (the eos when it has none) and left padding, which batched generation needs."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PLEError(f"the tokenizer of '{name}' has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def adapter_base(path: str) -> str | None:
    """The base model of a saved LoRA adapter directory, or None if `path` is no adapter."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text())["base_model_name_or_path"]


def load_causal_lm(name: str, dtype: str = "float32", attn_implementation: str = "auto"):
    """A causal LM by path or id, for generation and evaluation. A LoRA adapter directory loads on top of
    its base model; in fp32 the adapter is merged in (one matmul per layer instead of three), while in bf16
    it stays separate, because a bf16 weight would round most of a small update away."""
    from transformers import AutoModelForCausalLM

    check_exists(name)
    base = adapter_base(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base or name, dtype=DTYPES[dtype], **attention(attn_implementation)
        )
        if base is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, name)
            if DTYPES[dtype] == torch.float32:
                model = model.merge_and_unload()
    except Exception as e:
        raise PLEError(f"could not load model '{name}': {first_line(e)}") from None
    return model


def check_context_length(model, config) -> None:
    """A prompt of max_prompt_tokens plus max_new_tokens must fit the model's positions."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and config.max_prompt_tokens + config.max_new_tokens > limit:
        raise PLEError(
            f"max_prompt_tokens + max_new_tokens = {config.max_prompt_tokens + config.max_new_tokens} exceeds "
            f"the model's {limit} positions; lower max_prompt_tokens or max_new_tokens"
        )


def autocast(dtype: str, device: torch.device):
    """bf16 compute for bfloat16 runs (the weights being trained stay fp32, see load_policy)."""
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_policy(config, checkpoint: Path | None = None, model=None, tokenizer=None, peft_config=None):
    """The trainable policy and its tokenizer; from `checkpoint` (a saved model dir) when resuming.

    `model` and `tokenizer` are objects a Python caller already holds (else config.model is loaded), and
    `peft_config` a peft LoraConfig (else one is made from the config's lora_* fields). With LoRA the frozen base
    takes `dtype` (resolved: resolve_dtype) and peft keeps the adapter in fp32. Full fine-tuning keeps fp32 master
    weights whatever `dtype` says: a bf16 weight would swallow most small updates. A given model in another
    precision (float16, say, whose weights AdamW's updates overflow) is cast to that one.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = prepare_tokenizer(tokenizer, config.model) if tokenizer is not None else load_tokenizer(config.model)
    weights_dtype = DTYPES[config.dtype] if config.use_lora else torch.float32
    if model is not None and checkpoint is None and model.dtype != weights_dtype:
        model = model.to(weights_dtype)
    if model is None or checkpoint is not None:
        source = str(checkpoint) if checkpoint is not None and not config.use_lora else config.model
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=weights_dtype, **attention(config.attn_implementation)
            )
        except Exception as e:
            raise PLEError(f"could not load model '{source}': {first_line(e)}") from None
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if config.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise PLEError(
                f"gradient_checkpointing: {type(model).__name__} cannot recompute its layers; set it to false"
            )
        # Non-reentrant: gradients reach a frozen base's LoRA adapters without marking the inputs as trainable.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.use_lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        if checkpoint is not None:
            model = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)
        else:
            try:
                lora = peft_config or LoraConfig(
                    r=config.lora_r,
                    lora_alpha=config.lora_alpha,
                    lora_dropout=config.lora_dropout,
                    target_modules=config.lora_target_modules,
                    task_type="CAUSAL_LM",
                )
                model = get_peft_model(model, lora)
            except ValueError as e:
                raise PLEError(f"LoRA setup failed: {first_line(e)}") from None
    return model, tokenizer


@contextlib.contextmanager
def merged_lora(model):
    """Inside: every LoRA layer computes with its base weight plus its adapter's update, one matmul instead of
    three. The merged weights are new tensors swapped in for the call, with the adapters switched off (peft's
    `disable_adapter`); on the way out the original base weights are swapped back untouched. Merging in
    place and unmerging would leave float round-off in them, and a resumed run, which reloads the base
    weights from disk, would no longer continue exactly like an uninterrupted one. The merged copies cost
    memory the size of the adapted weights while inside.
    """
    if not (hasattr(model, "disable_adapter") and getattr(model, "peft_config", None)):
        yield model
        return
    from peft.tuners.lora import LoraLayer

    swapped = []
    with model.disable_adapter(), torch.no_grad():
        try:
            for layer in (m for m in model.modules() if isinstance(m, LoraLayer)):
                weight = layer.get_base_layer().weight
                update = sum(layer.get_delta_weight(name) for name in layer.active_adapters if name in layer.lora_A)
                swapped.append((weight, weight.data))
                weight.data = weight.data + update
            yield model
        finally:
            for weight, original in swapped:
                weight.data = original


def save_model(model, tokenizer, path: Path, merge: bool = False, dtype: str | None = None) -> None:
    """Save the policy's adapter (or the full model); with `merge`, LoRA is folded into a plain checkpoint. Only the
    policy's own adapter ("default") is saved: TRL may hold a frozen reference copy beside it. With `dtype`, a full
    model's floating-point weights are written in it (a bf16 run's final model, trained on fp32 master weights)."""
    if merge:
        model = model.merge_and_unload()
    adapters = list(getattr(model, "peft_config", {}))
    if adapters or dtype is None or model.dtype == DTYPES[dtype]:
        model.save_pretrained(path, **({"selected_adapters": ["default"]} if len(adapters) > 1 else {}))
    else:
        cast = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.save_pretrained(path, state_dict=cast)
        config = copy.deepcopy(model.config)  # save_pretrained records the parameters' dtype, not the file's
        config.dtype = DTYPES[dtype]  # what from_pretrained(dtype="auto") reads
        config.save_pretrained(path)
    tokenizer.save_pretrained(path)
