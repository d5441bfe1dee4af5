"""Encoding videos with PyAV: H.264 frames from numpy arrays, optionally with an AAC
track, written under a temporary name and renamed when complete.

One writer serves every video vidaffect writes: the magnified face video of the
``evm`` stage, the made clips of ``vidaffect bench`` and of the tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

_MS = Fraction(1, 1000)
_AUDIO_FRAME = 1024  # samples per AAC frame
_CONTAINERS = {".mkv": "matroska", ".m4v": "mp4"}  # FFmpeg's muxer where it is not named like the suffix


class VideoWriter:
    """An H.264 video being written; frames arrive one at a time, so memory does not
    depend on the video's length.

    Parameters
    ----------
    path : str or Path
        The file to write (its suffix picks the container, e.g. ``.mp4``); its folder is
        created.  Until :meth:`close` the data goes to ``<name>.tmp`` beside it.
    fps : float
        Nominal frame rate in Hz (the stream's rate).
    size : tuple of int
        (width, height) of the frames in pixels, both even.
    audio_rate : int or None, default None
        Sample rate in Hz of a mono AAC track written with :meth:`write_audio`; None for
        no audio track.
    rotation : int, default 0
        Display rotation in degrees counter-clockwise, stored as the display matrix.
    crf : int, default 18
        x264 constant rate factor (lower is better quality; 18 is visually lossless).
    preset : str, default "veryfast"
        x264 speed preset.
    timed : bool, default False
        Frames carry their own timestamps (:meth:`write` with ``timestamps``), at
        millisecond resolution, for variable frame rate; otherwise frame k is at k/fps.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        size: tuple[int, int],
        *,
        audio_rate: int | None = None,
        rotation: int = 0,
        crf: int = 18,
        preset: str = "veryfast",
        timed: bool = False,
    ) -> None:
        import av

        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = self.path.suffix.lower()
        self.container = av.open(str(self.tmp), "w", format=_CONTAINERS.get(suffix, suffix.lstrip(".")))
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"preset": preset, "crf": str(crf)}
        if timed:
            self.stream.codec_context.time_base = _MS
        if rotation:
            self.stream.set_display_rotation(rotation)
        self.audio = self.container.add_stream("aac", rate=audio_rate, layout="mono") if audio_rate else None
        self._last_pts = -1
        self._audio_pts = 0

    def write(self, images: Iterable[np.ndarray], timestamps: Iterable[float] | None = None) -> None:
        """Encode frames.

        Parameters
        ----------
        images : iterable of np.ndarray, shape (H, W, 3), uint8
            RGB frames of the writer's size.
        timestamps : iterable of float or None, default None
            Seconds of each frame (needs ``timed=True``); a frame that would not advance
            by a millisecond is moved one millisecond on, so pts stay increasing.
        """
        import av

        times = iter(timestamps) if timestamps is not None else None
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if times is not None:
                frame.pts = max(int(round(next(times) * 1000)), self._last_pts + 1)
                frame.time_base = _MS
                self._last_pts = frame.pts
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def write_audio(self, samples: np.ndarray) -> None:
        """Encode mono samples in [-1, 1] at ``audio_rate`` (the whole track, or the next
        part of it)."""
        import av

        if self.audio is None:
            raise ValueError(f"{self.path}: the writer was made without an audio track (audio_rate)")
        samples = np.asarray(samples, np.float32)
        start = self._audio_pts
        for offset in range(0, len(samples), _AUDIO_FRAME):
            chunk = samples[None, offset : offset + _AUDIO_FRAME]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = self.audio.rate
            frame.pts = start + offset
            for packet in self.audio.encode(frame):
                self.container.mux(packet)
        self._audio_pts = start + len(samples)

    def close(self) -> Path:
        """Flush the encoders and publish the file under its final name."""
        for stream in (self.stream, self.audio):
            if stream is not None:
                for packet in stream.encode():
                    self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Stop and leave nothing behind."""
        self.container.close()
        self.tmp.unlink(missing_ok=True)
