"""Finding videos and decoding them with PyAV in one streaming pass.

Frames come out as upright RGB arrays with timestamps taken from their pts (variable
frame rate is kept as it is); audio comes out downmixed to mono float32 and resampled,
interleaved with the frames in container order.  Nothing is buffered beyond a packet
and a few frames, so memory does not depend on the video's length.

Every frame the decoder outputs is kept, so frame k is line k of an annotation file
made from the same video.  A frame whose pts is missing, or not later than the frame
before (a repeated pts), keeps its place and gets a repaired timestamp:
:class:`TimestampRepair` spreads such frames evenly between the neighbouring good
timestamps and flags them (``Frame.repaired``; ``frames/repaired`` in the store).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
AUDIO_RATE = 22050  # Hz, the rate every stage sees audio at (thesis: librosa's default)

# FFmpeg demuxers that read a single still picture; a .mp4 that is really a JPEG opens
# with one of these and decodes to one "frame", which must not pass for a video.
_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "gif", "webp_pipe", "tiff_pipe", "image2pipe")
_IMAGE_CODECS = ("png", "mjpeg", "bmp", "gif", "webp", "tiff", "jpeg2000")


class VideoError(Exception):
    """A video that cannot be used; the message is one line that names the problem."""


@dataclass(frozen=True)
class VideoSource:
    """A video file and its id: the path relative to the input root, without
    extension, so that a/clip.mp4 and b/clip.mp4 never collide."""

    path: Path
    video_id: str


@dataclass
class VideoInfo:
    path: str  # absolute, symlinks resolved: one source file has one path
    video_id: str
    size: int
    mtime: float
    width: int  # after rotation
    height: int
    fps: float  # average rate from the container; timestamps are the truth
    frame_count: int  # container's estimate (0 when unknown); the store holds the real count
    duration: float  # seconds, 0 when unknown
    rotation: int  # degrees counter-clockwise applied to make frames upright
    codec: str
    has_audio: bool
    # Timestamps of every decoded frame, when the engine counted the frames before
    # starting the stages (it does for stages that import rows made elsewhere); not
    # stored as an attribute.
    decoded_timestamps: np.ndarray | None = field(default=None, repr=False, compare=False)

    def attrs(self) -> dict:
        attrs = asdict(self)
        del attrs["decoded_timestamps"]
        return attrs


def find_videos(inputs: list[str | Path]) -> tuple[list[VideoSource], list[tuple[str, str]]]:
    """Expand files and folders (recursively) into video sources.

    Returns the sources and a list of (input, reason) for inputs that cannot be used
    (missing path, a folder with no videos, a repeated id).  A file reached twice (a
    folder and the file itself, or through a symlink) is one source, under the id it
    got first.
    """
    sources: list[VideoSource] = []
    problems: list[tuple[str, str]] = []
    seen: dict[str, Path] = {}
    files: set[Path] = set()

    def add(path: Path, video_id: str) -> None:
        resolved = path.resolve()
        if resolved in files:
            return
        if video_id in seen:
            problems.append((str(path), f"same video id {video_id!r} as {seen[video_id]}; pass their common folder instead"))
            return
        seen[video_id] = path
        files.add(resolved)
        sources.append(VideoSource(path, video_id))

    for item in inputs:
        root = Path(item)
        try:
            root.stat()
        except PermissionError:
            problems.append((str(root), "permission denied"))
            continue
        except OSError:
            pass  # missing: reported below
        if root.is_dir():
            found = sorted(
                p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file() and not p.name.startswith(".")
            )
            if not found:
                problems.append((str(root), f"no video files found (looked for {', '.join(VIDEO_EXTENSIONS)})"))
            for p in found:
                add(p, p.relative_to(root).with_suffix("").as_posix())
        elif root.exists() or root.is_symlink():
            add(root, root.stem)
        else:
            problems.append((str(root), "no such file or directory"))
    return sources, problems


def _open(path: Path) -> av.container.InputContainer:
    import av

    if not os.path.exists(path):
        raise VideoError("no such file")
    if not os.access(path, os.R_OK):
        raise VideoError("permission denied (file is not readable)")
    size = os.path.getsize(path)
    if size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except PermissionError:
        raise VideoError("permission denied (file is not readable)") from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(f"not a readable video file ({_reason(exc)})") from None
    fmt = container.format.name
    if not container.streams.video:
        kind = "audio only" if container.streams.audio else "no streams"
        container.close()
        raise VideoError(f"has no video stream ({kind})")
    vstream = container.streams.video[0]
    codec = vstream.codec_context.name
    if any(f in fmt.split(",") for f in _IMAGE_FORMATS) or codec in _IMAGE_CODECS and (vstream.frames or 0) <= 1:
        container.close()
        raise VideoError(f"is a still image ({codec}), not a video")
    return container


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip().rstrip(".").splitlines()[0]


def probe(source: VideoSource) -> VideoInfo:
    """Open a video and read its metadata, raising VideoError with a clear reason."""
    container = _open(source.path)
    try:
        vs = container.streams.video[0]
        rotation = 0
        # The display matrix is only visible on frames; peek at the first one.
        try:
            for frame in container.decode(vs):
                rotation = int(round((frame.rotation or 0) / 90.0)) * 90 % 360
                break
            else:
                raise VideoError("contains no decodable video frames")
        except VideoError:
            raise
        except Exception as exc:  # FFmpeg raises many types for broken payloads
            raise VideoError(f"video stream cannot be decoded ({_reason(exc)})") from None
        width, height = vs.codec_context.width, vs.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        rate = vs.average_rate or vs.guessed_rate or Fraction(0)
        duration = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else (
            container.duration / 1e6 if container.duration else 0.0
        )
        stat = os.stat(source.path)
        return VideoInfo(
            path=str(Path(source.path).resolve()),
            video_id=source.video_id,
            size=stat.st_size,
            mtime=stat.st_mtime,
            width=width,
            height=height,
            fps=float(rate),
            frame_count=int(vs.frames or 0),
            duration=duration,
            rotation=rotation,
            codec=vs.codec_context.name,
            has_audio=bool(container.streams.audio),
        )
    finally:
        container.close()


@dataclass
class Frame:
    timestamp: float  # seconds since the first frame
    image: np.ndarray | None  # (H, W, 3) uint8 RGB upright; None when images were not asked for
    repaired: bool = False  # the pts was missing or repeated; the timestamp is interpolated


@dataclass
class AudioChunk:
    start: float  # seconds since the first video frame of the first sample
    samples: np.ndarray  # (n,) float32 mono at AUDIO_RATE


class TimestampRepair:
    """Increasing timestamps for a stream of frames whose pts may be missing or repeated.

    Feed each frame's pts in seconds (None when missing) with :meth:`push`, then call
    :meth:`flush`; both return ``(timestamp, repaired, item)`` in input order, one per
    frame pushed, so no frame is ever dropped.  A frame whose time is missing or not
    later than the previous frame's is held until the next frame with a later time
    arrives, and the held frames are spread evenly between the two.  After ``lookahead``
    held frames (a long run without usable pts), or at the end, held frames are placed
    ``step`` seconds apart after the last timestamp.

    Parameters
    ----------
    step : float
        Seconds between frames where nothing better is known (1 / the nominal rate).
    lookahead : int, default 8
        Frames held at most while waiting for a usable time (memory: decoded frames).
    """

    def __init__(self, step: float, lookahead: int = 8) -> None:
        self.step = step
        self.lookahead = lookahead
        self.last: float | None = None
        self.held: list[Any] = []
        self.repaired = 0  # frames given a repaired timestamp so far

    def push(self, t: float | None, item: Any) -> list[tuple[float, bool, Any]]:
        if t is not None and (self.last is None or t > self.last):
            out = self._spread(t)
            out.append((t, False, item))
            self.last = t
            return out
        self.held.append(item)
        return self._extrapolate(len(self.held) - self.lookahead)

    def flush(self) -> list[tuple[float, bool, Any]]:
        return self._extrapolate(len(self.held))

    def _spread(self, t: float) -> list[tuple[float, bool, Any]]:
        n = len(self.held)
        if not n:
            return []
        if self.last is None:  # frames before the first usable pts
            times = t - self.step * np.arange(n, 0, -1)
        else:
            times = self.last + (t - self.last) * np.arange(1, n + 1) / (n + 1)
        out = [(float(ti), True, item) for ti, item in zip(times, self.held, strict=True)]
        self.repaired += n
        self.held = []
        return out

    def _extrapolate(self, n: int) -> list[tuple[float, bool, Any]]:
        out = []
        for item in self.held[: max(n, 0)]:
            self.last = 0.0 if self.last is None else self.last + self.step
            out.append((self.last, True, item))
        self.repaired += len(out)
        self.held = self.held[len(out) :]
        return out


def decode(
    info: VideoInfo, *, images: bool = True, audio: bool = True, audio_rate: int = AUDIO_RATE
) -> Iterator[Frame | AudioChunk]:
    """Decode a video once, yielding frames and audio chunks in container order.

    Timestamps are the frames' pts in seconds, relative to the first frame; every
    decoded frame is yielded, those with a missing or repeated pts with a repaired
    timestamp (:class:`TimestampRepair`).  Audio chunks carry their start time on the
    same clock, so audio that starts before or after the picture stays aligned.
    """
    import av

    container = _open(Path(info.path))
    try:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        streams: list[av.stream.Stream] = [vs]
        resampler = None
        if audio and container.streams.audio:
            streams.append(container.streams.audio[0])
            resampler = av.AudioResampler(format="flt", layout="mono", rate=audio_rate)
        k = info.rotation // 90
        t0: float | None = None
        pending_audio: list[AudioChunk] = []  # audio that arrives before the first frame
        audio_next: float | None = None  # expected start of the next resampled chunk
        repair = TimestampRepair(1.0 / info.fps if info.fps > 0 else 1.0 / 25)

        def frames_out(timed: list[tuple[float, bool, Any]]) -> Iterator[Frame | AudioChunk]:
            nonlocal t0
            for t, repaired, frame in timed:
                if t0 is None:
                    t0 = t
                    yield from (AudioChunk(c.start - t0, c.samples) for c in pending_audio)
                    pending_audio.clear()
                image: np.ndarray | None = None
                if images:
                    image = frame.to_ndarray(format="rgb24")
                    if k:
                        image = np.ascontiguousarray(np.rot90(image, k))
                yield Frame(t - t0, image, repaired)

        for packet in container.demux(*streams):
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError as exc:
                log.warning("%s: skipped a corrupt packet (%s)", info.path, _reason(exc))
                continue
            for frame in decoded:
                if isinstance(frame, av.VideoFrame):
                    t = _seconds(frame.pts, frame.time_base) if frame.pts is not None else None
                    yield from frames_out(repair.push(t, frame))
                elif isinstance(frame, av.AudioFrame):
                    if audio_next is None:
                        audio_next = _seconds(frame.pts, frame.time_base) if frame.pts is not None else 0.0
                    assert resampler is not None
                    for out in resampler.resample(frame):
                        chunk = _audio_chunk(out, audio_next)
                        audio_next += len(chunk.samples) / audio_rate
                        if t0 is None:
                            pending_audio.append(chunk)
                        else:
                            yield AudioChunk(chunk.start - t0, chunk.samples)
        yield from frames_out(repair.flush())
        if repair.repaired:
            log.warning(
                "%s: %d frame(s) had a missing or repeated pts; kept, with interpolated timestamps (frames/repaired)",
                info.path,
                repair.repaired,
            )
        if resampler is not None and audio_next is not None:
            for out in resampler.resample(None):
                chunk = _audio_chunk(out, audio_next)
                audio_next += len(chunk.samples) / audio_rate
                yield AudioChunk(chunk.start - (t0 or 0.0), chunk.samples)
    except av.error.FFmpegError as exc:
        raise VideoError(f"decoding failed ({_reason(exc)})") from None
    finally:
        container.close()


def frame_timestamps(info: VideoInfo) -> np.ndarray:
    """Timestamps of every decoded frame (a decoding pass without pictures or audio),
    exactly as :func:`decode` gives them."""
    return np.array([item.timestamp for item in decode(info, images=False, audio=False) if isinstance(item, Frame)], np.float64)


def _seconds(pts: int, time_base: Fraction | None) -> float:
    """A pts in seconds (a stream without a time base counts in seconds)."""
    return float(pts * time_base) if time_base is not None else float(pts)


def _audio_chunk(frame: av.AudioFrame, start: float) -> AudioChunk:
    return AudioChunk(start, frame.to_ndarray().reshape(-1).astype(np.float32, copy=False))
