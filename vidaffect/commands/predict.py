"""`vidaffect predict`: per-frame valence and arousal for whole folders of videos.

1. The model: ``--model`` or the newest ``runs/*/best.ckpt`` (``runs/*/fold-*/best.ckpt``
   included) below the current folder.
2. Features: :func:`vidaffect.commands.extract.extract` runs the stages the model needs, with the
   stage parameters recorded in the checkpoint (the ones its training stores were made
   with).  A cached store made with those parameters is reused as it is; a stage made
   with other parameters is recomputed, so the model never silently reads features of
   another kind.  ``encoder_weights`` replaces the recorded encoder weights (e.g. the
   same file at another path); a store that then differs from the training stores, or
   a model that records no usable parameters, gets a warning per video
   (:func:`vidaffect.learn.checkpoint.check_store`), and features from a random encoder a
   loud one.
3. Prediction (:mod:`vidaffect.learn.inference`): each video is cut into the windows
   the model was trained on (``seq_len`` frames from a fresh state, every ``seq_len /
   2`` frames, the last one ending at the video's end; :mod:`vidaffect.learn.windows`)
   and each frame's prediction is the blend of the windows covering it.  Validation
   during training ran exactly this code, so ``vidaffect evaluate`` on the validation
   videos gives the logged validation metrics.  The store is read in chunks and rows
   go to the writer as soon as no later window covers them, so memory does not grow
   with video length.  Frames without a face (or body, or audio) are predicted too:
   the missing modality reads as zeros with its validity flag 0, and the other
   modalities and the temporal context carry on.  The ``face`` column is the store's
   ``face/valid``; it is empty when the store has no face stage (a model that does
   not use the face, on videos never extracted with it).

A video that cannot be decoded, extracted or predicted is listed in the summary and
the batch goes on; the exit status is 1 then.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidaffect.commands.extract import extract
from vidaffect.errors import ParameterError
from vidaffect.extraction.summary import Summary, VideoResult, failure_reason
from vidaffect.io.predictions import PredictionWriter, open_writer
from vidaffect.io.store import store_path
from vidaffect.learn.checkpoint import LoadedModel, load_model
from vidaffect.learn.inference import CHUNK, predict_store
from vidaffect.learn.runs import find_best
from vidaffect.stages import registry
from vidaffect.util.device import resolve_device
from vidaffect.util.terminal import progress_bar

log = logging.getLogger(__name__)

ENCODER_STAGES = ("embed", "evm")  # stages whose `weights` --encoder-weights sets


@dataclass
class PredictSummary(Summary):
    """:class:`vidaffect.extraction.summary.Summary` of a prediction run: one result per video
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
        known = {f.name for f in dataclasses.fields(registry.stage_class(stage).Params)}
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


def _predict_video(loaded: LoadedModel, path: Path, source: VideoResult, writer: PredictionWriter, chunk: int) -> VideoResult:
    """One video, never raising for a problem with that video."""
    result = VideoResult(source.path, source.video_id, "failed")
    t0 = time.perf_counter()
    try:
        with writer.video(source.video_id) as write:
            result.frames = predict_store(loaded, path, write, chunk)
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
    chunk: int = CHUNK,
) -> PredictSummary:
    """Predict valence and arousal for every frame of every video in ``inputs``.

    Parameters
    ----------
    inputs : list of str or Path
        Video files and/or folders (searched recursively); video ids as in extract.
    out : str or Path, default "results.csv"
        The CSV file (``fmt="csv"``), or the folder of per-video files
        (``fmt="affwild2"``); see :mod:`vidaffect.io.predictions`.
    fmt : str, default "csv"
        ``"csv"`` or ``"affwild2"``.
    model : str, Path or None, default None
        Checkpoint; None = the newest ``runs/*/best.ckpt`` (:func:`vidaffect.learn.runs.find_best`).
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
    chunk : int, default :data:`~vidaffect.learn.inference.CHUNK`
        Frames read from a store at a time (memory, not results, depends on it).

    Returns
    -------
    PredictSummary
        ``.report()``, ``.failed``, ``.exit_code`` (0 all done, 1 some failed).

    Raises
    ------
    UserError
        No model found, an unusable checkpoint, bad options; per-video problems are
        not raised but listed in the summary.
    """
    device = resolve_device(device)
    model_path = Path(model) if model else find_best()
    writer = open_writer(fmt, out)  # first, so a bad --out is reported before any work
    published = False
    try:
        loaded = load_model(model_path, device)
        log.info(
            "model %s: %s network with %s head on %s, windows of %d frames every %d, needs stages %s",
            model_path, loaded.net, loaded.head, device, loaded.seq_len, loaded.hop, ",".join(loaded.stages),
        )  # fmt: skip
        params = extraction_params(loaded, encoder_weights)
        try:
            extraction = extract(inputs, store, stages=loaded.stages, params=params, workers=workers, device=device, progress=progress)
        except ParameterError as exc:
            raise ParameterError(
                f"{exc} (stage parameters as recorded in model {model_path}; --encoder-weights replaces the encoder weights)"
            ) from None
        ready = sorted((r for r in extraction.results if r.status != "failed"), key=lambda r: r.video_id)
        results = list(extraction.failed)
        with progress_bar(len(ready), "predicting", "video", progress) as bar:
            for source in ready:
                results.append(_predict_video(loaded, store_path(store, source.video_id), source, writer, chunk))
                bar.update()
        published = any(r.status == "done" for r in results)
    finally:
        writer.close(publish=published)
    return PredictSummary(
        results, out=Path(out), model=model_path, extracted=extraction.count("done"), cached=extraction.count("skipped")
    )
