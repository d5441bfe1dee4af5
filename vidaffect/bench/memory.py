"""Peak resident memory of an extraction process on a clip and on one four times
longer (``extract_peak_rss_mb_short``/``_long``), and of a prediction process with a
transformer network on a stored video and on one four times longer
(``predict_peak_rss_mb_short``/``_long``), each measured in a fresh process
(``python -m vidaffect.bench.memory``)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vidaffect.bench.context import RSS_LENGTH_FACTOR, Context, check
from vidaffect.extraction.engine import Extractor, Plan
from vidaffect.io.video import VideoSource


def measure_rss(ctx: Context) -> dict[str, Any]:
    """Both clips in fresh processes at the same time: their peaks do not depend on
    each other, and the wall time halves."""
    children = {label: _start_rss_child(ctx, clip, label) for label, clip in (("short", ctx.rss_short), ("long", ctx.rss_long))}
    short, long = (_rss_child_result(children[label]) for label in ("short", "long"))
    return {
        "extract_peak_rss_mb_short": short["peak_mb"],
        "extract_peak_rss_mb_long": long["peak_mb"],
        "extract_rss_baseline_mb": min(short["baseline_mb"], long["baseline_mb"]),
        "extract_rss_startup_peak_mb": max(short["startup_peak_mb"], long["startup_peak_mb"]),
        "extract_rss_frames_short": short["frames"],
        "extract_rss_frames_long": long["frames"],
        "extract_rss_method": short["method"],
    }


PREDICT_RSS_NET = "feature-transformer"  # a transformer head over 2048 values a frame


def measure_predict_rss(ctx: Context) -> dict[str, Any]:
    """Prediction with :data:`PREDICT_RSS_NET` on made stores of ``predict_rss_frames``
    frames and four times that, each in a fresh process (one after the other: their
    stores are large, and so are the peaks to compare)."""
    from vidaffect.bench.pipeline import bench_model  # imports torch; only this measurement needs it here

    seq_len = ctx.size.train[0]
    results = {}
    rng = np.random.default_rng(0)
    for label, frames in (("short", ctx.size.predict_rss_frames), ("long", ctx.size.predict_rss_frames * RSS_LENGTH_FACTOR)):
        folder = ctx.work / f"predict-rss-{label}"
        folder.mkdir()
        store, ckpt = bench_model(PREDICT_RSS_NET, "transformer", frames, seq_len, folder, rng)
        warmup, _ = bench_model(PREDICT_RSS_NET, "transformer", 2 * seq_len, seq_len, folder / "warmup", rng)
        args = {"kind": "predict", "ckpt": str(ckpt), "warmup": str(warmup), "store": str(store), "device": ctx.device}
        results[label] = _rss_child_result(_start_child(args))
        shutil.rmtree(folder)
    return {
        "predict_peak_rss_mb_short": results["short"]["peak_mb"],
        "predict_peak_rss_mb_long": results["long"]["peak_mb"],
        "predict_rss_baseline_mb": min(results["short"]["baseline_mb"], results["long"]["baseline_mb"]),
        "predict_rss_frames_short": results["short"]["frames"],
        "predict_rss_frames_long": results["long"]["frames"],
        "predict_rss_net": f"{PREDICT_RSS_NET}, transformer head, seq_len {seq_len}",
    }


def _start_rss_child(ctx: Context, clip: Path, label: str) -> subprocess.Popen:
    return _start_child(
        {
            "kind": "extract",
            "warmup": str(ctx.warmup),
            "clip": str(clip),
            "store": str(ctx.work / f"features-rss-{label}"),
            "device": ctx.device,
            "params": ctx.stage_params(),
        }
    )


def _start_child(args: dict[str, Any]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vidaffect.bench.memory", json.dumps(args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _rss_child_result(proc: subprocess.Popen) -> dict[str, Any]:
    stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"bench: the memory measurement process failed (exit status {proc.returncode}): {tail}")
    return json.loads(lines[-1])


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in MB; None when
    there is no /proc (not Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    values = [line.split()[1] for line in lines if line.startswith(field + ":")]
    return int(values[0]) / 2**10 if values else None  # kB


def peak_rss_mb() -> float:
    """Peak resident set size of this process (since :func:`reset_peak_rss`), in MB
    (2**20 bytes)."""
    import resource

    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 2**10  # bytes on macOS, KiB elsewhere


def reset_peak_rss() -> bool:
    """Start the peak resident set size afresh (Linux: ``/proc/self/clear_refs``);
    False where the system cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rss_child(args: dict[str, Any]) -> dict[str, Any]:
    """Extract the warm-up clip (libraries, models and buffers settle), then measure
    the peak while extracting ``clip`` with every default stage."""
    extractor = Extractor(args["store"], Plan.make(None, params=args["params"]), args["device"])
    check(extractor.run(VideoSource(Path(args["warmup"]), "warmup")))
    startup_peak = peak_rss_mb()
    reset = reset_peak_rss()
    baseline = _proc_status_mb("VmRSS") or startup_peak
    result = check(extractor.run(VideoSource(Path(args["clip"]), "clip")))
    return {
        "startup_peak_mb": startup_peak,
        "baseline_mb": baseline,
        "peak_mb": peak_rss_mb(),
        "frames": result.frames,
        "method": "peak during the clip, models loaded (VmHWM reset)" if reset else "peak of the whole process (ru_maxrss)",
    }


def _predict_rss_child(args: dict[str, Any]) -> dict[str, Any]:
    """Predict the warm-up store (libraries, the model and buffers settle), then
    measure the peak while predicting ``store`` into a CSV, as ``vidaffect predict``
    does."""
    from vidaffect.io.predictions import CsvWriter
    from vidaffect.learn.checkpoint import load_model
    from vidaffect.learn.inference import predict_store

    loaded = load_model(args["ckpt"], args["device"])
    out = Path(args["store"]).with_suffix(".csv")
    frames = {}
    for label in ("warmup", "store"):
        if label == "store":
            startup_peak = peak_rss_mb()
            reset = reset_peak_rss()
            baseline = _proc_status_mb("VmRSS") or startup_peak
        writer = CsvWriter(out)
        with writer.video("bench") as write:
            frames[label] = predict_store(loaded, Path(args[label]), write)
        writer.close()
    return {
        "startup_peak_mb": startup_peak,
        "baseline_mb": baseline,
        "peak_mb": peak_rss_mb(),
        "frames": frames["store"],
        "method": "peak during the video, model loaded (VmHWM reset)" if reset else "peak of the whole process (ru_maxrss)",
    }


if __name__ == "__main__":  # the fresh process of the memory measurements (see _start_child)
    logging.basicConfig(level=logging.WARNING)
    child_args = json.loads(sys.argv[1])
    child = _predict_rss_child if child_args["kind"] == "predict" else _rss_child
    print(json.dumps(child(child_args)), flush=True)
