"""The paper's tasks as row converters: raw dataset rows in, {prompt, response/reference, chosen, rejected} out.

Each works on rows from `datasets.load_dataset(name)` when online, and on local files of the
same schema offline:

- `hh`: Anthropic/hh-rlhf. `chosen`/`rejected` are transcripts "\\n\\nHuman: ...\\n\\nAssistant: ...".
  The prompt is the conversation up to the last assistant turn (chat messages); `chosen`'s last
  turn is the SFT target and DPO's chosen answer, `rejected`'s last turn the rejected one.
- `imdb`: stanfordnlp/imdb rows {text, label}: a 2-8 word review prefix to continue.
- `tldr`: trl-lib/tldr rows {prompt, completion}, or OpenAI's summarize_from_feedback
  comparisons {info: {post, title, subreddit}, summaries: [{text}], choice}: post -> summary,
  with the summary as the reference for BLEU.
"""

import re
from typing import Any

import numpy as np

from ple.errors import PLEError

_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh(transcript: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [{user: hi}, {assistant: hello}], whitespace trimmed."""
    text = "\n\n" + transcript.lstrip()
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first Human:/Assistant: marker")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        content = content.strip()
        if messages and messages[-1]["role"] == role:  # a speaker split across markers: keep one turn
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{content}".strip()
        else:
            messages.append({"role": role, "content": content})
    if not messages:
        raise ValueError("no Human:/Assistant: turns")
    return messages


def hh_row(row: dict[str, Any]) -> dict[str, Any]:
    chosen = parse_hh(row["chosen"])
    rejected = parse_hh(row["rejected"])
    if chosen[-1]["role"] != "assistant" or len(chosen) < 2:
        raise ValueError("the chosen transcript does not end with an assistant turn")
    prompt = chosen[:-1]
    # Some pairs differ before the last turn; their rejected answer answers another conversation.
    same_prompt = rejected[:-1] == prompt and rejected[-1]["role"] == "assistant"
    return {
        "prompt": prompt,
        "response": chosen[-1]["content"],
        "chosen": chosen[-1]["content"],
        "rejected": rejected[-1]["content"] if same_prompt else None,
    }


def imdb_row(row: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    text = re.sub(r"<br\s*/?>", " ", row["text"])
    words = text.split()
    return {"prompt": " ".join(words[: int(rng.integers(2, 9))]), "label": row.get("label")}


TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"


def tldr_row(row: dict[str, Any]) -> dict[str, Any]:
    if "info" in row and "summaries" in row:  # summarize_from_feedback comparisons
        info = row["info"]
        prompt = TLDR_PROMPT.format(
            subreddit=info.get("subreddit") or "",
            title=(info.get("title") or "").strip(),
            post=(info.get("post") or "").strip(),
        )
        summaries = [s["text"].strip() for s in row["summaries"]]
        choice = int(row["choice"])
        return {
            "prompt": prompt,
            "response": summaries[choice],
            "reference": summaries[choice],
            "chosen": summaries[choice],
            "rejected": summaries[1 - choice] if len(summaries) == 2 else None,
        }
    summary = row["completion"].strip()
    return {"prompt": row["prompt"], "response": summary, "reference": summary}


def convert(rows: list[dict[str, Any]], task: str, source: str, seed: int = 0) -> list[dict[str, Any]]:
    """Rows of `task`'s raw schema -> rows with `prompt` (and response/reference/chosen/rejected)."""
    if task == "none":
        return rows
    rng = np.random.default_rng(seed)
    needed = {"hh": ("chosen", "rejected"), "imdb": ("text",), "tldr": ()}[task]
    out = []
    for i, row in enumerate(rows):
        missing = [c for c in needed if c not in row]
        if missing:
            raise PLEError(f"{source} row {i}: task {task} needs column(s) {', '.join(missing)}")
        try:
            if task == "hh":
                out.append(hh_row(row))
            elif task == "imdb":
                out.append(imdb_row(row, rng))
            elif "info" in row or ("prompt" in row and "completion" in row):
                out.append(tldr_row(row))
            else:
                raise ValueError("needs prompt + completion (trl-lib/tldr) or info + summaries + choice")
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise PLEError(f"{source} row {i}: not a valid {task} row ({e})") from None
    return out
