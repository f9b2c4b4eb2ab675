"""The training loop, evaluation and metrics."""
