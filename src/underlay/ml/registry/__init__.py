"""The model registry: registered models, signed versions made from a run's artifacts,
aliases whose every move is kept, and model cards (see docs/ml.md, "Registry")."""
