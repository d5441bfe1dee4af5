"""Boxes around faces and bodies: the tight box of a set of points, overlap, and
which candidate to follow from one frame to the next.  Boxes are ``(x, y, w, h)`` in
pixels."""

from __future__ import annotations

import numpy as np


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
    box[~np.any(finite, axis=(-2, -1))] = np.nan
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


def overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area: a face cut by a tile border gives a
    partial box inside the whole one."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return float(iw * ih / max(min(a[2] * a[3], b[2] * b[3]), 1e-6))
