"""What the benchmarks share: the prompts and the model they run on."""

import tempfile
from pathlib import Path

PRINCIPLE = "You are a warm, generous film critic: praise specific things about the film."
OPENINGS = [
    "the movie was",
    "i expected more from",
    "plot: a young man",
    "this film is a mess of",
    "every now and then",
    "the acting in this",
    "what a strange little",
    "it's hard to believe that",
]
PROMPTS = [f'Continue this movie review: "{o}"' for o in OPENINGS]


def model_path(tiny: bool) -> str:
    """SmolLM2-135M-Instruct from the ple cache (fetched on first use), or a tiny model built in code."""
    if tiny:
        from ple.testing import build_tiny_model

        return str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    from ple.assets import smollm2_path

    return str(smollm2_path())
