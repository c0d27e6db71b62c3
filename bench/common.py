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
    "two hours of",
    "my kids dragged me to",
    "the director's last film",
    "nobody in the theater",
    "from the opening credits",
    "as a fan of the novel, i",
    "the soundtrack alone",
    "halfway through i realised",
    "this is not the sequel",
    "the lead actress",
    "i went in knowing nothing about",
    "a slow, quiet story about a fisherman who",
    "the special effects",
    "if you liked the first one,",
    "somewhere between a comedy and",
    "the dialogue",
    "for a low-budget horror film,",
    "three friends on a road trip",
    "the ending",
    "after all the hype,",
    "in the year 2049, a lonely robot",
    "my grandmother loved",
    "the villain steals every scene",
    "i have watched this film five times and",
]
ALL_PROMPTS = [f'Continue this movie review: "{o}"' for o in OPENINGS]  # distinct, so no two prompts are the same
PROMPTS = ALL_PROMPTS[:8]  # bench/iteration.py's step: 8 queries, 16 completions


def model_path(tiny: bool) -> str:
    """SmolLM2-135M-Instruct from the ple cache (fetched on first use), or a tiny model built in code."""
    if tiny:
        from ple.testing import build_tiny_model

        return str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    from ple.demo.assets import smollm2_path

    return str(smollm2_path())
