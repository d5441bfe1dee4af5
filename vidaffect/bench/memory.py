"""Peak resident memory of an extraction process on a clip and on one four times
longer (``extract_peak_rss_mb_short``/``_long``), each measured in a fresh process
(``python -m vidaffect.bench.memory``)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from vidaffect.bench.context import Context, check
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


def _start_rss_child(ctx: Context, clip: Path, label: str) -> subprocess.Popen:
    args = json.dumps(
        {
            "warmup": str(ctx.warmup),
            "clip": str(clip),
            "store": str(ctx.work / f"features-rss-{label}"),
            "device": ctx.device,
            "params": ctx.stage_params(),
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "vidaffect.bench.memory", args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
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


if __name__ == "__main__":  # the fresh process of the memory measurement (see _start_rss_child)
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(_rss_child(json.loads(sys.argv[1]))), flush=True)
