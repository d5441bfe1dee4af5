"""Test media made on the spot with PyAV (H.264 + AAC), from real photographs where a
face is needed (scikit-image ships one: the astronaut)."""

from __future__ import annotations

import numpy as np

# The package makes videos for `vidaffect bench` too; one writer serves both.
from vidaffect.bench.media import astronaut_frame, make_video  # noqa: F401  (re-exported)


def noise_frames(n: int, h: int = 64, w: int = 96, seed: int = 0) -> list[np.ndarray]:
    """Frames that differ from each other (so a shifted row would be caught)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, i * 3, axis=1) for i in range(n)]


def tone(seconds: float, sr: int = 22050, freq: float = 440.0, amplitude=0.3) -> np.ndarray:
    """A sine tone; ``amplitude`` may be an array (one gain per sample) for a ramp."""
    t = np.arange(int(seconds * sr)) / sr
    return (np.asarray(amplitude) * np.sin(2 * np.pi * freq * t)).astype(np.float32)
