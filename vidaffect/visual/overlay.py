"""Drawing what the stages found onto a video frame (OpenCV, in place, RGB).

Layers, each drawn when its rows are given (keys ``"group/dataset"`` as in a store):

* ``face``: the face box (green) and the 70 landmarks (68 iBUG points cyan, the two
  pupils magenta); a frame without a face says "no face" in its top-left corner;
* ``pose``: the COCO-18 skeleton (OpenPose's limbs and colours), points whose
  confidence is below :data:`MIN_CONFIDENCE` left out;
* ``head``: the head's axes from its origin, :data:`AXIS_MM` long: x towards the
  subject's left (red), y down the face (green), and the direction the face points
  (blue, -z);
* ``gaze``: a ray from each pupil along its gaze vector (yellow).

Sizes scale with the frame (one "unit" per 360 px of its shorter side).
"""

from __future__ import annotations

import cv2
import numpy as np

from vidaffect.stages.head_pose import camera_of, euler_to_matrix
from vidaffect.stages.layouts import IBUG_POINTS, LEFT_PUPIL, RIGHT_PUPIL

LANDMARK_COLOR = (0, 255, 255)
PUPIL_COLOR = (255, 0, 255)
BOX_COLOR = (0, 220, 0)
GAZE_COLOR = (255, 230, 0)
AXIS_COLORS = ((230, 30, 30), (30, 200, 30), (40, 90, 255))  # x, y, facing direction
TEXT_COLOR = (255, 60, 60)
AXIS_MM = 60.0
GAZE_MM = 50.0
MIN_CONFIDENCE = 0.5
# OpenPose's COCO-18 limbs (pairs of points) and their colours.
COCO18_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
                (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))  # fmt: skip
LIMB_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
               (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
               (170, 0, 255), (255, 0, 255), (255, 0, 170))  # fmt: skip


def unit(image: np.ndarray) -> int:
    """Line width in pixels for this frame size."""
    return max(1, int(round(min(image.shape[:2]) / 360)))


def _pt(p: np.ndarray | tuple[float, float]) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def draw_label(image: np.ndarray, text: str, origin: tuple[int, int], color: tuple[int, int, int], scale: float = 0.5) -> None:
    """``text`` on a dark box with its top-left corner at ``origin``."""
    u = unit(image)
    font_scale = scale * u
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, u)
    x, y = origin
    cv2.rectangle(image, (x, y), (x + w + 6 * u, y + h + base + 6 * u), (20, 20, 20), -1)
    cv2.putText(image, text, (x + 3 * u, y + h + 3 * u), cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, u, cv2.LINE_AA)


def draw_face(image: np.ndarray, rows: dict[str, np.ndarray]) -> None:
    if not rows["face/valid"]:
        draw_label(image, "no face", (4, 4), TEXT_COLOR)
        return
    u = unit(image)
    x, y, w, h = rows["face/bbox"]
    cv2.rectangle(image, _pt((x, y)), _pt((x + w, y + h)), BOX_COLOR, u, cv2.LINE_AA)
    landmarks = rows["face/landmarks"]
    for p in landmarks[:IBUG_POINTS]:
        cv2.circle(image, _pt(p), u + 1, LANDMARK_COLOR, -1, cv2.LINE_AA)
    for k in (RIGHT_PUPIL, LEFT_PUPIL):
        if np.isfinite(landmarks[k]).all():
            cv2.circle(image, _pt(landmarks[k]), u + 1, PUPIL_COLOR, -1, cv2.LINE_AA)


def draw_pose(image: np.ndarray, rows: dict[str, np.ndarray]) -> None:
    if not rows["pose/valid"]:
        return
    u = unit(image)
    k = rows["pose/keypoints"]
    seen = (k[:, 2] >= MIN_CONFIDENCE) & np.isfinite(k[:, :2]).all(axis=1)
    for (a, b), color in zip(COCO18_LIMBS, LIMB_COLORS, strict=True):
        if seen[a] and seen[b]:
            cv2.line(image, _pt(k[a]), _pt(k[b]), color, 2 * u, cv2.LINE_AA)
    for i in np.flatnonzero(seen):
        cv2.circle(image, _pt(k[i]), 2 * u, LIMB_COLORS[min(int(i), len(LIMB_COLORS) - 1)], -1, cv2.LINE_AA)


def _project(points: np.ndarray, focal: float, principal: np.ndarray) -> np.ndarray:
    return focal * points[:, :2] / points[:, 2:] + principal


def draw_head(image: np.ndarray, rows: dict[str, np.ndarray]) -> None:
    if not rows["head/valid"]:
        return
    u = unit(image)
    r = euler_to_matrix(np.radians(rows["head/angles"].astype(np.float64)))
    t = rows["head/translation"].astype(np.float64)
    focal, principal = camera_of(t, np.asarray(rows["head/scale"], np.float64), rows["head/origin"].astype(np.float64))
    ends = np.array([[AXIS_MM, 0, 0], [0, AXIS_MM, 0], [0, 0, -AXIS_MM]]) @ r.T + t
    if (ends[:, 2] <= 0).any():
        return  # an axis reaching behind the camera cannot be drawn
    origin = _pt(rows["head/origin"])
    for end, color in zip(_project(ends, float(focal), principal), AXIS_COLORS, strict=True):
        cv2.arrowedLine(image, origin, _pt(end), color, 2 * u, cv2.LINE_AA, tipLength=0.15)


def draw_gaze(image: np.ndarray, rows: dict[str, np.ndarray]) -> None:
    if not rows["head/valid"]:
        return
    u = unit(image)
    t = rows["head/translation"].astype(np.float64)
    focal, principal = camera_of(t, np.asarray(rows["head/scale"], np.float64), rows["head/origin"].astype(np.float64))
    for pupil, g in zip(rows["face/landmarks"][[RIGHT_PUPIL, LEFT_PUPIL]], rows["gaze/vectors"], strict=True):
        if not (np.isfinite(pupil).all() and np.isfinite(g).all()):
            continue
        # the pupil back-projected to the head's depth, then along the gaze
        start = np.append((pupil - principal) * t[2] / focal, t[2])
        end = start + GAZE_MM * g
        if end[2] <= 0:
            continue
        cv2.arrowedLine(image, _pt(pupil), _pt(_project(end[None], float(focal), principal)[0]), GAZE_COLOR, 2 * u, cv2.LINE_AA, tipLength=0.2)


LAYERS = {"pose": draw_pose, "head": draw_head, "gaze": draw_gaze, "face": draw_face}  # drawing order: face on top
LAYER_DATASETS = {
    "face": ("face/valid", "face/bbox", "face/landmarks"),
    "pose": ("pose/valid", "pose/keypoints"),
    "head": ("head/valid", "head/angles", "head/translation", "head/scale", "head/origin"),
    "gaze": ("head/valid", "head/translation", "head/scale", "head/origin", "face/landmarks", "gaze/vectors"),
}


def draw_overlay(image: np.ndarray, rows: dict[str, np.ndarray], layers: tuple[str, ...]) -> None:
    """Draw ``layers`` (names of :data:`LAYERS`) onto ``image`` (H, W, 3) uint8 RGB in
    place; ``rows`` holds this frame's row of every dataset of :data:`LAYER_DATASETS`."""
    for name, draw in LAYERS.items():
        if name in layers:
            draw(image, rows)
