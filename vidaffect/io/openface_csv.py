"""Writing OpenFace 2 ``FeatureExtraction`` CSVs: its column names, order and number
formats, so that analysis scripts written for OpenFace read vidaffect's output.

OpenFace 2.2 writes 714 columns, in this order (:func:`openface_columns`)::

    frame, face_id, timestamp, confidence, success,
    gaze_0_x, gaze_0_y, gaze_0_z, gaze_1_x, gaze_1_y, gaze_1_z, gaze_angle_x, gaze_angle_y,
    eye_lmk_x_0..55, eye_lmk_y_0..55, eye_lmk_X_0..55, eye_lmk_Y_0..55, eye_lmk_Z_0..55,
    pose_Tx, pose_Ty, pose_Tz, pose_Rx, pose_Ry, pose_Rz,
    x_0..67, y_0..67, X_0..67, Y_0..67, Z_0..67,
    p_scale, p_rx, p_ry, p_rz, p_tx, p_ty, p_0..33, AU01_r..AU45_r (17), AU01_c..AU45_c (18)

vidaffect writes the columns it has (:data:`WRITTEN`, 267), in that order; the 3-D
landmarks in mm (``eye_lmk_X/Y/Z``, ``X/Y/Z``: MediaPipe's depth is relative, not
metric), the shape-model parameters ``p_*`` (OpenFace's own model) and the action
units ``AU*`` (no AU model) are absent, never filled with values that would look
measured.  Values a frame lacks are empty fields.  Numbers are printed with OpenFace's
fixed decimals (:func:`decimals`).  Style ``2.2`` separates fields with ``,``;
``2.0`` with ``", "`` as OpenFace 2.0 did (some scripts split on it).
"""

from __future__ import annotations

import numpy as np

from vidaffect.errors import ParameterError

AU_INTENSITY = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17", "AU20",
                "AU23", "AU25", "AU26", "AU45")  # fmt: skip
AU_PRESENCE = tuple(sorted((*AU_INTENSITY, "AU28")))
EYE_LANDMARKS = 56  # 28 per eye
LANDMARKS = 68
STYLES = {"2.2": ",", "2.0": ", "}


def openface_columns() -> list[str]:
    """Every column of an OpenFace 2.2 FeatureExtraction CSV, in file order (714)."""
    cols = ["frame", "face_id", "timestamp", "confidence", "success"]
    cols += [f"gaze_{e}_{a}" for e in range(2) for a in "xyz"] + ["gaze_angle_x", "gaze_angle_y"]
    cols += [f"eye_lmk_{a}_{i}" for a in "xyXYZ" for i in range(EYE_LANDMARKS)]
    cols += ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
    cols += [f"{a}_{i}" for a in "xyXYZ" for i in range(LANDMARKS)]
    cols += ["p_scale", "p_rx", "p_ry", "p_rz", "p_tx", "p_ty"] + [f"p_{i}" for i in range(34)]
    return cols + [f"{a}_r" for a in AU_INTENSITY] + [f"{a}_c" for a in AU_PRESENCE]


def _absent(column: str) -> bool:
    return column[:2] in ("X_", "Y_", "Z_") or column.startswith(("eye_lmk_X", "eye_lmk_Y", "eye_lmk_Z", "p_", "AU"))


WRITTEN: tuple[str, ...] = tuple(c for c in openface_columns() if not _absent(c))


def decimals(column: str) -> int:
    """Decimals OpenFace prints in a column (0: an integer)."""
    if column in ("frame", "face_id", "success"):
        return 0
    if column == "timestamp" or column.startswith(("gaze_angle", "pose_R", "p_")):
        return 3
    if column == "confidence" or column.startswith("AU"):
        return 2
    if column.startswith("gaze_"):
        return 6
    return 1  # landmarks, eye landmarks (px and mm), pose_T (mm)


def format_rows(columns: dict[str, np.ndarray], style: str = "2.2") -> str:
    """Rows of an OpenFace CSV (no header) for column name -> (n,) values, names among
    :data:`WRITTEN`, written in OpenFace's order; NaN becomes an empty field."""
    names = header_names(columns)
    cells = []
    for name in names:
        values = np.asarray(columns[name], np.float64)
        text = np.char.mod(f"%.{decimals(name)}f", np.nan_to_num(values))
        cells.append(np.where(np.isfinite(values), text, ""))
    sep = separator(style)
    return "".join(sep.join(row) + "\n" for row in zip(*cells, strict=True))


def header_names(columns: dict[str, np.ndarray]) -> list[str]:
    """The names of ``columns`` in OpenFace's order; a name it does not write is an error."""
    unknown = set(columns) - set(WRITTEN)
    if unknown:
        raise ValueError(f"not OpenFace columns vidaffect writes: {sorted(unknown)[:5]}")
    return [c for c in WRITTEN if c in columns]


def separator(style: str) -> str:
    if style not in STYLES:
        raise ParameterError(f"unknown OpenFace style {style!r}; choose one of: {', '.join(STYLES)}")
    return STYLES[style]
