"""Every face of every frame, kept on disk while the face stage goes through a video, so
that who is who, and who the primary face is, can be decided once the whole video has
been seen, in constant memory.

The table is a temporary HDF5 file next to the video's store (``.<video-id>.faces.tmp``),
one row per frame with up to ``slots`` faces (the largest first); it is removed when
the face stage is done with the video.  About 14 kB per frame and slot on disk, less
for empty slots (compressed).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from vidaffect.stages.boxes import points_box
from vidaffect.stages.face_tracker import Face
from vidaffect.stages.layouts import FACE_POINTS, IBUG_POINTS, MESH_POINTS

CHUNK = 256  # frames read back at once
# Per frame and slot: dataset -> (shape of one face, dtype, fill for an empty slot).
_SLOT = {
    "track": ((), "i4", -1),
    "score": ((), "f4", np.nan),
    "landmarks": ((FACE_POINTS, 2), "f4", np.nan),
    "mesh": ((MESH_POINTS, 3), "f2", np.nan),
}


@dataclass(frozen=True)
class Subject:
    """A person of the video, as :func:`summarise` finds them.

    subject: 0 for the primary face, then 1, 2, ... by screen time.
    identity: the tracker's identity (``face/identity``).
    frames: frames the person's face is in; first, last: the first and last of them.
    screen: screen time, the sum over those frames of the face's height over the
        frame's height (the rule that picks the primary face).
    centre_x: the face centre's mean horizontal position over those frames, as a
        fraction of the frame's width (0 left, 1 right).
    """

    subject: int
    identity: int
    frames: int
    first: int
    last: int
    screen: float
    centre_x: float


class FaceTable:
    """The temporary table of one video (see the module docs).

    Parameters
    ----------
    path : Path
        The file to write (it is replaced).
    slots : int
        Faces kept per frame (the tracker's ``max_faces``).
    """

    def __init__(self, path: Path, slots: int) -> None:
        self.path = path
        self.slots = slots
        self._h5 = h5py.File(path, "w")
        self._h5.create_dataset("timestamp", (0,), "f8", maxshape=(None,), chunks=(CHUNK,))
        for name, (shape, dtype, fill) in _SLOT.items():
            self._h5.create_dataset(
                name, (0, slots, *shape), dtype, maxshape=(None, slots, *shape), chunks=(CHUNK, slots, *shape),
                fillvalue=fill, compression="lzf",
            )  # fmt: skip
        self.frames = 0

    def append(self, timestamps: np.ndarray, faces: list[list[Face]]) -> None:
        """The faces of the next frames, one list (largest face first) per frame."""
        n = len(faces)
        rows = {name: np.full((n, self.slots, *shape), fill, dtype) for name, (shape, dtype, fill) in _SLOT.items()}
        for i, frame in enumerate(faces):
            for k, face in enumerate(frame[: self.slots]):
                rows["track"][i, k] = face.track
                rows["score"][i, k] = face.score
                rows["landmarks"][i, k] = face.landmarks
                rows["mesh"][i, k] = face.mesh
        for name, values in {"timestamp": np.asarray(timestamps, np.float64), **rows}.items():
            ds = self._h5[name]
            ds.resize(self.frames + n, axis=0)
            ds[self.frames :] = values
        self.frames += n

    def chunks(self, names: tuple[str, ...] = ("timestamp", *_SLOT)) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(first frame, datasets)`` of consecutive runs of frames."""
        for start in range(0, self.frames, CHUNK):
            yield start, {name: self._h5[name][start : start + CHUNK] for name in names}

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._h5.close()
        self.path.unlink(missing_ok=True)


Resolver = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (tracks (n, k), frames (n,)) -> identities


def summarise(table: FaceTable, resolve: Resolver, width: int, height: int) -> list[Subject]:
    """Every identity seen in the table, the primary face first (most screen time, see
    :mod:`.face_identities`), then by screen time."""
    stats: dict[int, list[float]] = {}  # identity -> frames, first, last, screen, sum of centre x
    for start, part in table.chunks(("track", "landmarks")):
        frames = start + np.arange(len(part["track"]))
        identities = resolve(part["track"], frames)
        boxes = points_box(part["landmarks"][:, :, :IBUG_POINTS])  # (n, k, 4)
        for i, k in zip(*np.nonzero(identities >= 0), strict=True):
            s = stats.setdefault(int(identities[i, k]), [0, frames[i], frames[i], 0.0, 0.0])
            box = boxes[i, k]
            s[0] += 1
            s[2] = frames[i]
            s[3] += float(box[3]) / height
            s[4] += float(box[0] + box[2] / 2) / width
    order = sorted(stats, key=lambda k: (-stats[k][3], k))
    return [
        Subject(rank, identity, int(s[0]), int(s[1]), int(s[2]), float(s[3]), float(s[4] / s[0]))
        for rank, identity in enumerate(order)
        for s in [stats[identity]]
    ]


def subjects_attr(subjects: list[Subject]) -> str:
    """The ``subjects`` attribute of the face group: JSON, one object per subject."""
    return json.dumps([asdict(s) for s in subjects])


def side_subjects(subjects: list[Subject]) -> dict[str, int]:
    """The subjects of a two-person video by side: ``{"left": k, "right": j}`` for the
    two subjects with the most screen time, by the mean horizontal position of their
    faces; {} when fewer than two subjects are stored."""
    if len(subjects) < 2:
        return {}
    a, b = sorted(subjects[:2], key=lambda s: s.centre_x)
    return {"left": a.subject, "right": b.subject}


def read_subjects(attr: str | bytes | None) -> list[Subject]:
    """The subjects recorded in a store's face group (empty when none are)."""
    return [Subject(**s) for s in json.loads(attr)] if attr else []
