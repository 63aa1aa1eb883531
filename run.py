"""The suite's entry point: `python run.py [group=option ...]` (no argument: the quickstart).

A user error ends a run with one line and exit 2. In a multirun (`-m`), a job's failure is recorded in its own
result.json and the sweep goes on; the exit code is then the number of jobs that did not end ok (at most 125).
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("ONELORA_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from onelora.commands.run import run
    from onelora.run.logs import quiet_dependencies
    from onelora.run.record import job_failed

    if not cfg.dry_run:  # a dry run imports neither Lightning nor the loaders: nothing to quiet, seconds saved
        quiet_dependencies()  # after Hydra configured logging: dependency chatter to run.log only
    try:
        run(cfg)
    except Exception as e:
        job_failed(cfg, e)  # recorded; a user error is one line (exit 2); in a multirun the next job starts


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra raises instead of printing 5-40 lines; we print one
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside training (building, between jobs): the record says interrupted
        sys.exit(130)
    except Exception as e:
        from onelora.errors import hydra_error_line

        if (line := hydra_error_line(e)) is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
        sys.exit(1 if multirun else 2)  # a multirun's exit code counts failed jobs: one that never composed counts one
    from onelora.run.record import sweep_exit_code

    sys.exit(sweep_exit_code())  # after a multirun: how many jobs did not end ok
