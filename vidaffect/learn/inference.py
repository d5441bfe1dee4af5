"""Running a network over a whole video from its store: the one way a video goes
through a model, window by window with the recurrent state carried across windows,
so the result is the network run over the whole video at once (no seams) while memory
does not grow with the video's length."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import torch

from vidaffect.io.store import subject_group
from vidaffect.learn.checkpoint import LoadedModel, check_store
from vidaffect.learn.modalities import frame_count, load_inputs
from vidaffect.stages import registry

WINDOW = 1024  # frames read and run through the network at a time
# On the CPU the network runs on one thread: the LSTM's step over one video is too small
# to share, and when other processes keep the cores busy the threads' hand-off at every
# step made prediction up to 60x slower (full net, 2 cores: 115 frames/s on 2 threads,
# 7,500 on 1).  On idle cores 2 threads are at most ~1.8x faster, and prediction is
# never the bottleneck next to CPU feature extraction (~10 frames/s).
CPU_THREADS = 1
FACE_VALID = registry.stage_class("face").key("valid")  # the predictions' face column


def predict_windows(loaded: LoadedModel, h5: h5py.File, window: int = WINDOW, subject: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Run the model over a whole store, ``window`` frames at a time, carrying the LSTM
    state across windows.

    Parameters
    ----------
    loaded : LoadedModel
    h5 : h5py.File
        An open feature store with the model's inputs.
    window : int, default :data:`WINDOW`
        Frames per step; the result does not depend on it (up to float rounding).
    subject : int, default 0
        The person of the store (0: the primary face; see :mod:`vidaffect.learn.modalities`).

    Yields
    ------
    start : int
        First frame of the window.
    pred : np.ndarray
        (n, 2) float32 valence and arousal in [-1, 1] of frames [start, start + n).
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 frame, got {window}")
    state = None
    with torch.inference_mode():
        for start in range(0, frame_count(h5), window):
            features, _ = load_inputs(h5, loaded.modalities, start, start + window, subject)
            with cpu_threads(loaded.device):
                pred, state = loaded.model(loaded.prepare(features), state)
            rows = pred[0].float().cpu().numpy()
            if not np.isfinite(rows).all():
                raise RuntimeError(f"the model gave non-finite values in frames {start}-{start + len(rows) - 1}")
            yield start, rows


@contextlib.contextmanager
def cpu_threads(device: str) -> Iterator[None]:
    """Run torch with :data:`CPU_THREADS` threads inside, on the CPU."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict_store(loaded: LoadedModel, path: Path, write: Callable[..., None], window: int = WINDOW, subject: int = 0) -> int:
    """Predict every frame of one store (of its person ``subject``) and hand the rows
    to ``write`` (a :meth:`PredictionWriter.video` callable); returns the frame count."""
    with h5py.File(path, "r") as h5:
        check_store(loaded, h5, subject)
        timestamps = h5["frames/timestamp"]
        valid = subject_group(subject, FACE_VALID)
        face = h5[valid] if valid in h5 else None
        frames = 0
        for start, pred in predict_windows(loaded, h5, window, subject):
            frames = start + len(pred)
            write(start, timestamps[start:frames], pred, None if face is None else face[start:frames])
    return frames
