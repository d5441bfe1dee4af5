"""Landmark layouts: the one place that says which point is which.

vidaffect stores faces and bodies in the layouts OpenFace and OpenPose users know:

* **face, 70 points** (``face/landmarks``): the 68 iBUG-300W points in their standard
  order (0-16 jaw from the subject's right ear to their left ear, 17-21 right brow,
  22-26 left brow, 27-30 nose bridge, 31-35 nostrils, 36-41 right eye, 42-47 left eye,
  48-59 outer lips, 60-67 inner lips), then the pupils as in OpenPose's 70-point face
  model: 68 the subject's right pupil (on the image's left for a frontal face), 69 the
  left pupil.  "Right" and "left" are the subject's throughout.
* **body, COCO-18** (``pose/keypoints``): OpenPose's COCO order, :data:`COCO18_NAMES`.

MediaPipe's 478-point face mesh is mapped to the 70 points by :data:`MESH_TO_FACE70`.
For each iBUG point the table names the mesh vertex nearest to where a 68-point
(iBUG-trained) detector puts that point on frontal photographs, chosen in left/right
mirror pairs so that the table is symmetric; the eye corners and eyelid points are the
anatomical corner vertices and the lid vertices at one and two thirds of each lid.
On those photographs the mapped points lie on average 0.04 inter-ocular distances from
the detector's.  Jaw points of a fixed mesh vertex follow the face surface, so on a
turned head they stay on the cheek where a 68-point detector would draw the silhouette.
The pupils are the iris centres of the mesh's refined landmarks (468 and 473).

MediaPipe's 33 pose landmarks are mapped to COCO-18 by :data:`POSE33_TO_COCO18`; the
neck, which MediaPipe lacks, is the midpoint of the shoulders with the smaller of
their two confidences.  OpenPose's BODY_25 becomes COCO-18 by dropping the mid-hip
(8) and the six foot points (19-24): :data:`BODY25_TO_COCO18`.

Also here: the box helpers the face and pose stages (and the importers) use to follow
one face or person, and :func:`mediapipe_solution`, which loads MediaPipe quietly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FACE_POINTS = 70
MESH_POINTS = 478  # face mesh with refined (iris) landmarks
BODY_POINTS = 18

# fmt: off
MESH_TO_FACE70: tuple[int, ...] = (
    # jaw 0-16
    34, 123, 147, 58, 172, 169, 149, 148, 152, 377, 378, 394, 397, 288, 376, 352, 264,
    # brows 17-21 (right), 22-26 (left)
    156, 63, 105, 66, 107, 336, 296, 334, 293, 383,
    # nose bridge 27-30, nostrils 31-35
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # right eye 36-41, left eye 42-47
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lips 48-59, inner lips 60-67
    61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91, 78, 82, 13, 312, 308, 317, 14, 87,
    # pupils 68 (right), 69 (left): iris centres
    468, 473,
)
# fmt: on

COCO18_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip
NECK = 1

# MediaPipe pose landmark for each COCO-18 point (-1: the neck, made from the shoulders).
POSE33_TO_COCO18: tuple[int, ...] = (0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
_MP_LEFT_SHOULDER, _MP_RIGHT_SHOULDER = 11, 12

BODY25_TO_COCO18: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)


def mesh_to_face70(mesh: np.ndarray) -> np.ndarray:
    """The 70 face points of a 478-point MediaPipe face mesh.

    Parameters
    ----------
    mesh : np.ndarray, shape (..., 478, >=2)
        Mesh vertices; only x and y are used.

    Returns
    -------
    np.ndarray, shape (..., 70, 2)
        The points in :data:`MESH_TO_FACE70` order, same dtype as ``mesh``.
    """
    return np.asarray(mesh)[..., MESH_TO_FACE70, :2]


def pose33_to_coco18(landmarks: np.ndarray) -> np.ndarray:
    """COCO-18 keypoints from MediaPipe's 33 pose landmarks.

    Parameters
    ----------
    landmarks : np.ndarray, shape (33, 3)
        x, y (pixels) and visibility of each MediaPipe landmark.

    Returns
    -------
    np.ndarray, shape (18, 3), float32
        x, y and confidence in COCO-18 order; the neck is the shoulders' midpoint with
        the smaller of their visibilities.
    """
    lm = np.asarray(landmarks, dtype=np.float32)
    out = lm[list(POSE33_TO_COCO18)].copy()
    shoulders = lm[[_MP_LEFT_SHOULDER, _MP_RIGHT_SHOULDER]]
    out[NECK, :2] = shoulders[:, :2].mean(axis=0)
    out[NECK, 2] = shoulders[:, 2].min()
    return out


def body25_to_coco18(keypoints: np.ndarray) -> np.ndarray:
    """COCO-18 keypoints from OpenPose BODY_25 ones (mid-hip and feet dropped).

    Parameters
    ----------
    keypoints : np.ndarray, shape (25, 3)

    Returns
    -------
    np.ndarray, shape (18, 3)
    """
    return np.asarray(keypoints)[list(BODY25_TO_COCO18)]


def points_box(points: np.ndarray) -> np.ndarray:
    """Tight box ``(x, y, w, h)`` around the finite points, NaN when there are none.

    Parameters
    ----------
    points : np.ndarray, shape (..., n, >=2)
        Pixel coordinates; points with a NaN coordinate are ignored.

    Returns
    -------
    np.ndarray, shape (..., 4), float32
    """
    xy = np.asarray(points, dtype=np.float64)[..., :2]
    finite = np.isfinite(xy).all(axis=-1, keepdims=True)
    lo = np.where(finite, xy, np.inf).min(axis=-2)
    hi = np.where(finite, xy, -np.inf).max(axis=-2)
    box = np.concatenate([lo, hi - lo], axis=-1)
    box[~finite.any(axis=(-2, -1))] = np.nan
    return box.astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (0 when either is empty or
    not finite)."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if not (iw > 0 and ih > 0):  # also False for NaN
        return 0.0
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def rank_candidates(boxes: list[np.ndarray], scores: list[float], previous: np.ndarray | None, min_iou: float = 0.3) -> list[int]:
    """Candidates for the primary face or person, the preferred one first.

    First the candidate overlapping ``previous`` (the primary box of the frame
    before) the most, when that overlap reaches ``min_iou``, so the same person is
    followed while others come and go; then the rest by prominence (box area times
    score).

    Returns
    -------
    list of int
        Indices into ``boxes``; empty when there are no candidates.
    """
    prominence = [float(b[2] * b[3]) * s if np.isfinite(b).all() else -1.0 for b, s in zip(boxes, scores, strict=True)]
    order = sorted(range(len(boxes)), key=lambda i: -prominence[i])
    if previous is not None and boxes:
        overlaps = [box_iou(b, previous) for b in boxes]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= min_iou:
            order.remove(best)
            order.insert(0, best)
    return order


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send the process's stderr (file descriptor 2) to /dev/null for a moment.

    MediaPipe's C++ graphs (TensorFlow Lite, absl) print start-up notices straight to
    the file descriptor, where neither Python's logging nor environment variables reach
    them.  They are printed while a graph starts and runs its first frame, so only that
    moment is silenced; with vidaffect's debug logging on nothing is hidden.
    """
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def mediapipe_solution(factory: str, **options: Any) -> Any:
    """Create a MediaPipe legacy solution, e.g. ``"face_detection.FaceDetection"``,
    started quietly (see :func:`restart_quietly`).

    MediaPipe is imported here rather than at module level so that importing vidaffect
    (and ``vidaffect --help``) stays fast.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning)
    import mediapipe as mp

    module, cls = factory.split(".")
    with _native_stderr_silenced():
        solution = getattr(getattr(mp.solutions, module), cls)(**options)
    restart_quietly(solution)
    return solution


def restart_quietly(solution: Any) -> None:
    """Reset a MediaPipe solution (forgetting what it tracked) and run it once on a
    blank image, so that the notices its graph prints when it starts are silenced and
    the next video begins with nothing tracked."""
    with _native_stderr_silenced():
        solution.reset()
        solution.process(np.zeros((64, 64, 3), np.uint8))
