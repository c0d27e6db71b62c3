"""The names configs give the demo's held-out measures: `ple.sentiment:judge_reward` (recorded in every run and grid
that used it, so it stays importable) and `ple.sentiment:on_task`. They live in ple.demo."""

from ple.demo.on_task import on_task
from ple.demo.sentiment import judge_reward

__all__ = ["judge_reward", "on_task"]
