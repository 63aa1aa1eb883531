"""onelora.peft: 1LoRA and the methods the paper compares, on any PyTorch model.

    from onelora.peft import apply_peft, merge_peft, count_parameters
    apply_peft(model, "onelora")          # every nn.Linear but the task head
    ...train...
    model = merge_peft(model)             # plain nn.Linear layers, zero overhead

Method names are those of the `peft` config group (see `available_methods()`).
"""

import importlib
import pkgutil

from .api import (
    DEFAULT_HEADS,
    ParameterCount,
    apply_peft,
    count_parameters,
    disable_peft,
    find_targets,
    merge_peft,
    validate_peft,
)
from .layer import AdaptedLayer, AdaptedLinear, Adapter
from .registry import EXTRAS, METHODS, Method, PeftError, available_methods, register, resolve_method
from .serialization import load_peft, peft_state_dict, save_peft

# every module of this package may register methods: importing them is the registry
for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "DEFAULT_HEADS",
    "EXTRAS",
    "METHODS",
    "AdaptedLayer",
    "AdaptedLinear",
    "Adapter",
    "Method",
    "ParameterCount",
    "PeftError",
    "apply_peft",
    "available_methods",
    "count_parameters",
    "disable_peft",
    "find_targets",
    "load_peft",
    "merge_peft",
    "peft_state_dict",
    "register",
    "resolve_method",
    "save_peft",
    "validate_peft",
]
