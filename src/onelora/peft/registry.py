"""The method registry: every name of the `peft` config group resolves here.

A *method* is an optional per-layer adapter (1LoRA, LoRA, ...) plus a set of *extras*
that unfreeze existing or new parameters of the adapted layers (`bias`, `gamma`) or of
the model (`norms`). Composite names such as `onelora_bias_gamma_norms` are parsed as
`<adapter method>_<extra>_<extra>...`, so every combination of the paper's Figures 8
and 10 exists without a file of its own in Python (the config group still lists them).

Method modules register themselves at import; `onelora.peft` imports every module of
the package, so adding a method is one module plus one config file.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import PeftError  # noqa: F401  (re-exported: onelora.peft.PeftError)

EXTRAS = ("bias", "gamma", "norms")


@dataclass(frozen=True)
class Method:
    name: str
    adapter: type[nn.Module] | None = None
    extras: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    full: bool = False  # full fine-tuning: every parameter trains, nothing is wrapped
    doc: str = ""

    def option_names(self) -> set[str]:
        """Options the adapter's constructor takes (besides the layer itself)."""
        if self.adapter is None:
            return set()
        params = inspect.signature(self.adapter.__init__).parameters
        return {n for n in params if n not in ("self", "layer", "shared")}


METHODS: dict[str, Method] = {}


def register(
    name: str,
    adapter: type[nn.Module] | None = None,
    extras: tuple[str, ...] = (),
    full: bool = False,
    doc: str = "",
    **defaults: Any,
) -> None:
    """Register a method under `name` (the same name as its `configs/peft/<name>.yaml`)."""
    if name in METHODS:
        raise RuntimeError(f"peft method {name!r} is registered twice")
    METHODS[name] = Method(name, adapter, tuple(extras), dict(defaults), full, doc)


def resolve_method(name: str) -> Method:
    """Return the registered method, or compose `<adapter>_<extra>...` from the registry."""
    if name in METHODS:
        return METHODS[name]
    parts = name.split("_")
    for cut in range(len(parts) - 1, 0, -1):
        head, tail = "_".join(parts[:cut]), parts[cut:]
        base = METHODS.get(head)
        if base is None or base.full or not all(t in EXTRAS for t in tail):
            continue
        if len(set(tail)) != len(tail):
            break
        extras = tuple(e for e in EXTRAS if e in tail or e in base.extras)
        return Method(name, base.adapter, extras, base.defaults, doc=f"{base.name} + {', '.join(tail)}")
    valid = ", ".join(sorted(METHODS))
    raise PeftError(
        f"unknown peft method {name!r}; valid: {valid}, or <method>_<extra>... with extras {', '.join(EXTRAS)}"
    )


def available_methods() -> list[str]:
    return sorted(METHODS)
