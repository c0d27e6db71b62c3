"""Train every method on a tiny model and print a hash of its final weights, so that a refactor can be checked to
change no training result: run it on the code before and after, and compare the two outputs line by line.

    python bench/bit_equality.py > after.json
    git stash; python bench/bit_equality.py > before.json; git stash pop
    diff before.json after.json    # no output: every method trains bit-equal

Tiny models and a toy reward, CPU, about two minutes on 2 cores.
"""

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from ple.config import FIELDS, load_config
from ple.testing import WORDS, build_tiny_model

REWARD = """
POSITIVE = {'good', 'great', 'wonderful', 'fun', 'brilliant', 'loved', 'best', 'happy'}
def positivity(prompts, completions, **columns):
    return [sum(w in POSITIVE for w in c.split()) / 4 for c in completions]
"""
METHODS = ["ple", "ple-symmetric", "ple-rank-only", "ple-wsft-only", "ple-no-decay", "rlcd", "distill"]
METHODS += ["sft", "raft", "dpo", "rloo", "ple+logistic"]  # ple+logistic: the logistic ranking loss, scale 1.5


def weights_hash(final: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(final.glob("*.safetensors"))
    for f in files:
        tensors = load_file(f)
        for name in sorted(tensors):
            digest.update(name.encode())
            digest.update(tensors[name].to(torch.float32).numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    # Training libraries log to stdout (TRL's step dicts, DeepSpeed's timestamped warnings), which would make two
    # runs' outputs differ; they go to stderr, and stdout holds only the hashes.
    hashes_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    from ple import make_trainer

    torch.set_num_threads(1)  # the same reduction order on every run
    root = Path(tempfile.mkdtemp())
    model = str(build_tiny_model(root / "model"))
    rows = [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(2 + i % 4)) for i in range(12)]
    (root / "q.jsonl").write_text("".join(json.dumps({"prompt": r}) + "\n" for r in rows))
    (root / "sft.jsonl").write_text(
        "".join(json.dumps({"prompt": r, "response": "good great fun"}) + "\n" for r in rows)
    )
    (root / "reward.py").write_text(REWARD)
    out = {}
    for name in sys.argv[1:] or METHODS:
        method, _, variant = name.partition("+")
        values = dict(
            model=model,
            dataset=str(root / "q.jsonl"),
            sft_dataset=str(root / "sft.jsonl"),
            principle="be good and great and wonderful",
            reward=None if method == "distill" else f"{root / 'reward.py'}:positivity",
            output_dir=str(root / "runs" / name),
            iterations=2,
            queries_per_iteration=4,
            batch_size=2,
            gradient_accumulation_steps=2,
            max_new_tokens=6,
            learning_rate=5e-3,
            device="cpu",
            method=method,
        )
        if variant == "logistic":
            values.update(rank_loss="logistic", **{"rank_beta" if "rank_beta" in FIELDS else "beta": 1.5})
        config = load_config(overrides=values)
        final = make_trainer(config).train().final_model
        out[name] = weights_hash(final)
        print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1), file=hashes_out, flush=True)


if __name__ == "__main__":
    main()
