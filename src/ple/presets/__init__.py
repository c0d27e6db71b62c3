"""The embedded presets (YAML files beside this module): the demo's config and the compare grids. Nothing here
imports torch, so the CLI can list them cheaply."""

from pathlib import Path

HERE = Path(__file__).parent
DEMO = HERE / "demo.yaml"
SENTIMENT_PRINCIPLES = HERE / "sentiment_principles.yaml"
COMPARE_PRESETS = {  # name -> (file, what it is for `ple compare --help`)
    "sentiment": (HERE / "compare_sentiment.yaml", "powered: every method x 3 seeds, learning rates tuned, hours"),
    "sentiment-quick": (HERE / "compare_sentiment_quick.yaml", "a harness check, estimated at half an hour"),
    "sentiment-frontier": (
        HERE / "compare_sentiment_frontier.yaml",
        "the reward-KL frontier: every method x 3 learning rates, checkpoints at iterations 2/4/6, hours",
    ),
    "sentiment-frontier-quick": (HERE / "compare_sentiment_frontier_quick.yaml", "the frontier's harness check"),
}
