"""PLE: Progressively Label Enhancement for LLM alignment (Liu, Xu, Geng, ICML 2025)."""

__version__ = "0.1.0"

from ple.config import Config, load_config  # noqa: E402
from ple.errors import PLEError  # noqa: E402

__all__ = ["Config", "PLEError", "load_config", "__version__"]
