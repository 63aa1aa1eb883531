"""The suite's entry point: `python run.py [group=option ...]` (no argument: the quickstart)."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("ONELORA_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from onelora.errors import user_errors
    from onelora.train import run

    try:
        run(cfg)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
