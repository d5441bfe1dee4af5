"""Running a network over a whole video from its store: the one way a video goes
through a model (:mod:`vidaffect.learn.windows`), used by ``vidaffect predict`` and by
validation during training, so the validation metrics that pick ``best.ckpt`` are what
``vidaffect evaluate`` gives on ``predict``'s output.

The store is read ``chunk`` frames at a time; every window that is complete is run
(all of them in one batch), its outputs are added with their blend weights, and the
frames that no later window covers are handed out.  At most ``chunk + seq_len`` frames
are held, so memory does not grow with the video's length, and the result does not
depend on ``chunk`` (each window is computed the same way whichever chunk completes
it; only float rounding of batched arithmetic differs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import torch

from vidaffect.learn.checkpoint import LoadedModel, check_store
from vidaffect.learn.modalities import frame_count, load_inputs
from vidaffect.learn.windows import blend_weights, window_starts
from vidaffect.stages import registry

CHUNK = 2048  # frames read from the store at a time
# On the CPU the network runs on one thread: a window batch is too small to share,
# and when other processes keep the cores busy the threads' hand-off at every LSTM
# step made prediction up to 60x slower (full net, 2 cores: 115 frames/s on 2
# threads, 7,500 on 1).  On idle cores 2 threads are at most ~1.8x faster, and
# prediction is never the bottleneck next to CPU feature extraction (~10 frames/s).
CPU_THREADS = 1
FACE_VALID = registry.stage_class("face").key("valid")  # the predictions' face column


def predict_windows(loaded: LoadedModel, h5: h5py.File, chunk: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    """Predict every frame of a store, in order, window by window.

    Parameters
    ----------
    loaded : LoadedModel
        The model (in eval mode) with its window geometry (``seq_len``, ``hop``).
    h5 : h5py.File
        An open feature store with the model's inputs.
    chunk : int, default :data:`CHUNK`
        Frames read at a time; memory, not the result, depends on it.

    Yields
    ------
    start : int
        First frame of the block.
    pred : np.ndarray
        (n, 2) float32 valence and arousal in [-1, 1] of frames [start, start + n);
        consecutive blocks cover the video.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 frame, got {chunk}")
    frames = frame_count(h5)
    if frames == 0:
        return
    length = min(loaded.seq_len, frames)
    starts = window_starts(frames, loaded.seq_len, loaded.hop)
    weights = blend_weights(length, loaded.causal)[:, None]
    held: dict[str, np.ndarray] = {}  # model inputs of frames [lo, read)
    total = np.zeros((0, 2))  # weighted sums and weights of frames [lo, lo + len)
    weight = np.zeros((0, 1))
    lo = read = done = 0  # done: windows run so far
    while done < len(starts):
        stop = min(read + chunk, frames)
        arrays = loaded.arrays(*load_inputs(h5, loaded.modalities, read, stop))
        held = {m: np.concatenate([held[m], x]) if held else x for m, x in arrays.items()}
        read = stop
        ready = [s for s in starts[done:] if s + length <= read]
        if ready:
            batch = {m: torch.from_numpy(np.stack([x[s - lo : s - lo + length] for s in ready])).to(loaded.device) for m, x in held.items()}
            with torch.inference_mode(), cpu_threads(loaded.device):
                out = loaded.model(batch).float().cpu().numpy().astype(np.float64)
            end = ready[-1] + length - lo
            if end > len(total):
                total = np.concatenate([total, np.zeros((end - len(total), 2))])
                weight = np.concatenate([weight, np.zeros((end - len(weight), 1))])
            for s, rows in zip(ready, out, strict=True):
                total[s - lo : s - lo + length] += weights * rows
                weight[s - lo : s - lo + length] += weights
            done += len(ready)
        final = starts[done] if done < len(starts) else frames  # no later window covers frames before it
        if final > lo:
            rows = (total[: final - lo] / weight[: final - lo]).astype(np.float32)
            if not np.isfinite(rows).all():
                raise RuntimeError(f"the model gave non-finite values in frames {lo}-{final - 1}")
            yield lo, rows
            total, weight = total[final - lo :], weight[final - lo :]
            held = {m: x[final - lo :] for m, x in held.items()}
            lo = final


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


def predict_video(loaded: LoadedModel, path: Path, chunk: int = CHUNK) -> np.ndarray:
    """(frames, 2) float32 predictions of one whole store (for validation, where a
    video's frames are needed together for its metrics)."""
    with h5py.File(path, "r") as h5:
        parts = [pred for _, pred in predict_windows(loaded, h5, chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.float32)


def predict_store(loaded: LoadedModel, path: Path, write: Callable[..., None], chunk: int = CHUNK) -> int:
    """Predict every frame of one store and hand the rows to ``write`` (a
    :meth:`PredictionWriter.video` callable); returns the frame count."""
    with h5py.File(path, "r") as h5:
        check_store(loaded, h5)
        timestamps = h5["frames/timestamp"]
        face = h5[FACE_VALID] if FACE_VALID in h5 else None
        frames = 0
        for start, pred in predict_windows(loaded, h5, chunk):
            frames = start + len(pred)
            write(start, timestamps[start:frames], pred, None if face is None else face[start:frames])
    return frames
