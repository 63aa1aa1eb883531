"""Module names: which modules a pattern selects (HF peft's rule) and how an error line lists names.

Everything in the library that selects modules by name imports this module, and it imports nothing of the library.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

NORM_CLASS = re.compile(r"(LayerNorm|RMSNorm|GroupNorm|BatchNorm\d?d?|InstanceNorm\d?d?)$")

Patterns = str | Iterable[str] | None


def as_list(p: Patterns) -> list[str] | str | None:
    return p if p is None or isinstance(p, str) else list(p)


def matches(name: str, patterns: list[str] | str) -> bool:
    """peft's rule: a string is a regex on the full name, a list matches `name` or `*.name`."""
    if isinstance(patterns, str):
        return patterns == "all-linear" or re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def under(name: str, patterns: list[str] | str | None) -> bool:
    """True if the module or any module above it matches (a head's inner layers are the head)."""
    if not patterns:
        return False
    parts = name.split(".")
    return any(matches(".".join(parts[:i]), patterns) for i in range(1, len(parts) + 1))


def is_norm(module: nn.Module) -> bool:
    return NORM_CLASS.search(type(module).__name__) is not None


def names_list(keys: list[str], n: int = 3) -> str:
    """The first `n` names, sorted and quoted, and how many more: for an error line."""
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more
