"""What a store's datasets are called as table columns: vidaffect's own table (``export
--format csv|parquet``, :func:`vidaffect.load`) and OpenFace 2's FeatureExtraction CSV
(``export --format openface``).

vidaffect's table: ``frame`` (0-based), ``timestamp`` (seconds), then per stage, in
the registry's order, one column per value, in the store's units:

=========  =================================================================================
face       ``x_0..x_69``, ``y_0..y_69`` (px; 68 iBUG points, 68 and 69 the right and left
           pupil), ``face_x, face_y, face_w, face_h`` (box, px), ``face_score``,
           ``face_count``, ``mesh_x_0..477``, ``mesh_y_*``, ``mesh_z_*`` (px), ``face_valid``
pose       ``pose_<point>_x``, ``_y`` (px), ``_conf`` for the COCO-18 points
           (``pose_nose_x``, ``pose_neck_x``, ``pose_right_shoulder_x``, ...), ``pose_valid``
embed/evm  ``embed_0..2047``, ``evm_0..2047``, ``embed_valid``, ``evm_valid``
mel        ``mel_0..127`` (dB), ``mel_valid``
head       ``head_pitch, head_yaw, head_roll`` (degrees), ``head_Tx, head_Ty, head_Tz`` (mm),
           ``head_scale`` (px/mm), ``head_origin_x, head_origin_y`` (px),
           ``head_residual`` (px), ``head_valid``
gaze       ``gaze_0_x, gaze_0_y, gaze_0_z, gaze_1_x, gaze_1_y, gaze_1_z`` (unit vectors,
           as OpenFace's), ``gaze_angle_x_deg, gaze_angle_y_deg`` (degrees),
           ``eye_open_0, eye_open_1, mouth_open``, ``gaze_valid``
egemaps    openSMILE's LLD names (``Loudness_sma3``, ...), ``egemaps_voiced``, ``egemaps_valid``
=========  =================================================================================

A dataset no rule names gets ``<stage>_<dataset>`` (plus ``_<i>`` per value).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from vidaffect.stages.gaze import EYE_CORNERS
from vidaffect.stages.layouts import COCO18_NAMES
from vidaffect.stages.smile import LLD_NAMES

Namer = Callable[[tuple[int, ...]], list[str]]


def _xy_blocks(prefix: str) -> Namer:
    """(n, k) rows flattened point by point, named as OpenFace does: all x, then all y
    (then all z).  The column order is the naming order; :func:`table_values` reorders
    the values to match."""
    return lambda shape: [f"{prefix}{a}_{i}" for a in "xyz"[: shape[1]] for i in range(shape[0])]


def _fixed(*names: str) -> Namer:
    return lambda shape: list(names)


NAMES: dict[tuple[str, str], Namer] = {
    ("face", "landmarks"): _xy_blocks(""),
    ("face", "bbox"): _fixed("face_x", "face_y", "face_w", "face_h"),
    ("face", "score"): _fixed("face_score"),
    ("face", "count"): _fixed("face_count"),
    ("face", "mesh"): _xy_blocks("mesh_"),
    ("pose", "keypoints"): lambda shape: [f"pose_{n}_{a}" for n in COCO18_NAMES for a in ("x", "y", "conf")],
    ("mel", "mel"): lambda shape: [f"mel_{i}" for i in range(shape[0])],
    ("head", "angles"): _fixed("head_pitch", "head_yaw", "head_roll"),
    ("head", "translation"): _fixed("head_Tx", "head_Ty", "head_Tz"),
    ("head", "scale"): _fixed("head_scale"),
    ("head", "origin"): _fixed("head_origin_x", "head_origin_y"),
    ("head", "residual"): _fixed("head_residual"),
    ("gaze", "vectors"): lambda shape: [f"gaze_{e}_{a}" for e in range(2) for a in "xyz"],
    ("gaze", "angles"): _fixed("gaze_angle_x_deg", "gaze_angle_y_deg"),
    ("gaze", "eye_open"): _fixed("eye_open_0", "eye_open_1"),
    ("gaze", "mouth_open"): _fixed("mouth_open"),
    ("egemaps", "lld"): lambda shape: list(LLD_NAMES),
    ("egemaps", "voiced"): _fixed("egemaps_voiced"),
}
_ORDER = {key: i for i, key in enumerate(NAMES)}
BLOCKWISE = {("face", "landmarks"), ("face", "mesh")}  # named x block then y block
ENCODER_STAGES = ("embed", "evm")  # their dataset is named after the encoder


def column_names(stage: str, dataset: str, shape: tuple[int, ...]) -> list[str]:
    """Column names of one dataset whose rows have ``shape`` (see the module docs)."""
    if (stage, dataset) in NAMES:
        return NAMES[stage, dataset](shape)
    base = stage if stage in ENCODER_STAGES or dataset == stage else f"{stage}_{dataset}"
    if not shape:
        return [base]
    return [f"{base}_{'_'.join(map(str, idx))}" for idx in itertools.product(*(range(n) for n in shape))]


def column_order(stage: str, datasets: list[str]) -> list[str]:
    """``datasets`` of a stage in table order: as in :data:`NAMES`, then the others by name."""
    return sorted(datasets, key=lambda d: (_ORDER.get((stage, d), len(_ORDER)), d))


def table_values(stage: str, dataset: str, rows: np.ndarray) -> np.ndarray:
    """(T, columns) values of a dataset in :func:`column_names` order."""
    if (stage, dataset) in BLOCKWISE:
        rows = np.swapaxes(rows, 1, 2)  # (T, points, axes) -> all x, then all y
    return rows.reshape(len(rows), -1)


# --- OpenFace 2 -----------------------------------------------------------------------

# MediaPipe eye contours from the image-left corner along the upper lid to the
# image-right corner and back along the lower lid (frontal face); eye 0 first (the
# subject's right eye, on the image's left: OpenFace's eye 0).
EYE_CONTOURS = (
    (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7),
    (362, 398, 384, 385, 386, 387, 388, 466, 263, 249, 390, 373, 374, 380, 381, 382),
)
IRIS_RINGS = ((468, 469, 470, 471, 472), (473, 474, 475, 476, 477))  # centre, then 4 contour points
OPENFACE_EYE_POINTS = 28  # per eye: 0-7 iris, 8-19 lids, 20-27 pupil contour
assert all(c[0] == corners[0] and c[8] == corners[1] for c, corners in zip(EYE_CONTOURS, EYE_CORNERS, strict=True))


def _resample(polyline: np.ndarray, n: int) -> np.ndarray:
    """``n`` points at equal arc length along open polylines (T, k, 2), ends included."""
    seg = np.linalg.norm(np.diff(polyline, axis=1), axis=-1)
    cum = np.concatenate([np.zeros((len(polyline), 1)), np.cumsum(seg, axis=1)], axis=1)
    out = np.full((len(polyline), n, 2), np.nan)
    for t in np.flatnonzero(np.isfinite(cum[:, -1]) & (cum[:, -1] > 0)):
        s = np.linspace(0.0, cum[t, -1], n)
        out[t] = np.stack([np.interp(s, cum[t], polyline[t, :, a]) for a in range(2)], axis=1)
    return out


def openface_eye_landmarks(mesh: np.ndarray, pupils: np.ndarray | None = None) -> np.ndarray:
    """OpenFace's 56 2-D eye landmarks (T, 56, 2) from face meshes (T, 478, >=2), the
    iris circles centred on ``pupils`` (T, 2, 2) when given (``face/landmarks`` 68 and
    69 hold them at float32 precision; the stored mesh is float16).

    Per eye, in OpenFace's order: 0-7 the iris contour from its image-left point
    clockwise on screen (8 points on the circle through MediaPipe's iris centre at
    the mean distance of its 4 contour points); 8 the image-left eye corner, 9-13 the
    upper lid left to right, 14 the image-right corner, 15-19 the lower lid right to
    left (MediaPipe's 16-point contour resampled at equal arc length); 20-27, the
    pupil contour, NaN: MediaPipe does not find the pupil.
    """
    m = np.asarray(mesh, np.float64)[..., :2]
    out = np.full((len(m), 2 * OPENFACE_EYE_POINTS, 2), np.nan)
    angles = np.radians([180, 225, 270, 315, 0, 45, 90, 135])  # y is down: 270 degrees is up on screen
    circle = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    for e in range(2):
        base = OPENFACE_EYE_POINTS * e
        centre = m[:, IRIS_RINGS[e][0]] if pupils is None else np.asarray(pupils, np.float64)[:, e]
        radius = np.linalg.norm(m[:, list(IRIS_RINGS[e][1:])] - centre[:, None], axis=-1).mean(axis=1)
        out[:, base : base + 8] = centre[:, None] + radius[:, None, None] * circle
        contour = m[:, list(EYE_CONTOURS[e])]
        upper = _resample(contour[:, :9], 7)
        lower = _resample(np.concatenate([contour[:, 8:], contour[:, :1]], axis=1), 7)
        out[:, base + 8 : base + 15] = upper
        out[:, base + 15 : base + 20] = lower[:, 1:6]
    return out
