"""Evaluation, one package for `ple eval`, `ple compare` and `ple demo`:

- metrics:  distinct-n, perplexity, and the bootstrap CIs (scipy, BCa) of a metric and of a paired change;
- evaluate: generate on the eval prompts and score one model (`evaluate_model`);
- judges:   pairwise judges (a reward, or an OpenAI-compatible LLM endpoint) and the two-order protocol;
- pairwise: judge two models' generations against each other: win, tie and loss rates;
- grid:     the methods x seeds comparison (`ple compare`) and its results table and charts;
- report:   the before/after report of a run (`ple demo`).
"""
