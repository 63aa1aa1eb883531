"""Datasets for the reproduction suite; every loader reads the real on-disk formats."""
