"""Prediction files: writing them as ``vidaffect predict`` streams windows of frames,
and reading them back for ``vidaffect evaluate`` and ``vidaffect plot``.

Two formats:

* ``csv`` (one file for the whole batch), header then one row per frame of every video,
  videos one after the other, frames in order::

      video,frame,timestamp,valence,arousal,face
      clip01,0,0.000000,0.123456,-0.045678,1

  ``frame`` is the 0-based index of the decoded frame, ``timestamp`` its time in
  seconds from the container's pts (``frames/timestamp`` of the store), valence and
  arousal are in [-1, 1] with six decimals, ``face`` is 1/0 when the frame had a
  detected face and empty when the store has no face stage.  When a video has several
  people (``face.faces=all``) the file has a last column ``subject``, and such a video
  has one run of rows per person: ``left`` and ``right`` for two people, else the
  person's number (``0`` the primary face); it is empty for one-person videos.
* ``affwild2`` (a folder, the Aff-Wild2 / ABAW submission format): one
  ``<video-id>.txt`` per video (``<video-id>_<subject>.txt`` per person of a video with
  several, e.g. ``clip_left.txt``) with the header ``valence,arousal`` and one line per
  frame (line 2 = frame 0).

Read back, a person's rows are named ``<video-id>_<subject>`` (``clip_left``), the
name of their Aff-Wild2 annotation file.

Files are written under a temporary name and renamed when complete, so an interrupted
run never leaves a file that looks finished; a video that fails half-way leaves no rows.
"""

from __future__ import annotations

import abc
import contextlib
import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from vidaffect.errors import InputNotFound, ParameterError
from vidaffect.io.annotations import read_annotation

COLUMNS = ("video", "frame", "timestamp", "valence", "arousal", "face")
SUBJECT_COLUMN = "subject"  # last column, only in files with several people in a video
AFFWILD2_HEADER = "valence,arousal"
AFFWILD2_SUFFIX = ".txt"
FORMATS = ("csv", "affwild2")
VALUE_FORMAT = "{:.6f}"  # valence, arousal and timestamps: fixed six decimals
TMP_SUFFIX = ".tmp"


class PredictionWriter(abc.ABC):
    """Base of the writers: ``with writer.video(video_id) as write: write(...)`` per
    video, then :meth:`close`.  A video whose block raises leaves nothing behind."""

    subjects = False  # whether some video has several people (set before the first video)

    @contextlib.contextmanager
    def video(self, video_id: str, subject: str = "") -> Iterator[Callable[..., None]]:
        """Context for one video (one person ``subject`` of it, see the module docs);
        yields ``write(start, timestamps, pred, face)`` that takes rows for frames
        ``start, start+1, ...``: ``timestamps`` (n,) seconds, ``pred`` (n, 2) valence
        and arousal, ``face`` (n,) bool or None (unknown)."""
        self._begin(video_id, subject)
        try:
            yield self._write
        except BaseException:
            self._discard()
            raise
        self._end()

    @abc.abstractmethod
    def _begin(self, video_id: str, subject: str) -> None: ...

    @abc.abstractmethod
    def _write(self, start: int, timestamps: np.ndarray, pred: np.ndarray, face: np.ndarray | None) -> None: ...

    @abc.abstractmethod
    def _end(self) -> None: ...

    @abc.abstractmethod
    def _discard(self) -> None: ...

    @abc.abstractmethod
    def close(self, publish: bool = True) -> None:
        """Finish; ``publish=False`` (nothing worth keeping) leaves no output file."""


def _fmt(values: np.ndarray) -> list[str]:
    return [VALUE_FORMAT.format(v) for v in values.tolist()]


class CsvWriter(PredictionWriter):
    """All videos into one CSV (:data:`COLUMNS`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ParameterError(f"--out {self.path} is a folder; give a .csv file name (or use --format affwild2)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        self.fh = open(self.tmp, "w", newline="", encoding="utf-8")
        self.rows = csv.writer(self.fh, lineterminator="\n")
        self.header = False
        self.videos = 0

    def _begin(self, video_id: str, subject: str) -> None:
        if not self.header:  # written with the first video: by then it is known whether a subject column is needed
            self.rows.writerow(COLUMNS + (SUBJECT_COLUMN,) * self.subjects)
            self.header = True
        self.fh.flush()
        self.mark = self.fh.tell()
        self.video_id = video_id
        self.subject = subject

    def _write(self, start: int, timestamps: np.ndarray, pred: np.ndarray, face: np.ndarray | None) -> None:
        n = len(pred)
        flags = [""] * n if face is None else np.asarray(face, np.int8).tolist()
        cells = [[self.video_id] * n, range(start, start + n), _fmt(timestamps), _fmt(pred[:, 0]), _fmt(pred[:, 1]), flags]
        if self.subjects:
            cells.append([self.subject] * n)
        self.rows.writerows(zip(*cells, strict=True))

    def _end(self) -> None:
        self.videos += 1

    def _discard(self) -> None:
        self.fh.flush()
        self.fh.seek(self.mark)
        self.fh.truncate()

    def close(self, publish: bool = True) -> None:
        if publish and not self.header:
            self.rows.writerow(COLUMNS)
        self.fh.close()
        if publish:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class AffWild2Writer(PredictionWriter):
    """One ``<video-id>.txt`` per video in a folder (video ids with folders keep them)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if self.folder.suffix.lower() == ".csv" or (self.folder.exists() and not self.folder.is_dir()):
            raise ParameterError(f"--out {self.folder}: --format affwild2 writes one .txt per video into a folder; give --out DIR")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fh: TextIO | None = None

    def _begin(self, video_id: str, subject: str) -> None:
        self.path = self.folder / f"{prediction_id(video_id, subject)}{AFFWILD2_SUFFIX}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        self.fh = open(self.tmp, "w", encoding="utf-8")
        self.fh.write(AFFWILD2_HEADER + "\n")

    def _write(self, start: int, timestamps: np.ndarray, pred: np.ndarray, face: np.ndarray | None) -> None:
        assert self.fh is not None
        self.fh.writelines(f"{v},{a}\n" for v, a in zip(_fmt(pred[:, 0]), _fmt(pred[:, 1]), strict=True))

    def _end(self) -> None:
        assert self.fh is not None
        self.fh.close()
        os.replace(self.tmp, self.path)

    def _discard(self) -> None:
        assert self.fh is not None
        self.fh.close()
        self.tmp.unlink(missing_ok=True)

    def close(self, publish: bool = True) -> None:
        """Nothing to do: each video's file was published when it completed."""


def prediction_id(video_id: str, subject: str) -> str:
    """The name of one person's predictions (see the module docs)."""
    return f"{video_id}_{subject}" if subject else video_id


def open_writer(fmt: str, out: str | Path) -> PredictionWriter:
    """The writer of ``fmt`` (:data:`FORMATS`) writing to ``out`` (a file for csv, a
    folder for affwild2)."""
    if fmt == "csv":
        return CsvWriter(out)
    if fmt == "affwild2":
        return AffWild2Writer(out)
    raise ParameterError(f"unknown output format {fmt!r}; choose one of: {', '.join(FORMATS)}")


# --- reading ------------------------------------------------------------------------


@dataclass
class VideoPredictions:
    """One video's predictions, indexed by frame (row i = frame i).

    Attributes
    ----------
    values : np.ndarray
        (n, 2) float64 valence and arousal; NaN for frames the file has no row for.
    timestamp : np.ndarray
        (n,) float64 seconds; NaN when unknown (Aff-Wild2 files have no times).
    face : np.ndarray
        (n,) float64 1 (face) / 0 (no face) / NaN (unknown).
    """

    values: np.ndarray
    timestamp: np.ndarray
    face: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


def read_predictions(path: str | Path) -> dict[str, VideoPredictions]:
    """Read a predictions CSV, or a folder of Aff-Wild2 ``.txt`` files.

    Parameters
    ----------
    path : str or Path
        What ``vidaffect predict`` wrote (``--format csv`` file or ``--format
        affwild2`` folder).

    Returns
    -------
    dict[str, VideoPredictions]
        Video id -> predictions, in file order (folders: sorted by id).

    Raises
    ------
    ParameterError
        Wrong header, unparsable row, repeated frame; the message names the file and line.
    """
    path = Path(path)
    if path.is_dir():
        return _read_affwild2(path)
    if not path.is_file():
        raise InputNotFound(f"{path}: no such predictions file")
    return _read_csv(path)


def _read_csv(path: Path) -> dict[str, VideoPredictions]:
    # Rows are parsed in runs of one video and each run becomes an array at once, so
    # memory stays near the size of the numbers (not of millions of Python tuples).
    chunks: dict[str, list[np.ndarray]] = {}
    run: list[tuple[float, ...]] = []
    run_video = ""

    def end_run() -> None:
        if run:
            chunks.setdefault(run_video, []).append(np.array(run, np.float64))
            run.clear()

    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [c.strip().lower() for c in next(reader, [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ParameterError(f"{path}: not a vidaffect predictions CSV (header lacks {', '.join(missing)}; expected {','.join(COLUMNS)})")
        col = [header.index(c) for c in COLUMNS]
        who = header.index(SUBJECT_COLUMN) if SUBJECT_COLUMN in header else None
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                video, frame, ts, v, a, face = (row[i] for i in col)
                video = prediction_id(video, row[who] if who is not None else "")
                values = (int(frame), float(ts) if ts else np.nan, float(v), float(a), float(face) if face else np.nan)
            except (ValueError, IndexError):
                raise ParameterError(f"{path}: line {line}: cannot read {','.join(row)!r} as {','.join(COLUMNS)}") from None
            if video != run_video:
                end_run()
                run_video = video
            run.append(values)
        end_run()
    out = {}
    for video, parts in chunks.items():
        table = np.concatenate(parts)
        frames = table[:, 0].astype(np.int64)
        if frames.min() < 0:
            raise ParameterError(f"{path}: video {video!r} has a negative frame number")
        n = int(frames.max()) + 1
        counts = np.bincount(frames, minlength=n)
        if (counts > 1).any():
            raise ParameterError(f"{path}: video {video!r} has frame {int(np.argmax(counts))} more than once")
        dense = np.full((n, 4), np.nan)
        dense[frames] = table[:, 1:]
        out[video] = VideoPredictions(values=dense[:, 1:3], timestamp=dense[:, 0], face=dense[:, 3])
    return out


def _read_affwild2(folder: Path) -> dict[str, VideoPredictions]:
    files = sorted(p for p in folder.rglob(f"*{AFFWILD2_SUFFIX}") if p.is_file())
    if not files:
        raise ParameterError(f"{folder}: no Aff-Wild2 prediction files (<video-id>{AFFWILD2_SUFFIX}) in this folder")
    out = {}
    for p in files:
        values = read_annotation(p).astype(np.float64)  # the same format as Aff-Wild2 annotations
        unknown = np.full(len(values), np.nan)
        out[p.relative_to(folder).with_suffix("").as_posix()] = VideoPredictions(values, unknown, unknown.copy())
    return out
