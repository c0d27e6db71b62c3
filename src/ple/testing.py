"""Tiny offline models for tests, smoke checks and examples: a word-level tokenizer and a
2-layer Llama, built in code (no download)."""

from pathlib import Path

WORDS = (
    "the a movie film story actor plot was is good great bad awful boring fun wonderful terrible "
    "i we you it this that and but so very not really loved hated liked enjoyed watched saw "
    "best worst ever love hate scene music ending characters funny sad happy dull brilliant"
).split()

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def _build_tokenizer(chat: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"])}
    for word in WORDS + list(".,!?:"):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>"]})
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama_config(vocab_size: int, **changes):
    """A 2-layer Llama of hidden size 32 (changes override any field)."""
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=None,
    )
    return LlamaConfig(**{**fields, **changes})


def build_tiny_model(path: Path, chat: bool = True, seed: int = 0, **changes) -> Path:
    """A random-weight tiny Llama and its tokenizer saved at `path`; `changes` override its config's fields."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = _build_tokenizer(chat)
    torch.manual_seed(seed)
    config = tiny_llama_config(
        len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **changes
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
