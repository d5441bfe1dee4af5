"""Every face of every frame, kept on disk while the face stage goes through a video, so
that who is who, and who the primary face is, can be decided once the whole video has
been seen, in constant memory.

The table is a temporary HDF5 file next to the video's store (``.<video-id>.h5.faces.tmp``),
one row per frame with up to ``slots`` faces (the largest first); it is removed when
the face stage is done with the video.  About 14 kB per frame and slot on disk, less
for empty slots (compressed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from vidaffect.stages.face_tracker import Face
from vidaffect.stages.layouts import FACE_POINTS, MESH_POINTS

CHUNK = 256  # frames read back at once
# Per frame and slot: dataset -> (shape of one face, dtype, fill for an empty slot).
_SLOT = {
    "track": ((), "i4", -1),
    "score": ((), "f4", np.nan),
    "landmarks": ((FACE_POINTS, 2), "f4", np.nan),
    "mesh": ((MESH_POINTS, 3), "f2", np.nan),
}


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
