"""Lightning's CSVLogger, kept whole across a resume (configs/logger/csv.yaml).

Lightning's writer deletes `metrics.csv` when it starts, so a resumed run's curve would begin at the epoch it
resumed from. This writer keeps the file and, at its first save, drops only the rows the resumed run redoes
(those at or after its first new step: what the killed process logged after its last checkpoint). A run started
afresh (`rerun=true`) begins at step 0 and so replaces the whole file.
"""

from __future__ import annotations

import csv
import math
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or math.inf)
    except ValueError:
        return math.inf


class AppendingExperimentWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        self._joined = False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here; we keep it (see save)
        pass

    def save(self) -> None:
        if self.metrics and not self._joined:
            self._joined = True
            if self._fs.isfile(self.metrics_file_path):
                with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                    first = min(float(m.get("step", 0)) for m in self.metrics)
                    kept = [r for r in csv.DictReader(f) if _step(r) < first]
                keys = sorted(set(self.metrics_keys).union(*kept, *self.metrics))
                with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=keys)
                    writer.writeheader()
                    writer.writerows(kept)
                self.metrics_keys = keys
        super().save()


class AppendingCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv survives a resume (the rows after the resumed checkpoint are redone)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
