"""Test media made on the spot with PyAV (H.264 + AAC), from real photographs where a
face is needed (scikit-image ships one: the astronaut); annotation files; and a recipe
with tiny networks for cheap training tests."""

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


def write_annotation(path, labels: np.ndarray, unannotated=()) -> None:
    """Aff-Wild2 style annotation file, -5 on the ``unannotated`` frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = labels.copy()
    rows[list(unannotated)] = -5
    np.savetxt(path, rows, delimiter=",", header="valence,arousal", comments="", fmt="%.4f")


def smooth(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """A slowly varying signal in about [-scale, scale] (a knot every 30 frames)."""
    knots = rng.uniform(-scale, scale, n // 30 + 2)
    return np.interp(np.arange(n), np.arange(len(knots)) * 30, knots)


def make_loud_media(root, n_videos: int, rng: np.random.Generator, sr: int = 22050, fps: int = 25, n=200) -> None:
    """``root/videos/c<i>.mp4`` whose audio is noise at a level (dB) that follows
    arousal, and ``root/all-annotations/c<i>.txt`` with that arousal and a random,
    unrelated valence (first 5 frames unannotated).  ``n``: frames, or one count per video."""
    lengths = [n] * n_videos if isinstance(n, int) else list(n)
    for i, frames in enumerate(lengths):
        arousal = smooth(rng, frames, 0.8)
        gain = 10 ** ((30 * arousal - 30) / 20)
        per_sample = np.interp(np.arange(frames * sr // fps) * fps / sr, np.arange(frames), gain)
        audio = np.clip(rng.normal(0, 0.3, len(per_sample)) * per_sample, -1, 1).astype(np.float32)
        make_video(root / "videos" / f"c{i}.mp4", [np.full((32, 32, 3), 100, np.uint8)] * frames, fps=fps, audio=audio, sr=sr)
        write_annotation(root / "all-annotations" / f"c{i}.txt", np.c_[smooth(rng, frames, 0.8), arousal], unannotated=range(5))


TINY_MODEL = {
    "rnn_hidden": 16,
    "attention_frames": 8,
    "transformer_width": 16,
    "transformer_layers": 1,
    "transformer_heads": 2,
    "transformer_ff": 32,
}


def tiny_recipe(folder, **train) -> str:
    """A recipe file with tiny network sizes (and ``train`` options); everything else
    from the default recipe."""
    import yaml

    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "train": train, "model": TINY_MODEL}))
    return str(path)
