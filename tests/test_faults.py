"""A store folder that cannot be written (full disk, read-only) stops the batch with one
line and exit status 1, and leaves no temporary file; stores that are up to date can
still be read from a read-only folder."""

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from media import make_video, noise_frames, tone

from vidaffect.cli import main
from vidaffect.commands.extract import extract
from vidaffect.errors import StoreWriteError
from vidaffect.io import store as store_module

VIDAFFECT = [sys.executable, "-m", "vidaffect"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}


@contextlib.contextmanager
def mounted(target: Path, *how: list[str]):
    """Run the mount commands ``how`` on ``target``; yields False when this machine
    does not let the tests mount (not root, or no permission), and unmounts after."""
    ok = os.geteuid() == 0
    for args in how:
        ok = ok and subprocess.run(["mount", *args, str(target)], capture_output=True).returncode == 0
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", str(target)], capture_output=True)


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only for this process: its permission bits, or for root (who
    writes through them) a read-only bind mount; yields False when neither works here."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield True
        finally:
            folder.chmod(0o755)
    else:
        with mounted(folder, ["--bind", str(folder)], ["-o", "remount,bind,ro"]) as ok:
            yield ok


def three_clips(media):
    for i in range(3):
        make_video(media / f"c{i}.mp4", noise_frames(40, seed=i), audio=tone(1.6))
    return media


def test_full_disk_stops_the_batch_with_one_line(media, tmp_path):
    three_clips(media)
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted(disk, ["-t", "tmpfs", "-o", "size=96k", "tmpfs"]) as ok:
        if not ok:
            pytest.skip("cannot mount a small tmpfs here; test_write_errors_become_one_line covers the same path")
        proc = subprocess.run([*VIDAFFECT, "-q", "extract", str(media), "--stages", "mel", "--store", str(disk / "f"), "--workers", "1"],
                              env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
        left = sorted(p.name for p in (disk / "f").iterdir() if not p.name.startswith("."))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # not 139: no crash while closing the half-written file
    assert f"no space left on device while writing {disk / 'f' / 'c0.h5'}" in out
    assert "0 done, 0 skipped (up to date), 1 failed, 2 not attempted" in out
    assert "Traceback" not in out and "h5py" not in out
    assert left == []  # no c0.h5.tmp


@pytest.mark.parametrize("workers", [1, 2])
def test_read_only_store_folder_stops_the_batch_and_up_to_date_stores_are_still_used(media, tmp_path, workers):
    three_clips(media)
    store = tmp_path / "f"
    assert extract([media / "c0.mp4"], store, stages=["mel"]).exit_code == 0
    with read_only(store) as ok:
        if not ok:
            pytest.skip("cannot make a read-only folder here")
        result = CliRunner().invoke(main, ["-q", "extract", str(media / "c0.mp4"), "--stages", "mel", "--store", str(store)])
        assert result.exit_code == 0 and "0 done, 1 skipped" in result.output  # nothing to write: no lock needed
        result = CliRunner().invoke(main, ["-q", "extract", str(media), "--stages", "mel", "--store", str(store), "--workers", str(workers)])
        left = sorted(p.name for p in store.iterdir())
    assert result.exit_code == 1, result.output
    reason = "permission denied" if os.geteuid() != 0 else "read-only file system"
    assert f"{reason} while writing {store}" in result.output
    # One worker stops before the third video; with two, the third may be in flight
    # already and fails the same way.
    allowed = ["1 failed, 1 not attempted"] + (["2 failed"] if workers > 1 else [])
    assert any(f"0 done, 1 skipped (up to date), {end}" in result.output for end in allowed), result.output
    assert "Traceback" not in result.output
    assert left == [".c0.h5.lock", "c0.h5"]


def test_write_errors_become_one_line(media, tmp_path, monkeypatch):
    """The same path without a real full disk: every dataset write fails with ENOSPC."""
    three_clips(media)

    def full(ds, values):
        raise OSError(errno.ENOSPC, "Can't write data (file write failed: errno = 28, error message = 'No space left on device')")

    monkeypatch.setattr(store_module, "_append", full)
    summary = extract([media], tmp_path / "f", stages=["mel"])
    assert summary.exit_code == 1 and summary.not_attempted == 2
    assert summary.stopped is not None
    assert summary.stopped.reason == f"no space left on device while writing {tmp_path / 'f' / 'c0.h5'}"
    assert not list((tmp_path / "f").glob("*.tmp"))


def test_lock_in_a_read_only_folder_is_a_store_write_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(StoreWriteError, match=r"^read-only file system while writing .*\.clip\.h5\.lock$"):
        with store_module.locked(tmp_path / "clip.h5"):
            pass
