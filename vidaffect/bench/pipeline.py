"""Extraction end to end (one process, and worker processes), training, prediction
and rendering: ``extract_fps``, ``extract_workers1_fps`` and ``extract_workers_fps``
(with their ratio ``extract_workers_speedup``), ``train_seq_per_s`` (and
``_inmemory``), ``predict_fps`` (and ``_network``), training and prediction speed per
temporal head (``train_seq_per_s_<head>``, ``predict_fps_<head>``), ``render_fps``."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from lightning.fabric.utilities.seed import seed_everything
from torch.utils.data import DataLoader

from vidaffect.bench.context import Context, check
from vidaffect.bench.media import random_arrays, write_store
from vidaffect.bench.targets import head_key
from vidaffect.commands.extract import extract
from vidaffect.extraction.engine import Extractor, Plan
from vidaffect.io.predictions import CsvWriter
from vidaffect.io.video import VideoSource
from vidaffect.learn.checkpoint import load_model, save
from vidaffect.learn.dataset import VideoData, WindowDataset, compute_stats
from vidaffect.learn.heads import HEADS
from vidaffect.learn.hyper import resolve_sizes
from vidaffect.learn.inference import CHUNK, cpu_threads, predict_store, predict_windows
from vidaffect.learn.loop import make_fabric, train_step
from vidaffect.learn.losses import get_loss
from vidaffect.learn.modalities import load_inputs
from vidaffect.learn.networks import AffectNet
from vidaffect.learn.windows import hop_for, window_starts
from vidaffect.util.device import resolve_device
from vidaffect.util.threads import available_cores


def measure_extract(ctx: Context) -> dict[str, Any]:
    plan = Plan.make(None, params=ctx.stage_params())
    store = ctx.work / "features"
    extractor = Extractor(store, plan, ctx.device)
    try:
        check(extractor.run(VideoSource(ctx.warmup, "warmup")))  # models load here
        result = check(extractor.run(VideoSource(ctx.clip, "clip")))
    finally:
        extractor.close()
    return {"extract_fps": result.frames / result.seconds, "extract_stages": ",".join(plan.order)}


def measure_workers(ctx: Context) -> dict[str, Any]:
    """``extract()`` on one video per core with ``--workers`` = cores, then with one
    worker (in this process), wall time from the call to the summary: starting the
    workers and loading their models count.  On a GPU the workers share one encoder
    process (the default there)."""
    cores = available_cores()
    figures: dict[str, Any] = {"extract_workers": cores}
    for label, workers in (("extract_workers", cores), ("extract_workers1", 1)):
        started = time.perf_counter()
        summary = extract([ctx.worker_dir], ctx.work / f"features-{label}", params=ctx.stage_params(), workers=workers, device=ctx.device)
        elapsed = time.perf_counter() - started
        for result in summary.results:
            check(result)
        frames = sum(r.frames for r in summary.results)
        figures[f"{label}_fps"] = frames / elapsed
        if workers == cores:  # every worker extracted one video, all at once
            busy = max(r.seconds for r in summary.results)
            figures.update(extract_workers_videos=len(summary.results), extract_workers_frames=frames, extract_workers_busy_s=busy)
            figures["extract_workers_startup_s"] = elapsed - busy
    figures["extract_workers_speedup"] = figures["extract_workers_fps"] / figures["extract_workers1_fps"]
    return figures


def measure_render(ctx: Context) -> dict[str, Any]:
    """``render_fps``: `vidaffect render` of the clip with every layer and a
    predictions strip (decoding, drawing, encoding, carrying the audio), from the store
    :func:`measure_extract` made, with head and gaze added first."""
    from vidaffect.commands.render import render

    store = ctx.work / "features"
    extractor = Extractor(store, Plan.make(["head", "gaze"]), ctx.device)
    try:
        check(extractor.run(VideoSource(ctx.clip, "clip")))
    finally:
        extractor.close()
    with h5py.File(store / "clip.h5", "r") as h5:
        timestamps = h5["frames/timestamp"][:]
    predictions = ctx.work / "render-predictions.csv"
    writer = CsvWriter(predictions)
    with writer.video("clip") as write:
        write(0, timestamps, np.stack([np.sin(timestamps), np.cos(timestamps)], axis=1), np.ones(len(timestamps), bool))
    writer.close()
    started = time.perf_counter()
    render(ctx.clip, ctx.work / "render.mp4", store=store, predictions=predictions)
    return {"render_fps": len(timestamps) / (time.perf_counter() - started)}


def measure_train(ctx: Context) -> dict[str, Any]:
    """Training speed of the full network with each head; the lstm head (the thesis's)
    also from memory, for the reading-cost target."""
    seq_len, batch_size, steps = ctx.size.train
    figures: dict[str, Any] = {"train_net": "full", "train_seq_len": seq_len, "train_batch_size": batch_size}
    for head in HEADS:
        measured = train_throughput("full", head, seq_len=seq_len, batch_size=batch_size, batches=steps, device=ctx.device, in_memory=head == "lstm")
        figures[head_key("train_seq_per_s", head)] = measured["train_seq_per_s"]
        if head == "lstm":
            figures.update(measured)
    return figures


def measure_predict(ctx: Context) -> dict[str, Any]:
    """Prediction speed of the full network with each head on a stored video."""
    seq_len = ctx.size.train[0]
    figures: dict[str, Any] = {"predict_frames": ctx.size.predict_frames, "predict_seq_len": seq_len}
    for head in HEADS:
        measured = predict_throughput("full", head, frames=ctx.size.predict_frames, seq_len=seq_len, device=ctx.device)
        figures[head_key("predict_fps", head)] = measured["predict_fps_cached"]
        if head == "lstm":
            figures["predict_fps"] = measured["predict_fps_cached"]
            figures["predict_fps_network"] = measured["predict_fps_network"]
    return figures


def bench_model(net: str, head: str, frames: int, seq_len: int, folder: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """A made store of ``frames`` frames (every modality) and an untrained ``net`` with
    ``head`` saved as a checkpoint (speed and memory do not depend on the weights)."""
    model = AffectNet(net, head, resolve_sizes()).eval()
    store = write_store(folder / "bench.h5", random_arrays(frames, rng, model.modalities))
    ckpt = folder / "bench.ckpt"
    save(ckpt, model, compute_stats([store], model.modalities), {}, {}, 0, {}, seq_len)
    return store, ckpt


def train_throughput(
    net: str, head: str, seq_len: int, batch_size: int, batches: int, device: str, workers: int = 0, in_memory: bool = True
) -> dict[str, float]:
    """Training speed in windows (sequences) per second on synthetic stores.

    Returns ``train_seq_per_s`` (windows read from HDF5 stores through the training
    DataLoader) and, with ``in_memory``, ``train_seq_per_s_inmemory`` (the same batches
    held in memory, so the difference is the cost of reading).  Each is timed over
    ``batches`` SGD steps after one warm-up step, with the non-inertial loss.
    """

    fabric = make_fabric(device, devices=1)
    rng = np.random.default_rng(0)
    seed_everything(0, verbose=False)
    model = AffectNet(net, head, resolve_sizes())
    with tempfile.TemporaryDirectory() as tmp:
        per_video = 8  # windows per synthetic video (each frame in two, as the windows overlap by half)
        videos = []
        for i in range(math.ceil(batch_size / per_video)):
            n = (per_video - 1) * hop_for(seq_len) + seq_len
            path = write_store(Path(tmp) / f"v{i}.h5", random_arrays(n, rng, model.modalities))
            videos.append(VideoData(f"v{i}", path, rng.uniform(-1, 1, (n, 2)).astype(np.float32), n))
        stats = compute_stats([v.store for v in videos], model.modalities)
        data = WindowDataset(videos, model.modalities, stats, seq_len, model.validity)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model, optimizer = fabric.setup(model, optimizer)
        model.train()
        loader = fabric.setup_dataloaders(DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers))
        loss_fn = get_loss("noninertial")

        def timed(batch_source: Callable[[], Any]) -> float:
            done = steps = 0
            started = 0.0
            while steps <= batches:
                for batch in batch_source():
                    pred, loss = train_step(fabric, model, batch, loss_fn, optimizer)
                    loss.item()  # wait for the device
                    if steps == 0:  # the first step warms up
                        started = time.perf_counter()
                    else:
                        done += len(batch["mask"])
                    steps += 1
                    if steps > batches:
                        break
            return done / (time.perf_counter() - started)

        figures = {"train_seq_per_s": timed(lambda: loader)}
        if in_memory:
            cached = list(loader)
            figures["train_seq_per_s_inmemory"] = timed(lambda: cached)
        data.close()
    return figures


def predict_throughput(net: str, head: str, frames: int, seq_len: int, device: str, chunk: int = CHUNK) -> dict[str, float]:
    """Prediction speed on cached features, in frames per second.

    A synthetic store of ``frames`` frames and an untrained ``net`` with ``head``
    (:func:`bench_model`) go through :func:`predict_store` into a CSV, after one
    untimed warm-up.

    Returns ``predict_fps_cached`` (reading the store, the network over the blended
    windows, writing CSV rows) and ``predict_fps_network`` (the network alone on the
    same windows, batched as prediction batches them, inputs ready).
    """
    with tempfile.TemporaryDirectory() as tmp:
        store, ckpt = bench_model(net, head, frames, seq_len, Path(tmp), np.random.default_rng(0))
        loaded = load_model(ckpt, resolve_device(device))
        with h5py.File(store, "r") as h5:
            next(predict_windows(loaded, h5, chunk))
            arrays = loaded.arrays(*load_inputs(h5, loaded.modalities))
        starts = window_starts(frames, loaded.seq_len, loaded.hop)
        per_batch = max(1, chunk // loaded.hop)
        batches = [
            {m: torch.from_numpy(np.stack([x[s : s + seq_len] for s in starts[i : i + per_batch]])).to(loaded.device) for m, x in arrays.items()}
            for i in range(0, len(starts), per_batch)
        ]
        writer = CsvWriter(Path(tmp) / "bench.csv")
        t0 = time.perf_counter()
        with writer.video("bench") as write:
            predict_store(loaded, store, write, chunk)
        cached = frames / (time.perf_counter() - t0)
        writer.close()
        t0 = time.perf_counter()
        with torch.inference_mode(), cpu_threads(loaded.device):
            for batch in batches:
                pred = loaded.model(batch)
            pred.cpu()
        network = frames / (time.perf_counter() - t0)
    return {"predict_fps_cached": cached, "predict_fps_network": network}
