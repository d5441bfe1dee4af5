"""Decoding and each stage alone, on frames already decoded: ``decode_fps``,
``face_fps``, ``pose_fps``, ``mel_fps``, ``encoder_raw_fps``, ``encoder_stage_fps``,
``evm_fps`` and ``evm_magnify_fps``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidaffect.bench.context import FPS, Context
from vidaffect.extraction.engine import BATCH_FRAMES
from vidaffect.io.video import AudioChunk, Frame, VideoInfo, VideoSource, decode, probe
from vidaffect.stages.base import Batch, Stage
from vidaffect.stages.crop import CROP_SIZE, crop_faces
from vidaffect.stages.embed import EmbedStage, EncoderParams
from vidaffect.stages.encoder import Encoder
from vidaffect.stages.evm import EvmParams, EvmStage
from vidaffect.stages.face import FaceStage
from vidaffect.stages.magnify import Magnifier
from vidaffect.stages.mel import MelStage
from vidaffect.stages.pose import PoseStage


def measure_decode(ctx: Context) -> dict[str, Any]:
    ctx.info = probe(VideoSource(ctx.clip, "clip"))
    frames, elapsed = 0, 0.0
    while True:
        started = time.perf_counter()
        items = list(decode(ctx.clip_info))
        elapsed += time.perf_counter() - started
        frames += sum(isinstance(item, Frame) for item in items)
        if elapsed >= ctx.size.min_seconds:
            break
    ctx.items = items
    return {"decode_fps": frames / elapsed}


def frame_batches(frames: list[Any], batch: int | None = None) -> Iterator[Batch]:
    """Decoded frames in batches of ``batch`` (default: the engine's batch size), as
    the engine hands them to the stages."""

    batch = batch or BATCH_FRAMES
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch]
        yield Batch(start, np.array([f.timestamp for f in chunk]), np.stack([f.image for f in chunk]))


def image_stage_fps(ctx: Context, stage: Stage) -> tuple[float, dict[str, np.ndarray]]:
    """Frames/s of a stage that looks at the pictures, over the clip's frames, after
    an untimed first batch (models load, graphs start); and its rows."""
    frames = ctx.frames
    store = ctx.work / "stage.h5"
    warm = stage.open(ctx.clip_info, store)
    warm.process(next(frame_batches(frames[:8])))
    run = stage.open(ctx.clip_info, store)  # a fresh video: trackers start afresh
    parts: list[dict[str, np.ndarray]] = []
    started = time.perf_counter()
    for batch in frame_batches(frames):
        parts.append(run.process(batch))
    parts.append(run.finish())
    elapsed = time.perf_counter() - started
    stage.close()
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return len(frames) / elapsed, rows


def measure_face(ctx: Context) -> dict[str, Any]:
    fps, ctx.face_rows = image_stage_fps(ctx, FaceStage())
    return {"face_fps": fps, "face_found_fraction": float(ctx.face_rows["valid"].mean())}


def measure_pose(ctx: Context) -> dict[str, Any]:
    fps, rows = image_stage_fps(ctx, PoseStage())
    return {"pose_fps": fps, "pose_found_fraction": float(rows["valid"].mean())}


def measure_mel(ctx: Context) -> dict[str, Any]:
    stage = MelStage()

    def replay() -> int:
        """Audio and frame times in decoding order, as the engine feeds them."""
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
        return rows + len(run.finish()["valid"])

    replay()  # the filterbank and first calls warm up
    frames, elapsed = 0, 0.0
    while True:
        started = time.perf_counter()
        frames += replay()
        elapsed += time.perf_counter() - started
        if elapsed >= ctx.size.min_seconds:
            break
    return {"mel_fps": frames / elapsed}


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
    stage_rate = stage_fps(stage, batch, ctx.clip_info, ctx.work / "stage.h5", repeats=ctx.size.encoder_passes)
    # The stage's passes have just warmed the model up.
    encoder = stage.encoder()
    assert isinstance(encoder, Encoder), "the bench measures the encoder of this process"
    raw = raw_forward_fps(encoder, params.batch_size, batches=ctx.size.encoder_passes, warmup=0)
    stage.close()
    return {"encoder_raw_fps": raw, "encoder_stage_fps": stage_rate, "encoder_batch": params.batch_size}


def measure_evm(ctx: Context) -> dict[str, Any]:
    params = EvmParams(**ctx.stage_params()["evm"])
    stage = EvmStage(params, ctx.device)
    batch = encoder_batch(ctx, params.batch_size)
    fps = stage_fps(stage, batch, ctx.clip_info, ctx.work / "stage.h5", repeats=ctx.size.encoder_passes)
    stage.close()
    # The magnification alone, on the same crops, so the encoder's share is visible.
    crops, _ = crop_faces(batch.images, batch.inputs[FaceStage.key("bbox")], params.margin)
    magnifier = Magnifier(FPS, (CROP_SIZE, CROP_SIZE), params)
    magnifier(crops.astype(np.float32) / 255.0)
    done, elapsed = 0, 0.0
    while True:
        started = time.perf_counter()
        np.round(magnifier(crops.astype(np.float32) / 255.0) * 255.0).astype(np.uint8)
        elapsed += time.perf_counter() - started
        done += len(crops)
        if elapsed >= ctx.size.min_seconds:
            break
    return {"evm_fps": fps, "evm_magnify_fps": done / elapsed}


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


def stage_fps(stage: Stage, batch: Batch, info: VideoInfo, store_path: Path, repeats: int = 3) -> float:
    """Frames per second of a crop-encoding stage on decoded frames with face boxes
    (``batch.inputs`` holding ``face/*``): cropping, magnification (EVM), batching,
    transfers and the forward pass, everything but decoding and face detection.  One
    untimed run over ``batch`` first loads the model and warms up.

    Parameters
    ----------
    stage : EmbedStage or EvmStage
    batch : Batch
        Frames and face inputs, e.g. 32 frames.
    info : VideoInfo
        Describes the video (its ``fps`` drives the EVM filters).
    store_path : Path
        Passed to :meth:`Stage.open` (EVM writes its video next to it when asked).
    repeats : int, default 3
        Timed passes over ``batch``.
    """
    warm = stage.open(info, store_path)
    warm.process(batch)
    warm.finish()
    _sync(torch.device(stage.device))
    t0 = time.perf_counter()
    run = stage.open(info, store_path)
    for _ in range(repeats):
        run.process(batch)
    run.finish()
    _sync(torch.device(stage.device))
    return repeats * len(batch) / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
