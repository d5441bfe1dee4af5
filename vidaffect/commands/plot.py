"""`vidaffect plot`: figures of per-frame predictions, per video.

* ``<out>/<video-id>.time.png``: valence (top) and arousal (bottom) over time, the
  prediction and, when annotations are given, the annotation (gaps where unannotated,
  CCC in the panel title); frames without a detected face are shaded grey.
* ``<out>/<video-id>.va.png``: the valence-arousal plane, prediction points coloured by
  time (and the annotation in grey), with the unit circle.

Figures are drawn with matplotlib's Agg canvas (no display needed), :data:`DPI` dots
per inch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from vidaffect.io.annotations import AnnotationIndex, annotation_frames
from vidaffect.io.predictions import VideoPredictions, read_predictions
from vidaffect.learn.metrics import DIMENSIONS, annotated, ccc
from vidaffect.util.segments import segments

log = logging.getLogger(__name__)

DPI = 100
TIME_SIZE = (10.0, 5.0)  # inches: 1000 x 500 px
PLANE_SIZE = (6.0, 6.0)  # inches: 600 x 600 px
PREDICTION_COLOR = "#1f77b4"
ANNOTATION_COLOR = "#d62728"
NO_FACE_COLOR = "0.88"


def _time_axis(p: VideoPredictions) -> tuple[np.ndarray, str]:
    """Seconds when the file has timestamps for every frame, else frame numbers."""
    if np.isfinite(p.timestamp).all():
        return p.timestamp, "time (s)"
    return np.arange(len(p), dtype=np.float64), "frame"


def plot_time(video_id: str, p: VideoPredictions, target: np.ndarray | None, path: Path) -> Path:
    """Valence and arousal over time of one video (see module docstring)."""
    x, xlabel = _time_axis(p)
    fig = Figure(figsize=TIME_SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    no_face = segments(p.face == 0)
    step = float(np.median(np.diff(x))) if len(x) > 1 else 1.0
    keep = annotated(target) if target is not None else np.zeros(len(p), bool)
    for i, (ax, dim) in enumerate(zip(axes, DIMENSIONS, strict=True)):
        for a, b in no_face:
            ax.axvspan(x[a], x[b - 1] + step, color=NO_FACE_COLOR, lw=0)
        ax.plot(x, p.values[:, i], color=PREDICTION_COLOR, lw=1, label="prediction")
        title = dim
        if target is not None:
            ax.plot(x, np.where(keep, target[:, i], np.nan), color=ANNOTATION_COLOR, lw=1, label="annotation")
            ok = keep & np.isfinite(p.values[:, i])
            if ok.any():
                title += f"  (CCC {ccc(p.values[ok, i], target[ok, i]):.3f})"
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="0.6", lw=0.5)
        ax.set_ylabel(dim)
        ax.set_title(title, fontsize=10, loc="left")
    axes[-1].set_xlabel(xlabel)
    handles, labels = axes[0].get_legend_handles_labels()
    if no_face:
        handles.append(Patch(color=NO_FACE_COLOR, label="no face"))
    axes[0].legend(handles=handles, loc="upper right", fontsize=8, ncol=3)
    fig.suptitle(video_id)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_plane(video_id: str, p: VideoPredictions, target: np.ndarray | None, path: Path) -> Path:
    """The valence-arousal plane of one video (see module docstring)."""
    x, xlabel = _time_axis(p)
    fig = Figure(figsize=PLANE_SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    theta = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(theta), np.sin(theta), color="0.7", lw=0.8)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    if target is not None:
        keep = annotated(target)
        ax.scatter(target[keep, 0], target[keep, 1], s=6, color=ANNOTATION_COLOR, alpha=0.5, lw=0, label="annotation")
    points = ax.scatter(p.values[:, 0], p.values[:, 1], s=6, c=x, cmap="viridis", lw=0, label="prediction")
    fig.colorbar(points, ax=ax, shrink=0.8, label=xlabel)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    ax.set_xlabel("valence")
    ax.set_ylabel("arousal")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(video_id)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot(predictions: str | Path, annotations: str | Path | None = None, out: str | Path = "plots") -> list[Path]:
    """Write the figures of every video in a predictions file.

    Parameters
    ----------
    predictions : str or Path
        A predictions CSV or Aff-Wild2 folder (:func:`vidaffect.io.predictions.read_predictions`).
    annotations : str, Path or None, default None
        Annotation folder; videos with a file there get the annotation drawn too (an
        unreadable file is reported and left out of that video's figures).
    out : str or Path, default "plots"
        Folder for ``<video-id>.time.png`` and ``<video-id>.va.png``.

    Returns
    -------
    list[Path]
        The PNG files written, two per video.
    """
    preds = read_predictions(predictions)
    index = AnnotationIndex(annotations) if annotations else None
    out = Path(out)
    paths = []
    for vid, p in preds.items():
        target = None
        found = index.find(vid) if index else None
        if found is not None:
            try:
                target = annotation_frames(found, len(p))
            except ValueError as exc:
                log.warning("%s; plotting %s without its annotation", exc, vid)
        paths.append(plot_time(vid, p, target, out / f"{vid}.time.png"))
        paths.append(plot_plane(vid, p, target, out / f"{vid}.va.png"))
    log.info("wrote %d figure(s) of %d video(s) to %s", len(paths), len(preds), out)
    return paths
