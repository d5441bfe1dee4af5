"""A strip drawn under each rendered frame from per-frame predictions: valence and
arousal over the last :data:`TRACE_SECONDS` (the current frame at the right edge) and
the circumplex (the valence-arousal plane, unit circle) with the current point and a
short trail.  Frames without a detected face are shaded on the trace."""

from __future__ import annotations

import cv2
import numpy as np

from vidaffect.visual.overlay import draw_label

TRACE_SECONDS = 10.0
TRAIL_SECONDS = 1.0
BACKGROUND = (250, 250, 250)
GRID = (200, 200, 200)
NO_FACE = (232, 232, 232)
VALENCE_COLOR = (31, 119, 180)
AROUSAL_COLOR = (214, 39, 40)
DOT_COLOR = (20, 20, 20)


class AffectPanel:
    """Draws the strip of frame ``i`` (:meth:`draw`).

    Parameters
    ----------
    width, height : int
        Pixels of the strip.
    timestamps : np.ndarray
        (T,) seconds of the video's frames.
    values : np.ndarray
        (T, 2) valence and arousal in [-1, 1] (NaN: no prediction).
    face : np.ndarray
        (T,) 1 where the frame had a face, 0 where not, NaN unknown.
    """

    def __init__(self, width: int, height: int, timestamps: np.ndarray, values: np.ndarray, face: np.ndarray) -> None:
        self.width, self.height = width, height
        self.t, self.values, self.face = timestamps, values, face
        self.plane = min(height, width // 3)  # side of the circumplex square
        self.trace_w = width - self.plane
        self.margin = max(4, height // 16)

    def draw(self, i: int) -> np.ndarray:
        panel = np.empty((self.height, self.width, 3), np.uint8)
        panel[:] = BACKGROUND
        self._trace(panel, i)
        self._circumplex(panel, i)
        v, a = self.values[i]
        text = "no prediction" if np.isnan(v) else f"valence {v:+.2f}  arousal {a:+.2f}"
        draw_label(panel, text, (self.margin, self.margin // 2), (240, 240, 240), scale=0.45)
        return panel

    def _y(self, value: np.ndarray) -> np.ndarray:
        top, bottom = self.margin, self.height - self.margin
        return bottom - (np.clip(value, -1, 1) + 1) / 2 * (bottom - top)

    def _trace(self, panel: np.ndarray, i: int) -> None:
        x0, x1 = self.margin, self.trace_w - self.margin
        now = self.t[i]
        lo = int(np.searchsorted(self.t, now - TRACE_SECONDS))
        t = self.t[lo : i + 1]
        x = x1 - (now - t) / TRACE_SECONDS * (x1 - x0)
        no_face = np.flatnonzero(self.face[lo : i + 1] == 0)
        step = max(1, int(np.ceil((x1 - x0) / max(len(t), 1))))
        for k in no_face:
            cv2.rectangle(panel, (int(x[k]), self.margin), (int(x[k]) + step, self.height - self.margin), NO_FACE, -1)
        for level in (-1.0, 0.0, 1.0):
            y = int(self._y(np.array(level)))
            cv2.line(panel, (x0, y), (x1, y), GRID, 1)
        for dim, color in ((0, VALENCE_COLOR), (1, AROUSAL_COLOR)):
            ok = np.isfinite(self.values[lo : i + 1, dim])
            if ok.sum() >= 2:
                pts = np.stack([x[ok], self._y(self.values[lo : i + 1, dim][ok])], axis=1)
                cv2.polylines(panel, [np.round(pts).astype(np.int32)], False, color, 2, cv2.LINE_AA)
        cv2.putText(panel, "valence", (x0, self.height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, VALENCE_COLOR, 1, cv2.LINE_AA)
        cv2.putText(panel, "arousal", (x0 + 70, self.height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, AROUSAL_COLOR, 1, cv2.LINE_AA)

    def _circumplex(self, panel: np.ndarray, i: int) -> None:
        side = self.plane
        cx, cy = self.trace_w + side // 2, self.height // 2
        radius = side // 2 - self.margin
        cv2.circle(panel, (cx, cy), radius, GRID, 1, cv2.LINE_AA)
        cv2.line(panel, (cx - radius, cy), (cx + radius, cy), GRID, 1)
        cv2.line(panel, (cx, cy - radius), (cx, cy + radius), GRID, 1)
        cv2.putText(panel, "V", (cx + radius - 10, cy - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, VALENCE_COLOR, 1, cv2.LINE_AA)
        cv2.putText(panel, "A", (cx + 4, cy - radius + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, AROUSAL_COLOR, 1, cv2.LINE_AA)
        lo = int(np.searchsorted(self.t, self.t[i] - TRAIL_SECONDS))
        trail = self.values[lo : i + 1]
        trail = trail[np.isfinite(trail).all(axis=1)]
        pts = np.stack([cx + np.clip(trail[:, 0], -1, 1) * radius, cy - np.clip(trail[:, 1], -1, 1) * radius], axis=1)
        if len(pts) >= 2:
            cv2.polylines(panel, [np.round(pts).astype(np.int32)], False, (150, 150, 150), 1, cv2.LINE_AA)
        if len(pts) and np.isfinite(self.values[i]).all():
            cv2.circle(panel, (int(round(pts[-1, 0])), int(round(pts[-1, 1]))), max(3, side // 40), DOT_COLOR, -1, cv2.LINE_AA)
