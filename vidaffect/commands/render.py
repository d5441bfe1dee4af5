"""`vidaffect render`: a video to watch, showing what vidaffect saw.

Every frame of the input is drawn with the layers of :mod:`vidaffect.visual.overlay`
(face box and 70 landmarks, COCO-18 skeleton, head axes, gaze rays) from the video's
feature store; with predictions (``vidaffect predict``'s CSV) a strip under the frame
shows valence and arousal over time and the circumplex (:mod:`vidaffect.visual.affect_panel`).
The output has the input's frames at the input's timestamps (H.264) and the input's
audio track (copied, or re-encoded as AAC when MP4 cannot hold its codec).  Frames are
decoded, drawn and encoded one at a time and the store is read in chunks, so memory
does not depend on the video's length.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import h5py
import numpy as np

from vidaffect.errors import InputNotFound, ParameterError
from vidaffect.io.predictions import VideoPredictions, read_predictions
from vidaffect.io.store import list_stores, read_rows, source_matches, store_path
from vidaffect.io.tables import writable_folder
from vidaffect.io.video import Frame, VideoError, VideoInfo, VideoSource, decode, probe
from vidaffect.io.video_writer import VideoWriter
from vidaffect.util.terminal import progress_bar
from vidaffect.visual.affect_panel import AffectPanel
from vidaffect.visual.overlay import LAYER_DATASETS, draw_overlay

log = logging.getLogger(__name__)

LAYERS = ("face", "pose", "head", "gaze")  # the default: everything the overlay can draw
CHUNK_FRAMES = 256  # store rows read at once
PANEL_FRACTION = 3  # the predictions strip is 1/3 of the frame's height (at least MIN_PANEL px)
MIN_PANEL = 120


def find_store(store: Path, info: VideoInfo, layers: tuple[str, ...] = LAYERS) -> Path:
    """The store of this video in ``store``: ``<store>/<file name>.h5``, else the store
    whose recorded source is this file (a video extracted from a folder has its
    relative path as id)."""
    direct = store_path(store, Path(info.path).stem)
    if direct.is_file():
        return direct
    for path in list_stores(store).values():
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("path") == info.path:
                return path
    stages = ",".join(layers)
    raise InputNotFound(f"no feature store for {info.path} in {store}; run `vidaffect extract {info.path} --store {store} --stages {stages}`")


def _predictions_of(path: Path, video_id: str, frames: int) -> VideoPredictions:
    """This video's rows of a predictions file; a file for another video (no rows for
    this id and a frame count that differs) is a :class:`ParameterError`."""
    table = read_predictions(path)
    if video_id in table:
        p, label = table[video_id], f"video {video_id!r}"
    elif len(table) == 1:
        (other, p), = table.items()
        label = f"its only video {other!r}"
    else:
        raise ParameterError(f"{path} has no predictions for video {video_id!r} (it has {', '.join(list(table)[:5])})")
    if len(p) != frames:
        raise ParameterError(
            f"{path}: {label} has {len(p)} frames of predictions but the video has {frames}; "
            "the predictions belong to another video"
        )
    return p


def render(
    video: str | Path,
    out: str | Path,
    store: str | Path = "features",
    predictions: str | Path | None = None,
    layers: tuple[str, ...] | None = None,
    progress: bool = False,
) -> Path:
    """Render one video with what vidaffect found drawn on it.

    Parameters
    ----------
    video : str or Path
        The source video.
    out : str or Path
        The video to write (``.mp4``); written as ``<name>.tmp`` and renamed when
        complete.
    store : str or Path, default "features"
        Folder of the feature stores (``vidaffect extract``'s ``--store``).
    predictions : str, Path or None, default None
        A ``vidaffect predict`` CSV (or Aff-Wild2 folder) with this video's rows.
    layers : tuple of str or None, default None
        What to draw, among face, pose, head, gaze; each needs its stage in the store
        (gaze also head).  None: every layer whose stages the store holds (at least
        one), logging how to add the others.
    progress : bool, default False
        Show a progress bar over the frames.

    Raises
    ------
    InputNotFound
        No such video, or no store for it (the message names the extract command).
    ParameterError
        The store lacks a stage a layer needs, or was made from another version of the
        video, or the predictions belong to another video.
    """
    unknown = set(layers or ()) - set(LAYERS)
    if unknown:
        raise ParameterError(f"unknown layer(s) {', '.join(sorted(unknown))}; choose from {', '.join(LAYERS)}")
    video, store = Path(video), Path(store)
    if not video.is_file():
        raise InputNotFound(f"{video}: no such video")
    try:
        info = probe(VideoSource(video, video.stem))
    except VideoError as exc:
        raise ParameterError(f"{video}: {exc}") from None
    path = find_store(store, info, layers or LAYERS)
    with h5py.File(path, "r") as h5:
        if not source_matches(h5, info):
            raise ParameterError(f"{path} was made from another version of {video} (size or modification time differ); re-run `vidaffect extract`")
        if layers is None:
            layers = tuple(layer for layer in LAYERS if all(d in h5 for d in LAYER_DATASETS[layer])) or LAYERS
            if layers != LAYERS:
                absent = ",".join(layer for layer in LAYERS if layer not in layers)
                log.info("%s has no %s stage: not drawn (add with `vidaffect extract %s --store %s --stages %s`)", path, absent, video, store, absent)
        datasets = sorted({d for layer in layers for d in LAYER_DATASETS[layer]})
        missing = sorted({d.split("/")[0] for d in datasets if d not in h5}, key=LAYERS.index)
        if missing:
            raise ParameterError(
                f"{path} has no {', '.join(missing)} stage, needed to draw it; run "
                f"`vidaffect extract {video} --store {store} --stages {','.join(missing)}` (or leave it out with --draw)"
            )
        n = len(h5["frames/timestamp"])
        timestamps = h5["frames/timestamp"][:]
        video_id = str(h5.attrs.get("video_id", video.stem))
        panel = None
        if predictions is not None:
            p = _predictions_of(Path(predictions), video_id, n)
            side = max(MIN_PANEL, info.height // PANEL_FRACTION)
            panel = AffectPanel(info.width + info.width % 2, side + side % 2, timestamps, p.values, p.face)
        return _write(info, h5, datasets, layers, panel, timestamps, Path(out), progress)


def _write(
    info: VideoInfo, h5: h5py.File, datasets: list[str], layers: tuple[str, ...], panel: AffectPanel | None,
    timestamps: np.ndarray, out: Path, progress: bool,
) -> Path:  # fmt: skip
    n = len(timestamps)
    width, height = info.width + info.width % 2, info.height + info.height % 2  # H.264 needs even sizes
    size = (width, height + (panel.height if panel is not None else 0))
    if out.suffix.lower() not in (".mp4", ".m4v", ".mkv", ".mov"):
        raise ParameterError(f"--out {out}: give a video file name ending in .mp4 (or .mkv, .mov)")
    writable_folder(out.parent)
    try:
        writer = VideoWriter(out, info.fps or 25.0, size, timed=True)
    except OSError as exc:
        raise ParameterError(f"--out {out}: cannot write this file ({exc.strerror or exc})") from None
    try:
        if info.has_audio:
            writer.carry_audio(info.path)
        rows: dict[str, np.ndarray] = {}
        done = 0
        with progress_bar(n, "render", "frame", progress) as bar:
            for item in decode(info, audio=False):
                assert isinstance(item, Frame) and item.image is not None
                if done >= n:
                    raise ParameterError(f"{info.path} decodes to more frames than its store holds ({n}); re-run `vidaffect extract --force`")
                if done % CHUNK_FRAMES == 0:
                    rows = read_rows(h5, datasets, done, min(done + CHUNK_FRAMES, n))
                image = cv2.copyMakeBorder(item.image, 0, height - info.height, 0, width - info.width, cv2.BORDER_REPLICATE)
                draw_overlay(image, {k: v[done % CHUNK_FRAMES] for k, v in rows.items()}, layers)
                if panel is not None:
                    image = np.concatenate([image, panel.draw(done)], axis=0)
                writer.write([image], [timestamps[done]])
                done += 1
                bar.update()
        if done != n:
            raise ParameterError(f"{info.path} decodes to {done} frames but its store holds {n}; re-run `vidaffect extract --force`")
    except BaseException:
        writer.discard()
        raise
    written = writer.close()
    log.info("rendered %d frames of %s to %s (%.1f MB)", n, info.path, written, os.path.getsize(written) / 1e6)
    return written
