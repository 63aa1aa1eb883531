"""Files shipped with the package: the quickstart's pre-trained digits ViT (`vit_digits_0-4/`).

Configs name them as `${asset:vit_digits_0-4}` (the resolver is registered with the others in onelora.run.record),
so the path is right in a clone and in an installed package alike. `scripts/source_model.py` re-makes them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def asset_path(name: str) -> str:
    """The absolute path of the packaged asset `name` (a folder or file under onelora/assets/)."""
    return str(ROOT / name)


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file, hex (the checksum the model configs pin)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
