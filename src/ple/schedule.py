"""Schedules: the threshold tau_t, and the learning rate's factor along the run."""

import math
from collections.abc import Sequence

import numpy as np


def threshold(
    t: int,
    schedule: str = "exponential",
    tau0: float = 0.2,
    decay: float = 0.9,
    quantile: float = 0.5,
    gaps: Sequence[float | None] = (),
) -> float:
    """tau_t for iteration t.

    exponential: tau0 * decay**t (decay is the config's `alpha`).  constant: tau0.
    quantile: the q-quantile of this iteration's finite |gaps| (tau0 when there are none).
    """
    if schedule == "exponential":
        # Rounded to 12 significant digits so 0.2 * 0.9 logs as 0.18, not 0.18000000000000002 (-inf stays -inf).
        return float(f"{tau0 * decay**t:.12g}")
    if schedule == "constant":
        return tau0
    if schedule == "quantile":
        finite = [abs(g) for g in gaps if g is not None and math.isfinite(g)]
        return float(np.quantile(finite, quantile)) if finite else tau0
    raise ValueError(f"unknown schedule {schedule!r}")


def lr_factor(progress: float, kind: str = "constant", warmup_ratio: float = 0.0) -> float:
    """The learning rate's factor at `progress` in [0, 1) of the run's training (iteration t's step k of n is at
    (t + k / n) / iterations), as transformers' schedulers shape it over optimizer steps:

    warm-up (progress < w):  progress / w
    constant: 1.   linear: (1 - progress) / (1 - w).   cosine: (1 + cos(pi * (progress - w) / (1 - w))) / 2
    """
    if progress < warmup_ratio:
        return progress / warmup_ratio
    if kind == "constant":
        return 1.0
    after = (progress - warmup_ratio) / (1.0 - warmup_ratio)
    if kind == "linear":
        return 1.0 - after
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * after))
    raise ValueError(f"unknown learning-rate schedule {kind!r}")
