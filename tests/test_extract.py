"""The extract engine, decoding and the store, exercised with the mel stage."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from media import astronaut_frame, make_video, noise_frames, tone

from vidaffect.cli import main
from vidaffect.commands.extract import extract
from vidaffect.io.video import AudioChunk, VideoSource, decode, find_videos, probe

VIDAFFECT = [sys.executable, "-m", "vidaffect"]


def stage_attrs(path, group):
    with h5py.File(path, "r") as h5:
        return dict(h5[group].attrs)


def read(path, name):
    with h5py.File(path, "r") as h5:
        return h5[name][()]


@pytest.fixture
def clip(media):
    return make_video(media / "clip.mp4", noise_frames(40), fps=25, audio=tone(1.6))


def test_store_layout_and_one_row_per_frame(clip, tmp_path):
    summary = extract([clip.parent], tmp_path / "features", stages=["mel"])
    assert [r.status for r in summary.results] == ["done"]
    path = tmp_path / "features" / "clip.h5"
    with h5py.File(path, "r") as h5:
        assert h5.attrs["frame_count"] == 40
        assert h5.attrs["path"] == str(clip.resolve())
        assert h5.attrs["size"] == clip.stat().st_size
        assert np.allclose(h5["frames/timestamp"][()], np.arange(40) / 25)
        assert h5["audio/mel"].shape == (40, 128) and h5["audio/mel"].dtype == np.float32
        assert h5["audio/valid"][()].all()
        assert h5["audio"].attrs["stage"] == "mel"
    assert not list((tmp_path / "features").glob("*.tmp"))


def test_stage_skipped_when_current_and_rerun_on_parameter_change(clip, tmp_path):
    store = tmp_path / "features"
    assert extract([clip], store, stages=["mel"]).results[0].status == "done"
    first = stage_attrs(store / "clip.h5", "audio")
    assert extract([clip], store, stages=["mel"]).results[0].status == "skipped"
    assert extract([clip], store, stages=["mel"], force=True).results[0].status == "done"
    changed = extract([clip], store, stages=["mel"], params={"mel": {"n_mels": 64}})
    assert changed.results[0].status == "done"
    assert read(store / "clip.h5", "audio/mel").shape == (40, 64)
    assert stage_attrs(store / "clip.h5", "audio")["params_hash"] != first["params_hash"]


def test_touching_the_source_video_reruns(clip, tmp_path):
    store = tmp_path / "features"
    extract([clip], store, stages=["mel"])
    os.utime(clip, (time.time() + 10, time.time() + 10))
    assert extract([clip], store, stages=["mel"]).results[0].status == "done"


def test_mel_row_matches_spectrogram_over_the_frame_span(media, tmp_path):
    import librosa

    rng = np.random.default_rng(1)
    audio = (0.2 * rng.standard_normal(22050 * 2)).astype(np.float32) * np.linspace(0.2, 1, 44100, dtype=np.float32)
    clip = make_video(media / "noise.mp4", noise_frames(48), fps=24, audio=audio)
    extract([clip], tmp_path / "f", stages=["mel"])
    mel = read(tmp_path / "f" / "noise.h5", "audio/mel")
    ts = read(tmp_path / "f" / "noise.h5", "frames/timestamp")

    # The same decoded audio, put through librosa in one go.
    info = probe(VideoSource(clip, "noise"))
    chunks = [c for c in decode(info, images=False) if isinstance(c, AudioChunk)]
    y = np.concatenate([c.samples for c in chunks])
    start = chunks[0].start
    spec = librosa.feature.melspectrogram(y=y, sr=22050, n_fft=2048, hop_length=512, n_mels=128, power=2.0)
    centres = start + np.arange(spec.shape[1]) * 512 / 22050
    ends = np.append(ts[1:], ts[-1] + 1 / 24)
    for t in range(len(ts)):
        cols = (centres >= ts[t]) & (centres < ends[t])
        if not cols.any():
            continue
        expected = 10 * np.log10(np.maximum(spec[:, cols].mean(axis=1), 1e-10))
        np.testing.assert_allclose(mel[t], expected, atol=0.05, err_msg=f"frame {t}")


def test_rising_loudness_gives_rising_mel_energy(media, tmp_path):
    sr = 22050
    ramp = np.linspace(0.01, 0.8, 3 * sr)
    clip = make_video(media / "ramp.mp4", noise_frames(75), fps=25, audio=tone(3, amplitude=ramp))
    extract([clip], tmp_path / "f", stages=["mel"])
    mel = read(tmp_path / "f" / "ramp.h5", "audio/mel")
    energy = mel.max(axis=1)
    thirds = [energy[5:25].mean(), energy[25:50].mean(), energy[50:70].mean()]
    assert thirds[0] < thirds[1] < thirds[2]
    assert thirds[2] - thirds[0] > 8  # dB: mean amplitude of the last third is ~4x the first
    assert np.corrcoef(np.arange(5, 70), energy[5:70])[0, 1] > 0.9


def test_video_without_audio_is_not_an_error(media, tmp_path):
    clip = make_video(media / "silent.mp4", noise_frames(20))
    summary = extract([clip], tmp_path / "f", stages=["mel"])
    assert summary.results[0].status == "done" and summary.exit_code == 0
    path = tmp_path / "f" / "silent.h5"
    assert not read(path, "audio/valid").any()
    assert np.isnan(read(path, "audio/mel")).all()
    assert stage_attrs(path, "audio")["note"] == "no audio track"


def test_a_silent_track_is_valid_audio_with_a_note(media, tmp_path):
    make_video(media / "hush.mp4", noise_frames(25), fps=25, audio=np.zeros(22050, np.float32))
    make_video(media / "quiet.mp4", noise_frames(25), fps=25, audio=tone(1.0, amplitude=0.001))  # -60 dBFS: not silent
    extract([media], tmp_path / "f", stages=["mel"])
    hush, quiet = tmp_path / "f" / "hush.h5", tmp_path / "f" / "quiet.h5"
    assert read(hush, "audio/valid").all()
    assert stage_attrs(hush, "audio")["note"] == "silent: the audio track stays below -90 dBFS (digital silence, every sample is 0)"
    assert read(quiet, "audio/valid").all() and "note" not in stage_attrs(quiet, "audio")
    assert stage_attrs(quiet, "audio")["peak_dbfs"] == pytest.approx(-60, abs=1.5)


def test_variable_frame_rate_timestamps_come_from_pts(media, tmp_path):
    times = [0, 0.04, 0.08, 0.2, 0.25, 0.3, 0.5, 0.51, 0.52, 0.6]
    clip = make_video(media / "vfr.mp4", noise_frames(len(times)), timestamps=times)
    extract([clip], tmp_path / "f", stages=["mel"])
    np.testing.assert_allclose(read(tmp_path / "f" / "vfr.h5", "frames/timestamp"), times, atol=1e-3)


def test_rotation_metadata_is_honoured(media):
    image = astronaut_frame((128, 192))
    clip = make_video(media / "rot.mp4", [image] * 3, rotation=90)
    info = probe(VideoSource(clip, "rot"))
    assert (info.width, info.height, info.rotation) == (128, 192, 90)
    frame = next(f for f in decode(info, audio=False))
    upright = np.rot90(image, 1)  # 90 degrees counter-clockwise
    assert frame.image.shape == upright.shape
    assert np.abs(frame.image.astype(int) - upright).mean() < 8


def test_same_file_name_in_two_folders_gets_two_stores(media, tmp_path):
    make_video(media / "a" / "clip.mp4", noise_frames(10, seed=1))
    make_video(media / "b" / "clip.mp4", noise_frames(12, seed=2))
    sources, problems = find_videos([media])
    assert sorted(s.video_id for s in sources) == ["a/clip", "b/clip"] and not problems
    extract([media], tmp_path / "f", stages=["mel"])
    assert read(tmp_path / "f" / "a" / "clip.h5", "frames/timestamp").shape == (10,)
    assert read(tmp_path / "f" / "b" / "clip.h5", "frames/timestamp").shape == (12,)


def make_bad_inputs(d: Path) -> dict[str, str]:
    """name -> a fragment the one-line error must contain."""
    (d / "empty.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    good = make_video(d / "tmp_good.mp4", noise_frames(30))
    (d / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    import cv2

    ok, png = cv2.imencode(".png", astronaut_frame((64, 64)))
    (d / "image.mp4").write_bytes(png.tobytes())
    import av

    with av.open(str(d / "audio_only.mp4"), "w") as out:
        s = out.add_stream("aac", rate=22050, layout="mono")
        samples = tone(0.5)
        for i in range(0, len(samples), 1024):
            f = av.AudioFrame.from_ndarray(samples[None, i : i + 1024], format="fltp", layout="mono")
            f.sample_rate, f.pts = 22050, i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return {
        "empty.mp4": "empty file",
        "random.mp4": "not a readable video",
        "truncated.mp4": "not a readable video",
        "image.mp4": "still image",
        "audio_only.mp4": "no video stream",
    }


def test_bad_inputs_fail_one_by_one_and_the_batch_goes_on(media, tmp_path):
    expected = make_bad_inputs(media)
    make_video(media / "good.mp4", noise_frames(15), audio=tone(0.6))
    runner = CliRunner()
    result = runner.invoke(main, ["-q", "extract", str(media), str(media / "missing.mp4"), "--stages", "mel", "--store", str(tmp_path / "f")])
    assert result.exit_code == 1, result.output
    out = result.output
    assert "1 done, 0 skipped (up to date), 6 failed" in out
    for name, fragment in expected.items():
        line = next(ln for ln in out.splitlines() if name in ln)
        assert fragment in line, line
    assert "missing.mp4: no such file or directory" in out
    assert "Traceback" not in out
    assert (tmp_path / "f" / "good.h5").exists()
    assert sorted(p.name for p in (tmp_path / "f").glob("*.h5")) == ["good.h5"]


def _run_as_nobody(conn, extractor, source):
    # root reads any file, so the check runs in a child that dropped its privileges;
    # everything that reads the checkout (recipe, modules) happened before the fork.
    try:
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        result = extractor.run(source)
        conn.send((result.status, result.reason))
    except BaseException as exc:
        conn.send(("crashed", repr(exc)))


def test_unreadable_file_is_reported(media, tmp_path):
    import multiprocessing

    import av  # noqa: F401  (imported before dropping privileges)

    from vidaffect.extraction.engine import Extractor, Plan

    clip = make_video(media / "secret.mp4", noise_frames(5))
    clip.chmod(0)
    store = tmp_path / "f"
    store.mkdir()
    store.chmod(0o777)
    for folder in (media, *media.parents):  # let the unprivileged child reach the files
        if folder.owner() == "root" and folder.stat().st_mode & 0o001 == 0:
            folder.chmod(folder.stat().st_mode | 0o001)
    extractor = Extractor(store, Plan.make(["mel"]))
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_run_as_nobody, args=(child, extractor, VideoSource(clip, "secret")))
    proc.start()
    assert parent.poll(60), "the child process did not answer"
    proc.join()
    assert parent.recv() == ("failed", "permission denied (file is not readable)")


def test_usage_error_exits_2(clip, tmp_path):
    result = CliRunner().invoke(main, ["extract", str(clip), "--stages", "nosuch", "--store", str(tmp_path / "f")])
    assert result.exit_code == 2 and "unknown stage 'nosuch'" in result.output
    result = CliRunner().invoke(main, ["extract", str(clip), "--set", "mel.bogus=1", "--store", str(tmp_path / "f")])
    assert result.exit_code == 2 and "has no parameter(s) bogus" in result.output


def long_clip(media, name="long.mp4", seconds=40):
    fps = 25
    n = seconds * fps
    return make_video(media / name, (np.full((32, 32, 3), i % 255, np.uint8) for i in range(n)), fps=fps, audio=tone(seconds))


def test_killed_run_leaves_no_complete_looking_store_and_rerun_resumes(media, tmp_path):
    clip = long_clip(media)
    reference = tmp_path / "ref"
    extract([clip], reference, stages=["mel"])
    store = tmp_path / "f"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([*VIDAFFECT, "-q", "extract", str(clip), "--stages", "mel", "--store", str(store)], env=env)
    tmp = store / "long.h5.tmp"
    deadline = time.monotonic() + 60
    while not tmp.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert tmp.exists(), "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (store / "long.h5").exists()
    summary = extract([clip], store, stages=["mel"])
    assert summary.results[0].status == "done"
    for name in ("frames/timestamp", "audio/mel", "audio/valid"):
        np.testing.assert_array_equal(read(store / "long.h5", name), read(reference / "long.h5", name))
    assert not tmp.exists()


def test_killed_worker_is_retried_and_the_result_is_complete(media, tmp_path):
    clips = [long_clip(media, f"long{i}.mp4", seconds=30) for i in range(2)]
    store = tmp_path / "f"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([*VIDAFFECT, "-q", "extract", str(media), "--stages", "mel", "--workers", "2", "--store", str(store)],
                            env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(store.glob("*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    children = subprocess.run(["pgrep", "-f", "multiprocessing.spawn", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "no worker process found"
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    for clip in clips:
        stem = clip.stem
        assert read(store / f"{stem}.h5", "audio/mel").shape == (750, 128)
        assert read(store / f"{stem}.h5", "audio/valid").all()


def test_two_processes_on_one_store_do_not_corrupt_it(media, tmp_path):
    clip = long_clip(media, seconds=20)
    store = tmp_path / "f"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [*VIDAFFECT, "-q", "extract", str(clip), "--stages", "mel", "--store", str(store)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o.split(",")[0] for o in outs) == ["0 done", "1 done"]  # the second waited, then skipped
    assert read(store / "long.h5", "audio/mel").shape == (500, 128)


def test_info_shows_store_and_file(clip, tmp_path):
    store = tmp_path / "f"
    extract([clip], store, stages=["mel"])
    out = CliRunner().invoke(main, ["info", str(store)]).output
    assert "clip" in out and "mel (1.00)" in out and "40" in out
    out = CliRunner().invoke(main, ["info", str(store / "clip.h5")]).output
    assert "/audio/mel" in out and "(40, 128)" in out and "n_mels" in out



def test_workers_log_in_our_format(media, tmp_path):
    make_video(media / "good.mp4", noise_frames(10), audio=tone(0.4))
    (media / "empty.mp4").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([*VIDAFFECT, "extract", str(media), "--stages", "mel", "--workers", "2", "--store", str(tmp_path / "f")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"ERROR vidaffect.extract: {media / 'empty.mp4'}: empty file (0 bytes)" in proc.stderr


# --- one row per decoded frame --------------------------------------------------------


def test_timestamp_repair_keeps_every_frame_and_spreads_the_bad_ones():
    from vidaffect.io.video import TimestampRepair

    repair = TimestampRepair(step=0.04)
    pts = [0.0, 0.04, 0.04, None, 0.16, 0.2, 0.1, 0.28]  # a repeat, a missing pts, one going back
    out = [o for i, t in enumerate(pts) for o in repair.push(t, i)] + repair.flush()
    assert [item for _, _, item in out] == list(range(len(pts)))  # every frame, in order
    times = [t for t, _, _ in out]
    np.testing.assert_allclose(times, [0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.24, 0.28])
    assert [r for _, r, _ in out] == [False, False, True, True, False, False, True, False]
    assert repair.repaired == 3


def test_timestamp_repair_without_any_usable_pts_counts_on():
    from vidaffect.io.video import TimestampRepair

    repair = TimestampRepair(step=0.5, lookahead=2)
    out = [o for i in range(5) for o in repair.push(None, i)] + repair.flush()
    assert [t for t, _, _ in out] == [0.0, 0.5, 1.0, 1.5, 2.0] and all(r for _, r, _ in out)


def mkv_with_repeated_pts(path, frames, repeated):
    """An MKV (MPEG-4 part 2, no B-frames) whose frame ``repeated`` carries the same pts
    as the frame before it, as some muxers write."""
    import av

    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        packets = []
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            if packet.pts == repeated:
                packet.pts = packet.dts = repeated - 1
            out.mux(packet)
    return path


def test_a_repeated_pts_keeps_its_row_and_is_flagged(media, tmp_path):
    import av

    frames = noise_frames(12)
    clip = mkv_with_repeated_pts(media / "dup.mkv", frames, repeated=5)
    with av.open(str(clip)) as container:  # what FFmpeg itself decodes
        pts = [f.pts for f in container.decode(video=0)]
    assert len(pts) == 12 and pts[5] == pts[4], "the made file must carry the repeated pts"
    extract([clip], tmp_path / "f", stages=["mel"])
    path = tmp_path / "f" / "dup.h5"
    ts, repaired = read(path, "frames/timestamp"), read(path, "frames/repaired")
    assert len(ts) == 12  # one row per decoded frame: annotation line k is row k
    assert (np.diff(ts) > 0).all()
    assert repaired.tolist() == [i == 5 for i in range(12)]
    np.testing.assert_allclose(ts[[4, 5, 6]], [0.16, 0.20, 0.24], atol=1e-3)  # spread between its neighbours
    with h5py.File(path) as h5:
        assert h5.attrs["timestamps_repaired"] == 1 and h5.attrs["frame_count"] == 12
        assert h5.attrs["fps"] == pytest.approx(25, rel=1e-3)


# --- one store per source video ---------------------------------------------------------


def test_a_sub_folder_or_the_file_reuses_the_store_of_the_whole_folder(media, tmp_path):
    make_video(media / "test" / "t00.mp4", noise_frames(8), audio=tone(0.4))
    make_video(media / "train" / "a.mp4", noise_frames(9, seed=3), audio=tone(0.4))
    store = tmp_path / "f"
    assert [r.status for r in extract([media], store, stages=["mel"]).results] == ["done", "done"]
    for again in ([media / "test"], [media / "test" / "t00.mp4"], [media / "test" / ".." / "test"]):
        results = extract(again, store, stages=["mel"]).results
        assert [(r.video_id, r.status) for r in results] == [("test/t00", "skipped")]
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*.h5")) == ["test/t00.h5", "train/a.h5"]
    with h5py.File(store / "test" / "t00.h5") as h5:
        assert h5.attrs["path"] == str((media / "test" / "t00.mp4").resolve())


def test_a_file_given_twice_is_extracted_once(media, tmp_path):
    clip = make_video(media / "c.mp4", noise_frames(6), audio=tone(0.3))
    (tmp_path / "link.mp4").symlink_to(clip)
    sources, problems = find_videos([media, clip, tmp_path / "link.mp4"])
    assert [s.video_id for s in sources] == ["c"] and not problems


def test_another_file_with_the_same_id_does_not_overwrite_a_store(media, tmp_path):
    first = make_video(media / "a" / "clip.mp4", noise_frames(6), audio=tone(0.3))
    other = make_video(media / "b" / "clip.mp4", noise_frames(7, seed=2), audio=tone(0.3))
    store = tmp_path / "f"
    extract([first], store, stages=["mel"])
    result = extract([other], store, stages=["mel"]).results[0]
    assert result.status == "failed" and "is taken" in result.reason and str(first.resolve()) in result.reason
    assert read(store / "clip.h5", "frames/timestamp").shape == (6,)


def test_a_moved_video_keeps_its_store(media, tmp_path):
    clip = make_video(media / "old" / "clip.mp4", noise_frames(6), audio=tone(0.3))
    store = tmp_path / "f"
    extract([clip], store, stages=["mel"])
    moved = media / "new" / "clip.mp4"
    moved.parent.mkdir()
    clip.rename(moved)  # keeps size and modification time
    assert extract([moved], store, stages=["mel"]).results[0].status == "skipped"
    with h5py.File(store / "clip.h5") as h5:
        assert h5.attrs["path"] == str(moved.resolve())
