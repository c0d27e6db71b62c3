"""PLE: Progressively Label Enhancement for LLM alignment (Liu, Xu, Geng, ICML 2025).

from ple import PLEConfig, PLETrainer
PLETrainer(model=..., args=PLEConfig(...), reward_funcs=[...], train_dataset=...).train()
"""

__version__ = "0.1.0"

from ple.config import Config, load_config  # noqa: E402
from ple.errors import PLEError  # noqa: E402

PLEConfig = Config  # TRL's naming: the trainer's `args`

__all__ = ["Config", "PLEConfig", "PLEError", "PLETrainer", "load_config", "make_trainer", "__version__"]


def __getattr__(name: str):
    # The trainers import torch and transformers; `import ple` (the CLI's config parsing) stays light without them.
    if name == "PLETrainer":
        from ple.training.loop import PLETrainer

        return PLETrainer
    if name == "make_trainer":
        from ple.baselines import make_trainer

        return make_trainer
    raise AttributeError(f"module 'ple' has no attribute {name!r}")
