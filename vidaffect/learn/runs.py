"""The folder a training run leaves, ``runs/<name>/``: one object names every file in
it, used by train, resume, predict and info.

::

    runs/<name>/config.yaml      every hyper-parameter, the split, the seeds
    runs/<name>/metrics.csv      one row per epoch (written by Lightning's CSVLogger)
    runs/<name>/best.ckpt        the epoch with the best validation CCC mean
    runs/<name>/last.ckpt        the last epoch, with what --resume needs
    runs/<name>/tensorboard/     when TensorBoard is installed
    runs/<name>/fold-<k>/...     the same per fold of a k-fold run, plus
    runs/<name>/folds.csv|json   one row per fold's best epoch, mean and std
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vidaffect.errors import InputNotFound

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs")  # relative to the project folder the commands run in


def fold_seed(seed: int, fold: int | None) -> int:
    """The training seed of fold ``fold`` (1-based; None for a run without folds)."""
    return seed + (fold or 1) - 1


@dataclass(frozen=True)
class RunDir:
    """A run folder (or one fold's folder of a k-fold run)."""

    root: Path

    CONFIG: ClassVar[str] = "config.yaml"
    METRICS: ClassVar[str] = "metrics.csv"  # the file name Lightning's CSVLogger writes
    BEST: ClassVar[str] = "best.ckpt"
    LAST: ClassVar[str] = "last.ckpt"
    TENSORBOARD: ClassVar[str] = "tensorboard"
    FOLD: ClassVar[str] = "fold-"
    FOLDS_CSV: ClassVar[str] = "folds.csv"
    FOLDS_JSON: ClassVar[str] = "folds.json"

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / self.METRICS

    @property
    def best(self) -> Path:
        return self.root / self.BEST

    @property
    def last(self) -> Path:
        return self.root / self.LAST

    @classmethod
    def new(cls, net: str, loss: str, parent: Path = RUNS_DIR) -> RunDir:
        """``runs/<net>-<loss>-<time>``, numbered when that exists."""
        base = parent / f"{net}-{loss}-{datetime.now():%Y%m%d-%H%M%S}"
        path, k = base, 1
        while path.exists():
            k += 1
            path = base.with_name(f"{base.name}-{k}")
        return cls(path)

    def fold(self, k: int) -> RunDir:
        """Fold ``k`` (1-based) of a k-fold run."""
        return RunDir(self.root / f"{self.FOLD}{k}")

    def folds(self) -> list[RunDir]:
        """The folds of a k-fold run that have a configuration, in fold order; [] for a
        run without folds."""
        found = self.root.glob(f"{self.FOLD}*/{self.CONFIG}")
        return sorted((RunDir(p.parent) for p in found), key=lambda r: int(r.root.name[len(self.FOLD) :]))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.csv``, numbers parsed (``epoch`` as int); [] when absent."""
        if not self.metrics.is_file():
            return []
        with open(self.metrics, newline="") as fh:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
        for row in rows:
            row["epoch"] = int(row["epoch"])
        return rows

    def write_fold_summary(self, results: list[dict[str, Any]]) -> None:
        """``folds.csv`` (one row per fold's best epoch, then mean and std) and ``folds.json``."""
        keys = ["fold"] + sorted({k for r in results for k in r if k != "fold"})
        stats = {}
        for name, fn in (("mean", np.nanmean), ("std", np.nanstd)):
            stats[name] = {k: float(fn([r.get(k, np.nan) for r in results])) for k in keys[1:]}
        with open(self.root / self.FOLDS_CSV, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(results)
            for name, row in stats.items():
                writer.writerow({"fold": name, **row})
        (self.root / self.FOLDS_JSON).write_text(json.dumps({"folds": results, **stats}, indent=2, default=float))


def find_best(runs: str | Path = RUNS_DIR) -> Path:
    """The newest (modification time) ``<runs>/*/best.ckpt`` or
    ``<runs>/*/fold-*/best.ckpt`` (of a k-fold run: the fold trained last).

    Raises
    ------
    InputNotFound
        None there; the message says to run ``vidaffect train`` or pass ``--model``.
    """
    runs = Path(runs)
    best, fold = RunDir.BEST, RunDir.FOLD
    found = [*runs.glob(f"*/{best}"), *runs.glob(f"*/{fold}*/{best}")]
    if not found:
        raise InputNotFound(
            f"no trained model: found no {runs}/*/{best} (nor {runs}/*/{fold}*/{best}) in "
            f"{runs.resolve().parent}; run `vidaffect train` first, or pass --model CKPT"
        )
    newest = max(found, key=lambda p: p.stat().st_mtime)
    log.info("using the newest of %d trained model(s): %s", len(found), newest)
    return newest
