"""Per-video valence/arousal annotation files: reading them and finding them.

Two formats, told apart by their header line:

* Aff-Wild2: ``valence,arousal``, then one line per video frame (line 2 = frame 0);
  -5 marks a frame without annotation.
* CSV: ``frame,valence,arousal`` (columns in any order, extra columns ignored), one
  row per annotated frame, frames numbered from 0; frames without a row are
  unannotated.

The file for video id ``a/b/clip`` is ``<dir>/a/b/clip.txt`` or ``.csv``; failing that,
the one file named ``clip.txt`` or ``clip.csv`` anywhere below ``<dir>`` (Aff-Wild2
keeps ``Train_Set/`` and ``Validation_Set/`` folders).  Two candidates are an error,
never a guess.

A video with two annotated people has ``<video-id>_left`` and ``<video-id>_right`` files
(Aff-Wild2's convention), found the same way (:meth:`AnnotationIndex.find_sides`): one
for the person on the left of the picture, one for the person on the right.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import numpy as np

from vidaffect.errors import InputNotFound, ParameterError

log = logging.getLogger(__name__)

EXTENSIONS = (".txt", ".csv")
SIDES = ("left", "right")  # the people of two-person videos, by position in the picture
UNANNOTATED = -5.0  # Aff-Wild2's value for a frame without annotation


def read_annotation(path: str | Path, n_frames: int | None = None) -> np.ndarray:
    """Read one annotation file.

    Parameters
    ----------
    path : str or Path
        Aff-Wild2 ``.txt`` or ``frame,valence,arousal`` CSV.
    n_frames : int or None, default None
        Frames of the video.  When given, the result covers only frames present in both
        (a CSV's unlisted frames up to ``n_frames`` are unannotated), with a warning when
        an Aff-Wild2 file's line count differs or a CSV names frames past the end.

    Returns
    -------
    np.ndarray
        (n, 2) float32 (valence, arousal), NaN where the frame is unannotated.

    Raises
    ------
    ParameterError
        Unknown header, unparsable rows, values outside [-1, 1] (other than -5),
        repeated or negative frame numbers; the message names the file.
    """
    path = Path(path)
    with open(path, encoding="utf-8-sig") as fh:
        header = [c.strip().lower() for c in fh.readline().split(",")]
    if "valence" not in header or "arousal" not in header:
        raise ParameterError(f"{path}: expected a header 'valence,arousal' (Aff-Wild2) or 'frame,valence,arousal', got {','.join(header)!r}")
    cols = [header.index(c) for c in ("frame", "valence", "arousal") if c in header]
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, usecols=cols, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise ParameterError(f"{path}: {exc}") from None
    values = table[:, -2:]
    missing = (values == UNANNOTATED).any(axis=1) | ~np.isfinite(values).all(axis=1)
    bad = ~missing & (np.abs(values) > 1).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ParameterError(f"{path}: line {row + 2}: valence/arousal {values[row].tolist()} outside [-1, 1] (use -5 for unannotated)")
    values = np.where(missing[:, None], np.nan, values).astype(np.float32)
    if "frame" not in header:
        if n_frames is not None and len(values) != n_frames:
            log.warning(
                "%s: %d annotation lines but the video has %d frames; using the first %d",
                path, len(values), n_frames, min(len(values), n_frames),
            )
        return values[:n_frames]
    frames = table[:, 0]
    if (frames < 0).any() or (frames != np.round(frames)).any():
        raise ParameterError(f"{path}: frame numbers must be whole numbers from 0")
    frames = frames.astype(np.int64)
    if len(np.unique(frames)) != len(frames):
        raise ParameterError(f"{path}: frame {int(frames[np.argmax(np.bincount(frames))])} appears more than once")
    length = int(frames.max()) + 1 if len(frames) else 0
    if n_frames is not None:
        if length > n_frames:
            log.warning("%s: rows for frames up to %d but the video has %d frames; those past the end are ignored", path, length - 1, n_frames)
        length = n_frames
    out = np.full((length, 2), np.nan, np.float32)
    inside = frames < length
    out[frames[inside]] = values[inside]
    return out


def annotation_frames(path: str | Path, n_frames: int) -> np.ndarray:
    """(n_frames, 2) float64 annotation of a video's frames: the file's rows, NaN where
    unannotated, padded with NaN when the file covers fewer frames."""
    target = read_annotation(path, n_frames).astype(np.float64)
    return np.pad(target, ((0, n_frames - len(target)), (0, 0)), constant_values=np.nan)


class AnnotationIndex:
    """Annotation files of one folder, found by video id (see module docstring).

    Parameters
    ----------
    root : str or Path
        The annotations folder; searched recursively once.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputNotFound(f"annotation folder {self.root} does not exist")
        self.by_name: dict[str, list[Path]] = {}
        for p in sorted(self.root.rglob("*")):
            if p.suffix.lower() in EXTENSIONS and p.is_file():
                self.by_name.setdefault(p.stem, []).append(p)

    def find_sides(self, video_id: str) -> dict[str, Path]:
        """The ``<video-id>_left`` and ``<video-id>_right`` files of a video with two
        annotated people ({} when it has none); ParameterError when only one is there."""
        found = {side: p for side in SIDES if (p := self.find(f"{video_id}_{side}")) is not None}
        if len(found) == 1:
            (side, path), *_ = found.items()
            raise ParameterError(f"{path}: the {side} person's annotation has no {'right' if side == 'left' else 'left'} counterpart")
        return found

    def find(self, video_id: str) -> Path | None:
        """The annotation file of ``video_id``, or None; ParameterError when ambiguous."""
        direct = [self.root / f"{video_id}{ext}" for ext in EXTENSIONS if (self.root / f"{video_id}{ext}").is_file()]
        candidates = direct or self.by_name.get(PurePosixPath(video_id).name, [])
        if len(candidates) > 1:
            raise ParameterError(
                f"annotations for video {video_id!r} are ambiguous: {', '.join(map(str, candidates))}; "
                "keep one, or mirror the video folders in the annotation folder"
            )
        return candidates[0] if candidates else None

    def find_all(self, video_ids: list[str]) -> dict[str, Path]:
        """Annotation files of those videos that have one.  Raises ParameterError when
        none does, saying where it looked."""
        found = {vid: p for vid in video_ids if (p := self.find(vid)) is not None}
        self._report(video_ids, len(found))
        return found

    def find_people(self, video_ids: list[str]) -> dict[str, tuple[str, str, Path]]:
        """Annotated people of those videos: annotation id (``clip``, or ``clip_left``
        and ``clip_right``) -> (video id, side or "", file); a video's own file wins
        over side files.  Raises ParameterError as :meth:`find_all`."""
        found: dict[str, tuple[str, str, Path]] = {}
        for vid in video_ids:
            if (p := self.find(vid)) is not None:
                found[vid] = (vid, "", p)
            else:
                found.update({f"{vid}_{side}": (vid, side, path) for side, path in self.find_sides(vid).items()})
        self._report(video_ids, len({v for v, _, _ in found.values()}))
        return found

    def _report(self, video_ids: list[str], matched: int) -> None:
        if video_ids and not matched:
            example = video_ids[0]
            raise ParameterError(
                f"no annotations for any of the {len(video_ids)} video(s) in {self.root}: looked for "
                f"<video-id>.txt or .csv (e.g. {self.root / example}.txt, or <video-id>_left/_right for two people) "
                f"and for files named like {PurePosixPath(example).name}.txt anywhere below it"
            )
        unmatched = len(video_ids) - matched
        if unmatched:
            log.info("%d of %d video(s) have no annotation in %s and are not used", unmatched, len(video_ids), self.root)
