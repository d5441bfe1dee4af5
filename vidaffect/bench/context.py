"""What the measurements of ``vidaffect bench`` share: how much work each does
(:class:`BenchSize`), the made media and what earlier measurements left
(:class:`Context`)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidaffect.io.video import AudioChunk, Frame, VideoInfo

FPS = 25  # frame rate of the made media
AUDIO_RATE = 22050  # Hz, the made media's audio
RSS_LENGTH_FACTOR = 4  # the long clip of the memory figure is this many times the short one


@dataclass(frozen=True)
class BenchSize:
    """How much work each measurement does.

    width, height: frame size in pixels; face_height: the face in pixels.
    frames: the clip every stage and ``extract_fps`` run on.
    worker_frames: frames of each video of the ``--workers`` run.
    rss_frames: the short clip of the memory figure (the long one is 4 times longer);
        whole encoder batches, so that both clips reach the same per-batch peak.
    warmup_frames: the clip that loads the models before a timed extraction.
    encoder_batch: crops per forward pass; None keeps the stages' default.
    encoder_passes: timed forward passes and timed encoder-stage passes.
    train: (sequence length, batch size, timed steps) of the training figures.
    predict_frames: frames of the stored video the prediction figures run on.
    predict_rss_frames: the short stored video of the prediction memory figure (the
        long one is 4 times longer); a few read chunks, so that both reach the steady
        per-chunk peak.
    min_seconds: the fast measurements repeat until they took this long.
    """

    width: int
    height: int
    face_height: int
    frames: int
    worker_frames: int
    rss_frames: int
    warmup_frames: int
    encoder_batch: int | None
    encoder_passes: int
    train: tuple[int, int, int]
    predict_frames: int
    predict_rss_frames: int
    min_seconds: float


SIZES = {
    "full": BenchSize(640, 360, 100, 250, 125, 160, 8, None, 5, (256, 64, 5), 10000, 6144, 2.0),
    "quick": BenchSize(640, 360, 100, 64, 32, 32, 4, None, 1, (64, 16, 3), 3000, 4096, 0.5),
    # for the test suite: every figure, in seconds, meaningless as numbers
    "tiny": BenchSize(256, 144, 50, 12, 4, 4, 2, 4, 1, (8, 4, 1), 100, 64, 0.0),
}


@dataclass
class Context:
    """What the measurements share: the size, the device, the work folder, the media
    and what earlier measurements left (decoded frames and audio, face rows)."""

    size: BenchSize
    device: str
    work: Path
    info: VideoInfo | None = None  # of the clip, once decoded
    items: list[Frame | AudioChunk] = dataclasses.field(default_factory=list)  # decoded frames and audio chunks, in order
    face_rows: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def media(self) -> Path:
        return self.work / "media"

    @property
    def clip(self) -> Path:
        """The clip every stage and the one-process extraction run on."""
        return self.media / "clip.mp4"

    @property
    def warmup(self) -> Path:
        """A tiny clip that loads the models before a timed extraction."""
        return self.media / "warmup.mp4"

    @property
    def worker_dir(self) -> Path:
        """One video per core for the --workers extraction."""
        return self.media / "workers"

    @property
    def rss_short(self) -> Path:
        return self.media / "rss-short.mp4"

    @property
    def rss_long(self) -> Path:
        return self.media / "rss-long.mp4"

    @property
    def clip_info(self) -> VideoInfo:
        """The clip's metadata (read by the decoding measurement, which runs first)."""
        assert self.info is not None, "the decoding measurement runs first"
        return self.info

    @property
    def frames(self) -> list[Frame]:
        return [item for item in self.items if isinstance(item, Frame)]

    def stage_params(self) -> dict[str, dict[str, Any]]:
        """Overrides of the default recipe: random encoder weights (no download)."""
        encoder: dict[str, Any] = {"weights": "random"}
        if self.size.encoder_batch is not None:
            encoder["batch_size"] = self.size.encoder_batch
        return {"embed": dict(encoder), "evm": dict(encoder)}


class Stopwatch:
    """Wall-clock and CPU seconds (every thread of this process) spent in the blocks
    it timed: ``with watch(): ...``."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu

    def figures(self, name: str, frames: int) -> dict[str, float]:
        """``<name>_fps`` (frames per wall-clock second) and ``<name>_cpu_ms`` (CPU
        milliseconds per frame)."""
        return {f"{name}_fps": frames / self.wall, f"{name}_cpu_ms": 1000 * self.cpu / frames}


def check(result: Any) -> Any:
    """An extraction result that must have succeeded."""
    if result.status != "done":
        raise RuntimeError(f"bench: extracting {result.path} did not complete ({result.status}: {result.reason})")
    return result
