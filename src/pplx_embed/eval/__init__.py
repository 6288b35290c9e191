"""Evaluation suite: BEIR / contextual / STS loaders, metrics, tasks, embedding cache and reports."""
