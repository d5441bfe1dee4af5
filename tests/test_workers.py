"""Workers that scale: thread pools sized to cores / workers, `--workers auto`, the shared
encoder process (same arrays as the plain path), and `extract --dry-run`."""

import json
import multiprocessing as mp
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from media import astronaut_frame, make_video, noise_frames, tone

from vidaffect.cli import main
from vidaffect.commands.extract import dry_run, extract
from vidaffect.extraction import pool
from vidaffect.extraction.costs import REFERENCE, Costs, FrameCost, estimate_seconds, save_costs
from vidaffect.extraction.encoder_service import EncoderService
from vidaffect.extraction.engine import Plan
from vidaffect.stages.embed import EncoderParams
from vidaffect.stages.encoder import load_encoder
from vidaffect.util.threads import available_cores, worker_environment

ENCODER = {"weights": "random", "batch_size": 4}  # small passes: quick on a few frames


def _threads_seen() -> dict:
    """In a worker: every pool's size, and the threads a new MediaPipe graph adds."""
    import cv2
    from threadpoolctl import threadpool_info

    from vidaffect.stages.mediapipe_solutions import mediapipe_solution

    before = len(os.listdir("/proc/self/task"))
    solution = mediapipe_solution("pose.Pose", static_image_mode=False, model_complexity=1)
    added = len(os.listdir("/proc/self/task")) - before
    solution.close()
    return {
        "torch": torch.get_num_threads(),
        "cv2": cv2.getNumThreads(),
        "blas": sorted({p["num_threads"] for p in threadpool_info()}),
        "omp_env": os.environ["OMP_NUM_THREADS"],
        "mediapipe": added,
    }


def test_a_workers_thread_pools_are_cores_over_workers(tmp_path):
    sizing = pool.plan_workers(2, videos=2, costs=REFERENCE)
    expected = max(1, available_cores() // 2)
    assert (sizing.workers, sizing.threads) == (2, expected)
    args = (tmp_path, Plan.make(["mel"]), "cpu", False)
    with worker_environment(sizing.threads), pool.start_workers(args, sizing, mp.get_context("spawn").Queue()) as workers:
        seen = [f.result(timeout=300) for f in [workers.submit(_threads_seen) for _ in range(2)]]
    for s in seen:
        assert s == {"torch": expected, "cv2": expected, "blas": [expected], "omp_env": str(expected), "mediapipe": expected}
    assert torch.get_num_threads() == available_cores()  # this process is untouched


def test_workers_auto_fills_the_cores_as_videos_and_memory_allow(monkeypatch):
    monkeypatch.setattr(pool, "available_cores", lambda: 16)
    monkeypatch.setattr(pool, "available_memory_mb", lambda: 64000.0)
    costs = REFERENCE  # 1500 MB per worker
    auto = pool.plan_workers("auto", videos=40, costs=costs)
    assert (auto.workers, auto.threads) == (16, 1)
    assert "16 worker(s) x 1 thread(s) for 40 video(s) on 16 cores, 62.5 GB available" in auto.reason
    assert (pool.plan_workers("auto", videos=3, costs=costs).workers, pool.plan_workers("auto", videos=3, costs=costs).threads) == (3, 5)
    assert pool.plan_workers("auto", videos=40, costs=costs, shared_encoder=True).workers == 15  # a core for the encoder
    monkeypatch.setattr(pool, "available_memory_mb", lambda: 6000.0)
    assert pool.plan_workers("auto", videos=40, costs=costs).workers == 3  # 6000 MB x 0.85 // 1500 MB
    assert (pool.plan_workers(4, videos=2, costs=costs).workers, pool.plan_workers(4, videos=2, costs=costs).threads) == (2, 8)
    with pytest.raises(ValueError, match="--workers 0"):
        pool.plan_workers(0, videos=2, costs=costs)


def test_cli_workers_accepts_a_number_or_auto(tmp_path):
    for bad in ("0", "many"):
        result = CliRunner().invoke(main, ["extract", str(tmp_path), "--workers", bad, "--dry-run"])
        assert result.exit_code == 2 and "neither a number of processes" in result.output


def face_clips(folder: Path, n: int = 2, frames: int = 10) -> Path:
    frame = astronaut_frame((144, 256), face_height=50)
    for k in range(n):
        make_video(folder / f"clip{k}.mp4", (np.roll(frame, 3 * i + k, axis=1) for i in range(frames)))
    return folder


def test_shared_encoder_gives_the_arrays_of_the_plain_path(media, tmp_path):
    face_clips(media)
    params = {"embed": ENCODER, "evm": ENCODER}
    plain = extract([media], tmp_path / "plain", stages=["embed", "evm"], params=params, workers=2)
    shared = extract([media], tmp_path / "shared", stages=["embed", "evm"], params=params, workers=2, shared_encoder=True)
    assert [r.status for r in plain.results] == [r.status for r in shared.results] == ["done", "done"]
    for k in range(2):
        with h5py.File(tmp_path / "plain" / f"clip{k}.h5") as a, h5py.File(tmp_path / "shared" / f"clip{k}.h5") as b:
            assert a["embed/valid"][()].all()  # every frame had a face to encode
            for name in ("embed/resnet50", "embed/valid", "evm/resnet50", "evm/valid"):
                np.testing.assert_array_equal(b[name][()], a[name][()], err_msg=name)
            assert b["embed"].attrs["weights"] == a["embed"].attrs["weights"]


def test_encoder_service_answers_in_order_ignores_stale_answers_and_reports_its_death():
    threads = torch.get_num_threads()
    service = EncoderService({"embed": EncoderParams(**ENCODER)}, "cpu", workers=1, threads=threads)
    try:
        crops = np.random.default_rng(0).integers(0, 256, (7, 224, 224, 3), dtype=np.uint8)
        reference = load_encoder("random", "cpu", progress=False)
        dead = service.client(0)
        dead.install()
        dead.submit(crops[:4], 0, 4)  # a worker that dies before reading its answer
        client = service.client(0)  # its successor, with the same slots
        client.install()
        requests = [client.submit(crops[:4], 0, 4), client.submit(crops[4:], 0, 4)]
        got = np.concatenate([r.result() for r in requests])
        np.testing.assert_array_equal(got, np.concatenate([reference(crops[:4], 4), reference(crops[4:], 4)]))
        service.process.kill()
        service.process.join()
        assert not service.check()
        waiting = client.submit(crops[:4], 0, 4)
        with pytest.raises(RuntimeError, match="shared encoder process stopped"):
            waiting.result()
    finally:
        service.close()
        from vidaffect.stages.encoder import release_encoder

        p = EncoderParams(**ENCODER)
        release_encoder(p.encoder, p.weights, p.weights_sha256, "cpu")


def test_estimate_follows_the_cost_model():
    costs = Costs(cpu={"decode": 0.01}, cpu_beside_gpu={}, gpu={}, worker_mb=1000, startup_s=5, efficiency=0.8, cores=2, source="test")
    work = FrameCost(serial=80.0, threaded=40.0)
    # 4 workers x 2 threads on 8 cores: each worker (80 + 40 / 2) / 4 = 25 s; all cores (80 + 40) / 8 = 15 s
    assert estimate_seconds(costs, work, workers=4, threads=2, cores=8) == pytest.approx(5 + 25 / 0.8)
    # 1 worker x 8 threads: 80 + 40 / 8 = 85 s
    assert estimate_seconds(costs, work, workers=1, threads=8, cores=8) == pytest.approx(5 + 85 / 0.8)
    # a GPU slower than the cores decides
    assert estimate_seconds(costs, FrameCost(serial=8.0, gpu=100.0), workers=8, threads=1, cores=8) == pytest.approx(105)
    assert REFERENCE.frame_seconds(["face", "embed"], "cpu").threaded == REFERENCE.cpu["embed"]
    on_gpu = REFERENCE.frame_seconds(["face", "embed"], "cuda")
    assert on_gpu.gpu == REFERENCE.gpu["embed"] and on_gpu.serial == pytest.approx(
        REFERENCE.cpu["decode"] + REFERENCE.cpu["face"] + REFERENCE.cpu_beside_gpu["embed"]
    )


def test_dry_run_lists_frames_and_stages_to_run_and_estimates_time(media, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_video(media / "a.mp4", noise_frames(40), audio=tone(1.6))
    make_video(media / "b.mp4", noise_frames(25), audio=tone(1.0))
    (media / "c.mp4").write_bytes(b"\x00" * 50)
    store = tmp_path / "features"
    extract([media / "a.mp4"], store, stages=["mel"])
    before = sorted(p.name for p in store.iterdir())

    plan = dry_run([media], store, stages=["mel"], workers=1, device="cpu")
    work = {Path(v.path).name: v for v in plan.videos}
    assert (work["a.mp4"].frames, work["a.mp4"].todo) == (40, [])
    assert (work["b.mp4"].frames, work["b.mp4"].todo) == (25, ["mel"])
    assert "not a readable video file" in work["c.mp4"].problem
    expected = estimate_seconds(REFERENCE, REFERENCE.frame_seconds(["mel"], "cpu") * 25, 1, available_cores())
    assert plan.seconds == pytest.approx(expected)
    report = plan.report()
    assert "3 video(s): 1 to extract (25 frames), 1 up to date, 1 unreadable" in report
    assert "built-in figures of the reference machine" in report
    assert sorted(p.name for p in store.iterdir()) == before  # nothing written

    # Costs measured by the bench on this machine take over; --force counts every stage.
    measured = Costs(**{**json.loads(json.dumps(REFERENCE.__dict__)), "source": "measured here", "startup_s": 1.0})
    save_costs(measured)
    forced = dry_run([media / "a.mp4"], store, stages=["mel"], force=True, device="cpu")
    assert forced.videos[0].todo == ["mel"] and forced.costs.source == "measured here"
    out = CliRunner().invoke(main, ["extract", str(media / "a.mp4"), "--stages", "mel", "--store", str(store), "--dry-run", "--force"])
    assert out.exit_code == 0 and "1 to extract (40 frames)" in out.output and "costs: measured here" in out.output

    # pose.every N runs the pose model on 1 frame in N: its cost counts 1/N.
    pose = [dry_run([media / "b.mp4"], store, stages=["pose"], params={"pose": {"every": n}}, workers=1, device="cpu") for n in (1, 3)]
    saved = (25 * measured.cpu["pose"] * (1 - 1 / 3)) / measured.efficiency
    assert pose[0].seconds - pose[1].seconds == pytest.approx(saved)
