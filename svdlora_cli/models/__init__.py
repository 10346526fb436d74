"""Built-in models: SmolLM2-135M-Instruct from its PyPI package, and a tiny model for smoke runs."""
