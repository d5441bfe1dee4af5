"""Made-up inputs for the benchmark and the tests.

* Feature stores written from arrays instead of videos, laid out exactly as
  ``vidaffect extract`` lays them out (same writer, attributes and chunking).  They let
  the benchmark and the tests exercise training without decoding media.
* Videos encoded on the spot with PyAV (H.264 + AAC), from real photographs where a
  face is needed (scikit-image, a test extra, ships one: the astronaut).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vidaffect.dataset import MODALITIES
from vidaffect.stages import Output
from vidaffect.store import StoreWriter
from vidaffect.video import VideoInfo

STAGE_OF_GROUP = {spec.group: spec.stage for spec in MODALITIES.values()}


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
    for key, value in arrays.items():
        group, name = key.split("/", 1)
        if len(value) != n:
            raise ValueError(f"{key} has {len(value)} rows, expected {n}")
        rows.setdefault(group, {})[name] = np.asarray(value)
    groups = {}
    for group, data in rows.items():
        data.setdefault("valid", np.ones(n, bool))
        stage = STAGE_OF_GROUP.get(group, group)
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


def random_arrays(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random features of every modality for ``n`` frames, with the store's shapes and
    dtypes (embedding f16, landmarks and pose in pixels, mel in dB)."""
    return {
        "embed/resnet50": rng.random((n, 2048), dtype=np.float32).astype(np.float16),
        "face/landmarks": (rng.random((n, 70, 2), dtype=np.float32) * 360).astype(np.float32),
        "pose/keypoints": np.concatenate(
            [rng.random((n, 18, 2), dtype=np.float32) * 640, np.ones((n, 18, 1), np.float32)], axis=2
        ),
        "audio/mel": (rng.random((n, 128), dtype=np.float32) * 80 - 80).astype(np.float32),
    }


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
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "18"}
        if timestamps is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            vs.set_display_rotation(rotation)
        ts_iter = iter(timestamps) if timestamps is not None else None
        aus = out.add_stream("aac", rate=sr, layout="mono") if audio is not None else None
        for image in _chain(first, frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if ts_iter is not None:
                frame.pts = int(round(next(ts_iter) * 1000))
                frame.time_base = Fraction(1, 1000)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if aus is not None:
            samples = np.asarray(audio, np.float32)
            for start in range(0, len(samples), 1024):
                af = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="fltp", layout="mono")
                af.sample_rate = sr
                af.pts = start
                for packet in aus.encode(af):
                    out.mux(packet)
            for packet in aus.encode():
                out.mux(packet)
    return path


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def astronaut_frame(size: tuple[int, int] = (360, 640), face_height: int | None = None, offset=(0, 0)) -> np.ndarray:
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
