"""Which body and which keypoints count: the rules the pose stage applies to MediaPipe's
and to imported OpenPose bodies alike (see :mod:`.pose`).  Keypoints are (18, 3) arrays
in COCO-18 order (:data:`.layouts.COCO18_NAMES`): x, y in pixels and a confidence;
boxes are (x, y, w, h) and regions (x0, y0, x1, y1) in pixels."""

from __future__ import annotations

import numpy as np

from vidaffect.stages.layouts import COCO18_NAMES

_K = {name: i for i, name in enumerate(COCO18_NAMES)}
NOSE, EYES = _K["nose"], [_K["right_eye"], _K["left_eye"]]
HEAD = [_K[n] for n in ("nose", "right_eye", "left_eye", "right_ear", "left_ear")]
# The region around a face where its person's body can be, in face sizes (the longer
# side of the face box): arms spread reach about 5 to each side, raised hands 2 above,
# ankles about 11 below the top of the face.
_REGION_SIDE, _REGION_ABOVE, _REGION_BELOW = 3.5, 2.0, 12.0
REGION_MOVE = 0.5  # face sizes the ideal region must move before the region follows
# MediaPipe tracks in the coordinates of the image it is given; it follows a region
# that moves or grows by less than this share of its size like a moving person, and
# starts afresh after larger changes.
REGION_RESTART = 0.25
_HEAD_ON_FACE = 0.25  # the head point may lie this many face sizes outside the face box


def present_keypoints(
    keypoints: np.ndarray, region: tuple[float, float, float, float], min_confidence: float, margin: float
) -> np.ndarray:
    """The keypoints that are there: those below ``min_confidence``, or outside
    ``region`` (x0, y0, x1, y1 pixels: the image the pose model saw) by more than
    ``margin`` of its width or height, become NaN with confidence 0.

    Parameters
    ----------
    keypoints : np.ndarray, shape (..., 18, 3)
        x, y in pixels and confidence.
    region : tuple of float
    min_confidence : float
        0-1 (the pose stage's ``min_keypoint_confidence``).
    margin : float
        Fraction of the region's width and height (``outside_margin``).

    Returns
    -------
    np.ndarray, same shape, float32
    """
    kp = np.array(keypoints, np.float32)
    x0, y0, x1, y1 = region
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    x, y, c = kp[..., 0], kp[..., 1], kp[..., 2]
    inside = (x >= x0 - mx) & (x <= x1 + mx) & (y >= y0 - my) & (y <= y1 + my)
    keep = inside & (c >= min_confidence) & (c > 0)
    kp[~keep] = (np.nan, np.nan, 0.0)
    return kp


def person_region(face: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the part of a ``width`` x ``height`` frame where the body of
    the person with face box ``face`` (x, y, w, h) can be."""
    x, y, w, h = (float(v) for v in face)
    side = max(w, h)
    cx = x + w / 2
    x0, x1 = cx - _REGION_SIDE * side, cx + _REGION_SIDE * side
    y0, y1 = y - _REGION_ABOVE * side, y + _REGION_BELOW * side
    return max(0, int(x0)), max(0, int(y0)), min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))


def head_on_face(keypoints: np.ndarray, face: np.ndarray) -> bool:
    """The body's head point (the nose, else the eyes' midpoint; any confidence above 0)
    lies on the face box (x, y, w, h), give or take a quarter of its size."""
    kp = np.asarray(keypoints)
    seen = (kp[:, 2] > 0) & np.isfinite(kp[:, 0])
    if seen[NOSE]:
        head = kp[NOSE, :2]
    elif seen[EYES].any():
        head = kp[EYES][seen[EYES], :2].mean(axis=0)
    else:
        return False
    x, y, w, h = (float(v) for v in face)
    slack = _HEAD_ON_FACE * max(w, h)
    return bool(x - slack <= head[0] <= x + w + slack and y - slack <= head[1] <= y + h + slack)


def shows_face(keypoints: np.ndarray, region: tuple[float, float, float, float], min_confidence: float) -> bool:
    """The body claims a visible face: nose and both eyes at ``min_confidence`` or above,
    in the image."""
    x, y, c = np.asarray(keypoints)[[NOSE, *EYES]].T
    x0, y0, x1, y1 = region
    return bool(((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (c >= min_confidence)).all())


def region_jump(old: tuple[int, int, int, int], new: tuple[int, int, int, int]) -> float:
    """How far a region moved or resized, as a share of its size."""
    w, h = max(old[2] - old[0], 1), max(old[3] - old[1], 1)
    return max(abs(new[0] - old[0]) / w, abs(new[2] - old[2]) / w, abs(new[1] - old[1]) / h, abs(new[3] - old[3]) / h)
