"""Importing the outputs of OpenFace and OpenPose into the face and pose datasets.

Users who already ran the original tools select an import backend instead of MediaPipe::

    vidaffect extract ./videos --set face.backend=openface --set face.import_dir=DIR
    vidaffect extract ./videos --set face.backend=openpose --set face.import_dir=DIR \\
                               --set pose.backend=openpose --set pose.import_dir=DIR

The video is still decoded (for its frame count and timestamps) but its pictures are
not, so an import is fast.

**OpenFace** ``FeatureExtraction``: ``<import_dir>/<video-id>.csv`` with the columns
``frame`` (1-based), ``confidence``, ``success``, ``x_0..x_67``, ``y_0..y_67`` and,
when present, ``face_id``, ``timestamp`` and ``eye_lmk_x_*``/``eye_lmk_y_*`` (header
names may carry spaces after the commas).  Frames with ``success`` 0 are invalid.
The pupils are the centres of the two eyes' eight iris landmarks (``eye_lmk`` 0-7 and
28-35), each assigned to the eye contour it lies in; NaN when the CSV has no eye
landmarks.  When a frame has several rows (several ``face_id``), the face followed
in the previous frame is kept, else the most confident one; ``count`` is the number
of successful rows of the frame.

**OpenPose** ``--write_json``: ``<import_dir>/<video-id>/*_keypoints.json``, one file
per frame, ordered by the frame number OpenPose puts before ``_keypoints.json``
(0-based; by file name when there is none).  ``people[].pose_keypoints_2d`` holds 18
(COCO) or 25 (BODY_25, mapped to COCO-18 as :data:`vidaffect.landmarks.BODY25_TO_COCO18`
says) ``x, y, confidence`` triples; ``people[].face_keypoints_2d`` 70 triples
(OpenPose's face model has the 68 iBUG points and the pupils in vidaffect's order).
A point OpenPose did not find (confidence 0) becomes NaN with confidence 0.  With
several people, the one overlapping the previous frame's choice is kept, else the
most prominent (box area times mean confidence).  Coordinates are stored as the tool
wrote them (pixels, OpenPose's default ``--keypoint_scale 0``).

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

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidaffect.landmarks import BODY_POINTS, FACE_POINTS, body25_to_coco18, points_box, rank_candidates
from vidaffect.stages import Batch, Output, StageRun
from vidaffect.video import VideoInfo

log = logging.getLogger(__name__)

IMPORT_MATCHES = ("auto", "index", "timestamp")
_IBUG = 68
_IRIS = 8  # OpenFace's eye landmarks start with 8 iris points per eye
_EYE_LANDMARKS = 28  # eye_lmk points per eye
_OPENPOSE_NAME = re.compile(r"(\d+)_keypoints\.json$")


def empty_rows(outputs: dict[str, Output], n: int) -> dict[str, np.ndarray]:
    """``n`` rows of every dataset holding its fill value (NaN, 0 or False)."""
    return {name: np.full((n, *out.shape), out.fill, dtype=out.dtype) for name, out in outputs.items()}


def check_import_params(stage: str, backend: str, import_dir: str, import_match: str) -> None:
    """Raise ValueError for import settings that cannot work, naming the parameter."""
    if import_match not in IMPORT_MATCHES:
        raise ValueError(f"{stage}.import_match must be one of {', '.join(IMPORT_MATCHES)}; got {import_match!r}")
    if backend == "mediapipe":
        return
    if not import_dir:
        raise ValueError(f"{stage}.backend={backend} needs {stage}.import_dir (the folder of {backend}'s output)")
    if not Path(str(import_dir)).is_dir():
        raise ValueError(f"{stage}.import_dir {import_dir!r} is not a folder")
    if backend == "openpose" and import_match == "timestamp":
        raise ValueError(f"{stage}.import_match=timestamp: OpenPose files carry no timestamps; use index or auto")


@dataclass
class Imported:
    """Rows read from one video's import, one per imported frame, frames increasing."""

    source: str  # the file or folder read
    frames: np.ndarray  # (n,) int64, 0-based frame numbers
    timestamps: np.ndarray | None  # (n,) float64 seconds, when the tool wrote them
    rows: dict[str, np.ndarray]  # dataset -> (n, ...) values; datasets not here stay at their fill


# --- OpenFace -----------------------------------------------------------------------


def read_openface(path: str | Path) -> Imported:
    """Face rows from an OpenFace ``FeatureExtraction`` CSV (see the module docs).

    Parameters
    ----------
    path : str or Path
        The CSV file.

    Returns
    -------
    Imported
        ``landmarks``, ``bbox``, ``score``, ``count`` and ``valid`` rows.
    """
    path = Path(path)
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise ValueError(f"{path}: empty file, not an OpenFace CSV")
    column = {name.strip(): i for i, name in enumerate(header)}
    wanted = ["frame", "confidence", "success"] + [f"x_{i}" for i in range(_IBUG)] + [f"y_{i}" for i in range(_IBUG)]
    missing = [c for c in wanted if c not in column]
    if missing:
        raise ValueError(
            f"{path}: not an OpenFace FeatureExtraction CSV (missing column(s) {', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''})"
        )
    iris = [f"eye_lmk_{a}_{i}" for a in "xy" for i in (*range(_IRIS), *range(_EYE_LANDMARKS, _EYE_LANDMARKS + _IRIS))]
    has_eyes = all(c in column for c in iris)
    optional = [c for c in ("face_id", "timestamp") if c in column]
    names = wanted + optional + (iris if has_eyes else [])
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, usecols=[column[c] for c in names], ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: unreadable OpenFace CSV ({str(exc).splitlines()[0]})") from None
    col = {name: table[:, i] for i, name in enumerate(names)}

    frame_numbers = col["frame"].astype(np.int64) - 1  # OpenFace counts frames from 1
    keep, count = _one_row_per_frame(
        frame_numbers, col["success"] > 0.5, col["confidence"], col.get("face_id", np.zeros(len(table)))
    )
    frames = frame_numbers[keep]
    success = (col["success"] > 0.5)[keep]
    n = len(keep)
    landmarks = np.full((n, FACE_POINTS, 2), np.nan, np.float32)
    landmarks[:, :_IBUG, 0] = table[keep][:, [names.index(f"x_{i}") for i in range(_IBUG)]]
    landmarks[:, :_IBUG, 1] = table[keep][:, [names.index(f"y_{i}") for i in range(_IBUG)]]
    if has_eyes:
        landmarks[:, _IBUG:] = _openface_pupils(table[keep], names, landmarks[:, :_IBUG])
    landmarks[~success] = np.nan
    score = np.where(success, col["confidence"][keep], np.nan).astype(np.float32)
    rows = {
        "landmarks": landmarks,
        "bbox": points_box(landmarks[:, :_IBUG]),
        "score": score,
        "count": count.astype(np.int32),
        "valid": success,
    }
    timestamps = col["timestamp"][keep] if "timestamp" in col else None
    return Imported(str(path), frames, timestamps, rows)


def _one_row_per_frame(
    frames: np.ndarray, success: np.ndarray, confidence: np.ndarray, face_id: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Row index chosen for each distinct frame (frames increasing) and the number of
    successful rows of that frame.  Among a frame's rows the face followed in the
    previous frame wins, else the most confident successful row."""
    order = np.argsort(frames, kind="stable")
    unique, starts = np.unique(frames[order], return_index=True)
    bounds = list(starts) + [len(order)]
    keep = np.empty(len(unique), np.int64)
    count = np.empty(len(unique), np.int64)
    followed: float | None = None
    for k in range(len(unique)):
        rows = order[bounds[k] : bounds[k + 1]]
        ok = rows[success[rows]]
        count[k] = len(ok)
        if not len(ok):
            keep[k] = rows[0]
            followed = None
            continue
        same = ok[face_id[ok] == followed] if followed is not None else ok[:0]
        keep[k] = same[0] if len(same) else ok[np.argmax(confidence[ok])]
        followed = face_id[keep[k]]
    return keep, count


def _openface_pupils(table: np.ndarray, names: list[str], ibug: np.ndarray) -> np.ndarray:
    """(n, 2, 2) pupils (the subject's right, then left) from the eye landmarks."""
    first, second = range(_IRIS), range(_EYE_LANDMARKS, _EYE_LANDMARKS + _IRIS)

    def centre(indices: range) -> np.ndarray:
        x = table[:, [names.index(f"eye_lmk_x_{i}") for i in indices]].mean(axis=1)
        y = table[:, [names.index(f"eye_lmk_y_{i}") for i in indices]].mean(axis=1)
        return np.stack([x, y], axis=1)

    a, b = centre(first), centre(second)
    right_eye, left_eye = ibug[:, 36:42].mean(axis=1), ibug[:, 42:48].mean(axis=1)
    # Assign each iris to the eye contour it lies in rather than trusting which eye
    # OpenFace lists first.
    straight = np.linalg.norm(a - right_eye, axis=1) + np.linalg.norm(b - left_eye, axis=1)
    swapped = np.linalg.norm(a - left_eye, axis=1) + np.linalg.norm(b - right_eye, axis=1)
    flip = (swapped < straight)[:, None]
    return np.stack([np.where(flip, b, a), np.where(flip, a, b)], axis=1)


# --- OpenPose -----------------------------------------------------------------------


def read_openpose(folder: str | Path, part: str) -> Imported:
    """Face or body rows from an OpenPose ``--write_json`` folder (see the module docs).

    Parameters
    ----------
    folder : str or Path
        The folder of one video's ``*_keypoints.json`` files.
    part : {"face", "pose"}
        ``face``: ``landmarks``, ``bbox``, ``score``, ``count`` and ``valid`` rows from
        ``face_keypoints_2d``; ``pose``: ``keypoints`` and ``valid`` from
        ``pose_keypoints_2d``.

    Returns
    -------
    Imported
    """
    folder = Path(folder)
    files = sorted(folder.glob("*_keypoints.json"))
    if not files:
        raise FileNotFoundError(f"{folder}: no OpenPose *_keypoints.json files in the folder")
    numbers = [_OPENPOSE_NAME.search(f.name) for f in files]
    if all(numbers):
        frames = np.array([int(m.group(1)) for m in numbers], np.int64)
        if len(set(frames.tolist())) != len(frames):
            raise ValueError(f"{folder}: several *_keypoints.json files carry the same frame number")
    else:
        frames = np.arange(len(files), dtype=np.int64)
    order = np.argsort(frames, kind="stable")
    files, frames = [files[i] for i in order], frames[order]

    key, points = ("face_keypoints_2d", FACE_POINTS) if part == "face" else ("pose_keypoints_2d", BODY_POINTS)
    n = len(files)
    values = np.full((n, points, 3), np.nan, np.float32)
    count = np.zeros(n, np.int32)
    anyone = with_part = False
    previous = None
    for k, file in enumerate(files):
        people = _openpose_people(file)
        anyone = anyone or bool(people)
        candidates = [p for p in (_openpose_points(file, person.get(key), part) for person in people) if p is not None]
        with_part = with_part or bool(candidates)
        count[k] = len(candidates)
        boxes = [points_box(c) for c in candidates]
        order = rank_candidates(boxes, [float(c[:, 2].mean()) for c in candidates], previous)
        previous = boxes[order[0]] if order else None
        if order:
            values[k] = candidates[order[0]]
    if part == "face" and anyone and not with_part:
        raise ValueError(f"{folder}: people but no face_keypoints_2d in any file (was OpenPose run with --face?)")
    valid = np.isfinite(values[:, :, 0]).any(axis=1)
    if part == "pose":
        return Imported(str(folder), frames, None, {"keypoints": values, "valid": valid})
    landmarks = values[:, :, :2].copy()
    rows = {
        "landmarks": landmarks,
        "bbox": points_box(landmarks[:, :_IBUG]),
        "score": np.where(valid, np.nan_to_num(values[:, :, 2]).mean(axis=1), np.nan).astype(np.float32),
        "count": count,
        "valid": valid,
    }
    return Imported(str(folder), frames, None, rows)


def _openpose_people(file: Path) -> list[dict]:
    try:
        with open(file) as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: unreadable OpenPose JSON ({exc})") from None
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise ValueError(f"{file}: not an OpenPose keypoints file (no 'people' list)")
    return people


def _openpose_points(file: Path, flat: list | None, part: str) -> np.ndarray | None:
    """(k, 3) points of one person with NaN x, y where OpenPose found nothing (its
    confidence 0); None when the person has no point of this part."""
    if not flat:
        return None
    values = np.asarray(flat, dtype=np.float32)
    if part == "face":
        if values.size != FACE_POINTS * 3:
            raise ValueError(f"{file}: face_keypoints_2d has {values.size} numbers; expected {FACE_POINTS * 3} (70 points)")
        points = values.reshape(FACE_POINTS, 3)
    elif values.size == BODY_POINTS * 3:
        points = values.reshape(BODY_POINTS, 3)
    elif values.size == 25 * 3:
        points = body25_to_coco18(values.reshape(25, 3))
    else:
        raise ValueError(f"{file}: pose_keypoints_2d has {values.size} numbers; expected 54 (COCO-18) or 75 (BODY_25)")
    points = points.copy()
    missing = ~(points[:, 2] > 0)
    if missing.all():
        return None
    points[missing, :2] = np.nan
    points[missing, 2] = 0.0
    return points


# --- the stage run ------------------------------------------------------------------


def import_source(stage: str, backend: str, import_dir: str | Path, video_id: str) -> Path:
    """Where the import of ``video_id`` must be; FileNotFoundError naming the path when
    it is not there."""
    if backend == "openface":
        path = Path(import_dir) / f"{video_id}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{stage}.backend=openface: no OpenFace CSV for video {video_id!r} (expected {path})")
    else:
        path = Path(import_dir) / video_id
        if not path.is_dir():
            raise FileNotFoundError(
                f"{stage}.backend=openpose: no OpenPose JSON folder for video {video_id!r} (expected {path}/*_keypoints.json)"
            )
    return path


def open_import(
    stage: str, backend: str, import_dir: str, import_match: str, info: VideoInfo, outputs: dict[str, Output]
) -> ImportRun:
    """Read one video's import and return the run that hands its rows to the engine."""
    path = import_source(stage, backend, import_dir, info.video_id)
    imported = read_openface(path) if backend == "openface" else read_openpose(path, stage)
    match = import_match
    if match == "auto":
        differs = info.frame_count > 0 and len(imported.frames) != info.frame_count
        match = "timestamp" if imported.timestamps is not None and differs else "index"
    return ImportRun(imported, outputs, match, info)


class ImportRun(StageRun):
    """Imported rows matched to decoded frames (see the module docs)."""

    def __init__(self, imported: Imported, outputs: dict[str, Output], match: str, info: VideoInfo) -> None:
        super().__init__()
        if match == "timestamp" and imported.timestamps is None:
            raise ValueError(f"{imported.source}: import_match=timestamp, but the import has no timestamps")
        self.imported = imported
        self.outputs = outputs
        self.match = match
        self.video = info.path
        self.decoded = 0
        self.unmatched = 0  # decoded frames that got no imported row
        self.used = np.zeros(len(imported.frames), bool)
        if match == "timestamp":
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
