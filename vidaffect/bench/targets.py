"""The benchmark's targets (ratios measured in one run where possible, since machines
and their load differ) and the printed table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vidaffect.learn.heads import HEADS


@dataclass(frozen=True)
class Target:
    name: str
    value: Callable[[dict[str, Any]], float]
    op: str  # ">=" or "<="
    bound: float
    applies: Callable[[dict[str, Any]], str] = lambda r: ""  # a reason it does not apply, or ""
    note: Callable[[dict[str, Any]], str] = lambda r: ""  # what the reader needs to judge the value


def head_key(figure: str, head: str) -> str:
    """A figure's key for one temporal head, e.g. ``predict_fps_gru_attention``."""
    return f"{figure}_{head.replace('-', '_')}"


STAGE_FIGURES = ("face_fps", "pose_fps", "mel_fps", "encoder_stage_fps", "evm_fps")  # one per default stage


def _slowest_stage(r: dict[str, Any]) -> tuple[str, float]:
    name = min(STAGE_FIGURES, key=lambda k: r[k])
    return name, r[name]


def serial_bound_fps(r: dict[str, Any]) -> float:
    """The extraction rate if decoding and the stages, measured alone, ran one after
    another with no overhead: what one process can reach without overlapping them."""
    return 1.0 / sum(1.0 / r[k] for k in ("decode_fps", *STAGE_FIGURES))


def _at_640x360(r: dict[str, Any]) -> str:
    return "" if r["media"].startswith("640x360") else "media is not 640x360"


def _on_gpu(r: dict[str, Any]) -> str:
    return "" if r["device"].startswith("cuda") else "no GPU"


def _on_cpu(r: dict[str, Any]) -> str:
    return "" if r["device"] == "cpu" else "on a GPU"


def _two_cores(r: dict[str, Any]) -> str:
    return "" if r["cpu_count"] == 2 else f"the target is for 2 cores; {r['cpu_count']} here"


TARGETS = [
    Target(
        "encoder_stage_fps / encoder_raw_fps", lambda r: r["encoder_stage_fps"] / r["encoder_raw_fps"], ">=", 0.9, _on_cpu,
        lambda r: "the stage is bound by cropping on the CPU; the shared encoder batches across workers" if _on_cpu(r) else "",
    ),
    Target(
        "extract_fps / extract_serial_bound_fps", lambda r: r["extract_fps"] / serial_bound_fps(r), ">=", 0.9, _on_cpu,
        lambda r: f"decoding and the stages one after another allow {format_number(serial_bound_fps(r))} frames/s",
    ),
    Target(
        "extract_fps / slowest stage fps", lambda r: r["extract_fps"] / _slowest_stage(r)[1], ">=", 0.8,
        lambda r: "on the CPU the stages share the cores: see the target above" if _on_gpu(r) else "",
        lambda r: f"slowest stage: {_slowest_stage(r)[0]}",
    ),
    Target(
        "extract_workers_fps / extract_workers1_fps", lambda r: r["extract_workers_speedup"], ">=", 1.0, _two_cores,
        lambda r: f"--workers {r['extract_workers']} against --workers 1 on {r['extract_workers_videos']} videos, {r['cpu_count']} cores",
    ),
    Target("face_fps / face_mesh_raw_fps", lambda r: r["face_fps"] / r["face_mesh_raw_fps"], ">=", 0.9),
    Target("pose_fps / pose_raw_fps", lambda r: r["pose_fps"] / r["pose_raw_fps"], ">=", 0.9),
    Target(
        "train_seq_per_s / train_seq_per_s_inmemory", lambda r: r["train_seq_per_s"] / r["train_seq_per_s_inmemory"], ">=", 0.9
    ),
    Target(
        "extract_peak_rss_mb_long / extract_peak_rss_mb_short",
        lambda r: r["extract_peak_rss_mb_long"] / r["extract_peak_rss_mb_short"],
        "<=",
        1.2,
    ),
    Target(
        "predict_peak_rss_mb_long / predict_peak_rss_mb_short",
        lambda r: r["predict_peak_rss_mb_long"] / r["predict_peak_rss_mb_short"],
        "<=",
        1.2,
    ),
    Target("face_fps (640x360, 2 CPU cores)", lambda r: r["face_fps"], ">=", 100, _at_640x360),
    Target("pose_fps (640x360, 2 CPU cores)", lambda r: r["pose_fps"], ">=", 40, _at_640x360),
    Target(
        "encoder_raw_fps on a GPU (224x224, half precision)", lambda r: r["encoder_raw_fps"], ">=", 2000, _on_gpu,
        lambda r: f"forward passes of {r['encoder_raw_batch']} crops",
    ),
]


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its value and ``met`` (True, False, or None when it does not
    apply here, with the reason in ``note``)."""
    out = []
    for t in TARGETS:
        value = float(t.value(results))
        reason = t.applies(results)
        met = None if reason else (value >= t.bound if t.op == ">=" else value <= t.bound)
        note = "; ".join(n for n in (reason, t.note(results)) if n)
        out.append({"target": t.name, "value": value, "bound": f"{t.op} {t.bound:g}", "met": met, "note": note})
    return out


FIGURES = [  # (key, unit) in table order
    ("decode_fps", "frames/s"),
    ("face_mesh_raw_fps", "frames/s"),
    ("face_fps", "frames/s"),
    ("pose_raw_fps", "frames/s"),
    ("pose_fps", "frames/s"),
    ("mel_fps", "frames/s"),
    ("evm_magnify_fps", "crops/s"),
    ("evm_fps", "frames/s"),
    ("head_fps", "frames/s"),
    ("gaze_fps", "frames/s"),
    ("egemaps_fps", "frames/s"),
    ("encoder_raw_fps", "crops/s"),
    ("encoder_stage_fps", "frames/s"),
    ("extract_serial_bound_fps", "frames/s"),
    ("extract_fps", "frames/s"),
    ("extract_workers1_fps", "frames/s"),
    ("extract_workers_fps", "frames/s"),
    ("extract_workers_speedup", "x"),
    ("train_seq_per_s", "windows/s"),
    ("train_seq_per_s_inmemory", "windows/s"),
    *((head_key("train_seq_per_s", head), "windows/s") for head in HEADS),
    ("predict_fps", "frames/s"),
    ("render_fps", "frames/s"),
    ("predict_fps_network", "frames/s"),
    *((head_key("predict_fps", head), "frames/s") for head in HEADS),
    ("predict_rss_baseline_mb", "MB"),
    ("predict_peak_rss_mb_short", "MB"),
    ("predict_peak_rss_mb_long", "MB"),
    ("extract_rss_startup_peak_mb", "MB"),
    ("extract_rss_baseline_mb", "MB"),
    ("extract_peak_rss_mb_short", "MB"),
    ("extract_peak_rss_mb_long", "MB"),
]


def format_table(results: dict[str, Any]) -> str:
    """The figures, then each target with met / missed / n/a."""
    gpu = f", {results['gpu']}" if results.get("gpu") else ""
    lines = [
        f"vidaffect bench ({results.get('size', '')}) on {results['device']}{gpu}, {results['cpu_count']} CPU cores, "
        f"{results['platform']}; torch {results['torch_version']}, MediaPipe {results['mediapipe_version']}",
        f"media: {results['media']}; load average {results['load_average_start'][0]:.1f} -> {results['load_average_end'][0]:.1f}",
        "",
        f"{'figure':<40} {'value':>10}  unit",
    ]
    lines += [f"{key:<40} {format_number(results[key]):>10}  {unit}" for key, unit in FIGURES]
    lines += ["", f"{'target':<52} {'value':>8} {'required':>9}  result"]
    for t in results["targets"]:
        status = "n/a" if t["met"] is None else "met" if t["met"] else "MISSED"
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"{t['target']:<52} {format_number(t['value']):>8} {t['bound']:>9}  {status}{note}")
    if "projection_3m_frames" in results:
        gpu = "measured" if results["costs"]["gpu_measured"] else "assumed: 2000 crops/s"
        lines += ["", f"hours for 3 M frames, every default stage (from the costs above; GPU {gpu}):", f"{'cores':>6} {'no GPU':>8} {'1 GPU':>8}"]
        lines += [f"{row['cores']:>6} {row['cpu_hours']:>8.1f} {row['gpu_hours']:>8.1f}" for row in results["projection_3m_frames"]]
    return "\n".join(lines)


def format_number(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
