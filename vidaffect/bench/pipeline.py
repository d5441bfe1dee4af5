"""Extraction end to end (one process, and worker processes), training and
prediction: ``extract_fps``, ``extract_workers1_fps`` and ``extract_workers_fps`` (with
their ratio ``extract_workers_speedup``), ``train_seq_per_s`` (and ``_inmemory``),
``predict_fps`` (and ``_network``)."""

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
from vidaffect.commands.extract import extract
from vidaffect.extraction.engine import Extractor, Plan
from vidaffect.io.predictions import CsvWriter
from vidaffect.io.video import VideoSource
from vidaffect.learn.checkpoint import load_model, save
from vidaffect.learn.dataset import VideoData, WindowDataset, compute_stats
from vidaffect.learn.inference import WINDOW, cpu_threads, predict_store, predict_windows
from vidaffect.learn.loop import make_fabric, train_step
from vidaffect.learn.losses import get_loss
from vidaffect.learn.modalities import load_inputs
from vidaffect.learn.networks import AffectNet, net_modalities
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


def measure_train(ctx: Context) -> dict[str, Any]:
    seq_len, batch_size, steps = ctx.size.train
    figures = train_throughput("full", seq_len=seq_len, batch_size=batch_size, batches=steps, device=ctx.device)
    return {**figures, "train_net": "full", "train_seq_len": seq_len, "train_batch_size": batch_size}


def measure_predict(ctx: Context) -> dict[str, Any]:
    figures = predict_throughput("full", frames=ctx.size.predict_frames, device=ctx.device)
    return {
        "predict_fps": figures["predict_fps_cached"],
        "predict_fps_network": figures["predict_fps_network"],
        "predict_frames": ctx.size.predict_frames,
    }


def train_throughput(net: str, seq_len: int, batch_size: int, batches: int, device: str, workers: int = 0) -> dict[str, float]:
    """Training speed in windows (sequences) per second on synthetic stores.

    Returns ``train_seq_per_s`` (windows read from HDF5 stores through the training
    DataLoader) and ``train_seq_per_s_inmemory`` (the same batches held in memory, so
    the difference is the cost of reading).  Each is timed over ``batches`` SGD steps
    after one warm-up step, with the non-inertial loss.
    """

    fabric = make_fabric(device, single=True)
    modalities = net_modalities(net)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        per_video = 8  # windows per synthetic video
        videos = []
        for i in range(math.ceil(batch_size / per_video)):
            n = per_video * seq_len
            path = write_store(Path(tmp) / f"v{i}.h5", random_arrays(n, rng))
            videos.append(VideoData(f"v{i}", path, rng.uniform(-1, 1, (n, 2)).astype(np.float32)))
        stats = compute_stats([v.store for v in videos], modalities)
        seed_everything(0, verbose=False)
        model = AffectNet(net)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model, optimizer = fabric.setup(model, optimizer)
        model.train()
        data = WindowDataset(videos, modalities, stats, seq_len)
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

        from_store = timed(lambda: loader)
        cached = list(loader)
        in_memory = timed(lambda: cached)
        data.close()
    return {"train_seq_per_s": from_store, "train_seq_per_s_inmemory": in_memory}


def predict_throughput(net: str, frames: int, device: str, window: int = WINDOW) -> dict[str, float]:
    """Prediction speed on cached features, in frames per second.

    A synthetic store of ``frames`` frames (every modality) and an untrained ``net``
    saved as a checkpoint (speed does not depend on the weights) go through
    :func:`predict_store` into a CSV, after one untimed warm-up window.

    Returns ``predict_fps_cached`` (reading the store, the network, writing CSV rows)
    and ``predict_fps_network`` (the network alone on the same windows, inputs ready).
    """


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
        with torch.inference_mode(), cpu_threads(loaded.device):
            state = None
            for x in inputs:
                pred, state = loaded.model(x, state)
            pred.cpu()
        network = frames / (time.perf_counter() - t0)
    return {"predict_fps_cached": cached, "predict_fps_network": network}
