"""One store per source video: the store a source file already has, whatever folder or
file was given when it was made.

A store records the resolved path of its source (file attribute ``path``).
:func:`assign_stores` gives every source found by :func:`vidaffect.io.video.find_videos`
the id of its existing store, so ``vidaffect extract ./videos`` and a later
``vidaffect predict ./videos/test`` read and write ``test/t00.h5``, never a second
``t00.h5`` of the same file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py

from vidaffect.errors import StoreWriteError
from vidaffect.io.store import list_stores, store_path, write_fault
from vidaffect.io.video import VideoSource

log = logging.getLogger(__name__)


def file_key(path: str | Path) -> str:
    """Which file ``path`` is: its device and inode when it exists (links and hard
    links of one file are one file), else its resolved path."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return f"{st.st_dev}:{st.st_ino}"


def stores_by_source(store_dir: str | Path) -> dict[str, list[str]]:
    """The video ids of the complete stores below ``store_dir``, by the
    :func:`file_key` of the source file each was made from (more than one id only for
    stores made by versions that did not look the source up)."""
    found: dict[str, list[str]] = {}
    for video_id, path in list_stores(store_dir).items():
        recorded = source_of(path)  # None: unreadable, extraction recomputes it under its own id
        if recorded is not None and recorded[0]:
            found.setdefault(file_key(recorded[0]), []).append(video_id)
    return found


def source_of(path: Path) -> tuple[str, int, float] | None:
    """(source path, size, mtime) recorded in a store; None when it cannot be read."""
    try:
        with h5py.File(path, "r") as h5:
            return str(h5.attrs.get("path", "")), int(h5.attrs.get("size", -1)), float(h5.attrs.get("mtime", -1))
    except OSError:
        return None


def record_move(path: Path, source: str) -> None:
    """The source of the store at ``path`` was moved to ``source`` (same size and
    modification time, the old path is gone): record its new path."""
    try:
        with h5py.File(path, "r+") as h5:
            h5.attrs["path"] = source
    except OSError as exc:
        raise write_fault(exc, path) or exc from None


def assign_stores(
    sources: list[VideoSource], store_dir: str | Path, update: bool = True
) -> tuple[list[VideoSource], list[tuple[str, str]]]:
    """Give every source the id of the store it already has, so that one source file
    has one store whichever folder or file was given.

    A source is known by :func:`file_key` of the path a store records; one not in the store
    folder keeps its own id, unless a store of that id was made from another file that
    still exists (then it is a problem: two files, one id).  A store whose source has
    gone, with the same size and modification time as this file, is this file moved:
    the store is kept and its recorded path updated (unless ``update`` is False: a dry
    run writes nothing).

    Returns
    -------
    sources : list of VideoSource
        The sources with the ids to extract them under.
    problems : list of (path, reason)
        Sources that cannot be given a store.
    """
    index = stores_by_source(store_dir)
    out: list[VideoSource] = []
    problems: list[tuple[str, str]] = []
    for source in sources:
        resolved = source.path.resolve()
        ids = index.get(file_key(resolved), [])
        if ids:
            chosen = source.video_id if source.video_id in ids else ids[0]
            if len(ids) > 1:
                log.warning("%s has %d stores (%s); using %s", resolved, len(ids), ", ".join(ids), chosen)
            out.append(VideoSource(source.path, chosen))
            continue
        path = store_path(store_dir, source.video_id)
        recorded = source_of(path) if path.exists() else None
        if recorded is not None and recorded[0] and Path(recorded[0]).exists():
            problems.append(
                (str(source.path), f"video id {source.video_id!r} is taken in {store_dir} by another file, {recorded[0]}; "
                 "extract from a folder that gives them different ids, or use another --store")
            )
            continue
        if recorded is not None and recorded[0] and resolved.is_file():
            stat = resolved.stat()
            if update and (recorded[1], recorded[2]) == (stat.st_size, stat.st_mtime):
                log.info("%s: %s was moved to %s; keeping its store", path, recorded[0], resolved)
                try:
                    record_move(path, str(resolved))
                except StoreWriteError as exc:  # a read-only store folder: it is still this file's
                    log.debug("%s: %s", path, exc)
        out.append(source)
    return out, problems
