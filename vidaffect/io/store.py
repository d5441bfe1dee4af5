"""Per-video HDF5 feature stores: where they live, how they are written safely.

One file per video, ``<store>/<video-id>.h5``, readable with plain h5py::

    /                   attrs: source path (resolved), size, mtime, fps, frame_count,
                               width, height, duration, rotation, codec, has_audio,
                               timestamps_repaired, vidaffect version
    /frames/timestamp   (T,) float64 seconds from the first frame's pts
    /frames/repaired    (T,) bool, the frame's pts was missing or repeated and its
                        timestamp was interpolated
    /<group>/<dataset>  (T, ...) per-frame rows of one stage; <group>/valid (T,) bool
                        attrs: stage, params (JSON), params_hash, version, code_version,
                               libraries (JSON), completed (ISO time), inputs_hash (files
                               read from outside, e.g. imports), plus stage notes

One source file has one store (:mod:`vidaffect.io.store_lookup` finds it).  A store is written to ``<video-id>.h5.tmp`` and
renamed over the final name once every stage of the pass has completed, so a killed run
never leaves a file that looks complete; stages already in the old file and not re-run
are copied across.  A lock file ``.<video-id>.h5.lock`` keeps two processes from
writing the same store at once.  When the folder cannot be written (no space left,
read-only, no permission) the writer removes its temporary file and raises
:class:`~vidaffect.errors.StoreWriteError` with a one-line reason.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vidaffect import __version__
from vidaffect.errors import StoreWriteError
from vidaffect.io.video import VideoInfo

log = logging.getLogger(__name__)

SUFFIX = ".h5"
TMP_SUFFIX = ".h5.tmp"
LOCK_SUFFIX = ".h5.lock"
CHUNK_ROWS = 256  # rows per HDF5 chunk: one training window reads one or two chunks
# Errors that mean the store folder cannot take any more writes, for this video or any
# other: the batch stops on them.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_WRITE_ERRNOS = STORAGE_ERRNOS | {errno.EACCES, errno.EPERM, errno.EIO}
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


def os_errno(exc: BaseException) -> int | None:
    """The operating system's error number behind an exception: ``OSError.errno``, or
    the ``errno = N`` HDF5 puts in the message of the errors h5py raises."""
    number = getattr(exc, "errno", None)
    if isinstance(number, int):
        return number
    match = _HDF5_ERRNO.search(str(exc))
    return int(match.group(1)) if match else None


def write_fault(exc: BaseException, target: Path, errnos: frozenset[int] = _WRITE_ERRNOS) -> StoreWriteError | None:
    """A :class:`StoreWriteError` ("no space left on device while writing ...") when
    ``exc`` comes from a full, read-only or forbidden folder; None for other errors."""
    number = os_errno(exc)
    if number not in errnos:
        return None
    return StoreWriteError(f"{os.strerror(number).lower()} while writing {target}")


@dataclass(frozen=True)
class Output:
    """One per-frame dataset of a stage: its per-frame shape, dtype and the value
    stored for frames that lack the modality (NaN for floats, False for flags)."""

    shape: tuple[int, ...]
    dtype: str
    fill: Any = np.nan


def empty_rows(outputs: dict[str, Output], n: int) -> dict[str, np.ndarray]:
    """``n`` rows of every dataset holding its fill value (NaN, 0 or False)."""
    return {name: np.full((n, *out.shape), out.fill, dtype=out.dtype) for name, out in outputs.items()}


def store_path(store_dir: str | Path, video_id: str) -> Path:
    return Path(store_dir) / f"{video_id}{SUFFIX}"


def list_stores(store_dir: str | Path) -> dict[str, Path]:
    """Complete stores below ``store_dir`` keyed by video id (temporary files excluded)."""
    root = Path(store_dir)
    return {
        p.relative_to(root).as_posix()[: -len(SUFFIX)]: p
        for p in sorted(root.rglob(f"*{SUFFIX}"))
        if p.is_file()
    }


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for the store at ``path``; waits while another process
    holds it (that process is extracting the same video)."""
    lock = path.with_name("." + path.name[: -len(SUFFIX)] + LOCK_SUFFIX)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a")  # noqa: SIM115  (closed below, after the lock is released)
    except OSError as exc:
        raise write_fault(exc, lock) or exc from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is extracting this video; waiting", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def source_matches(h5: h5py.File, info: VideoInfo) -> bool:
    """The store was made from this very file (same size and modification time)."""
    return int(h5.attrs.get("size", -1)) == info.size and float(h5.attrs.get("mtime", -1)) == info.mtime


@dataclass(frozen=True)
class StoredStage:
    """A completed stage of a store: its group and the keys that decide whether it is
    current (``params_hash`` of the parameters, ``inputs_hash`` of the files read from
    outside the video, "" when none)."""

    group: str
    params_hash: str
    inputs_hash: str = ""


def completed_stages(path: Path, info: VideoInfo) -> dict[str, StoredStage]:
    """Every completed stage of an existing store, by stage name; {} when the store is
    missing, unreadable or was made from a different version of the video."""
    if not path.exists():
        return {}
    try:
        with h5py.File(path, "r") as h5:
            if not source_matches(h5, info):
                log.info("%s: source video changed since extraction; recomputing", path)
                return {}
            return {
                g.attrs["stage"]: StoredStage(name, str(g.attrs["params_hash"]), str(g.attrs.get("inputs_hash", "")))
                for name, g in h5.items()
                if isinstance(g, h5py.Group) and "params_hash" in g.attrs
            }
    except OSError as exc:
        log.warning("%s: unreadable store (%s); recomputing", path, exc)
        return {}


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in ("numpy", "av", "h5py", "librosa", "mediapipe", "torch", "opencv-contrib-python"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


class StoreWriter:
    """Writes one pass over a video into a temporary store and publishes it.

    groups: group name -> (stage name, outputs, params dict, params hash, version)
    keep: groups of the existing store to carry over unchanged.

    Every write that fails because the folder is full, read-only or forbidden removes
    the temporary file and raises :class:`~vidaffect.errors.StoreWriteError`.
    """

    def __init__(
        self,
        path: Path,
        info: VideoInfo,
        groups: dict[str, tuple[str, dict[str, Output], dict, str, str]],
        keep: list[str],
    ) -> None:
        self.path = path
        self.tmp = path.with_name(path.name[: -len(SUFFIX)] + TMP_SUFFIX)
        self.groups = dict(groups)
        self.keep = list(keep)
        self.h5: h5py.File | None = None
        # Datasets stay open while the store is written: closing one writes out its
        # cached chunks, and a write that fails there (a full disk) cannot be reported.
        self.datasets: dict[str, h5py.Dataset] = {}
        self.rows = {group: 0 for group in groups}
        with self._writing():
            path.parent.mkdir(parents=True, exist_ok=True)
            self.h5 = h5py.File(self.tmp, "w")
            self.h5.attrs.update(info.attrs())
            self.h5.attrs["vidaffect_version"] = __version__
            for name, dtype in (("timestamp", "f8"), ("repaired", "bool")):
                self.datasets[f"frames/{name}"] = self.h5.create_dataset(
                    f"frames/{name}", shape=(0,), maxshape=(None,), dtype=dtype, chunks=(CHUNK_ROWS * 16,)
                )
            for group, (_, outputs, *_rest) in groups.items():
                for name, out in outputs.items():
                    self.datasets[f"{group}/{name}"] = self.h5.create_dataset(
                        f"{group}/{name}",
                        shape=(0, *out.shape),
                        maxshape=(None, *out.shape),
                        dtype=out.dtype,
                        chunks=(CHUNK_ROWS, *out.shape),
                        fillvalue=out.fill,
                    )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[h5py.File | None]:
        """Turn a failed write into a StoreWriteError, leaving no temporary file."""
        try:
            yield self.h5
        except (OSError, RuntimeError) as exc:
            fault = write_fault(exc, self.path)
            if fault is None:
                raise
            self.abort()
            raise fault from None

    def append_timestamps(self, timestamps: np.ndarray, repaired: np.ndarray | None = None) -> None:
        """The next frames' timestamps, and which of them were repaired (none by default)."""
        with self._writing():
            _append(self.datasets["frames/timestamp"], timestamps)
            _append(self.datasets["frames/repaired"], np.zeros(len(timestamps), bool) if repaired is None else repaired)

    def append(self, group: str, rows: dict[str, np.ndarray]) -> None:
        if not rows:
            return  # a lagging stage with nothing ready yet
        outputs = self.groups[group][1]
        if set(rows) != set(outputs):
            raise RuntimeError(f"stage group {group!r} returned {sorted(rows)}, expected {sorted(outputs)}")
        counts = {len(v) for v in rows.values()}
        if len(counts) != 1:
            raise RuntimeError(f"stage group {group!r} returned datasets of different lengths {counts}")
        with self._writing():
            for name, values in rows.items():
                _append(self.datasets[f"{group}/{name}"], values)
        self.rows[group] += counts.pop()

    def set_params_hash(self, group: str, params_hash: str) -> None:
        """Record another hash than planned for a group (its stage ran without an input)."""
        stage, outputs, params, _, version = self.groups[group]
        self.groups[group] = (stage, outputs, params, params_hash, version)

    def drop(self, group: str) -> None:
        """Leave a group out of the store (its stage failed on this video); an earlier
        store's version of it, if any, is carried over."""
        del self.groups[group], self.rows[group]
        for name in [k for k in self.datasets if k.startswith(f"{group}/")]:
            del self.datasets[name]
        with self._writing() as h5:
            assert h5 is not None
            del h5[group]

    def commit(self, attrs: dict[str, dict[str, Any]], kept_anyway: Sequence[str] = ()) -> None:
        """Check every group has one row per frame, carry kept groups over (and
        ``kept_anyway``: earlier results of stages that failed now), mark the stages
        complete and atomically replace the final store."""
        with self._writing() as h5:
            assert h5 is not None
            timestamps = self.datasets["frames/timestamp"][()]
            n = len(timestamps)
            for group, rows in self.rows.items():
                if rows != n:
                    raise RuntimeError(f"stage group {group!r} produced {rows} rows for {n} frames")
            h5.attrs.update(frame_attrs(timestamps, self.datasets["frames/repaired"][()]))
            if (self.keep or kept_anyway) and self.path.exists():
                with h5py.File(self.path, "r") as old:
                    carried = [g for g in [*self.keep, *kept_anyway] if g in old and g not in h5]
                    if carried and len(old["frames/timestamp"]) != n:
                        raise RuntimeError(f"cached store has {len(old['frames/timestamp'])} frames but decoding gave {n}; re-run with --force")
                    for group in carried:
                        old.copy(old[group], h5, name=group)
            now = datetime.now(UTC).isoformat(timespec="seconds")
            libs = json.dumps(library_versions(), sort_keys=True)
            for group, (stage, _, params, phash, version) in self.groups.items():
                g = h5[group]
                g.attrs.update(
                    {
                        "stage": stage,
                        "params": json.dumps(params, sort_keys=True, default=str),
                        "params_hash": phash,
                        "version": version,
                        "code_version": __version__,
                        "libraries": libs,
                        "completed": now,
                    }
                )
                g.attrs.update({k: v for k, v in attrs.get(group, {}).items()})
            h5.flush()
            os.fsync(h5.id.get_vfd_handle())
            self.datasets.clear()
            h5.close()
            self.h5 = None
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Remove the temporary store.  HDF5 writes out what it still holds when a file
        is closed, which fails again on a full disk and leaves h5py objects that crash
        the interpreter later; so the file's descriptor is pointed at the null device
        first: the close then succeeds, and the file is deleted anyway."""
        if self.h5 is not None:
            with contextlib.suppress(Exception):
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, self.h5.id.get_vfd_handle())
                finally:
                    os.close(null)
            with contextlib.suppress(Exception):
                self.h5.close()
            self.h5 = None
        self.datasets.clear()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def frame_attrs(timestamps: np.ndarray, repaired: np.ndarray) -> dict[str, Any]:
    """File attributes that follow from the decoded frames: their count, the frame rate
    and duration their timestamps show (the container's header may count frames that an
    edit list drops, and give an average rate that includes them), and how many
    timestamps were repaired."""
    n = len(timestamps)
    steps = np.diff(timestamps)
    step = float(np.median(steps)) if len(steps) else 0.0
    return {
        "frame_count": n,
        "fps": round(1.0 / step, 6) if step > 0 else 0.0,
        "duration": round(float(timestamps[-1] - timestamps[0]) + step, 6) if n else 0.0,
        "timestamps_repaired": int(np.count_nonzero(repaired)),
    }


def _append(ds: h5py.Dataset, values: np.ndarray) -> None:
    values = np.asarray(values)
    if len(values) == 0:
        return
    start = ds.shape[0]
    ds.resize(start + len(values), axis=0)
    ds[start:] = values


def read_rows(h5: h5py.File, names: list[str], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows [start, stop) of several "group/dataset" datasets."""
    return {name: h5[name][start:stop] for name in names}


def describe_stages(h5: h5py.File) -> list[dict[str, Any]]:
    """What each completed stage group holds: stage, version, params, valid fraction."""
    out = []
    for group in h5:
        g = h5[group]
        if not isinstance(g, h5py.Group) or "params_hash" not in g.attrs:
            continue
        valid = g["valid"][()] if "valid" in g else None
        out.append(
            {
                "group": group,
                "stage": g.attrs["stage"],
                "version": g.attrs["version"],
                "params": json.loads(g.attrs["params"]),
                "params_hash": g.attrs["params_hash"],
                "valid_fraction": float(valid.mean()) if valid is not None and len(valid) else 0.0,
                "completed": g.attrs.get("completed", ""),
                "note": g.attrs.get("note", ""),
            }
        )
    return out


