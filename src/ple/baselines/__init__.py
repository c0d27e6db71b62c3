"""The methods PLE is compared against, in PLE's harness: same config, model loading, LoRA, reward plumbing, run
directory and budget accounting (ple.training).

Equal budgets: PLE draws 2 * queries_per_iteration policy samples per iteration (y and y_p). Every baseline that
samples draws the same number over the run, from the same query pool:

- sft:     SFT on the SFT set; iteration t trains on the next 2 * Q SFT rows. No policy samples.
- raft:    iteration t samples raft_k answers for each of 2 * Q / raft_k queries, keeps the best by reward, and
           trains SFT on (x -> best). Iterative best-of-K, as in RAFT.
- distill: context distillation, SFT on (plain x -> y_p) for 2 * Q queries per iteration (no y, no reward).
- dpo:     TRL's DPOTrainer. Pairs come from the data's chosen/rejected columns when it has them (HH); otherwise
           they are built once from 2 base-model samples for each of Q * iterations queries, the higher reward
           chosen (the DPO paper's IMDb setup).
- rloo:    TRL's RLOOTrainer, online, 2 samples for each of Q * iterations queries.
- grpo:    TRL's GRPOTrainer, online, grpo_num_generations samples for each of 2 * Q * iterations / that many queries.

Every method gets the same SFT warm-up when sft_epochs > 0; for dpo, rloo and grpo TRL's reference model is then a copy
of the warmed-up adapter. rlcd and the ple-* ablations are presets of the PLE trainer. Every method is one entry
of the registry, ple.methods.METHODS.
"""

from ple.config import Config
from ple.training.loop import PLETrainer


def make_trainer(config: Config, reward_fn=None) -> PLETrainer:
    """The trainer of config.method (its algorithm from the method registry, ple.methods, in PLE's loop)."""
    return PLETrainer(args=config, reward_funcs=reward_fn)
