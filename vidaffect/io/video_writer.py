"""Encoding videos with PyAV: H.264 frames from numpy arrays, optionally with an AAC
track or the audio track of another video, written under a temporary name and renamed
when complete.

One writer serves every video vidaffect writes: the magnified face video of the
``evm`` stage, ``vidaffect render``, the made clips of ``vidaffect bench`` and of the
tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import av

_MS = Fraction(1, 1000)
_AUDIO_FRAME = 1024  # samples per AAC frame
_CONTAINERS = {".mkv": "matroska", ".m4v": "mp4"}  # FFmpeg's muxer where it is not named like the suffix
# Audio codecs (FFmpeg decoder names) that MP4 holds as they are; others are re-encoded as AAC.
_MP4_AUDIO = ("aac", "mp3", "mp3float", "mp2", "mp2float", "ac3", "eac3", "opus", "alac", "flac")
_AUDIO_LEAD = 0.5  # seconds of audio muxed ahead of the video, so the two stay interleaved


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
        self._carried: _CarriedAudio | None = None
        self._frames = 0
        self.fps = fps

    def carry_audio(self, source: str | Path) -> bool:
        """Add the first audio track of the video ``source`` to this one (before any
        frame is written): copied as it is when the container holds its codec, else
        re-encoded as AAC.  Its clock is moved so that the source's first video frame
        is at time 0, as in the frame timestamps :func:`vidaffect.io.video.decode`
        gives.  It is muxed as the frames are written, so memory stays flat.  Returns
        False when ``source`` has no audio track."""
        if self.audio is not None:
            raise ValueError(f"{self.path}: the writer already has an audio track")
        carried = _CarriedAudio(source, self.container, copy=self.container.format.name != "mp4")
        if carried.stream is None:
            carried.close()
            return False
        self._carried = carried
        return True

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
            if self._carried is not None:
                now = self._last_pts / 1000 if times is not None else self._frames / self.fps
                self._carried.mux_until(now + _AUDIO_LEAD)
            self._frames += 1

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
        if self._carried is not None:
            self._carried.mux_until(np.inf)
            self._carried.close()
        for stream in (self.stream, self.audio, self._carried.encoder if self._carried else None):
            if stream is not None:
                for packet in stream.encode():
                    self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Stop and leave nothing behind."""
        if self._carried is not None:
            self._carried.close()
        self.container.close()
        self.tmp.unlink(missing_ok=True)


class _CarriedAudio:
    """The audio track of another file, read packet by packet into an output container
    (see :meth:`VideoWriter.carry_audio`)."""

    def __init__(self, source: str | Path, output: av.container.OutputContainer, copy: bool) -> None:
        import av

        self.input = av.open(str(source))
        self.output = output
        self.stream: av.stream.Stream | None = None
        self.encoder: av.audio.stream.AudioStream | None = None
        if not self.input.streams.audio:
            return
        src = self.input.streams.audio[0]
        video = self.input.streams.video[0] if self.input.streams.video else None
        start = video.start_time if video is not None and video.start_time is not None else 0
        self.offset = float(start * video.time_base) if video is not None and video.time_base else 0.0
        if copy or src.codec_context.name in _MP4_AUDIO:
            self.stream = output.add_stream_from_template(src)
        else:
            # AAC needs a named layout; a file may only say how many channels it has
            layout = {1: "mono", 2: "stereo"}.get(src.codec_context.channels, src.layout.name)
            self.encoder = output.add_stream("aac", rate=src.rate, layout=layout)
            self.resampler = av.AudioResampler(format="fltp", layout=layout, rate=src.rate)
            self.stream = src
        self.packets = self.input.demux(src)
        self.pending: av.Packet | None = None

    def mux_until(self, seconds: float) -> None:
        """Mux the source's packets that start before ``seconds`` (output clock)."""
        while True:
            packet = self.pending if self.pending is not None else next(self.packets, None)
            self.pending = None
            if packet is None:
                return
            if packet.pts is None or packet.time_base is None:
                continue  # a flush packet or one without time: nothing to place
            start = float(packet.pts * packet.time_base) - self.offset
            if start > seconds:
                self.pending = packet
                return
            if start + float((packet.duration or 0) * packet.time_base) <= 0:
                continue  # wholly before the first video frame
            self._mux(packet, int(round(self.offset / packet.time_base)))

    def _mux(self, packet: av.Packet, shift: int) -> None:
        import av

        if self.encoder is None:
            assert packet.pts is not None  # mux_until skips packets without time
            packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = self.stream
            self.output.mux(packet)
            return
        for frame in packet.decode():
            assert isinstance(frame, av.AudioFrame)
            frame.pts = None
            for out in self.resampler.resample(frame):
                for encoded in self.encoder.encode(out):
                    self.output.mux(encoded)

    def close(self) -> None:
        self.input.close()
