"""Test media made on the spot with PyAV (H.264 + AAC), from real photographs where a
face is needed (scikit-image ships one: the astronaut)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25,
    audio: np.ndarray | None = None,
    sr: int = 22050,
    rotation: int = 0,
    timestamps: Iterable[float] | None = None,
) -> Path:
    """Encode RGB frames (H, W, 3 uint8, even sizes) and optional mono audio (float in
    [-1, 1]).  ``timestamps`` (seconds) make a variable-frame-rate file; ``rotation``
    sets the display matrix (degrees counter-clockwise)."""
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
        aus = None
        if audio is not None:
            aus = out.add_stream("aac", rate=sr, layout="mono")
        for i, image in enumerate(_chain(first, frames)):
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
                chunk = samples[start : start + 1024]
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                af.sample_rate = sr
                af.pts = start
                for packet in aus.encode(af):
                    out.mux(packet)
            for packet in aus.encode():
                out.mux(packet)
    return path


def _chain(first, rest):
    yield first
    yield from rest


def noise_frames(n: int, h: int = 64, w: int = 96, seed: int = 0) -> list[np.ndarray]:
    """Frames that differ from each other (so a shifted row would be caught)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, i * 3, axis=1) for i in range(n)]


def tone(seconds: float, sr: int = 22050, freq: float = 440.0, amplitude=0.3) -> np.ndarray:
    """A sine tone; ``amplitude`` may be an array (one gain per sample) for a ramp."""
    t = np.arange(int(seconds * sr)) / sr
    return (np.asarray(amplitude) * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def astronaut_frame(size: tuple[int, int] = (360, 640), face_height: int | None = None, offset=(0, 0)) -> np.ndarray:
    """The astronaut photograph (a real face, ~100 px high at 512 px) on a grey canvas
    of ``size`` (h, w); ``face_height`` rescales it so the face is about that tall."""
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
