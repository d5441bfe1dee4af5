"""Reading OpenPose ``--write_json`` folders into face or body rows.

``<import_dir>/<video-id>/*.json``, one file per frame, ordered by the frame number
at the end of the name (``clip_000000000100_keypoints.json``, or ``frame000100.json``
from an image folder; by file name when the names carry no number).
``people[].pose_keypoints_2d`` holds 18 (COCO) or 25 (BODY_25, mapped to COCO-18 as
:data:`.layouts.BODY25_TO_COCO18` says) ``x, y, confidence`` triples;
``people[].face_keypoints_2d`` 70 triples (OpenPose's face model has the 68 iBUG points
and the pupils in vidaffect's order).  A point OpenPose did not find (confidence 0)
becomes NaN with confidence 0.  Faces: with several people, the one overlapping the
previous frame's choice is kept, else the most prominent (box area times mean
confidence).  Bodies: every person is kept (``Imported.people``); the pose stage
chooses the one of the tracked face.  Coordinates are stored as the tool wrote them
(pixels, OpenPose's default ``--keypoint_scale 0``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from vidaffect.errors import InputNotFound, ParameterError
from vidaffect.stages.boxes import points_box, rank_candidates
from vidaffect.stages.imports import Imported
from vidaffect.stages.layouts import BODY_POINTS, FACE_POINTS, IBUG_POINTS, body25_to_coco18

_OPENPOSE_NAME = re.compile(r"(\d+)(?:_keypoints)?\.json$")


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
        For ``pose`` also ``people``: every person's keypoints per file.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise InputNotFound(f"{folder}: no OpenPose .json files in the folder")
    numbers = [int(m.group(1)) for f in files if (m := _OPENPOSE_NAME.search(f.name))]
    if len(numbers) == len(files):
        frames = np.array(numbers, np.int64)
        if len(set(frames.tolist())) != len(frames):
            raise ParameterError(f"{folder}: several .json files carry the same frame number")
    else:
        frames = np.arange(len(files), dtype=np.int64)
    order = np.argsort(frames, kind="stable")
    files, frames = [files[i] for i in order], frames[order]

    key, points = ("face_keypoints_2d", FACE_POINTS) if part == "face" else ("pose_keypoints_2d", BODY_POINTS)
    n = len(files)
    everyone: list[np.ndarray] = []
    anyone = False
    for file in files:
        people = _openpose_people(file)
        anyone = anyone or bool(people)
        found = [p for p in (_openpose_points(file, person.get(key), part) for person in people) if p is not None]
        everyone.append(np.array(found, np.float32).reshape(len(found), points, 3))
    if part == "pose":
        return Imported(str(folder), frames, None, {}, people=everyone)
    if anyone and not any(len(p) for p in everyone):
        raise ParameterError(f"{folder}: people but no face_keypoints_2d in any file (was OpenPose run with --face?)")
    values = np.full((n, points, 3), np.nan, np.float32)
    previous = None
    for k, candidates in enumerate(everyone):
        choice = follow(candidates, previous)
        previous = points_box(candidates[choice]) if choice is not None else None
        if choice is not None:
            values[k] = candidates[choice]
    count = np.array([len(p) for p in everyone], np.int32)
    valid = np.asarray(np.isfinite(values[:, :, 0]).any(axis=1), bool)
    landmarks = values[:, :, :2].copy()
    rows: dict[str, np.ndarray] = {
        "landmarks": landmarks,
        "bbox": points_box(landmarks[:, :IBUG_POINTS]),
        "score": np.where(valid, np.nan_to_num(values[:, :, 2]).mean(axis=1), np.nan).astype(np.float32),
        "count": count,
        "valid": valid,
    }
    return Imported(str(folder), frames, None, rows)


def follow(candidates: np.ndarray, previous: np.ndarray | None) -> int | None:
    """Which of a frame's people (k, points, 3) to take: the one overlapping the
    ``previous`` frame's choice (a box), else the most prominent; None when empty."""
    boxes = [points_box(c) for c in candidates]
    ranked = rank_candidates(boxes, [float(np.nanmean(c[:, 2])) for c in candidates], previous)
    return ranked[0] if ranked else None


def _openpose_people(file: Path) -> list[dict]:
    try:
        with open(file) as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParameterError(f"{file}: unreadable OpenPose JSON ({exc})") from None
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise ParameterError(f"{file}: not an OpenPose keypoints file (no 'people' list)")
    return people


def _openpose_points(file: Path, flat: list | None, part: str) -> np.ndarray | None:
    """(k, 3) points of one person with NaN x, y where OpenPose found nothing (its
    confidence 0); None when the person has no point of this part."""
    if not flat:
        return None
    values = np.asarray(flat, dtype=np.float32)
    if part == "face":
        if values.size != FACE_POINTS * 3:
            raise ParameterError(f"{file}: face_keypoints_2d has {values.size} numbers; expected {FACE_POINTS * 3} (70 points)")
        points = values.reshape(FACE_POINTS, 3)
    elif values.size == BODY_POINTS * 3:
        points = values.reshape(BODY_POINTS, 3)
    elif values.size == 25 * 3:
        points = body25_to_coco18(values.reshape(25, 3))
    else:
        raise ParameterError(f"{file}: pose_keypoints_2d has {values.size} numbers; expected 54 (COCO-18) or 75 (BODY_25)")
    points = points.copy()
    missing = ~(points[:, 2] > 0)
    if missing.all():
        return None
    points[missing, :2] = np.nan
    points[missing, 2] = 0.0
    return points
