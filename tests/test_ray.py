"""`extract --executor ray` on a local Ray cluster (127.0.0.1 only, see conftest.py),
started once for the module: the stores equal a local run's, a bad video fails alone, a
task whose worker process is killed runs again and the summary says so."""

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from media import astronaut_frame, make_video, noise_frames, tone

from vidaffect.commands.extract import extract

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'vidaffect[ray]')")

ENCODED = ("embed/resnet50", "evm/resnet50")
RANDOM = {stage: {"weights": "random", "batch_size": 4} for stage in ("embed", "evm")}  # small passes: quick on 12 frames


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def datasets(path):
    """Every dataset of a store, by name."""
    out = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_ray_stores_equal_a_local_run_and_a_bad_video_fails_alone(cluster, media, tmp_path):
    frame = astronaut_frame((144, 256), face_height=50)
    for k in range(2):
        make_video(media / f"clip{k}.mp4", (np.roll(frame, 3 * i + k, axis=1) for i in range(12)), audio=tone(0.5))
    (media / "broken.mp4").write_bytes(b"\x00" * 100)

    local = extract([media], tmp_path / "local", params=RANDOM)
    assert [r.status for r in local.results].count("done") == 2
    remote = extract([media], tmp_path / "ray", params=RANDOM, executor="ray")

    status = {Path(r.path).name: (r.status, r.reason) for r in remote.results}
    assert status["clip0.mp4"] == status["clip1.mp4"] == ("done", "")
    assert status["broken.mp4"][0] == "failed" and "not a readable video file" in status["broken.mp4"][1]
    assert "2 done, 0 skipped (up to date), 1 failed" in remote.report()
    for k in range(2):
        ours, theirs = datasets(tmp_path / "ray" / f"clip{k}.h5"), datasets(tmp_path / "local" / f"clip{k}.h5")
        assert sorted(ours) == sorted(theirs)
        assert {"face/landmarks", "pose/keypoints", "embed/resnet50", "evm/resnet50", "audio/mel"} <= set(ours)
        for name, values in theirs.items():
            if name in ENCODED:
                # A Ray task runs the network on 1 thread, this process on every core;
                # on small batches PyTorch then sums in another order (measured: up to
                # 1.2e-4 in float32), and float16 storage rounds that to at most one
                # unit in the last place (2**-10 of the value) more.
                np.testing.assert_allclose(ours[name], values, rtol=2**-10, atol=2.5e-4, err_msg=name)
            else:
                np.testing.assert_array_equal(ours[name], values, err_msg=name)
        assert ours["face/valid"].all()  # the made face was found, so the comparison means something
    assert not list((tmp_path / "ray").glob("*.tmp"))
    # Current stores are skipped, as in a local run.
    again = extract([media / "clip0.mp4"], tmp_path / "ray", params=RANDOM, executor="ray")
    assert [r.status for r in again.results] == ["skipped"]


def _pid_writing(path: Path) -> int | None:
    """The process that has ``path`` open (the task writing that store)."""
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd) == str(path):
                    return int(fd_dir.parent.name)
        except OSError:  # the process ended, or is not ours to look at
            continue
    return None


def test_a_killed_task_is_retried_and_the_summary_says_so(cluster, media, tmp_path):
    seconds, fps = 60, 25
    clip = make_video(media / "long.mp4", (np.full((32, 32, 3), i % 255, np.uint8) for i in range(seconds * fps)), fps=fps, audio=tone(seconds))
    store = tmp_path / "ray"
    box = {}
    runner = threading.Thread(target=lambda: box.setdefault("summary", extract([clip], store, stages=["mel"], executor="ray")))
    runner.start()
    tmp = (store / "long.h5.tmp").resolve()
    pid, deadline = None, time.monotonic() + 120
    while pid is None and runner.is_alive() and time.monotonic() < deadline:
        pid = _pid_writing(tmp) if tmp.exists() else None
        time.sleep(0.002)
    assert pid is not None, "the task finished before its worker could be killed"
    os.kill(pid, signal.SIGKILL)
    runner.join(180)
    summary = box["summary"]
    (result,) = summary.results
    assert result.status == "done" and result.attempts == 2, result
    assert "1 done, 0 skipped (up to date), 0 failed, 1 retried after a worker process crashed" in summary.report()
    local = extract([clip], tmp_path / "local", stages=["mel"])
    assert local.results[0].status == "done"
    for name in ("frames/timestamp", "audio/mel", "audio/valid"):
        np.testing.assert_array_equal(datasets(store / "long.h5")[name], datasets(tmp_path / "local" / "long.h5")[name])


def test_ray_uses_the_store_a_source_has_and_stops_on_a_store_it_cannot_write(cluster, media, tmp_path):
    from test_faults import read_only

    sub = media / "sub"
    sub.mkdir()
    for i in range(3):
        make_video(sub / f"c{i}.mp4", noise_frames(20, seed=i), audio=tone(0.8))
    store = tmp_path / "f"
    assert extract([sub / "c0.mp4"], store, stages=["mel"]).exit_code == 0
    # Given through its folder, the file keeps the id of the store it already has.
    again = extract([media], store, stages=["mel"], executor="ray")
    assert sorted((r.video_id, r.status) for r in again.results) == [("c0", "skipped"), ("sub/c1", "done"), ("sub/c2", "done")]
    shutil.rmtree(store / "sub")
    with read_only(store) as ok:
        if not ok:
            pytest.skip("cannot make a read-only folder here")
        stopped = extract([sub], store, stages=["mel"], executor="ray")
    assert stopped.exit_code == 1 and stopped.stopped is not None, stopped.report()
    assert "while writing" in stopped.stopped.reason, stopped.stopped.reason
    assert stopped.count("skipped") == 1 and len(stopped.failed) + stopped.not_attempted == 2
    assert not list(store.glob("*.tmp"))
