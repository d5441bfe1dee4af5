"""`vidaffect evaluate`: metrics of a predictions file against annotation files.

Every metric of :mod:`vidaffect.metrics` (CCC, PCC, RMSE, MSE, SAGR) for valence and
arousal, pooled over all annotated frames of all videos (the ABAW convention) and
averaged over videos, plus the ABAW score: the mean of the pooled valence and arousal
CCC.  Frame i of a video's predictions is compared with frame i of its annotation
(Aff-Wild2 line i + 2, or the CSV row ``frame = i``); unannotated frames (-5, or no
row) never count.  Videos without an annotation file, or whose file annotates none of
the predicted frames, are listed as skipped.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from vidaffect.errors import ParameterError
from vidaffect.io.annotations import AnnotationIndex, annotation_frames
from vidaffect.io.predictions import read_predictions
from vidaffect.learn.metrics import DIMENSIONS, METRICS, annotated, summarize

log = logging.getLogger(__name__)


def pair_with_annotations(
    predictions: str | Path, annotations: str | Path
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """Predictions and annotations of every video that has both.

    Parameters
    ----------
    predictions : str or Path
        A predictions CSV or Aff-Wild2 folder (:func:`vidaffect.io.predictions.read_predictions`).
    annotations : str or Path
        The annotation folder (:class:`vidaffect.io.annotations.AnnotationIndex`).

    Returns
    -------
    pairs : dict[str, (np.ndarray, np.ndarray)]
        Video id -> (prediction (n, 2), annotation (n, 2) with NaN where unannotated),
        n = the video's predicted frames.
    skipped : dict[str, str]
        Video id -> why it is not evaluated.

    Raises
    ------
    ValueError
        No video has an annotation file; an annotated frame has no prediction.
    """
    preds = read_predictions(predictions)
    found = AnnotationIndex(annotations).find_all(list(preds))
    pairs, skipped = {}, {}
    for vid, p in preds.items():
        if vid not in found:
            skipped[vid] = "no annotation file"
            continue
        target = annotation_frames(found[vid], len(p))
        keep = annotated(target)
        if not keep.any():
            skipped[vid] = f"no annotated frame among its {len(p)} ({found[vid]})"
            continue
        gaps = keep & ~np.isfinite(p.values).all(axis=1)
        if gaps.any():
            raise ParameterError(
                f"{predictions}: video {vid!r} has no prediction for {int(gaps.sum())} annotated frame(s), "
                f"e.g. frame {int(np.flatnonzero(gaps)[0])}"
            )
        pairs[vid] = (p.values, target)
    return pairs, skipped


def evaluate(predictions: str | Path, annotations: str | Path, json_out: str | Path | None = None) -> str:
    """Evaluate predictions; returns the table ``vidaffect evaluate`` prints.

    Parameters
    ----------
    predictions : str or Path
        What ``vidaffect predict`` wrote: the CSV, or the ``--format affwild2`` folder.
    annotations : str or Path
        Folder of per-video annotation files (found by video id, see
        :mod:`vidaffect.io.annotations`).
    json_out : str, Path or None, default None
        Also write every number as JSON: ``abaw_score``, ``videos``, ``frames``,
        ``pooled``, ``video_mean``, ``per_video`` (metric dicts with keys
        ``valence_ccc`` ... ``arousal_sagr`` and ``ccc_mean``), ``skipped`` (video id ->
        reason); undefined values (e.g. PCC of a constant) are null.

    Raises
    ------
    ValueError
        No annotated frame in any video, unreadable files (the message names them).
    """
    pairs, skipped = pair_with_annotations(predictions, annotations)
    if not pairs:
        raise ParameterError(f"no annotated frames to evaluate: none of the {len(skipped)} video(s) in {predictions} has one in {annotations}")
    summary = summarize(pairs)
    result = {
        "predictions": str(predictions),
        "annotations": str(annotations),
        "abaw_score": summary["pooled"]["ccc_mean"],
        **summary,
        "skipped": skipped,
    }
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(_finite(result), indent=2) + "\n")
    return format_table(result)


def format_table(result: dict[str, Any]) -> str:
    """The printed report of :func:`evaluate`'s result dict."""

    def cell(x: float) -> str:
        return f"{x:>10.4f}" if math.isfinite(x) else f"{'n/a':>10}"

    lines = [
        f"ABAW score (mean of pooled valence and arousal CCC): {result['abaw_score']:.4f}",
        f"{result['videos']} video(s), {result['frames']} annotated frames"
        + (f"; {len(result['skipped'])} skipped" if result["skipped"] else ""),
        "",
        f"{'':<8}{'pooled (all frames)':>20}  {'per-video mean':>20}",
        f"{'metric':<8}" + "".join(f"{d:>10}" for d in DIMENSIONS) + "  " + "".join(f"{d:>10}" for d in DIMENSIONS),
    ]
    for m in METRICS:
        pooled = "".join(cell(result["pooled"][f"{d}_{m}"]) for d in DIMENSIONS)
        mean = "".join(cell(result["video_mean"][f"{d}_{m}"]) for d in DIMENSIONS)
        lines.append(f"{m.upper():<8}{pooled}  {mean}")
    if result["skipped"]:
        lines += ["", "skipped:"] + [f"  {vid}: {why}" for vid, why in result["skipped"].items()]
    return "\n".join(lines)


def _finite(obj: Any) -> Any:
    """NaN -> None, recursively, so the JSON is standard (no NaN literals)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return obj
