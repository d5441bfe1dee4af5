"""Importing the outputs of OpenFace and OpenPose into the face and pose datasets.

Users who already ran the original tools select an import backend instead of MediaPipe::

    vidaffect extract ./videos --set face.backend=openface --set face.import_dir=DIR
    vidaffect extract ./videos --set face.backend=openpose --set face.import_dir=DIR \\
                               --set pose.backend=openpose --set pose.import_dir=DIR

The video is still decoded (for its frame count and timestamps) but its pictures are
not, so an import is fast.  The file formats are read by :mod:`.openface` and
:mod:`.openpose`; this module matches their rows to the decoded frames.

**Matching rows to frames** (``import_match``):

* ``index``: frame k of the decoded video (0-based) takes OpenFace's ``frame`` k+1,
  or the OpenPose file numbered k;
* ``timestamp`` (OpenFace only): the row whose ``timestamp`` is nearest the frame's,
  if it lies within half the import's median frame interval;
* ``auto`` (default): ``index``, unless the import has timestamps and its number of
  frames differs from the container's frame count, then ``timestamp``.

Whenever the import and the decoded video do not match one to one (different frame
counts, gaps in the import), a warning gives both counts: frames with no imported row
are invalid (NaN), imported rows that match no frame are dropped, and the stage
group's ``note`` attribute says the same.  The group's attributes also record
``import_source``, ``import_frames`` and the ``import_match`` used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidaffect.errors import InputNotFound, ParameterError
from vidaffect.io.store import Output, empty_rows
from vidaffect.io.video import VideoInfo
from vidaffect.stages.base import Batch, StageRun

log = logging.getLogger(__name__)

IMPORT_MATCHES = ("auto", "index", "timestamp")


def check_import_params(p: Any) -> None:
    """The import settings of a face or pose Params (``backend``, ``import_dir``,
    ``import_match``) that cannot work, as a one-line error naming the parameter."""
    if p.backend == "mediapipe":
        return
    if not p.import_dir:
        raise ParameterError(f"{p.stage}.backend={p.backend} needs {p.stage}.import_dir (the folder of {p.backend}'s output)")
    if not Path(p.import_dir).is_dir():
        p.fail("import_dir", f"{p.import_dir!r} is not a folder")
    if p.backend == "openpose" and p.import_match == "timestamp":
        raise ParameterError(f"{p.stage}.import_match=timestamp: OpenPose files carry no timestamps; use index or auto")


@dataclass
class Imported:
    """Rows read from one video's import, one per imported frame, frames increasing."""

    source: str  # the file or folder read
    frames: np.ndarray  # (n,) int64, 0-based frame numbers
    timestamps: np.ndarray | None  # (n,) float64 seconds, when the tool wrote them
    rows: dict[str, np.ndarray]  # dataset -> (n, ...) values; datasets not here stay at their fill


def import_source(stage: str, backend: str, import_dir: str | Path, video_id: str) -> Path:
    """Where the import of ``video_id`` must be; :class:`InputNotFound` naming the path
    when it is not there."""
    if backend == "openface":
        path = Path(import_dir) / f"{video_id}.csv"
        if not path.is_file():
            raise InputNotFound(f"{stage}.backend=openface: no OpenFace CSV for video {video_id!r} (expected {path})")
    else:
        path = Path(import_dir) / video_id
        if not path.is_dir():
            raise InputNotFound(
                f"{stage}.backend=openpose: no OpenPose JSON folder for video {video_id!r} (expected {path}/*_keypoints.json)"
            )
    return path


def open_import(p: Any, info: VideoInfo, outputs: dict[str, Output], read: Callable[[Path], Imported]) -> ImportRun:
    """Read one video's import with ``read`` (a reader of :mod:`.openface` or
    :mod:`.openpose`) and return the run that hands its rows to the engine; ``p`` is the
    stage's Params (``backend``, ``import_dir``, ``import_match``)."""
    path = import_source(p.stage, p.backend, p.import_dir, info.video_id)
    imported = read(path)
    match = p.import_match
    if match == "auto":
        differs = info.frame_count > 0 and len(imported.frames) != info.frame_count
        match = "timestamp" if imported.timestamps is not None and differs else "index"
    return ImportRun(imported, outputs, match, info)


class ImportRun(StageRun):
    """Imported rows matched to decoded frames (see the module docs)."""

    def __init__(self, imported: Imported, outputs: dict[str, Output], match: str, info: VideoInfo) -> None:
        super().__init__()
        if match == "timestamp" and imported.timestamps is None:
            raise ParameterError(f"{imported.source}: import_match=timestamp, but the import has no timestamps")
        self.imported = imported
        self.outputs = outputs
        self.match = match
        self.video = info.path
        self.decoded = 0
        self.unmatched = 0  # decoded frames that got no imported row
        self.used = np.zeros(len(imported.frames), bool)
        if imported.timestamps is not None:
            order = np.argsort(imported.timestamps, kind="stable")
            self._order, self._times = order, imported.timestamps[order]
            gaps = np.diff(self._times)
            gaps = gaps[gaps > 0]
            period = float(np.median(gaps)) if len(gaps) else (1.0 / info.fps if info.fps > 0 else 0.04)
            self._tolerance = period / 2
        self.attrs = {"import_source": imported.source, "import_frames": len(imported.frames), "import_match": match}

    def _rows_of(self, batch: Batch) -> np.ndarray:
        """Imported row of each frame of the batch, -1 where there is none."""
        n_rows = len(self.imported.frames)
        if not n_rows:
            return np.full(len(batch), -1)
        if self.match == "index":
            wanted = batch.start + np.arange(len(batch))
            pos = np.clip(np.searchsorted(self.imported.frames, wanted), 0, n_rows - 1)
            return np.where(self.imported.frames[pos] == wanted, pos, -1)
        ts = np.asarray(batch.timestamps, np.float64)
        right = np.clip(np.searchsorted(self._times, ts), 0, n_rows - 1)
        left = np.clip(right - 1, 0, n_rows - 1)
        nearest = np.where(np.abs(self._times[left] - ts) <= np.abs(self._times[right] - ts), left, right)
        close = np.abs(self._times[nearest] - ts) <= self._tolerance
        return np.where(close, self._order[nearest], -1)

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        rows = empty_rows(self.outputs, len(batch))
        source = self._rows_of(batch)
        hit = source >= 0
        for name, values in self.imported.rows.items():
            rows[name][hit] = values[source[hit]]
        self.used[source[hit]] = True
        self.unmatched += int((~hit).sum())
        self.decoded = batch.start + len(batch)
        return rows

    def finish(self) -> dict[str, np.ndarray]:
        n_import = len(self.imported.frames)
        dropped = n_import - int(self.used.sum())
        if n_import != self.decoded or self.unmatched or dropped:
            note = (
                f"{self.imported.source} has {n_import} frames, the decoded video {self.decoded}; "
                f"matched by {self.match}: {self.unmatched} frame(s) without an imported row are invalid, "
                f"{dropped} imported row(s) were dropped"
            )
            log.warning("%s: %s", self.video, note)
            self.attrs["note"] = note
        return empty_rows(self.outputs, 0)
