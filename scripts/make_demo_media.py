"""Make the demo project: a few short clips with a real photographic face (the
astronaut photograph scikit-image ships) moving and zooming, an audio track whose
loudness rises and falls, and Aff-Wild2-style annotations where arousal follows the
loudness and valence the face's horizontal position.

usage: python scripts/make_demo_media.py DEMO_DIR
"""

import sys
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from vidaffect.bench.media import make_video

FPS, SECONDS, SR = 25, 4, 22050
W, H = 640, 360


def clip(seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    photo = data.astronaut()
    n = FPS * SECONDS
    t = np.arange(n) / FPS
    x_phase, loud_phase = rng.uniform(0, 2 * np.pi, 2)
    x_pos = 0.5 + 0.35 * np.sin(2 * np.pi * t / SECONDS + x_phase)  # 0..1 across the frame
    loud = 0.5 + 0.45 * np.sin(2 * np.pi * 1.5 * t / SECONDS + loud_phase)  # 0..1
    frames = []
    for i in range(n):
        scale = 0.55 + 0.1 * np.sin(2 * np.pi * t[i] / 2)
        face = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        canvas = np.full((H, W, 3), 90, np.uint8)
        fh, fw = face.shape[:2]
        x0 = int(x_pos[i] * (W - fw))
        y0 = (H - fh) // 2
        canvas[y0 : y0 + fh, x0 : x0 + fw] = face
        frames.append(canvas)
    samples = np.arange(n * SR // FPS) / SR
    gain = np.interp(samples, t, loud)
    audio = (0.6 * gain * np.sin(2 * np.pi * 220 * samples) * (1 + 0.3 * np.sin(2 * np.pi * 3 * samples))).astype(np.float32)
    labels = np.stack([2 * x_pos - 1, 2 * loud - 1], axis=1)
    return frames, audio.clip(-1, 1), labels


def main(root: Path) -> None:
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for k in range(4):
        name = f"demo{k + 1}"
        frames, audio, labels = clip(k)
        if not (root / "videos" / f"{name}.mp4").exists():
            make_video(root / "videos" / f"{name}.mp4", frames, fps=FPS, audio=audio, sr=SR)
        with open(root / "annotations" / f"{name}.txt", "w") as fh:
            fh.write("valence,arousal\n")
            fh.writelines(f"{v:.4f},{a:.4f}\n" for v, a in labels)
    print(f"demo media in {root}/videos, annotations in {root}/annotations")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo"))
