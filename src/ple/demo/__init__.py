"""The offline demo, apart from the core (which imports nothing from here): `ple demo` and the embedded
sentiment grids.

- assets:    SmolLM2-135M-Instruct, all-MiniLM-L6-v2 and the Pang & Lee reviews, fetched from PyPI and cached;
- sentiment: the IMDb-style positive-sentiment task built from those reviews, and its held-out judge;
- run:       `ple demo` (evaluate the base model, train, evaluate, report) and the compare presets' config.
"""
