"""Made-up inputs for the benchmark and the tests.

* Feature stores written from arrays instead of videos, laid out exactly as
  ``vidaffect extract`` lays them out (same writer, attributes and chunking), with the
  datasets and shapes the stages declare.  They let the benchmark and the tests
  exercise training without decoding media.
* Videos encoded on the spot (:class:`vidaffect.io.video_writer.VideoWriter`), from
  real photographs where a face is needed (scikit-image, the ``bench`` and ``test``
  extra, ships one: the astronaut).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vidaffect.bench.context import AUDIO_RATE, FPS, RSS_LENGTH_FACTOR, BenchSize, Context
from vidaffect.io.store import Output, StoreWriter
from vidaffect.io.video import VideoInfo
from vidaffect.io.video_writer import VideoWriter
from vidaffect.stages import registry
from vidaffect.util.threads import available_cores

log = logging.getLogger(__name__)


def write_store(
    path: str | Path,
    arrays: dict[str, np.ndarray],
    fps: float = 25.0,
    params: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write a feature store.

    Parameters
    ----------
    path : str or Path
        ``<store>/<video-id>.h5``.
    arrays : dict[str, np.ndarray]
        "group/dataset" -> (T, ...) rows, e.g. ``{"audio/mel": mel, "audio/valid": ok}``;
        a group without ``valid`` gets all True.
    fps : float, default 25.0
        Frames per second; timestamps are ``arange(T) / fps``.
    params : dict or None, default None
        stage -> parameters recorded on its group (default ``{"synthetic": True}``);
        e.g. ``{"embed": {"weights": "random"}}``.
    """
    path = Path(path)
    params = params or {}
    n = len(next(iter(arrays.values())))
    rows: dict[str, dict[str, np.ndarray]] = {}
    stage_of_group = {cls.group_name(): cls.name for cls in registry.all_stages()}
    for key, value in arrays.items():
        group, name = key.split("/", 1)
        if len(value) != n:
            raise ValueError(f"{key} has {len(value)} rows, expected {n}")
        rows.setdefault(group, {})[name] = np.asarray(value)
    groups = {}
    for group, data in rows.items():
        data.setdefault("valid", np.ones(n, bool))
        stage = stage_of_group.get(group, group)
        p = params.get(stage, {"synthetic": True})
        outputs = {
            name: Output(a.shape[1:], str(a.dtype), False if a.dtype == bool else np.nan) for name, a in data.items()
        }
        digest = hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:16]
        groups[group] = (stage, outputs, p, digest, "1")
    info = VideoInfo(
        path=str(path.with_suffix(".mp4")),
        video_id=path.stem,
        size=0,
        mtime=0.0,
        width=640,
        height=360,
        fps=fps,
        frame_count=n,
        duration=n / fps,
        rotation=0,
        codec="synthetic",
        has_audio="audio" in rows,
    )
    writer = StoreWriter(path, info, groups, keep=[])
    try:
        writer.append_timestamps(np.arange(n) / fps)
        for group, data in rows.items():
            writer.append(group, data)
        writer.commit({})
    except BaseException:
        writer.abort()
        raise
    return path


def random_arrays(n: int, rng: np.random.Generator, modalities: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Random features of the model inputs ``modalities`` (None: all) for ``n`` frames,
    with the datasets, shapes and dtypes the stages write with their default parameters
    ("group/dataset" -> array): values uniform in [0, 1), keypoint confidences 1 (every
    point found).  A modality relative to a box dataset brings that box along."""
    from vidaffect.learn.modalities import MODALITIES

    keypoints: dict[tuple[str, str, str], bool] = {}  # (stage, group, dataset) -> holds keypoints
    for m in (MODALITIES[name] for name in modalities) if modalities is not None else MODALITIES.values():
        keypoints[(m.stage, m.group, m.source.dataset_name(m.defaults))] = m.source.keypoints
        if m.source.relative_to and m.source.relative_to != "frame":
            keypoints.setdefault((m.stage, m.group, m.source.relative_to), False)
    out = {}
    for (stage, group, dataset), points in sorted(keypoints.items()):
        spec = registry.stage_class(stage)().outputs()[dataset]
        values = rng.random((n, *spec.shape), dtype=np.float32)
        if points:
            values[..., -1] = 1.0
        out[f"{group}/{dataset}"] = values.astype(spec.dtype)
    return out


def make_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25,
    audio: np.ndarray | None = None,
    sr: int = 22050,
    rotation: int = 0,
    timestamps: Iterable[float] | None = None,
) -> Path:
    """Encode a video file (H.264, and AAC when ``audio`` is given).

    Parameters
    ----------
    path : str or Path
        The file to write (``.mp4``); its folder is created.
    frames : iterable of np.ndarray, shape (H, W, 3), uint8
        RGB frames of even width and height; consumed one at a time, so a generator
        makes long videos in constant memory.
    fps : float, default 25
        Frame rate in Hz.
    audio : np.ndarray or None, default None
        Mono samples in [-1, 1].
    sr : int, default 22050
        Audio sample rate in Hz.
    rotation : int, default 0
        Display rotation in degrees counter-clockwise (stored as the display matrix).
    timestamps : iterable of float or None, default None
        Frame times in seconds, for a variable-frame-rate file.
    """
    frames = iter(frames)
    first = next(frames)
    writer = VideoWriter(
        path, fps, (first.shape[1], first.shape[0]), audio_rate=sr if audio is not None else None,
        rotation=rotation, preset="ultrafast", timed=timestamps is not None,
    )
    try:
        writer.write(_chain(first, frames), timestamps)
        if audio is not None:
            writer.write_audio(audio)
    except BaseException:
        writer.discard()
        raise
    return writer.close()


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def astronaut_frame(
    size: tuple[int, int] = (360, 640), face_height: int | None = None, offset: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """The astronaut photograph on a grey canvas: a real face, for face and pose stages.

    Parameters
    ----------
    size : tuple of int, default (360, 640)
        Canvas (height, width) in pixels.
    face_height : int or None, default None
        Rescale the photograph so that the face is about this many pixels high; None
        keeps its 512 px size, where the face is about 100 px high.
    offset : tuple of int, default (0, 0)
        (y, x) of the photograph's top-left corner on the canvas, in pixels.

    Raises
    ------
    ImportError
        scikit-image (which ships the photograph) is not installed.
    """
    import cv2
    from skimage import data

    photo = data.astronaut()
    if face_height is not None:
        scale = face_height / 100.0
        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.full((*size, 3), 128, np.uint8)
    ph, pw = min(photo.shape[0], size[0]), min(photo.shape[1], size[1])
    y, x = offset
    canvas[y : y + ph, x : x + pw] = photo[: size[0] - y, : size[1] - x][:ph, :pw]
    return canvas


def face_video_frames(n: int, width: int, height: int, face_height: int) -> tuple[Iterator[np.ndarray], str]:
    """``n`` frames of one face drifting slowly (a camera pan over a still canvas), and
    what they show.  Without scikit-image (a test extra) the frames are a textured
    canvas without a face."""
    margin = max(8, width // 16)
    canvas_size = (height + 2 * margin, width + 2 * margin)
    try:
        canvas = astronaut_frame(canvas_size, face_height, offset=(margin, width // 4 + margin))
        what = f"the astronaut photograph (scikit-image), face about {face_height} px high"
    except ImportError:
        rng = np.random.default_rng(0)
        canvas = rng.integers(0, 256, (*canvas_size, 3), dtype=np.uint8)
        what = "a textured canvas WITHOUT a face (scikit-image is not installed): face figures are of the no-face path"
        log.warning("bench: %s", what)

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            phase = 2 * math.pi * i / (4 * FPS)  # one sway every 4 s
            dx = int(round(margin * (1 + 0.8 * math.sin(phase))))
            dy = int(round(margin * (1 + 0.5 * math.sin(2 * phase))))
            yield canvas[dy : dy + height, dx : dx + width]

    return frames(), what


def audio_track(n_frames: int) -> np.ndarray:
    """A tone whose loudness and pitch change (mono, ``AUDIO_RATE``) for ``n_frames``."""
    t = np.arange(int(n_frames / FPS * AUDIO_RATE)) / AUDIO_RATE
    gain = 0.3 + 0.2 * np.sin(2 * np.pi * 0.5 * t)
    return (gain * np.sin(2 * np.pi * (220 + 40 * np.sin(2 * np.pi * 0.3 * t)) * t)).astype(np.float32)


def make_video_clip(path: Path, n: int, size: BenchSize) -> str:
    frames, what = face_video_frames(n, size.width, size.height, size.face_height)
    make_video(path, frames, fps=FPS, audio=audio_track(n), sr=AUDIO_RATE)
    return what


def make_media(ctx: Context) -> dict[str, Any]:
    s = ctx.size
    what = make_video_clip(ctx.clip, s.frames, s)
    make_video_clip(ctx.warmup, s.warmup_frames, s)
    make_video_clip(ctx.rss_short, s.rss_frames, s)
    make_video_clip(ctx.rss_long, s.rss_frames * RSS_LENGTH_FACTOR, s)
    for k in range(available_cores()):
        make_video_clip(ctx.worker_dir / f"video{k}.mp4", s.worker_frames, s)
    return {"media": f"{s.width}x{s.height} H.264 + AAC at {FPS} fps, {what}", "clip_frames": s.frames}
