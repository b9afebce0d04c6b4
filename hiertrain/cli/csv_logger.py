"""A CSVLogger that keeps the rows a run directory already holds.

Lightning's `CSVLogger` deletes `<save_dir>/<name>/<version>/metrics.csv` as soon as a logger with
the same version starts, so rerunning a finished evaluation (which logs nothing: its metrics are
final) or resuming a killed one wiped the metrics it had logged. Here the writer picks up the
file's header instead and appends; `--fresh true` still starts a clean log (Lightning's logger).
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class KeepingExperimentWriter(ExperimentWriter):
    """Lightning's writer, minus the deletion: an existing metrics.csv is continued."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(next(csv.reader(f), []))


class KeepingCSVLogger(CSVLogger):
    """`CSVLogger` whose experiment is a `KeepingExperimentWriter`."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeepingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
