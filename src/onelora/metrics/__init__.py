"""Evaluation metrics for the reproduction suite (depth, ...)."""
