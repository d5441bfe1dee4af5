"""`vidaffect predict`: per-frame valence and arousal for whole folders of videos.

1. The model: ``--model`` or the newest ``runs/*/best.ckpt`` (``runs/*/fold-*/best.ckpt``
   included) below the current folder.
2. Features: :func:`vidaffect.extract.extract` runs the stages the model needs, with the
   stage parameters recorded in the checkpoint (the ones its training stores were made
   with).  A cached store made with those parameters is reused as it is; a stage made
   with other parameters is recomputed, so the model never silently reads features of
   another kind.  ``encoder_weights`` replaces the recorded encoder weights (e.g. the
   same file at another path); a store that then differs from the training stores, or
   a model that records no usable parameters, gets a warning per video
   (:func:`vidaffect.checkpoint.check_store`), and features from a random encoder a
   loud one.
3. Prediction: each video is read from its store in windows of :data:`WINDOW` frames
   and run through the network with the LSTM state handed from one window to the
   next, which is exactly the network run over the whole video at once (no seams, no
   overlap to blend); rows go to the writer window by window, so memory does not grow
   with video length.  Frames without a face (or body, or audio) are predicted too:
   the missing modality reads as zeros and the LSTM carries the context.  The
   ``face`` column is the store's ``face/valid``; it is empty when the store has no
   face stage (a model that does not use the face, on videos never extracted with it).

A video that cannot be decoded, extracted or predicted is listed in the summary and
the batch goes on; the exit status is 1 then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from vidaffect import stages as stage_api
from vidaffect.checkpoint import LoadedModel, check_store, load_model
from vidaffect.dataset import MODALITIES, frame_count, load_inputs
from vidaffect.extract import Summary, VideoResult, extract, failure_reason, resolve_device
from vidaffect.progress import progress_bar
from vidaffect.store import store_path
from vidaffect.writers import PredictionWriter, open_writer

log = logging.getLogger(__name__)

WINDOW = 1024  # frames read and run through the network at a time
# On the CPU the network runs on one thread: the LSTM's step over one video is too small
# to share, and when other processes keep the cores busy the threads' hand-off at every
# step made prediction up to 60x slower (full net, 2 cores: 115 frames/s on 2 threads,
# 7,500 on 1).  On idle cores 2 threads are at most ~1.8x faster, and prediction is
# never the bottleneck next to CPU feature extraction (~10 frames/s).
CPU_THREADS = 1
RUNS = Path("runs")
CHECKPOINT = "best.ckpt"
FACE_VALID = f"{MODALITIES['landmarks'].group}/valid"
ENCODER_STAGES = ("embed", "evm")  # stages whose `weights` --encoder-weights sets


@dataclass
class PredictSummary(Summary):
    """:class:`vidaffect.extract.Summary` of a prediction run: one result per video
    (``done`` = predicted, ``failed`` with the reason, from extraction or prediction).
    ``seconds`` and ``frames`` of the done results count prediction only."""

    out: Path | None = None
    model: Path | None = None
    extracted: int = 0  # videos whose features were (partly) extracted in this run
    cached: int = 0  # videos whose stores were already complete

    def report(self) -> str:
        done = [r for r in self.results if r.status == "done"]
        frames = sum(r.frames for r in done)
        secs = sum(r.seconds for r in done)
        if done:
            rate = f", {frames / secs:.0f} frames/s" if secs > 0 else ""
            head = (
                f"predicted {len(done)} video(s), {frames} frames -> {self.out}{rate} "
                f"(features: {self.extracted} extracted now, {self.cached} cached); model {self.model}"
            )
        else:
            head = f"no video predicted; {self.out} not written"
        lines = [head + (f"; {len(self.failed)} failed" if self.failed else "")]
        lines += [f"  FAILED {r.path}: {r.reason}" for r in self.failed]
        return "\n".join(lines)


def find_model(runs: str | Path = RUNS) -> Path:
    """The newest (modification time) ``<runs>/*/best.ckpt`` or
    ``<runs>/*/fold-*/best.ckpt`` (of a k-fold run: the fold trained last).

    Raises
    ------
    FileNotFoundError
        None there; the message says to run ``vidaffect train`` or pass ``--model``.
    """
    runs = Path(runs)
    found = [*runs.glob(f"*/{CHECKPOINT}"), *runs.glob(f"*/fold-*/{CHECKPOINT}")]
    if not found:
        raise FileNotFoundError(
            f"no trained model: found no {runs}/*/{CHECKPOINT} (nor {runs}/*/fold-*/{CHECKPOINT}) in "
            f"{runs.resolve().parent}; run `vidaffect train` first, or pass --model CKPT"
        )
    newest = max(found, key=lambda p: p.stat().st_mtime)
    log.info("using the newest of %d trained model(s): %s", len(found), newest)
    return newest


def extraction_params(loaded: LoadedModel, encoder_weights: str | None = None) -> dict[str, dict[str, Any]]:
    """Stage parameters to extract the model's inputs with.

    Parameters
    ----------
    loaded : LoadedModel
    encoder_weights : str or None, default None
        Replaces the recorded ``weights`` of the encoder stages (embed, evm).

    Returns
    -------
    dict
        ``{stage: {param: value}}`` as recorded in the checkpoint's provenance; a stage
        whose record is missing or names parameters this version does not know is left
        out (the recipe's parameters apply) with a warning.
    """
    params: dict[str, dict[str, Any]] = {}
    for stage in loaded.stages:
        trained = loaded.provenance.get(stage, {}).get("params") or {}
        known = {f.name for f in dataclasses.fields(stage_api.stage_class(stage).Params)}
        if trained and set(trained) <= known:
            params[stage] = dict(trained)
        else:
            log.warning(
                "model %s does not record %s parameters this version can use; extracting with the recipe's "
                "(its predictions are off if the training features were made otherwise)",
                loaded.path,
                stage,
            )
    if encoder_weights:
        for stage in ENCODER_STAGES:
            if stage in loaded.stages:
                p = params.setdefault(stage, {})
                p["weights"] = encoder_weights
                p.pop("weights_sha256", None)  # the hash belongs to the recorded file
    return params


def predict_windows(loaded: LoadedModel, h5: h5py.File, window: int = WINDOW) -> Iterator[tuple[int, np.ndarray]]:
    """Run the model over a whole store, ``window`` frames at a time, carrying the LSTM
    state across windows.

    Parameters
    ----------
    loaded : LoadedModel
    h5 : h5py.File
        An open feature store with the model's inputs.
    window : int, default :data:`WINDOW`
        Frames per step; the result does not depend on it (up to float rounding).

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
            features, _ = load_inputs(h5, loaded.modalities, start, start + window)
            with _cpu_threads(loaded.device):
                pred, state = loaded.model(loaded.prepare(features), state)
            rows = pred[0].float().cpu().numpy()
            if not np.isfinite(rows).all():
                raise RuntimeError(f"the model gave non-finite values in frames {start}-{start + len(rows) - 1}")
            yield start, rows


@contextlib.contextmanager
def _cpu_threads(device: str) -> Iterator[None]:
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


def predict_store(loaded: LoadedModel, path: Path, write, window: int = WINDOW) -> int:
    """Predict every frame of one store and hand the rows to ``write`` (a
    :meth:`PredictionWriter.video` callable); returns the frame count."""
    with h5py.File(path, "r") as h5:
        check_store(loaded, h5)
        timestamps = h5["frames/timestamp"]
        face = h5[FACE_VALID] if FACE_VALID in h5 else None
        frames = 0
        for start, pred in predict_windows(loaded, h5, window):
            frames = start + len(pred)
            write(start, timestamps[start:frames], pred, None if face is None else face[start:frames])
    return frames


def _predict_video(loaded: LoadedModel, path: Path, source: VideoResult, writer: PredictionWriter, window: int) -> VideoResult:
    """One video, never raising for a problem with that video."""
    result = VideoResult(source.path, source.video_id, "failed")
    t0 = time.perf_counter()
    try:
        with writer.video(source.video_id) as write:
            result.frames = predict_store(loaded, path, write, window)
        result.status = "done"
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one video's failure must not stop the batch
        log.debug("%s failed", path, exc_info=True)
        result.reason = failure_reason(exc)
        log.error("%s: %s", source.path, result.reason)
    result.seconds = time.perf_counter() - t0
    return result


def predict(
    inputs: list[str | Path],
    out: str | Path = "results.csv",
    fmt: str = "csv",
    model: str | Path | None = None,
    store: str | Path = "features",
    encoder_weights: str | None = None,
    workers: int = 1,
    device: str = "auto",
    progress: bool = False,
    window: int = WINDOW,
) -> PredictSummary:
    """Predict valence and arousal for every frame of every video in ``inputs``.

    Parameters
    ----------
    inputs : list of str or Path
        Video files and/or folders (searched recursively); video ids as in extract.
    out : str or Path, default "results.csv"
        The CSV file (``fmt="csv"``), or the folder of per-video files
        (``fmt="affwild2"``); see :mod:`vidaffect.writers`.
    fmt : str, default "csv"
        ``"csv"`` or ``"affwild2"``.
    model : str, Path or None, default None
        Checkpoint; None = the newest ``runs/*/best.ckpt`` (:func:`find_model`).
    store : str or Path, default "features"
        Feature store folder; features the model needs that it lacks are extracted
        into it.
    encoder_weights : str or None, default None
        Encoder weights (path, ``imagenet`` or ``random``) for the embed/evm stages,
        replacing those recorded in the checkpoint.
    workers : int, default 1
        Parallel extraction processes.
    device : str, default "auto"
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``, for extraction
        and the network.
    progress : bool, default False
        Progress bars.
    window : int, default :data:`WINDOW`
        Frames per network step (memory, not results, depends on it).

    Returns
    -------
    PredictSummary
        ``.report()``, ``.failed``, ``.exit_code`` (0 all done, 1 some failed).

    Raises
    ------
    FileNotFoundError, ValueError
        No model found, an unusable checkpoint, bad options; per-video problems are
        not raised but listed in the summary.
    """
    device = resolve_device(device)
    model_path = Path(model) if model else find_model()
    writer = open_writer(fmt, out)  # first, so a bad --out is reported before any work
    published = False
    try:
        loaded = load_model(model_path, device)
        log.info("model %s: %s network on %s, needs stages %s", model_path, loaded.net, device, ",".join(loaded.stages))
        params = extraction_params(loaded, encoder_weights)
        try:
            extraction = extract(inputs, store, stages=loaded.stages, params=params, workers=workers, device=device, progress=progress)
        except ValueError as exc:
            raise ValueError(
                f"{exc} (stage parameters as recorded in model {model_path}; --encoder-weights replaces the encoder weights)"
            ) from None
        ready = sorted((r for r in extraction.results if r.status != "failed"), key=lambda r: r.video_id)
        results = list(extraction.failed)
        with progress_bar(len(ready), "predicting", "video", progress) as bar:
            for source in ready:
                results.append(_predict_video(loaded, store_path(store, source.video_id), source, writer, window))
                bar.update()
        published = any(r.status == "done" for r in results)
    finally:
        writer.close(publish=published)
    return PredictSummary(
        results, out=Path(out), model=model_path, extracted=extraction.count("done"), cached=extraction.count("skipped")
    )


# ---------------------------------------------------------------------------------------
# throughput (used by `vidaffect bench`)


def measure_throughput(net: str = "full", frames: int = 5000, window: int = WINDOW, device: str = "cpu") -> dict[str, float]:
    """Prediction speed on cached features, in frames per second.

    A synthetic store of ``frames`` frames (every modality) and an untrained ``net``
    saved as a checkpoint (speed does not depend on the weights) go through
    :func:`predict_store` into a CSV, after one untimed warm-up window.

    Returns ``predict_fps_cached`` (reading the store, the network, writing CSV rows)
    and ``predict_fps_network`` (the network alone on the same windows, inputs ready).
    """
    import tempfile

    from vidaffect.checkpoint import save
    from vidaffect.dataset import compute_stats
    from vidaffect.networks import AffectNet
    from vidaffect.synthetic import random_arrays, write_store
    from vidaffect.writers import CsvWriter

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(Path(tmp) / "bench.h5", random_arrays(frames, rng))
        model = AffectNet(net).eval()
        save(Path(tmp) / "bench.ckpt", model, compute_stats([store], model.modalities), {}, {}, 0, {})
        loaded = load_model(Path(tmp) / "bench.ckpt", resolve_device(device))
        with h5py.File(store, "r") as h5:
            next(predict_windows(loaded, h5, window))
            inputs = [loaded.prepare(load_inputs(h5, loaded.modalities, s, s + window)[0]) for s in range(0, frames, window)]
        writer = CsvWriter(Path(tmp) / "bench.csv")
        t0 = time.perf_counter()
        with writer.video("bench") as write:
            predict_store(loaded, store, write, window)
        cached = frames / (time.perf_counter() - t0)
        writer.close()
        t0 = time.perf_counter()
        with torch.inference_mode(), _cpu_threads(loaded.device):
            state = None
            for x in inputs:
                pred, state = loaded.model(x, state)
            pred.cpu()
        network = frames / (time.perf_counter() - t0)
    return {"predict_fps_cached": cached, "predict_fps_network": network}
