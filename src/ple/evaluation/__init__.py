"""Evaluation, one package for `ple eval`, `ple compare` and `ple demo`:

- metrics:  the metric registry (distinct-n, perplexity, KL to the base model, degeneration, BLEU, ...) and the
            bootstrap CIs of a metric and of a paired change;
- evaluate: generate on the eval prompts and score many models with one `Evaluator`;
- judges:   pairwise judges (a reward, or an OpenAI-compatible LLM endpoint) and the two-order protocol;
- pairwise: judge two models' generations against each other: win, tie and loss rates;
- grid:     the typed methods x learning rates x seeds grid (`ple compare`);
- results:  the grid's long table and its views (results.md, CSVs, plots, verdicts);
- report:   the before/after report of a run (`ple demo`).
"""
