"""Evaluation metrics and the bootstrap that puts a confidence interval on each.

The metric registry (`METRICS`) defines each metric once: its name, its label, how it is computed on a set of
evaluation rows (one row per prompt, with `completion` and what the evaluator adds: `nll` and `n_tokens` under the
reference model, `reference`, `ref_nll` and `ref_n_tokens` when the data has references, one column per reward),
and how it is printed. `ple eval`, the demo's report and the `ple compare` tables are views of it: a new metric
appears in all of them by one `register_metric(Metric(...))` (docs/extending.md)."""

import functools
import math
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ple.batching import pad_batch
from ple.evaluation.stats import bootstrap_ci
from ple.logprobs import response_logprobs

Rows = Sequence[dict[str, Any]]


@functools.lru_cache(maxsize=65536)
def ngrams(text: str, n: int) -> tuple[tuple[str, ...], ...]:
    """A text's word n-grams (whitespace words, lower-cased): what distinct-n and the frontier's gate count."""
    # Cached: a bootstrap recomputes a corpus metric on a thousand resamples of the same answers.
    words = text.lower().split()
    return tuple(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams of a set of texts (whitespace words, lower-cased)."""
    grams = [g for t in texts for g in ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_4gram_share(text: str) -> float:
    """The share of an answer's word 4-grams that repeat an earlier one of the same answer (0 when it has none)."""
    grams = ngrams(text, 4)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")  # where an answer splits into sentences


@functools.lru_cache(maxsize=65536)
def sentences(text: str) -> frozenset[str]:
    """An answer's sentences, lower-cased with their whitespace collapsed, each once."""
    parts = (" ".join(p.lower().split()) for p in SENTENCE_END.split(text))
    return frozenset(p for p in parts if p)


def top_sentence_share(texts: Sequence[str]) -> float:
    """The fraction of answers that contain the most common sentence (each answer counts a sentence once)."""
    counts = Counter(s for t in texts for s in sentences(t))
    return counts.most_common(1)[0][1] / len(texts) if counts and texts else 0.0


def answer_kl(policy: torch.Tensor, base: torch.Tensor, response: Sequence[int]) -> tuple[float, float]:
    """(exact, k1) for one answer from the two models' next-token log-probabilities at its positions (response
    tokens x vocab each):

    exact = sum_t sum_v pi(v|x, y_<t) (log pi(v|x, y_<t) - log pi_base(v|x, y_<t)), the Rao-Blackwellized
    estimator of KL(pi || pi_base) for a y drawn from pi (unbiased, never noisier than k1);
    k1 = sum_t log pi(y_t|x, y_<t) - log pi_base(y_t|x, y_<t), the sampled log-ratio, as a cross-check."""
    if not len(response):
        return 0.0, 0.0
    tokens = torch.tensor(response, device=policy.device)[:, None]
    exact = (policy.exp() * (policy - base)).sum()
    k1 = (policy.gather(1, tokens) - base.gather(1, tokens)).sum()
    return float(exact), float(k1)


def answer_nll(logprobs: torch.Tensor, response: Sequence[int]) -> float:
    """The summed NLL of an answer from a model's next-token log-probabilities at its positions."""
    if not len(response):
        return 0.0
    return -float(logprobs.gather(1, torch.tensor(response, device=logprobs.device)[:, None]).sum())


@torch.no_grad()
def continuation_logprobs(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Each response's next-token log-probabilities (its tokens x vocab, temperature 1) given its prompt, in one
    teacher-forced pass; the prompts' common beginnings (a chat template's system prompt) run once, through the
    shared-prefix KV cache generation uses (ple.cpu_speedups.prompt_inputs)."""
    from ple.batching import cache_kwarg
    from ple.cpu_speedups import prompt_inputs

    device = next(model.parameters()).device
    inputs = prompt_inputs(model, prompts, pad_id, device)
    name = cache_kwarg(model)
    cache = inputs.get(name)
    cached = cache.get_seq_length() if cache is not None else 0
    response_ids, response_mask = pad_batch(responses, pad_id, device, side="right")
    mask = torch.cat([inputs["attention_mask"], response_mask], dim=1)
    logits = model(
        input_ids=torch.cat([inputs["input_ids"][:, cached:], response_ids], dim=1),
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, cached:],
        logits_to_keep=response_ids.shape[1] + 1,  # the last prompt token predicts the first response token
        **({name: cache, "use_cache": True} if cache is not None else {}),
    ).logits[:, :-1]
    logprobs = logits.float().log_softmax(-1)
    return [logprobs[i, : len(r)] for i, r in enumerate(responses)]


@torch.no_grad()
def response_nll(model, rows: Rows, pad_id: int, batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each row's response given its prompt, under `model`."""
    out = []
    for start in range(0, len(rows), batch_size):
        batch = [(r["prompt_ids"], r["response_ids"]) for r in rows[start : start + batch_size]]
        sum_logp, n = response_logprobs(model, batch, pad_id)
        out += [(-s, int(k)) for s, k in zip(sum_logp.tolist(), n.tolist())]
    return out


@dataclass(frozen=True)
class Metric:
    name: str  # its key in eval.json, summary.json and the compare CSVs
    label: str  # how tables name it
    compute: Callable[[Rows], float]  # the metric on a set of evaluation rows
    needs: str | None = None  # a row column it needs; the metric is left out where the rows lack it
    counts: Callable[[dict], bool] | None = None  # the rows it is computed on (a reward's unscored rows are not)
    digits: int = 3  # decimals in eval.md and the compare table
    in_summary: bool = True  # a column of the compare table (every metric is in the CSVs)

    def applies(self, rows: Rows) -> bool:
        return bool(rows) and (self.needs is None or self.needs in rows[0])

    def counted(self, rows: Rows) -> list[dict[str, Any]]:
        return [r for r in rows if self.counts(r)] if self.counts else list(rows)


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


def reward_metric(key: str, label: str) -> Metric:
    """The mean of one reward column over the rows it scored (None marks a row the reward gave no valid score)."""
    return Metric(
        key, label, lambda rows: statistics.fmean(r[key] for r in rows), needs=key, counts=lambda r: r[key] is not None
    )


def corpus_perplexity(nll: str, n_tokens: str) -> Callable[[Rows], float]:
    """Corpus perplexity exp(total NLL / total tokens) from the rows' `nll` and `n_tokens` columns."""

    def compute(rows: Rows) -> float:
        tokens = sum(r[n_tokens] for r in rows)
        return math.exp(sum(r[nll] for r in rows) / tokens) if tokens else float("nan")

    return compute


def _bleu(rows: Rows) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu([r["completion"] for r in rows], [[r["reference"] for r in rows]]).score


for _metric in (
    Metric("distinct_1", "distinct-1", lambda rows: distinct_n([r["completion"] for r in rows], 1), in_summary=False),
    Metric("distinct_2", "distinct-2", lambda rows: distinct_n([r["completion"] for r in rows], 2)),
    Metric(
        "mean_length",
        "mean length (words)",
        lambda rows: statistics.fmean(len(r["completion"].split()) for r in rows),
        in_summary=False,
    ),
    Metric(
        "generation_perplexity",
        "perplexity under the base model",
        corpus_perplexity("nll", "n_tokens"),
        "nll",
        digits=2,
    ),
    Metric("kl", "KL to the base model (nats/answer)", lambda rows: statistics.fmean(r["kl"] for r in rows), "kl"),
    Metric(
        "kl_k1",
        "KL to the base model, sampled log-ratio (k1)",
        lambda rows: statistics.fmean(r["kl_k1"] for r in rows),
        "kl_k1",
        in_summary=False,
    ),
    Metric(
        "repeated_4grams",
        "repeated 4-grams within an answer",
        lambda rows: statistics.fmean(repeated_4gram_share(r["completion"]) for r in rows),
    ),
    Metric(
        "top_sentence_share", "top-sentence share", lambda rows: top_sentence_share([r["completion"] for r in rows])
    ),
    Metric("bleu", "BLEU against the references", _bleu, "reference", digits=2),
    Metric(
        "reference_perplexity",
        "perplexity of the references",
        corpus_perplexity("ref_nll", "ref_n_tokens"),
        "ref_nll",
        digits=2,
        in_summary=False,
    ),
):
    register_metric(_metric)


def metric_result(metric: Metric, rows: Rows, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The metric on the rows it counts, a 95% bootstrap interval over them, and n, how many it counted."""
    counted = metric.counted(rows)
    if not counted:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    return {**bootstrap_ci(counted, metric.compute, n_resamples, seed), "n": len(counted)}


def applicable(rows: Rows, extra: Sequence[Metric] = ()) -> list[Metric]:
    """The metrics to report on these rows: `extra` (the rewards), then every registered metric the rows allow."""
    return [m for m in [*extra, *METRICS.values()] if m.applies(rows)]
