"""Evaluation, one package for `ple eval`, `ple compare` and `ple demo`. Each analysis returns a result that is
written once as JSON; the views (`*_views`) render every .md, .csv and .png from those files and compute nothing,
so `ple report DIR` redraws them.

- layout:    the name of every file an evaluation, a judging and a grid write, and the writers of their data;
- stats:     every bootstrap, interval, z and multiple-comparison correction;
- metrics:   the metric registry (distinct-n, perplexity, KL to the base model, degeneration, BLEU, ...);
- evaluate:  generate on the eval prompts and score many models with one `Evaluator` (eval.json);
- judges:    pairwise judges (a reward, or an OpenAI-compatible LLM endpoint) and the two-order protocol;
- pairwise:  judge two models' generations against each other: win, tie and loss rates (compare.json);
- evaluation_views: eval.md, compare.md and the win-rate chart;
- grid_spec, grid: the typed methods x learning rates x seeds grid and its run (`ple compare`);
- results, results_views: the grid's long table, differences and verdicts (results.json), and its views;
- frontier, frontier_views, verdict: the reward-KL frontier (frontier.json), its views, and the verdict wording;
- report:    the before/after report of a run (`ple demo`).
"""
