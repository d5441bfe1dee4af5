"""Per-video HDF5 feature stores: where they live, how they are written safely.

One file per video, ``<store>/<video-id>.h5``, readable with plain h5py::

    /                   attrs: source path, size, mtime, fps, frame_count, width, height,
                               duration, rotation, codec, has_audio, vidaffect version
    /frames/timestamp   (T,) float64 seconds from the first frame's pts
    /<group>/<dataset>  (T, ...) per-frame rows of one stage; <group>/valid (T,) bool
                        attrs: stage, params (JSON), params_hash, version, code_version,
                               libraries (JSON), completed (ISO time), plus stage notes

A store is written to ``<video-id>.h5.tmp`` and renamed over the final name once every
stage of the pass has completed, so a killed run never leaves a file that looks
complete; stages already in the old file and not re-run are copied across.  A lock file
``.<video-id>.h5.lock`` keeps two processes from writing the same store at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vidaffect import __version__
from vidaffect.io.video import VideoInfo

log = logging.getLogger(__name__)

SUFFIX = ".h5"
TMP_SUFFIX = ".h5.tmp"
LOCK_SUFFIX = ".h5.lock"
CHUNK_ROWS = 256  # rows per HDF5 chunk: one training window reads one or two chunks


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
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
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


def completed_stages(path: Path, info: VideoInfo) -> dict[str, tuple[str, str]]:
    """Every completed stage of an existing store: stage name -> (group, params_hash);
    {} when the store is missing, unreadable or was made from a different version of
    the video."""
    if not path.exists():
        return {}
    try:
        with h5py.File(path, "r") as h5:
            if not source_matches(h5, info):
                log.info("%s: source video changed since extraction; recomputing", path)
                return {}
            return {
                h5[g].attrs["stage"]: (g, h5[g].attrs["params_hash"])
                for g in h5
                if isinstance(h5[g], h5py.Group) and "params_hash" in h5[g].attrs
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
        self.groups = groups
        self.keep = keep
        path.parent.mkdir(parents=True, exist_ok=True)
        self.h5 = h5py.File(self.tmp, "w")
        self.h5.attrs.update({k: v for k, v in info.attrs().items()})
        self.h5.attrs["vidaffect_version"] = __version__
        self.h5.create_dataset("frames/timestamp", shape=(0,), maxshape=(None,), dtype="f8", chunks=(CHUNK_ROWS * 16,))
        self.rows = {group: 0 for group in groups}
        for group, (_, outputs, *_rest) in groups.items():
            for name, out in outputs.items():
                self.h5.create_dataset(
                    f"{group}/{name}",
                    shape=(0, *out.shape),
                    maxshape=(None, *out.shape),
                    dtype=out.dtype,
                    chunks=(CHUNK_ROWS, *out.shape),
                    fillvalue=out.fill,
                )

    def append_timestamps(self, timestamps: np.ndarray) -> None:
        _append(self.h5["frames/timestamp"], timestamps)

    def append(self, group: str, rows: dict[str, np.ndarray]) -> None:
        if not rows:
            return  # a lagging stage with nothing ready yet
        outputs = self.groups[group][1]
        if set(rows) != set(outputs):
            raise RuntimeError(f"stage group {group!r} returned {sorted(rows)}, expected {sorted(outputs)}")
        counts = {len(v) for v in rows.values()}
        if len(counts) != 1:
            raise RuntimeError(f"stage group {group!r} returned datasets of different lengths {counts}")
        for name, values in rows.items():
            _append(self.h5[f"{group}/{name}"], values)
        self.rows[group] += counts.pop()

    def commit(self, attrs: dict[str, dict[str, Any]]) -> None:
        """Check every group has one row per frame, carry kept groups over, mark the
        stages complete and atomically replace the final store."""
        n = len(self.h5["frames/timestamp"])
        for group, rows in self.rows.items():
            if rows != n:
                raise RuntimeError(f"stage group {group!r} produced {rows} rows for {n} frames")
        self.h5.attrs["frame_count"] = n
        if self.keep:
            with h5py.File(self.path, "r") as old:
                old_n = len(old["frames/timestamp"])
                if old_n != n:
                    raise RuntimeError(f"cached store has {old_n} frames but decoding gave {n}; re-run with --force")
                for group in self.keep:
                    old.copy(old[group], self.h5, name=group)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        libs = json.dumps(library_versions(), sort_keys=True)
        for group, (stage, _, params, phash, version) in self.groups.items():
            g = self.h5[group]
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
        self.h5.flush()
        os.fsync(self.h5.id.get_vfd_handle())
        self.h5.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.h5.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


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

