"""Decoding and each stage alone, on frames already decoded: ``decode_fps``,
``face_fps``, ``pose_fps``, ``mel_fps``, ``encoder_raw_fps``, ``encoder_stage_fps``,
``evm_fps``, ``evm_magnify_fps``, ``head_fps``, ``gaze_fps`` and ``egemaps_fps``, with
the CPU milliseconds per frame of each (``*_cpu_ms``); and MediaPipe's face mesh and
pose solutions alone on the same frames (``face_mesh_raw_fps``, ``pose_raw_fps``), what
the face and pose stages are built on."""

from __future__ import annotations

import functools
import importlib.util
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidaffect.bench.context import FPS, Context, Stopwatch
from vidaffect.extraction.encoder_service import GPU_FORWARD_BATCH
from vidaffect.extraction.engine import BATCH_FRAMES
from vidaffect.io.video import AudioChunk, Frame, VideoInfo, VideoSource, decode, probe
from vidaffect.stages.base import Batch, Stage, row_sets
from vidaffect.stages.crop import CROP_SIZE, crop_faces
from vidaffect.stages.egemaps import EgemapsStage
from vidaffect.stages.embed import EmbedStage, EncoderParams
from vidaffect.stages.encoder import Encoder
from vidaffect.stages.evm import EvmParams, EvmStage
from vidaffect.stages.face import FaceStage
from vidaffect.stages.gaze import GazeStage
from vidaffect.stages.head import HeadStage
from vidaffect.stages.magnify import Magnifier
from vidaffect.stages.mediapipe_solutions import mediapipe_solution
from vidaffect.stages.mel import MelStage
from vidaffect.stages.pose import PoseStage


def measure_decode(ctx: Context) -> dict[str, Any]:
    ctx.info = probe(VideoSource(ctx.clip, "clip"))
    watch, frames = Stopwatch(), 0
    while True:
        with watch():
            items = list(decode(ctx.clip_info))
        frames += sum(isinstance(item, Frame) for item in items)
        if watch.wall >= ctx.size.min_seconds:
            break
    ctx.items = items
    return watch.figures("decode", frames)


def frame_batches(frames: list[Any], batch: int | None = None, inputs: dict[str, np.ndarray] | None = None) -> Iterator[Batch]:
    """Decoded frames in batches of ``batch`` (default: the engine's batch size), as
    the engine hands them to the stages, with their rows of ``inputs`` (the datasets of
    required stages, one row per frame)."""

    batch = batch or BATCH_FRAMES
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch]
        rows = {k: v[start : start + len(chunk)] for k, v in (inputs or {}).items()}
        yield Batch(start, np.array([f.timestamp for f in chunk]), np.stack([f.image for f in chunk]), rows)


def image_stage_fps(
    ctx: Context, stage: Stage, name: str, inputs: dict[str, np.ndarray] | None = None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Frames/s and CPU ms per frame (``<name>_fps``, ``<name>_cpu_ms``) of a stage
    that looks at the pictures, over the clip's frames, after an untimed first batch
    (models load, graphs start); and its rows.  ``inputs``: the rows of the stages it
    requires, for every frame."""
    frames = ctx.frames
    store = ctx.work / "stage.h5"
    warm = stage.open(ctx.clip_info, store)
    warm.process(next(frame_batches(frames[:8], inputs=inputs)))
    warm.abort()
    run = stage.open(ctx.clip_info, store)  # a fresh video: trackers start afresh
    parts: list[dict[str, np.ndarray]] = []
    watch = Stopwatch()
    with watch():
        for batch in frame_batches(frames, inputs=inputs):
            parts.append(run.process(batch))
        parts += row_sets(run.finish())
    run.close()
    stage.close()
    parts = [p for p in parts if p]
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return watch.figures(name, len(frames)), rows


def raw_solution_fps(ctx: Context, name: str, factory: str, **options: Any) -> dict[str, float]:
    """``<name>_fps`` and ``<name>_cpu_ms`` of a MediaPipe solution alone, in tracking
    mode, on the clip's frames after an untimed first frame: the floor under the stage
    built on it."""
    solution = mediapipe_solution(factory, **options)
    frames = [f.image for f in ctx.frames]
    solution.process(frames[0])
    solution.reset()
    watch = Stopwatch()
    with watch():
        for image in frames:
            solution.process(image)
    solution.close()
    return watch.figures(name, len(frames))


def _best(*runs: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run the measurements twice, alternating (load on a shared machine shifts), and
    keep each one's faster run."""
    best: list[dict[str, Any]] = [{} for _ in runs]
    for _ in range(2):
        for i, run in enumerate(runs):
            figures = run()
            rate = next(v for k, v in figures.items() if k.endswith("_fps"))
            if not best[i] or rate > next(v for k, v in best[i].items() if k.endswith("_fps")):
                best[i] = figures
    return {k: v for figures in best for k, v in figures.items()}


def measure_face(ctx: Context) -> dict[str, Any]:
    def stage() -> dict[str, Any]:
        figures, ctx.face_rows = image_stage_fps(ctx, FaceStage(), "face")
        return figures

    p = FaceStage.Params()
    raw = functools.partial(
        raw_solution_fps, ctx, "face_mesh_raw", "face_mesh.FaceMesh", static_image_mode=False, max_num_faces=1,
        refine_landmarks=True, min_detection_confidence=p.min_detection_confidence, min_tracking_confidence=p.min_tracking_confidence,
    )  # fmt: skip
    figures = _best(stage, raw)
    return {**figures, "face_found_fraction": float(ctx.face_rows["valid"].mean())}


def measure_pose(ctx: Context) -> dict[str, Any]:
    found: list[float] = []
    faces = {FaceStage.key(k): v for k, v in ctx.face_rows.items()}

    def stage() -> dict[str, Any]:
        # Pose follows the face stage's face, as in extraction.
        figures, rows = image_stage_fps(ctx, PoseStage(), "pose", faces)
        found.append(float(rows["valid"].mean()))
        return figures

    p = PoseStage.Params()
    raw = functools.partial(
        raw_solution_fps, ctx, "pose_raw", "pose.Pose", static_image_mode=False, model_complexity=p.model_complexity,
        smooth_landmarks=p.smooth_landmarks, enable_segmentation=False, min_detection_confidence=p.min_detection_confidence,
        min_tracking_confidence=p.min_tracking_confidence,
    )  # fmt: skip
    return {**_best(stage, raw), "pose_found_fraction": min(found)}


def audio_stage_fps(ctx: Context, stage: Stage) -> dict[str, float]:
    """Frames/s and CPU ms per frame (``<stage>_fps``, ``<stage>_cpu_ms``) of an audio
    stage fed the clip's audio and frame times in decoding order, as the engine feeds
    them, after one untimed pass (first calls warm up)."""

    def replay() -> int:
        run = stage.open(ctx.clip_info, ctx.work / "stage.h5")
        times: list[float] = []
        done = rows = 0
        for item in ctx.items + [None]:
            if isinstance(item, AudioChunk):
                run.add_audio(item.samples, item.start)
                continue
            if item is not None:
                times.append(item.timestamp)
            if times and (item is None or len(times) == BATCH_FRAMES):
                rows += len(run.process(Batch(done, np.array(times), np.empty((len(times), 0, 0, 3), np.uint8)))["valid"])
                done += len(times)
                times.clear()
        return rows + sum(len(r["valid"]) for r in row_sets(run.finish()))

    replay()  # the filterbank and first calls warm up
    watch, frames = Stopwatch(), 0
    while True:
        with watch():
            frames += replay()
        if watch.wall >= ctx.size.min_seconds:
            break
    return watch.figures(stage.name, frames)


def measure_mel(ctx: Context) -> dict[str, Any]:
    return audio_stage_fps(ctx, MelStage())


def measure_egemaps(ctx: Context) -> dict[str, Any]:
    """``egemaps_fps`` and ``egemaps_cpu_ms``; NaN when openSMILE (an optional extra) is
    not installed."""
    if importlib.util.find_spec("opensmile") is None:
        return {"egemaps_fps": float("nan"), "egemaps_note": "openSMILE not installed (pip install 'vidaffect[egemaps]')"}
    return audio_stage_fps(ctx, EgemapsStage())


def measure_head_gaze(ctx: Context) -> dict[str, Any]:
    """``head_fps`` and ``gaze_fps`` (and their ``_cpu_ms``) on the face stage's rows of
    the clip (they look at no pictures, only the stored mesh and head rows)."""
    batches = list(frame_batches(ctx.frames))
    for batch in batches:
        batch.inputs = {FaceStage.key(k): v[batch.start : batch.start + len(batch)] for k, v in ctx.face_rows.items()}
    figures: dict[str, Any] = {}
    for stage in (HeadStage(), GazeStage()):
        stage.open(ctx.clip_info, ctx.work / "stage.h5").process(batches[0])  # warm up
        watch, frames = Stopwatch(), 0
        while True:
            run = stage.open(ctx.clip_info, ctx.work / "stage.h5")
            with watch():
                rows = [run.process(batch) for batch in batches]
            frames += len(ctx.frames)
            if watch.wall >= ctx.size.min_seconds:
                break
        for batch, out in zip(batches, rows, strict=True):  # gaze reads the head rows
            batch.inputs.update({stage.key(k): v for k, v in out.items()})
        figures.update(watch.figures(stage.name, frames))
    return figures


def encoder_batch(ctx: Context, n: int) -> Batch:
    """The first ``n`` frames with the face stage's rows as inputs.  Frames where the
    face stage found nothing get a box in the middle, so every frame has a crop to
    encode (the crop-encoding stages cost per face, not per frame)."""
    batch = next(frame_batches(ctx.frames, n))
    rows = {k: v[:n].copy() for k, v in ctx.face_rows.items()}
    missing = ~rows["valid"]
    if missing.any():
        h, w = batch.images.shape[1:3]
        side = ctx.size.face_height * 1.2
        rows["bbox"][missing] = ((w - side) / 2, (h - side) / 2, side, side)
        rows["valid"][missing] = True
    batch.inputs = {FaceStage.key(k): v for k, v in rows.items()}
    return batch


def measure_encoder(ctx: Context) -> dict[str, Any]:
    params = EncoderParams(**ctx.stage_params()["embed"])
    stage = EmbedStage(params, ctx.device)
    batch = encoder_batch(ctx, params.batch_size)
    figures = stage_fps(stage, batch, ctx.clip_info, ctx.work / "stage.h5", "encoder_stage", repeats=ctx.size.encoder_passes)
    # The stage's passes have just warmed the model up.  On a GPU the forward pass is
    # measured at the size the shared encoder process runs.
    encoder = stage.encoder()
    assert isinstance(encoder, Encoder), "the bench measures the encoder of this process"
    raw_batch = GPU_FORWARD_BATCH if encoder.device.type == "cuda" and ctx.size.encoder_batch is None else params.batch_size
    raw = raw_forward_fps(encoder, raw_batch, batches=ctx.size.encoder_passes, warmup=0 if raw_batch == params.batch_size else 1)
    stage.close()
    # Cropping alone: what the embed stage leaves to the CPU when its network is on a GPU.
    watch = Stopwatch()
    with watch():
        crop_faces(batch.images, batch.inputs[FaceStage.key("bbox")], params.margin)
    crop = {"crop_cpu_ms": 1000 * watch.cpu / len(batch)}
    return {**figures, **crop, "encoder_raw_fps": raw, "encoder_raw_batch": raw_batch, "encoder_batch": params.batch_size}


def measure_evm(ctx: Context) -> dict[str, Any]:
    params = EvmParams(**ctx.stage_params()["evm"])
    stage = EvmStage(params, ctx.device)
    batch = encoder_batch(ctx, params.batch_size)
    figures = stage_fps(stage, batch, ctx.clip_info, ctx.work / "stage.h5", "evm", repeats=ctx.size.encoder_passes)
    stage.close()
    # The magnification alone, on the same crops, so the encoder's share is visible.
    crops, _ = crop_faces(batch.images, batch.inputs[FaceStage.key("bbox")], params.margin)
    magnifier = Magnifier(FPS, (CROP_SIZE, CROP_SIZE), params)
    magnifier(crops.astype(np.float32) / 255.0)
    watch, done = Stopwatch(), 0
    while True:
        with watch():
            np.round(magnifier(crops.astype(np.float32) / 255.0) * 255.0).astype(np.uint8)
        done += len(crops)
        if watch.wall >= ctx.size.min_seconds:
            break
    return {**figures, **watch.figures("evm_magnify", done)}


def raw_forward_fps(encoder: Encoder, batch_size: int = 32, batches: int = 3, warmup: int = 1) -> float:
    """Crops per second of the encoder's forward pass alone, on a ready, normalised
    batch already on the device (no cropping, no transfers).

    Parameters
    ----------
    encoder : Encoder
    batch_size : int, default 32
    batches : int, default 3
        Timed forward passes.
    warmup : int, default 1
        Untimed passes first (allocations, cuDNN autotuning).
    """
    rng = np.random.default_rng(0)
    x = encoder.prepare(rng.integers(0, 256, (batch_size, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8))
    for _ in range(warmup):
        encoder.forward(x)
    _sync(encoder.device)
    t0 = time.perf_counter()
    for _ in range(batches):
        encoder.forward(x)
    _sync(encoder.device)
    return batches * batch_size / (time.perf_counter() - t0)


def stage_fps(stage: Stage, batch: Batch, info: VideoInfo, store_path: Path, name: str, repeats: int = 3) -> dict[str, float]:
    """Frames per second and CPU ms per frame (``<name>_fps``, ``<name>_cpu_ms``) of a
    crop-encoding stage on decoded frames with face boxes (``batch.inputs`` holding
    ``face/*``): cropping, magnification (EVM), batching, transfers and the forward
    pass, everything but decoding and face detection.  One untimed run over ``batch``
    first loads the model and warms up.

    Parameters
    ----------
    stage : EmbedStage or EvmStage
    batch : Batch
        Frames and face inputs, e.g. 32 frames.
    info : VideoInfo
        Describes the video (its ``fps`` drives the EVM filters).
    store_path : Path
        Passed to :meth:`Stage.open` (EVM writes its video next to it when asked).
    name : str
        Prefix of the figures.
    repeats : int, default 3
        Timed passes over ``batch``.
    """
    warm = stage.open(info, store_path)
    warm.process(batch)
    warm.finish()
    _sync(torch.device(stage.device))
    watch = Stopwatch()
    with watch():
        run = stage.open(info, store_path)
        for _ in range(repeats):
            run.process(batch)
        run.finish()
        _sync(torch.device(stage.device))
    return watch.figures(name, repeats * len(batch))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
