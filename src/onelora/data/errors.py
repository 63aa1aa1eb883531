"""Errors shared by the dataset loaders (defined in `onelora.errors`)."""

from __future__ import annotations

from ..errors import DatasetFormatError  # the one module of user errors; this path stays for old imports

__all__ = ["DatasetFormatError"]
