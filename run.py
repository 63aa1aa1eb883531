"""The suite's entry point: `python run.py [group=option ...]` (no argument: the quickstart).

A user error ends a run with one line and exit 2. In a multirun (`-m`), a job's failure is recorded in its own
result.json and the sweep goes on; the exit code is then the number of jobs that did not end ok (at most 125).
"""

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("ONELORA_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from onelora.errors import user_errors
    from onelora.logs import quiet_dependencies
    from onelora.train import run

    if not cfg.dry_run:  # a dry run imports neither Lightning nor the loaders: nothing to quiet, seconds saved
        quiet_dependencies()  # after Hydra configured logging: dependency chatter to run.log only
    try:
        run(cfg)
    except Exception as e:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from onelora.record import record_failure

        record_failure(cfg, e)
        sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if sweep:
            from onelora.record import SweepOutcome

            SweepOutcome.job_errors[str(Path(HydraConfig.get().runtime.output_dir))] = "failed"
        if not isinstance(e, user_errors()):
            if not sweep:
                raise
            logging.getLogger("onelora").exception("job %s failed", HydraConfig.get().runtime.output_dir)
        else:
            print(f"error: {e}", file=sys.stderr)
            if not sweep:
                sys.exit(2)


if __name__ == "__main__":
    main()
    from onelora.record import SweepOutcome

    sys.exit(min(len(SweepOutcome.failed_jobs), 125))
