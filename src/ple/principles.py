"""Principles and how they are put into a prompt: a system message for chat models,
a text prefix for plain LMs."""

import json
from pathlib import Path

from ple.data import Prompt
from ple.errors import PLEError, first_line
from ple.io import load_yaml, read_text_file


def load_principle(value: str | None, name: str | None = None) -> str | None:
    """Inline text, or one principle from a YAML/JSON file; None for a method that reads no principle.

    The file is a mapping of name -> text (or -> {text: ...}), or a single text.
    """
    if value is None:
        return None
    if not value.strip():
        raise PLEError("principle is empty; give its text or a principles file")
    path = Path(value).expanduser()
    # A file name is one word ending in .yaml/.yml/.json; a sentence that happens to end in ".json" is text.
    is_file_like = path.suffix.lower() in {".yaml", ".yml", ".json"} and not any(c.isspace() for c in value)
    if not is_file_like:
        if name is not None:
            raise PLEError("principle_name is set, but principle is inline text rather than a file")
        return value
    text = read_text_file(path, "principles file")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PLEError(f"principles file {value} could not be parsed: {e.msg} (line {e.lineno})") from None
    else:
        data = load_yaml(text, f"principles file {value}")
    if isinstance(data, str):
        return data
    if not isinstance(data, dict) or not data:
        raise PLEError(f"principles file {value} must map names to principle texts")
    if name is None:
        if len(data) > 1:
            raise PLEError(
                f"principles file {value} holds {len(data)} principles; set principle_name to one of: {', '.join(data)}"
            )
        name = next(iter(data))
    if name not in data:
        raise PLEError(f"principle_name '{name}' is not in {value} (it has: {', '.join(data)})")
    entry = data[name]
    text = entry.get("text") if isinstance(entry, dict) else entry
    if not isinstance(text, str) or not text.strip():
        raise PLEError(f"principle '{name}' in {value} is empty")
    return text


class PromptBuilder:
    """Renders plain prompts x and guided prompts p + x to the text the policy reads."""

    def __init__(
        self,
        tokenizer,
        principle: str,
        prompt_format: str = "auto",
        chat_template: str = "{principle}",
        text_template: str = "{principle}\n\n{query}",
    ):
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if prompt_format == "chat" and not has_template:
            raise PLEError("prompt_format=chat, but the tokenizer has no chat template (use text)")
        self.chat = prompt_format == "chat" or (prompt_format == "auto" and has_template)
        self.tokenizer = tokenizer
        self.principle = principle
        self.chat_template = chat_template
        self.text_template = text_template

    @classmethod
    def from_config(cls, tokenizer, config, principle: str | None = None) -> "PromptBuilder":
        """The builder a config describes; the principle is read from it unless given ('' when it has none)."""
        if principle is None:
            principle = load_principle(config.principle, config.principle_name) if config.principle else ""
        return cls(
            tokenizer, principle, config.prompt_format, config.chat_principle_template, config.text_principle_template
        )

    def messages(self, prompt: Prompt, guided: bool) -> list[dict[str, str]]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if guided:
            system = self.chat_template.format(principle=self.principle)
            if messages and messages[0]["role"] == "system":  # keep the task's own system text after the principle
                system = f"{system}\n\n{messages[0]['content']}"
                messages = messages[1:]
            messages = [{"role": "system", "content": system}, *messages]
        return messages

    def encode(self, prompts: list[Prompt], guided: bool, max_tokens: int) -> tuple[list[list[int]], int]:
        """Token ids of each rendered prompt, and how many had to be cut to `max_tokens`.

        An overlong prompt loses its query's oldest tokens (whole oldest turns first, then the start of the
        oldest remaining one), never the principle, a system message or the template's tokens.
        """
        if not prompts:  # a process with no share of the queries
            return [], 0
        ids = self._tokens([self.render(p, guided) for p in prompts])
        overlong = [i for i, row in enumerate(ids) if len(row) > max_tokens]
        for i in overlong:
            ids[i] = self._fit(prompts[i], guided, max_tokens)
        return ids, len(overlong)

    def _tokens(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=not self.chat)["input_ids"]

    def _fit(self, prompt: Prompt, guided: bool, max_tokens: int) -> list[int]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        for _ in range(64):  # each pass drops at least one token; re-tokenising a cut text rarely needs a second
            shortened = messages[0]["content"] if isinstance(prompt, str) else messages
            ids = self._tokens([self.render(shortened, guided)])[0]
            overflow = len(ids) - max_tokens
            if overflow <= 0:
                return ids
            body = [i for i, m in enumerate(messages) if m["role"] != "system" and m["content"]]
            if not body:
                break
            oldest = body[0]
            content = self.tokenizer(messages[oldest]["content"], add_special_tokens=False)["input_ids"]
            if len(content) <= overflow and len(body) > 1:
                del messages[oldest]
            else:
                messages[oldest]["content"] = self.tokenizer.decode(content[overflow:]).lstrip()
        raise PLEError(
            f"max_prompt_tokens={max_tokens} leaves no room for the query: "
            + (
                f"the guided prompt's template and principle alone take {len(ids)} tokens"
                if guided
                else f"the plain prompt's template alone takes {len(ids)} tokens"
            )
        )

    def render(self, prompt: Prompt, guided: bool = False) -> str:
        if self.chat:
            messages = self.messages(prompt, guided)
            try:
                return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # a template that raises (no system role, roles that must alternate, ...)
                roles = ", ".join(m["role"] for m in messages)
                raise PLEError(
                    f"the model's chat template refused a prompt with roles {roles}: {first_line(e)}"
                ) from None
        from ple.data import prompt_text

        query = prompt_text(prompt)
        return self.text_template.format(principle=self.principle, query=query) if guided else query
