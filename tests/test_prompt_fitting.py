"""An overlong prompt loses its query's oldest tokens, never the principle, a system message or the template."""

import pytest

from ple.errors import PLEError
from ple.model import load_tokenizer
from ple.principles import PromptBuilder

PRINCIPLE = "you loved the good music"
QUERY = "the movie was very boring but the ending was fun"


def tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


def test_a_long_chat_query_keeps_the_principle_and_template(tiny_chat_model):
    tokenizer = load_tokenizer(tiny_chat_model)
    builder = PromptBuilder(tokenizer, PRINCIPLE)
    (full,), cut = builder.encode([QUERY], True, 100)
    principle = ["<|system|>", *PRINCIPLE.split(), "<eos>"]
    assert cut == 0 and tokens(tokenizer, full) == principle + ["<|user|>", *QUERY.split(), "<eos>", "<|assistant|>"]

    (short, untouched), cut = builder.encode([QUERY, "fun"], True, len(full) - 4)
    assert cut == 1  # only the long one
    assert tokens(tokenizer, short) == principle + ["<|user|>", *QUERY.split()[4:], "<eos>", "<|assistant|>"]
    assert tokens(tokenizer, untouched) == principle + ["<|user|>", "fun", "<eos>", "<|assistant|>"]

    (plain,), cut = builder.encode([QUERY], False, 6)
    assert cut == 1 and tokens(tokenizer, plain) == ["<|user|>", "ending", "was", "fun", "<eos>", "<|assistant|>"]


def test_a_conversation_loses_its_oldest_turns_first_and_keeps_its_system_message(tiny_chat_model):
    tokenizer = load_tokenizer(tiny_chat_model)
    conversation = [
        {"role": "system", "content": "i saw it"},
        {"role": "user", "content": "the story was dull"},
        {"role": "assistant", "content": "i hated it"},
        {"role": "user", "content": "was the music good"},
    ]
    (ids,), cut = PromptBuilder(tokenizer, PRINCIPLE).encode([conversation], True, 21)
    # The principle goes first in the system message, the task's system text after it; the oldest user turn
    # (6 tokens with its markers) is dropped whole, the assistant turn loses its first word.
    assert cut == 1 and tokens(tokenizer, ids) == (
        ["<|system|>", *PRINCIPLE.split(), "i", "saw", "it", "<eos>"]
        + ["<|assistant|>", "hated", "it", "<eos>"]
        + ["<|user|>", "was", "the", "music", "good", "<eos>", "<|assistant|>"]
    )


def test_a_plain_lm_keeps_its_text_prefix(tiny_text_model):
    tokenizer = load_tokenizer(tiny_text_model)
    (ids,), cut = PromptBuilder(tokenizer, PRINCIPLE, "text").encode([QUERY], True, 7)
    assert cut == 1 and tokens(tokenizer, ids) == [*PRINCIPLE.split(), "was", "fun"]


def test_no_room_for_the_query_is_one_clear_error(tiny_chat_model):
    tokenizer = load_tokenizer(tiny_chat_model)
    with pytest.raises(PLEError, match="max_prompt_tokens=5 leaves no room for the query: the guided prompt's"):
        PromptBuilder(tokenizer, PRINCIPLE).encode([QUERY], True, 5)
