"""Read every sample a run would read, once, and list every unreadable one: the step before a sweep.

    python scripts/verify_data.py experiment=mde_nyu2kitti paths.data_dir=/data [--workers 8]

Takes the same overrides as run.py and builds the data module as the run would (same split files, subsets and
loaders), then reads every training and validation item once with a progress bar. Each unreadable item is
listed with the loader's message (for NYU/KITTI: the file and its line in the split file). Exit 0 when every
item reads, 1 when some do not (all are listed), 2 when the data set itself is missing or malformed.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ONELORA_ROOT", str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=0, help="loader processes reading in parallel")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args, overrides = parser.parse_known_args(argv)

    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class, instantiate
    from omegaconf import open_dict

    from onelora.data.synthetic import ensure_synthetic
    from onelora.data.verify import verify_datamodule
    from onelora.errors import hydra_error_line, user_errors

    try:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except Exception as e:  # a misspelt key or unknown option: one line, as run.py prints it
        if (line := hydra_error_line(e)) is None:
            raise
        print(f"verify_data: {line}", file=sys.stderr)
        return 2
    if "check_files" in inspect.signature(get_class(cfg.data.module._target_)).parameters:
        with open_dict(cfg):  # a missing file is then one finding per item, not the end of the check
            cfg.data.module.check_files = False
    try:
        ensure_synthetic(cfg.data)  # a smoke experiment's data set is built on first use, as by run.py
        datamodule = instantiate(cfg.data.module)
        total, problems = verify_datamodule(datamodule, num_workers=args.workers, progress=not args.no_progress)
    except user_errors() as e:
        print(f"verify_data: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if isinstance(e.__cause__, user_errors()):  # raised while Hydra built the data module
            print(f"verify_data: {e.__cause__}", file=sys.stderr)
            return 2
        raise
    for line in problems:
        print(line)
    print(
        f"{cfg.data.name}: {total - len(problems)} of {total} items read, {len(problems)} unreadable", file=sys.stderr
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
