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
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import PeftError  # noqa: F401  (re-exported: onelora.peft.PeftError)

EXTRAS = ("bias", "gamma", "norms")


@dataclass(frozen=True)
class Option:
    """One option of a method: its type and the values allowed, checked before anything is built."""

    kind: type  # int, float or str
    allowed: str = ""  # the rule in words, for the error line ("an integer >= 1", "in [0, 1)")
    check: Callable[[Any], bool] | None = None

    def validate(self, method: str, name: str, value: Any) -> Any:
        ok = isinstance(value, self.kind) and not isinstance(value, bool)
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        ok = ok and (self.kind is not float or math.isfinite(value)) and (self.check is None or self.check(value))
        if not ok:
            rule = self.allowed or {int: "an integer", float: "a number", str: "a string"}[self.kind]
            raise PeftError(f"peft method {method!r}: option {name}={value!r} is not allowed; {name} must be {rule}")
        return value


def rank_option(minimum: int = 1) -> Option:
    return Option(int, f"an integer >= {minimum}", lambda v: v >= minimum)


DROPOUT = Option(float, "a probability in [0, 1)", lambda v: 0 <= v < 1)


@dataclass(frozen=True)
class FamilyHooks:
    """What a family of methods whose layers are not the suite's `AdaptedLayer`s (HF peft's tuners: peft builds
    them) does itself. `api` calls the hooks of every registered family, so it holds no family's code."""

    inject: Callable[..., int]  # (model, names, *, seed, dtype, **options): adapt those layers in place; how many
    merge: Callable[[nn.Module], None]  # fold the family's layers into their base layers, in place
    disable: Callable[[nn.Module], AbstractContextManager]  # the family's layers bypassed inside the `with`
    is_layer: Callable[[nn.Module], bool]  # an adapted layer of the family (counted in `adapted_layers`)
    in_adapter: Callable[[nn.Module, str], bool]  # (model, module name): a part the family's layers add
    refuse: Callable[[nn.Module, str], None]  # (model, what): the model holds the family's layers put there
    # outside the suite (neither ours nor plain layers): one PeftError line
    save: Callable[[nn.Module], tuple[Any, dict[str, Any]]]  # HF peft's config object and state dict


@dataclass(frozen=True)
class Method:
    name: str
    adapter: type[nn.Module] | None = None
    extras: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    full: bool = False  # full fine-tuning: every parameter trains, nothing is wrapped
    doc: str = ""
    hooks: FamilyHooks | None = None  # a family's own builder, merge, switch, counts and saving

    def option_names(self) -> set[str]:
        """Options the adapter's constructor takes (besides the layer itself)."""
        if self.adapter is None:
            return set()
        params = inspect.signature(self.adapter.__init__).parameters
        return {n for n in params if n not in ("self", "layer", "shared")}

    def validate_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The method's defaults updated with `options`, each checked against the adapter's `schema`
        (a dict name -> Option) and its `check_options(opts)` rule across options; one PeftError line else."""
        allowed = self.option_names() - {"dtype"}
        unknown = set(options) - allowed
        if unknown:
            raise PeftError(
                f"peft method {self.name!r} takes no option {', '.join(sorted(unknown))}; "
                f"valid: {', '.join(sorted(allowed)) or 'none'}"
            )
        defaults = {k: v for k, v in self.defaults.items() if k != "target_modules"}
        opts = {**defaults, **options}
        schema: dict[str, Option] = getattr(self.adapter, "schema", {}) or {}
        opts = {k: schema[k].validate(self.name, k, v) if k in schema else v for k, v in opts.items()}
        problem = self.adapter.check_options(opts) if hasattr(self.adapter, "check_options") else None
        if problem:
            raise PeftError(f"peft method {self.name!r}: {problem}")
        return opts


METHODS: dict[str, Method] = {}
FAMILIES: dict[str, Method] = {}  # name prefix -> the method every `<prefix><name>` resolves to


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


def register_family(prefix: str, adapter: type[nn.Module], hooks: FamilyHooks, doc: str = "") -> None:
    """Register every name `<prefix><name>` as one method family (the `hf_*` peers: one module, many configs);
    `adapter` holds its options (schema, `check_options`), `hooks` what it does itself."""
    FAMILIES[prefix] = Method(f"{prefix}<name>", adapter, doc=doc, hooks=hooks)


def family_hooks() -> list[FamilyHooks]:
    """The hooks of every registered family: a model may hold any family's layers, whatever its method."""
    return [family.hooks for family in FAMILIES.values() if family.hooks is not None]


def resolve_method(name: str) -> Method:
    """Return the registered method, or compose `<adapter>_<extra>...` from the registry."""
    if name in METHODS:
        return METHODS[name]
    for prefix, family in FAMILIES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return Method(name, family.adapter, doc=family.doc, hooks=family.hooks)
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
        + "".join(f", or {prefix}<name> ({family.doc})" for prefix, family in FAMILIES.items())
    )


def available_methods() -> list[str]:
    return sorted(METHODS)
