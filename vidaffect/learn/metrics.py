"""Evaluation metrics for continuous valence/arousal.

``ccc``, ``pcc``, ``rmse``, ``mse`` and ``sagr`` take two 1-D arrays (prediction,
annotation); CCC and PCC use population (1/N) statistics.  :func:`summarize` is the one
place that turns per-video predictions into the reported numbers, used by training
logs and ``vidaffect evaluate`` alike: every metric for valence and arousal, pooled
over all annotated frames of all videos (the ABAW convention) and averaged per video.
Frames whose annotation is missing (NaN, or Aff-Wild2's -5) never count.
"""

from __future__ import annotations

import numpy as np

from vidaffect.errors import ParameterError
from vidaffect.io.annotations import UNANNOTATED

DIMENSIONS = ("valence", "arousal")
METRICS = ("ccc", "pcc", "rmse", "mse", "sagr")


def _pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"prediction and annotation differ in length ({len(x)} vs {len(y)})")
    return x, y


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Concordance correlation coefficient 2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2);
    NaN for empty input or when both are the same constant."""
    x, y = _pair(x, y)
    if len(x) == 0:
        return float("nan")
    mx, my = x.mean(), y.mean()
    cov = np.mean((x - mx) * (y - my))
    denom = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else float("nan")


def pcc(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either input is constant or empty."""
    x, y = _pair(x, y)
    if len(x) == 0:
        return float("nan")
    sx, sy = x.std(), y.std()
    return float(np.mean((x - x.mean()) * (y - y.mean())) / (sx * sy)) if sx > 0 and sy > 0 else float("nan")


def mse(x: np.ndarray, y: np.ndarray) -> float:
    x, y = _pair(x, y)
    return float(np.mean((x - y) ** 2)) if len(x) else float("nan")


def rmse(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(mse(x, y)))


def sagr(x: np.ndarray, y: np.ndarray) -> float:
    """Sign agreement: the fraction of frames where prediction and annotation have the
    same sign (``np.sign``, so 0 agrees only with 0)."""
    x, y = _pair(x, y)
    return float(np.mean(np.sign(x) == np.sign(y))) if len(x) else float("nan")


FUNCTIONS = {"ccc": ccc, "pcc": pcc, "rmse": rmse, "mse": mse, "sagr": sagr}


def annotated(target: np.ndarray) -> np.ndarray:
    """(N,) bool: frames of a (N, 2) annotation with both values present (not NaN and
    not -5)."""
    target = np.asarray(target, dtype=np.float64)
    return np.isfinite(target).all(axis=1) & (target != UNANNOTATED).all(axis=1)


def frame_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Every metric for valence and arousal over the annotated frames of (N, 2) arrays:
    keys ``valence_ccc``, ..., ``arousal_sagr``, plus ``ccc_mean`` (the ABAW score)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape or pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(f"prediction and annotation must both be (N, 2), got {pred.shape} and {target.shape}")
    keep = annotated(target)
    out = {
        f"{dim}_{name}": fn(pred[keep, i], target[keep, i])
        for i, dim in enumerate(DIMENSIONS)
        for name, fn in FUNCTIONS.items()
    }
    out["ccc_mean"] = (out["valence_ccc"] + out["arousal_ccc"]) / 2
    return out


def summarize(per_video: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Metrics of many videos.

    Parameters
    ----------
    per_video : dict[str, (np.ndarray, np.ndarray)]
        video id -> (prediction (N, 2), annotation (N, 2)), rows (valence, arousal) per
        frame.  Unannotated frames (NaN or -5) are ignored; videos with none left out.

    Returns
    -------
    dict
        ``videos`` (count), ``frames`` (annotated frames), ``pooled`` (metrics over all
        frames together) and ``video_mean`` (each metric averaged over videos,
        ignoring NaN), both dicts as :func:`frame_metrics` returns, and ``per_video``
        (video id -> that dict).
    """
    preds, targets, videos = [], [], {}
    for vid, (pred, target) in per_video.items():
        pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
        keep = annotated(target)
        if not keep.any():
            continue
        preds.append(pred[keep])
        targets.append(target[keep])
        videos[vid] = frame_metrics(pred[keep], target[keep])
    if not videos:
        raise ParameterError("no annotated frames to evaluate")
    pooled = frame_metrics(np.concatenate(preds), np.concatenate(targets))
    keys = list(pooled)
    table = np.array([[m[k] for k in keys] for m in videos.values()])
    with np.errstate(all="ignore"):
        means = [float(np.nanmean(col)) if np.isfinite(col).any() else float("nan") for col in table.T]
    return {
        "videos": len(videos),
        "frames": int(sum(len(p) for p in preds)),
        "pooled": pooled,
        "video_mean": dict(zip(keys, means, strict=True)),
        "per_video": videos,
    }
