"""`vidaffect bench` at its tiny size: every figure is produced and positive, the
targets are judged correctly.  No thresholds on speed here: speed is the benchmark's
business, not the tests'."""

import importlib.util
import json
import math
from importlib import metadata

import numpy as np
import pytest
import torch

from vidaffect.bench.context import SIZES
from vidaffect.bench.memory import peak_rss_mb, reset_peak_rss
from vidaffect.bench.run import bench
from vidaffect.bench.targets import evaluate_targets, format_table, serial_bound_fps

FIGURES = [
    "decode_fps",
    "face_fps",
    "face_mesh_raw_fps",
    "pose_fps",
    "pose_raw_fps",
    "mel_fps",
    "evm_fps",
    "head_fps",
    "gaze_fps",
    "egemaps_fps",
    "encoder_raw_fps",
    "encoder_stage_fps",
    "extract_fps",
    "extract_workers_fps",
    "extract_workers1_fps",
    "extract_workers_speedup",
    "decode_cpu_ms",
    "face_cpu_ms",
    "pose_cpu_ms",
    "mel_cpu_ms",
    "encoder_stage_cpu_ms",
    "evm_cpu_ms",
    "train_seq_per_s",
    "train_seq_per_s_inmemory",
    "predict_fps",
    "render_fps",
    "extract_peak_rss_mb_short",
    "extract_peak_rss_mb_long",
    *(f"{figure}_{head}" for figure in ("train_seq_per_s", "predict_fps") for head in ("lstm", "gru", "gru_attention", "transformer")),
    "predict_peak_rss_mb_short",
    "predict_peak_rss_mb_long",
]


def test_tiny_bench_measures_every_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    table = bench(json_out=out, device="cpu", size="tiny")
    results = json.loads(out.read_text())

    for key in FIGURES:
        if key == "egemaps_fps" and importlib.util.find_spec("opensmile") is None:
            continue  # an optional extra; CI installs it
        value = results[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
        assert key in table or key.endswith("_cpu_ms")
    assert results["extract_workers_speedup"] == pytest.approx(results["extract_workers_fps"] / results["extract_workers1_fps"])
    assert results["device"] == "cpu"
    assert results["torch_version"] == torch.__version__
    assert results["mediapipe_version"] == metadata.version("mediapipe")
    assert results["cpu_count"] >= 1 and results["platform"]
    assert results["size"] == "tiny"
    assert results["extract_serial_bound_fps"] == pytest.approx(serial_bound_fps(results))

    # The made clip shows a real face that the face stage finds, and a body.
    assert results["face_found_fraction"] == 1.0
    assert results["pose_found_fraction"] > 0.5
    # Every default stage ran end to end, on one video per core with --workers.
    assert results["extract_stages"] == "face,pose,embed,evm,mel"
    assert results["extract_workers"] == results["cpu_count"] == results["extract_workers_videos"]
    # The long clip of the memory figure is four times the short one, and the peak
    # over a clip holds at least the models that were resident before it.
    tiny = SIZES["tiny"]
    assert results["extract_rss_frames_short"] == tiny.rss_frames
    assert results["extract_rss_frames_long"] == 4 * tiny.rss_frames
    assert results["extract_peak_rss_mb_short"] >= 0.9 * results["extract_rss_baseline_mb"] > 100
    # prediction memory: a transformer network on a stored video and one four times longer
    assert results["predict_rss_frames_short"] == tiny.predict_rss_frames
    assert results["predict_rss_frames_long"] == 4 * tiny.predict_rss_frames
    assert results["predict_peak_rss_mb_short"] >= 0.9 * results["predict_rss_baseline_mb"] > 100
    assert results["train_seq_per_s"] == results["train_seq_per_s_lstm"]

    assert [t["target"] for t in results["targets"]] == [t["target"] for t in evaluate_targets(results)]
    for t in results["targets"]:
        assert t["met"] in (True, False, None)
        assert t["target"] in table
    gpu = results["targets"][-1]
    assert gpu["met"] is None and gpu["note"].startswith("no GPU")

    # Costs for --dry-run come from the figures (tiny ones are never saved), and the
    # projection falls with more cores and with a GPU.
    costs = results["costs"]
    assert costs["cpu"]["pose"] == pytest.approx(results["pose_cpu_ms"] / 1000)
    assert costs["cpu"]["embed"] == pytest.approx(results["encoder_stage_cpu_ms"] / 1000)
    assert costs["cpu"]["head"] == pytest.approx(results["head_cpu_ms"] / 1000)  # a dry run with head counts it
    assert costs["worker_mb"] == results["extract_peak_rss_mb_short"] and costs["efficiency"] > 0
    assert not (tmp_path / "cache" / "vidaffect").exists()
    hours = results["projection_3m_frames"]
    assert [row["cores"] for row in hours] == [2, 8, 16, 32, 64]
    assert all(a["cpu_hours"] > b["cpu_hours"] for a, b in zip(hours, hours[1:], strict=False))
    assert all(row["gpu_hours"] < row["cpu_hours"] for row in hours)
    assert "hours for 3 M frames" in table


def _results(**figures):
    base = {
        "device": "cpu",
        "gpu": "",
        "cpu_count": 2,
        "platform": "Linux",
        "torch_version": "2",
        "mediapipe_version": "0.10.14",
        "media": "640x360 H.264",
        "load_average_start": [1.0, 1.0, 1.0],
        "load_average_end": [1.0, 1.0, 1.0],
        "size": "full",
        "decode_fps": 1500.0,
        "face_fps": 150.0,
        "face_mesh_raw_fps": 160.0,
        "pose_fps": 30.0,
        "pose_raw_fps": 40.0,
        "mel_fps": 5000.0,
        "evm_magnify_fps": 400.0,
        "evm_fps": 9.0,
        "head_fps": 600.0,
        "gaze_fps": 5000.0,
        "egemaps_fps": 400.0,
        "encoder_raw_fps": 10.0,
        "encoder_raw_batch": 32,
        "encoder_stage_fps": 9.5,
        "extract_fps": 4.5,
        "extract_workers_fps": 4.0,
        "extract_workers1_fps": 3.2,
        "extract_workers_speedup": 1.25,
        "extract_workers": 2,
        "extract_workers_videos": 2,
        "train_seq_per_s": 8.0,
        "train_seq_per_s_inmemory": 10.0,
        "predict_fps": 5000.0,
        "predict_fps_network": 20000.0,
        "render_fps": 60.0,
        "extract_rss_startup_peak_mb": 900.0,
        "extract_rss_baseline_mb": 800.0,
        "extract_peak_rss_mb_short": 1000.0,
        "extract_peak_rss_mb_long": 1100.0,
        "predict_rss_baseline_mb": 400.0,
        "predict_peak_rss_mb_short": 500.0,
        "predict_peak_rss_mb_long": 650.0,
        **{f"{figure}_{head}": 10.0 for figure in ("train_seq_per_s", "predict_fps") for head in ("lstm", "gru", "gru_attention", "transformer")},
    }
    base.update(figures)
    return base


def test_targets_are_judged_from_the_figures():
    targets = {t["target"]: t for t in evaluate_targets(_results())}
    ratio = targets["encoder_stage_fps / encoder_raw_fps"]
    assert ratio["value"] == pytest.approx(0.95) and ratio["met"] is True
    # decode, the stages one after another: 1 / (1/1500 + 1/150 + 1/30 + 1/5000 + 1/9.5 + 1/9) = 3.89 frames/s
    serial = targets["extract_fps / extract_serial_bound_fps"]
    assert serial["value"] == pytest.approx(4.5 / 3.8886, rel=1e-3) and serial["met"] is True
    assert serial["note"] == "decoding and the stages one after another allow 3.89 frames/s"
    # slowest of face 150, pose 30, mel 5000, embed 9.5, evm 9: evm; judged on a GPU only
    slowest = targets["extract_fps / slowest stage fps"]
    assert slowest["value"] == pytest.approx(0.5) and slowest["met"] is None
    assert slowest["note"].startswith("on the CPU the stages share the cores") and slowest["note"].endswith("slowest stage: evm_fps")
    workers = targets["extract_workers_fps / extract_workers1_fps"]
    assert workers["value"] == pytest.approx(1.25) and workers["met"] is True
    assert targets["face_fps / face_mesh_raw_fps"]["value"] == pytest.approx(150 / 160) and targets["face_fps / face_mesh_raw_fps"]["met"] is True
    assert targets["pose_fps / pose_raw_fps"]["value"] == pytest.approx(0.75) and targets["pose_fps / pose_raw_fps"]["met"] is False
    loader = targets["train_seq_per_s / train_seq_per_s_inmemory"]
    assert loader["value"] == pytest.approx(0.8) and loader["met"] is False
    memory = targets["extract_peak_rss_mb_long / extract_peak_rss_mb_short"]
    assert memory["value"] == pytest.approx(1.1) and memory["met"] is True
    predict_memory = targets["predict_peak_rss_mb_long / predict_peak_rss_mb_short"]
    assert predict_memory["value"] == pytest.approx(1.3) and predict_memory["met"] is False
    assert targets["face_fps (640x360, 2 CPU cores)"]["met"] is True
    assert targets["pose_fps (640x360, 2 CPU cores)"]["met"] is False
    gpu_target = "encoder_raw_fps on a GPU (224x224, half precision)"
    assert targets[gpu_target]["met"] is None

    on_gpu = {t["target"]: t for t in evaluate_targets(_results(device="cuda", encoder_raw_fps=2500.0, encoder_raw_batch=256))}
    assert on_gpu[gpu_target]["met"] is True and on_gpu[gpu_target]["note"] == "forward passes of 256 crops"
    assert on_gpu["extract_fps / slowest stage fps"]["met"] is False
    assert on_gpu["extract_fps / extract_serial_bound_fps"]["met"] is None
    small = {t["target"]: t for t in evaluate_targets(_results(media="256x144 H.264"))}
    assert small["face_fps (640x360, 2 CPU cores)"]["met"] is None
    many = {t["target"]: t for t in evaluate_targets(_results(cpu_count=16))}
    assert many["extract_workers_fps / extract_workers1_fps"]["met"] is None  # the bound is for 2 cores


def test_table_shows_each_figure_and_verdict():
    results = _results()
    results["extract_serial_bound_fps"] = serial_bound_fps(results)
    results["targets"] = evaluate_targets(results)
    lines = format_table(results).splitlines()
    assert any(line.split()[:2] == ["extract_serial_bound_fps", "3.89"] for line in lines)
    pose = next(line for line in lines if line.startswith("pose_fps (640x360"))
    assert pose.split()[-1] == "MISSED" and " 30.0 " in pose
    face = next(line for line in lines if line.startswith("face_fps (640x360"))
    assert face.split()[-1] == "met"
    assert any(line.startswith("encoder_raw_fps on a GPU") and "n/a (no GPU" in line for line in lines)
    assert any(line.split()[:2] == ["extract_peak_rss_mb_long", "1100"] for line in lines)


def test_unknown_size_is_rejected():
    with pytest.raises(ValueError, match="unknown bench size 'huge'; choose from full, quick, tiny"):
        bench(size="huge", device="cpu")


def test_peak_memory_rises_with_an_allocation_and_resets():
    if not reset_peak_rss():  # from here the peak is the current resident memory
        pytest.skip("this system cannot reset the peak resident memory")
    before = peak_rss_mb()
    # 64 MB: above malloc's largest mmap threshold, so fresh pages, not a reused heap
    block = np.ones(64 * 2**20, np.uint8)
    assert peak_rss_mb() >= before + 60
    del block
    reset_peak_rss()
    assert peak_rss_mb() < before + 16
