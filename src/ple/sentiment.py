"""The name configs give the demo's held-out judge: `ple.sentiment:judge_reward` (recorded in every run and
grid that used it, so it stays importable). The task itself lives in ple.demo.sentiment."""

from ple.demo.sentiment import judge_reward

__all__ = ["judge_reward"]
