"""The policy evaluated while it trains (config.eval_steps), as `ple eval` evaluates a saved model: the same
Evaluator, prompts, rewards and metrics, on the weights in memory (a LoRA policy's base is itself with the adapter
disabled, so no second copy of the model is loaded)."""

from typing import Any

import torch

from ple.errors import PLEError
from ple.evaluation.evaluate import Evaluator, eval_prompts
from ple.training.rundir import eval_dir


class TrainingEvaluation:
    def __init__(self, harness):
        """`harness`: the run's ple.training.harness.Harness. The eval prompts and held-out rewards are read now,
        so that a bad one fails before any training; the training reward is the run's own, not a second copy."""
        self.harness = harness
        self.prompts = eval_prompts(harness.config, None)
        trained = {"reward": harness.reward_fn} if harness.reward_fn is not None else {}
        accelerator = harness.dist.accelerator
        if accelerator is not None and accelerator.state.deepspeed_plugin.zero_stage == 3:
            # The main process would run forward passes alone through modules whose ZeRO-3 hooks are collective.
            raise PLEError(
                "eval_steps under DeepSpeed ZeRO-3 is not supported yet; set snapshot_every and evaluate the "
                "snapshots with ple eval, or use ZeRO-2"
            )
        self.evaluator = Evaluator(harness.config, rewards=trained) if harness.dist.main else None

    def __call__(self, done: int) -> dict[str, Any]:
        """The policy after `done` iterations: eval/<metric> -> value. Every process calls it; the main one
        evaluates and writes eval_dir(done) while the others wait. The random streams are left as they were, so
        that training draws the same with and without evaluation."""
        h = self.harness
        result = None
        devices = [h.device.index or 0] if h.device.type == "cuda" else []
        with h.policy.full_model() as model, torch.random.fork_rng(devices):
            if self.evaluator is not None:
                with self.evaluator.trained(model) as (models, reference_label):
                    out = eval_dir(h.run_dir.path, done)
                    result = self.evaluator.evaluate_loaded(
                        "the policy in training", models, reference_label, self.prompts, out, progress=h.policy.progress
                    )
            h.dist.barrier()
        result = h.dist.gather([result])[0]  # the main process's, on every process
        return {f"eval/{name}": m["value"] for name, m in result["metrics"].items()}
