"""`vidaffect export` and :func:`load`: a store's per-frame features as tables.

* ``csv`` / ``parquet``: vidaffect's own table, one row per frame, one column per value
  (names in :mod:`vidaffect.stages.tables`), ``<out>/<video-id>.csv|.parquet``;
* ``openface``: OpenFace 2 FeatureExtraction CSVs (:mod:`vidaffect.io.openface_csv`)
  from the face, head and gaze stages, ``<out>/<video-id>.csv``, which vidaffect's own
  OpenFace importer (``--set face.backend=openface``) reads back.

Stores are read a chunk of frames at a time, so memory does not depend on a video's
length.  One bad store never stops the others.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from vidaffect.errors import InputNotFound, ParameterError, SetupError
from vidaffect.extraction.summary import failure_reason
from vidaffect.io.store import SUFFIX, list_stores
from vidaffect.io.tables import FORMATS, open_table_writer, require_pyarrow, writable_folder
from vidaffect.stages import registry
from vidaffect.stages.layouts import IBUG_POINTS
from vidaffect.stages.tables import column_names, column_order, openface_eye_landmarks, table_values
from vidaffect.util.terminal import progress_bar

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

CHUNK_FRAMES = 2048  # rows read and written at once
OPENFACE_STAGES = ("face", "head", "gaze")  # what an OpenFace CSV is made from


def stored_stages(h5: h5py.File) -> dict[str, str]:
    """Completed stages of an open store, in the registry's order: stage -> group."""
    found = {h5[g].attrs["stage"]: g for g in h5 if isinstance(h5[g], h5py.Group) and "params_hash" in h5[g].attrs}
    return {name: found[name] for name in [*registry.STAGE_CLASSES, *sorted(found)] if name in found}


def _select(h5: h5py.File, stages: list[str] | None) -> dict[str, str]:
    """The requested stages (all stored ones when None) -> group; a stage the store
    lacks is a :class:`ParameterError` that names the extract command to run."""
    present = stored_stages(h5)
    if stages is None:
        return present
    missing = [s for s in stages if s not in present]
    if missing:
        from vidaffect.learn.modalities import extract_hint  # imports every stage: only when needed

        raise ParameterError(f"{h5.filename}: no {', '.join(missing)} stage; {extract_hint(Path(h5.filename).parent, missing)}")
    return {s: present[s] for s in stages}


def _metadata(h5: h5py.File, groups: dict[str, str]) -> dict[str, Any]:
    """The store's attributes and the parameters of the stages in the table."""
    meta: dict[str, Any] = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in h5.attrs.items()}
    meta["stages"] = {s: json.loads(h5[g].attrs["params"]) for s, g in groups.items()}
    return meta


def iter_table(h5: h5py.File, stages: list[str] | None = None, chunk: int = CHUNK_FRAMES) -> Iterator[pd.DataFrame]:
    """vidaffect's table of an open store, ``chunk`` frames at a time: ``frame``,
    ``timestamp``, then the columns of each stage (:mod:`vidaffect.stages.tables`)."""
    import pandas as pd

    groups = _select(h5, stages)
    n = len(h5["frames/timestamp"])
    for start in range(0, max(n, 1), chunk):
        stop = min(start + chunk, n)
        parts = [pd.DataFrame({"frame": np.arange(start, stop), "timestamp": h5["frames/timestamp"][start:stop]})]
        for stage, group in groups.items():
            for dataset in column_order(stage, [d for d in h5[group] if d != "valid"]):
                ds = h5[group][dataset]
                rows = ds[start:stop]
                values = table_values(stage, dataset, rows.astype(np.float32) if rows.dtype == np.float16 else rows)
                parts.append(pd.DataFrame(values, columns=column_names(stage, dataset, ds.shape[1:])))
            parts.append(pd.DataFrame({f"{stage}_valid": h5[group]["valid"][start:stop].astype(bool)}))
        yield pd.concat(parts, axis=1)


def iter_openface(h5: h5py.File, stages: list[str] | None = None, chunk: int = CHUNK_FRAMES) -> Iterator[pd.DataFrame]:
    """OpenFace 2 columns of an open store (see :mod:`vidaffect.io.openface_csv`),
    ``chunk`` frames at a time.  ``stages`` among face, head, gaze (default all
    three); face is always needed."""
    import pandas as pd

    groups = _select(h5, list(dict.fromkeys(["face", *(stages or OPENFACE_STAGES)])))
    if set(groups) - set(OPENFACE_STAGES):
        raise ParameterError(f"--format openface is made from the {', '.join(OPENFACE_STAGES)} stages; got {', '.join(groups)}")
    n = len(h5["frames/timestamp"])
    for start in range(0, max(n, 1), chunk):
        sl = slice(start, min(start + chunk, n))
        face = h5[groups["face"]]
        ok = face["valid"][sl].astype(bool)
        cols: dict[str, np.ndarray] = {
            "frame": np.arange(sl.start, sl.stop) + 1,  # OpenFace counts frames from 1
            "face_id": np.zeros(len(ok)),
            "timestamp": h5["frames/timestamp"][sl],
            "confidence": np.where(ok, np.nan_to_num(face["score"][sl]), 0.0),
            "success": ok.astype(np.float64),
        }
        if "gaze" in groups:
            gaze = h5[groups["gaze"]]
            cols.update(zip(column_names("gaze", "vectors", (2, 3)), gaze["vectors"][sl].reshape(len(ok), 6).T, strict=True))
            cols["gaze_angle_x"], cols["gaze_angle_y"] = np.radians(gaze["angles"][sl]).T
        landmarks = face["landmarks"][sl]
        eyes = openface_eye_landmarks(face["mesh"][sl], landmarks[:, IBUG_POINTS:])
        cols.update({f"eye_lmk_{a}_{i}": eyes[:, i, k] for k, a in enumerate("xy") for i in range(eyes.shape[1])})
        if "head" in groups:
            head = h5[groups["head"]]
            cols.update(zip(("pose_Tx", "pose_Ty", "pose_Tz"), head["translation"][sl].T, strict=True))
            cols.update(zip(("pose_Rx", "pose_Ry", "pose_Rz"), np.radians(head["angles"][sl]).T, strict=True))
        cols.update({f"{a}_{i}": landmarks[:, i, k] for k, a in enumerate("xy") for i in range(IBUG_POINTS)})
        for name in cols:
            if name not in ("frame", "face_id", "timestamp", "confidence", "success"):
                cols[name] = np.where(ok, cols[name], np.nan)
        yield pd.DataFrame(cols)


def _open_store(path: str | Path) -> h5py.File:
    path = Path(path)
    if path.is_dir():
        raise ParameterError(f"{path} is a folder; give one store file ({SUFFIX})")
    if not path.is_file():
        raise InputNotFound(f"{path}: no such store file")
    return h5py.File(path, "r")


def load(path: str | Path, stages: list[str] | None = None) -> pd.DataFrame:
    """One store's per-frame features as a pandas DataFrame.

    Parameters
    ----------
    path : str or Path
        A feature store, ``features/<video-id>.h5``.
    stages : list of str or None, default None
        Stages whose columns to include (``["face", "head"]``); None: every stage the
        store holds.

    Returns
    -------
    pandas.DataFrame
        One row per frame: ``frame``, ``timestamp`` and each stage's columns (names and
        units in the README); ``DataFrame.attrs`` holds the store's attributes and the
        stages' parameters.

    Raises
    ------
    ParameterError
        The store lacks a stage asked for (the message names the extract command).
    """
    import pandas as pd

    with _open_store(path) as h5:
        table = pd.concat(list(iter_table(h5, stages)), ignore_index=True)
        table.attrs = _metadata(h5, _select(h5, stages))
    return table


def load_arrays(path: str | Path, stages: list[str] | None = None) -> dict[str, np.ndarray]:
    """One store's datasets as numpy arrays, keyed ``"group/dataset"`` as in the store
    (``"frames/timestamp"``, ``"face/landmarks"`` (T, 70, 2), ``"head/angles"``, ...),
    for the stages asked for (None: all)."""
    with _open_store(path) as h5:
        arrays = {"frames/timestamp": h5["frames/timestamp"][:]}
        for group in _select(h5, stages).values():
            arrays.update({f"{group}/{name}": ds[()] for name, ds in h5[group].items()})
    return arrays


@dataclass
class ExportSummary:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def report(self) -> str:
        folder = f" in {self.written[0].parent}" if self.written else ""
        lines = [f"{len(self.written)} table(s) written{folder}, {len(self.failed)} failed"]
        return "\n".join(lines + [f"  FAILED {path}: {reason}" for path, reason in self.failed])


def export(
    target: str | Path,
    fmt: str,
    out: str | Path,
    stages: list[str] | None = None,
    openface_style: str = "2.2",
    progress: bool = False,
) -> ExportSummary:
    """Write one table per store.

    Parameters
    ----------
    target : str or Path
        A store folder (every ``<video-id>.h5`` below it) or one store file.
    fmt : str
        ``csv``, ``parquet`` or ``openface``.
    out : str or Path
        Folder of the tables: ``<out>/<video-id>.csv`` (or ``.parquet``).
    stages : list of str or None, default None
        Stages to export; None: all the store holds (``openface``: face, head, gaze).
    openface_style : str, default "2.2"
        ``2.2`` or ``2.0`` (fields separated by ``", "``), for ``--format openface``.
    progress : bool, default False
        Show a progress bar over the stores.
    """
    if fmt not in FORMATS:
        raise ParameterError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "parquet":
        require_pyarrow()
    unknown = [s for s in stages or () if s not in registry.STAGE_CLASSES]
    if unknown:
        raise ParameterError(f"unknown stage(s) {', '.join(unknown)}; known stages: {', '.join(registry.STAGE_CLASSES)}")
    target = Path(target)
    if target.is_file():
        stores = {target.name[: -len(SUFFIX)]: target}
    elif target.is_dir():
        stores = list_stores(target)
        if not stores:
            raise InputNotFound(f"{target}: no feature stores (*{SUFFIX}) in this folder")
    else:
        raise InputNotFound(f"{target}: no such store file or folder")
    writable_folder(out)
    rows = iter_openface if fmt == "openface" else iter_table
    summary = ExportSummary()
    with progress_bar(len(stores), "export", "video", progress) as bar:
        for video_id, path in stores.items():
            try:
                with h5py.File(path, "r") as h5:
                    writer = open_table_writer(fmt, Path(out) / f"{video_id}{FORMATS[fmt]}", _metadata(h5, stored_stages(h5)), openface_style)
                    try:
                        for table in rows(h5, stages):
                            writer.write(table)
                    except BaseException:
                        writer.discard()
                        raise
                    summary.written.append(writer.close())
            except (KeyboardInterrupt, MemoryError, SetupError):
                raise
            except Exception as exc:  # one bad store must not stop the others
                if isinstance(exc, ParameterError) and len(stores) == 1:
                    raise
                log.debug("%s failed", path, exc_info=True)
                summary.failed.append((path, failure_reason(exc)))
                log.error("%s: %s", path, failure_reason(exc))
            bar.update()
    return summary
