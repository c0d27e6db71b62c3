"""The method registry: one entry per method, holding everything about it.

Config validation, `make_trainer`, the CLI's `--method` choices, `ple compare`, the docs and the verdict all read
`METHODS`. Adding a method is one `register(Method(...))` call plus its algorithm class (docs/extending.md):

    register(Method(
        name="kto",
        algorithm="my_package.kto:KTO",   # a class of ple.training.loop's contract, or "module:Class"
        summary="KTO on the PLE harness",
        needs_principle=False,
        checks=(lambda c: "kto needs batch_size >= 2" if c.batch_size < 2 else None,),
    ))

This module imports neither torch nor the algorithms: an algorithm is imported when a run builds it.
"""

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ple.errors import PLEError

Check = Callable[[Any], "str | None"]  # a config -> the problem with it for this method, or None


@dataclass(frozen=True)
class Method:
    name: str
    algorithm: str | type  # its class (ple.training.loop's contract), or "module:Class" to import it when a run starts
    summary: str  # one line, for the docs and the CLI
    preset: Mapping[str, Any] = field(default_factory=dict)  # config values the method fixes (its ablation)
    needs_principle: bool = True  # False for a method that never reads the principle
    needs_reward: bool = True  # False for a method that trains without a reward
    needs_sft_set: bool = False  # trains on sft_dataset (not only in the optional warm-up)
    claimed_baseline: bool = False  # one of the baselines the paper's claim names (SFT, DPO, PPO-family RL, RAFT)
    checks: tuple[Check, ...] = ()  # the method's own config checks

    def __post_init__(self):
        object.__setattr__(self, "preset", MappingProxyType(dict(self.preset)))

    def algorithm_class(self) -> type:
        if not isinstance(self.algorithm, str):
            return self.algorithm
        module, _, name = self.algorithm.partition(":")
        return getattr(importlib.import_module(module), name)

    def problems(self, config) -> list[str]:
        """Every reason `config` cannot run this method, first the generic needs, then the method's checks."""
        found = []
        if self.needs_principle and config.principle is None:
            found.append("principle is required: inline text or a principles file")
        if self.needs_reward and config.reward is None:
            hint = (
                "; rank_coef=0 with sft_weights=guided and no reward is context distillation: use method=distill"
                if config.rank_coef == 0 and config.sft_weights == "guided"
                else ""
            )
            without = ", ".join(f"method={m.name}" for m in METHODS.values() if not m.needs_reward)
            found.append(f"reward is required for method={self.name} (only {without} run without one){hint}")
        if self.needs_sft_set and config.sft_dataset is None:
            found.append(f"method={self.name} needs an sft_dataset (rows with prompt + response, or messages)")
        return found + [p for check in self.checks if (p := check(config))]


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` to the registry (a name already taken is refused, so a plug-in cannot shadow a method)."""
    if method.name in METHODS:
        raise PLEError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registry entry of `name`; one line naming the known methods for any other name, never a fallback."""
    if name not in METHODS:
        raise PLEError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def claimed_baselines() -> tuple[str, ...]:
    return tuple(m.name for m in METHODS.values() if m.claimed_baseline)


# ---------------------------------------------------------------------------------------------- checks
def _raft_budget(c) -> str | None:
    if (2 * c.queries_per_iteration) % c.raft_k:
        return (
            f"method=raft draws raft_k={c.raft_k} answers for each of 2*queries_per_iteration/raft_k queries; "
            f"2*queries_per_iteration={2 * c.queries_per_iteration} must be a multiple of raft_k for PLE's budget"
        )
    return None


def _rloo_budget(c) -> str | None:
    per_step = c.batch_size * c.gradient_accumulation_steps
    if (c.queries_per_iteration * c.iterations) % per_step:
        return (
            f"method=rloo takes batch_size*gradient_accumulation_steps={per_step} prompts per step; "
            f"queries_per_iteration*iterations={c.queries_per_iteration * c.iterations} must be a multiple "
            "of it for PLE's budget"
        )
    return None


def _grpo_budget(c) -> str | None:
    g, per_step = c.grpo_num_generations, c.batch_size * c.gradient_accumulation_steps
    samples = 2 * c.queries_per_iteration * c.iterations
    if g < 2:
        return f"method=grpo compares answers within a group: grpo_num_generations must be >= 2, got {g}"
    if samples % g or (samples // g) % per_step:
        return (
            f"method=grpo draws grpo_num_generations={g} answers for each of 2*queries_per_iteration*iterations/{g} "
            f"queries in steps of batch_size*gradient_accumulation_steps={per_step}; "
            f"2*queries_per_iteration*iterations={samples} must be a multiple of {g * per_step} for PLE's budget"
        )
    return None


def _trl_warmup_needs_lora(c) -> str | None:
    if c.sft_epochs > 0 and not c.use_lora:
        return (
            f"method={c.method} with sft_epochs > 0 needs use_lora: true (TRL's reference model is then a copy "
            "of the warmed-up adapter; without LoRA it would be the un-warmed base model)"
        )
    return None


PLE_ALGORITHM = "ple.trainer:PLE"
for _method in (
    Method("ple", PLE_ALGORITHM, "PLE: rank a clear win of the guided answer, weighted SFT otherwise; tau decays"),
    Method(
        "ple-symmetric",
        PLE_ALGORITHM,
        "PLE that also ranks a clear win of the plain answer (y over y_p) instead of weighted SFT",
        {"negative_gap": "rank"},
    ),
    Method("ple-rank-only", PLE_ALGORITHM, "PLE's ranking term alone (sft_coef 0)", {"sft_coef": 0.0}),
    Method("ple-wsft-only", PLE_ALGORITHM, "PLE's weighted-SFT term alone (rank_coef 0)", {"rank_coef": 0.0}),
    Method("ple-no-decay", PLE_ALGORITHM, "PLE with a constant threshold tau0", {"schedule": "constant"}),
    Method(
        "rlcd",
        PLE_ALGORITHM,
        "RLCD: always rank the guided answer over the plain one, whatever the reward says",
        {"schedule": "constant", "tau0": -math.inf},
    ),
    Method(
        "distill",
        "ple.baselines.distill:Distill",
        "context distillation: SFT on (plain query -> guided answer), no reward at all",
        {"reward": None, "sft_weights": "guided", "rank_coef": 0.0},
        needs_reward=False,
    ),
    Method(
        "sft",
        "ple.baselines.sft:SFT",
        "SFT on the SFT set, 2 x queries_per_iteration rows per iteration",
        needs_principle=False,
        needs_reward=False,
        needs_sft_set=True,
        claimed_baseline=True,
    ),
    Method(
        "dpo",
        "ple.baselines.trl:DPO",
        "TRL's DPO on pairs from the data, or from two base-model samples ranked by the reward",
        needs_principle=False,
        claimed_baseline=True,
        checks=(_trl_warmup_needs_lora,),
    ),
    Method(
        "rloo",
        "ple.baselines.trl:RLOO",
        "TRL's RLOO (PPO-family online RL), 2 samples per query",
        needs_principle=False,
        claimed_baseline=True,
        checks=(_rloo_budget, _trl_warmup_needs_lora),
    ),
    Method(
        "grpo",
        "ple.baselines.trl:GRPO",
        "TRL's GRPO (group-relative advantages), grpo_num_generations samples per query",
        needs_principle=False,
        checks=(_grpo_budget, _trl_warmup_needs_lora),
    ),
    Method(
        "raft",
        "ple.baselines.raft:RAFT",
        "RAFT: iterative best-of-raft_k, SFT on the best answer by reward",
        needs_principle=False,
        claimed_baseline=True,
        checks=(_raft_budget,),
    ),
):
    register(_method)
