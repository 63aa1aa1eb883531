"""Errors shared by the dataset loaders."""

from __future__ import annotations

__all__ = ["DatasetFormatError"]


class DatasetFormatError(ValueError):
    """A dataset file is missing, malformed, or not in the expected on-disk format.

    The message always names the offending file and describes the layout the loader expected,
    so that a wrong ``data_root`` or a half-downloaded dataset is diagnosed from the message alone.
    """
