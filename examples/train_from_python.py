"""Train with PLE from Python, in TRL's shape: a model, a config, reward functions and an in-memory dataset, no
YAML file.

    python examples/train_from_python.py                                  # SmolLM2-135M-Instruct from the hub
    python examples/train_from_python.py --model ~/.cache/ple/SmolLM2-135M-Instruct --output-dir runs/example
"""

import argparse

from datasets import Dataset

from ple import PLEConfig, PLETrainer

POSITIVE = {"good", "great", "wonderful", "brilliant", "loved", "best", "fun", "moving", "beautiful"}


def positive_words(prompts, completions, **kwargs):
    """A reward in TRL's contract: one float per completion (here, the share of words that are positive)."""
    return [sum(w.strip(".,!?").lower() in POSITIVE for w in c.split()) / max(len(c.split()), 1) for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--output-dir", default="runs/example")
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()

    openings = ["the movie was", "i expected more from", "the acting in this", "two hours of", "the ending"]
    train_dataset = Dataset.from_dict({"prompt": [f'Continue this movie review: "{o}"' for o in openings] * 4})
    trainer = PLETrainer(
        model=args.model,
        args=PLEConfig(
            output_dir=args.output_dir,
            principle="You are a warm, generous film critic: praise specific things about the film.",
            iterations=args.iterations,
            queries_per_iteration=8,
            max_new_tokens=24,
            learning_rate=1e-4,
            use_lora=True,
        ),
        reward_funcs=[positive_words],
        train_dataset=train_dataset,
    )
    output = trainer.train()
    for row in output.metrics:
        print(f"iteration {row['iteration']}: mean s={row['mean_s']:.3f}, s_p={row['mean_s_p']:.3f}")
    print(f"final model: {output.final_model}")


if __name__ == "__main__":
    main()
