"""Importing the outputs of OpenFace and OpenPose into the face and pose datasets.

Users who already ran the original tools select an import backend instead of MediaPipe::

    vidaffect extract ./videos --set face.backend=openface --set face.import_dir=DIR
    vidaffect extract ./videos --set face.backend=openpose --set face.import_dir=DIR \\
                               --set pose.backend=openpose --set pose.import_dir=DIR

The video is still decoded (for its frame count and timestamps) but its pictures are
not, so an import is fast.  The file formats are read by :mod:`.openface` and
:mod:`.openpose`; this module matches their rows to the decoded frames.

**Caching.** ``import_dir`` is stored resolved (absolute, symlinks followed), so the
stage's parameters do not depend on how the path was typed, and the imported files'
names, sizes and modification times are part of the stage's cache key for each video:
editing, adding or deleting an imported file re-runs the stage on the next extract.

**Matching rows to frames** (``import_match``), against the frames that decode (not
the container's header count, which can include frames an edit list drops):

* ``index``: frame k of the decoded video (0-based) takes OpenFace's ``frame`` k+1,
  or the OpenPose file numbered k.  When the import is numbered from an offset (e.g.
  OpenPose's ``--frame_first 100`` on a clip cut from a longer video: files 100..)
  with exactly one file per decoded frame, frame k takes file k+offset, with a
  warning;
* ``timestamp`` (OpenFace only): the row whose ``timestamp`` is nearest the frame's,
  if it lies within half the import's median frame interval;
* ``auto`` (default): ``index``, unless the import has timestamps, its number of
  rows differs from the decoded frames, and its timestamps cover the same stretch of
  time at another frame rate (OpenFace run on a 50 fps version of a 25 fps video);
  then ``timestamp``.  OpenFace writes ``frame / fps`` as the timestamp of a video, so
  at the video's own rate counting frames is exact and timestamps add nothing.

An import that matches fewer than half of the decoded frames while some of its rows
match none (its frame numbers run past the video, or its timestamps are not the
video's time) belongs to another video or another version of it: the stage fails on
that video with the counts.  Otherwise, whenever the import and the decoded video do
not match one to one, a warning gives both counts: frames with no imported row are
invalid (NaN), imported rows that match no frame are dropped, and the stage group's
``note`` attribute says the same.  The group's attributes also record
``import_source``, ``import_frames``, the ``import_match`` used and ``import_offset``.
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
from vidaffect.io.video import VideoInfo, frame_timestamps
from vidaffect.stages.base import Batch, StageRun

log = logging.getLogger(__name__)

IMPORT_MATCHES = ("auto", "index", "timestamp")
_MIN_MATCHED = 0.5  # share of the decoded frames an import with left-over rows must match
_SAME_RATE = 0.05  # relative difference of frame intervals below which two rates are one


def check_import_params(p: Any) -> None:
    """The import settings of a face or pose Params (``backend``, ``import_dir``,
    ``import_match``) that cannot work, as a one-line error naming the parameter;
    ``import_dir`` is made absolute with symlinks resolved."""
    if p.backend == "mediapipe":
        return
    if not p.import_dir:
        raise ParameterError(f"{p.stage}.backend={p.backend} needs {p.stage}.import_dir (the folder of {p.backend}'s output)")
    if not Path(p.import_dir).is_dir():
        p.fail("import_dir", f"{p.import_dir!r} is not a folder")
    if p.backend == "openpose" and p.import_match == "timestamp":
        raise ParameterError(f"{p.stage}.import_match=timestamp: OpenPose files carry no timestamps; use index or auto")
    object.__setattr__(p, "import_dir", str(Path(p.import_dir).resolve()))


@dataclass
class Imported:
    """Rows read from one video's import, one per imported frame, frames increasing."""

    source: str  # the file or folder read
    frames: np.ndarray  # (n,) int64, 0-based frame numbers
    timestamps: np.ndarray | None  # (n,) float64 seconds, when the tool wrote them
    rows: dict[str, np.ndarray]  # dataset -> (n, ...) values; datasets not here stay at their fill
    people: list[np.ndarray] | None = None  # per row, (k, points, 3) of everyone, when the stage chooses


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
                f"{stage}.backend=openpose: no OpenPose JSON folder for video {video_id!r} (expected {path}/*.json)"
            )
    return path


def import_files(p: Any, video_id: str) -> list[Path]:
    """The files a face or pose import reads for ``video_id`` (for the cache key)."""
    path = import_source(p.stage, p.backend, p.import_dir, video_id)
    return [path] if path.is_file() else sorted(path.glob("*.json"))


def open_import(
    p: Any, info: VideoInfo, outputs: dict[str, Output], read: Callable[[Path], Imported], run: Callable[..., ImportRun] | None = None
) -> ImportRun:
    """Read one video's import with ``read`` (a reader of :mod:`.openface` or
    :mod:`.openpose`) and return the run that hands its rows to the engine; ``p`` is the
    stage's Params (``backend``, ``import_dir``, ``import_match``), ``run`` the run class
    (default :class:`ImportRun`)."""
    imported = read(import_source(p.stage, p.backend, p.import_dir, info.video_id))
    times = info.decoded_timestamps if info.decoded_timestamps is not None else frame_timestamps(info)
    return (run or ImportRun)(imported, outputs, p.import_match, times, info.path)


def _interval(times: np.ndarray) -> float:
    steps = np.diff(times)
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else 0.0


def _other_rate(imported: np.ndarray, decoded: np.ndarray) -> bool:
    """The import's timestamps cover the decoded frames' stretch of time at another
    frame rate."""
    di, dv = _interval(imported), _interval(decoded)
    if not (di > 0 and dv > 0) or abs(di / dv - 1) <= _SAME_RATE:
        return False
    span_import, span_video = imported[-1] - imported[0], decoded[-1] - decoded[0]
    return bool(abs(span_import - span_video) <= 2 * max(di, dv) + 0.02 * span_video)


@dataclass
class Matching:
    """Which imported row each decoded frame takes (-1: none) and how it was decided."""

    rows: np.ndarray
    method: str
    offset: int = 0


def match_rows(imported: Imported, times: np.ndarray, requested: str) -> Matching:
    """Match imported rows to the decoded frames (see the module docs).

    Parameters
    ----------
    imported : Imported
    times : np.ndarray
        (T,) seconds of every decoded frame.
    requested : {"auto", "index", "timestamp"}

    Raises
    ------
    ParameterError
        ``timestamp`` without timestamps in the import, or an import that does not
        belong to these frames (fewer than half of them matched, rows left over).
    """
    n, total = len(imported.frames), len(times)
    stamps = imported.timestamps
    method = requested
    if method == "auto":
        method = "timestamp" if stamps is not None and n and total and n != total and _other_rate(stamps, times) else "index"
    if method == "timestamp" and stamps is None:
        raise ParameterError(f"{imported.source}: import_match=timestamp, but the import has no timestamps")
    if not n:
        return Matching(np.full(total, -1), method)
    if method == "timestamp":
        assert stamps is not None
        order = np.argsort(stamps, kind="stable")
        sorted_times = stamps[order]
        right = np.clip(np.searchsorted(sorted_times, times), 0, n - 1)
        left = np.clip(right - 1, 0, n - 1)
        nearest = np.where(np.abs(sorted_times[left] - times) <= np.abs(sorted_times[right] - times), left, right)
        period = _interval(stamps) or _interval(times) or 0.04
        close = np.abs(sorted_times[nearest] - times) <= period / 2
        matching = Matching(np.where(close, order[nearest], -1), method)
    else:
        frames = imported.frames
        offset = 0
        if frames[0] > 0 and frames[-1] >= total and n == total and frames[-1] - frames[0] == n - 1:
            offset = int(frames[0])
        wanted = np.arange(total) + offset
        pos = np.clip(np.searchsorted(frames, wanted), 0, n - 1)
        matching = Matching(np.where(frames[pos] == wanted, pos, -1), method, offset)
    matched = int((matching.rows >= 0).sum())
    dropped = n - len(np.unique(matching.rows[matching.rows >= 0]))
    if dropped and matched < _MIN_MATCHED * total:
        if stamps is not None and method == "timestamp":
            raise ParameterError(
                f"{imported.source}: its timestamps match only {matched} of the {total} decoded frames (rows "
                f"{_interval(stamps) * 1000:.1f} ms apart, frames {_interval(times) * 1000:.1f} ms apart): they are "
                "not this video's time; import_match=index matches by frame number"
            )
        raise ParameterError(
            f"{imported.source}: {n} imported frames numbered {imported.frames[0]}..{imported.frames[-1]} match only "
            f"{matched} of the {total} decoded frames by number, and no constant offset lines them up one to one; "
            "is it the import of this video?"
        )
    return matching


class ImportRun(StageRun):
    """Imported rows matched to decoded frames (see the module docs)."""

    def __init__(self, imported: Imported, outputs: dict[str, Output], match: str, times: np.ndarray, video: str) -> None:
        super().__init__()
        self.imported = imported
        self.outputs = outputs
        self.matching = match_rows(imported, times, match)
        self.attrs = {
            "import_source": imported.source,
            "import_frames": len(imported.frames),
            "import_match": self.matching.method,
            "import_offset": self.matching.offset,
        }
        notes = []
        if self.matching.offset:
            notes.append(
                f"{imported.source} is numbered from {self.matching.offset} with one file per decoded frame: "
                f"frame k takes file k+{self.matching.offset}"
            )
        rows = self.matching.rows
        n_import, total = len(imported.frames), len(times)
        unmatched = int((rows < 0).sum())
        used, uses = np.unique(rows[rows >= 0], return_counts=True)
        dropped = n_import - len(used)
        if n_import != total or unmatched or dropped:
            notes.append(
                f"{imported.source} has {n_import} frames, the decoded video {total}; "
                f"matched by {self.matching.method}: {unmatched} frame(s) without an imported row are invalid, "
                f"{dropped} imported row(s) were dropped"
            )
        if (uses > 1).any():
            notes.append(f"{int((uses > 1).sum())} imported row(s) were given to more than one frame")
        for note in notes:
            log.warning("%s: %s", video, note)
        if notes:
            self.attrs["note"] = "; ".join(notes)

    def rows_of(self, batch: Batch) -> np.ndarray:
        """Imported row of each frame of the batch, -1 where there is none."""
        rows = self.matching.rows[batch.start : batch.start + len(batch)]
        if len(rows) != len(batch):
            raise RuntimeError(f"the video decoded to more frames than the {len(self.matching.rows)} counted before")
        return rows

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        rows = empty_rows(self.outputs, len(batch))
        source = self.rows_of(batch)
        hit = source >= 0
        for name, values in self.imported.rows.items():
            rows[name][hit] = values[source[hit]]
        return rows
