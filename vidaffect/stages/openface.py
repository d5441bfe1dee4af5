"""Reading OpenFace ``FeatureExtraction`` CSVs into face rows.

``<import_dir>/<video-id>.csv`` with the columns ``frame`` (1-based), ``confidence``,
``success``, ``x_0..x_67``, ``y_0..y_67`` and, when present, ``face_id``, ``timestamp``
and ``eye_lmk_x_*``/``eye_lmk_y_*`` (header names may carry spaces after the commas).
Frames with ``success`` 0 are invalid.  The pupils are the centres of the two eyes'
eight iris landmarks (``eye_lmk`` 0-7 and 28-35), each assigned to the eye contour it
lies in; NaN when the CSV has no eye landmarks.  When a frame has several rows (several
``face_id``), the face followed in the previous frame is kept, else the most confident
one; ``count`` is the number of successful rows of the frame.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vidaffect.errors import ParameterError
from vidaffect.stages.boxes import points_box
from vidaffect.stages.imports import Imported
from vidaffect.stages.layouts import FACE_POINTS, IBUG_POINTS, LEFT_EYE, RIGHT_EYE

_IRIS = 8  # OpenFace's eye landmarks start with 8 iris points per eye
_EYE_LANDMARKS = 28  # eye_lmk points per eye


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
        raise ParameterError(f"{path}: empty file, not an OpenFace CSV")
    column = {name.strip(): i for i, name in enumerate(header)}
    wanted = ["frame", "confidence", "success"] + [f"x_{i}" for i in range(IBUG_POINTS)] + [f"y_{i}" for i in range(IBUG_POINTS)]
    missing = [c for c in wanted if c not in column]
    if missing:
        raise ParameterError(
            f"{path}: not an OpenFace FeatureExtraction CSV (missing column(s) {', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''})"
        )
    iris = [f"eye_lmk_{a}_{i}" for a in "xy" for i in (*range(_IRIS), *range(_EYE_LANDMARKS, _EYE_LANDMARKS + _IRIS))]
    has_eyes = all(c in column for c in iris)
    optional = [c for c in ("face_id", "timestamp") if c in column]
    names = wanted + optional + (iris if has_eyes else [])
    import pandas as pd

    usecols = [column[c] for c in names]
    try:
        # pandas, not np.loadtxt: an empty field (a value the writer did not have) is NaN
        table = pd.read_csv(path, header=None, skiprows=1, usecols=usecols, skipinitialspace=True, dtype=np.float64)[usecols].to_numpy()
    except ValueError as exc:
        raise ParameterError(f"{path}: unreadable OpenFace CSV ({str(exc).splitlines()[0]})") from None
    col = {name: table[:, i] for i, name in enumerate(names)}

    frame_numbers = col["frame"].astype(np.int64) - 1  # OpenFace counts frames from 1
    keep, count = _one_row_per_frame(
        frame_numbers, col["success"] > 0.5, col["confidence"], col.get("face_id", np.zeros(len(table)))
    )
    frames = frame_numbers[keep]
    success = (col["success"] > 0.5)[keep]
    n = len(keep)
    landmarks = np.full((n, FACE_POINTS, 2), np.nan, np.float32)
    landmarks[:, :IBUG_POINTS, 0] = table[keep][:, [names.index(f"x_{i}") for i in range(IBUG_POINTS)]]
    landmarks[:, :IBUG_POINTS, 1] = table[keep][:, [names.index(f"y_{i}") for i in range(IBUG_POINTS)]]
    if has_eyes:
        landmarks[:, IBUG_POINTS:] = _openface_pupils(table[keep], names, landmarks[:, :IBUG_POINTS])
    landmarks[~success] = np.nan
    score = np.where(success, col["confidence"][keep], np.nan).astype(np.float32)
    rows = {
        "landmarks": landmarks,
        "bbox": points_box(landmarks[:, :IBUG_POINTS]),
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
    right_eye, left_eye = ibug[:, RIGHT_EYE].mean(axis=1), ibug[:, LEFT_EYE].mean(axis=1)
    # Assign each iris to the eye contour it lies in rather than trusting which eye
    # OpenFace lists first.
    straight = np.linalg.norm(a - right_eye, axis=1) + np.linalg.norm(b - left_eye, axis=1)
    swapped = np.linalg.norm(a - left_eye, axis=1) + np.linalg.norm(b - right_eye, axis=1)
    flip = (swapped < straight)[:, None]
    return np.stack([np.where(flip, b, a), np.where(flip, a, b)], axis=1)
