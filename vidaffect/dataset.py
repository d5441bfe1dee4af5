"""Model inputs from feature stores: which dataset each modality comes from, min-max
normalisation, and the training windows.

Modalities (per-frame vectors the networks read):

==========  ============================  ======  ==============================
modality    store dataset                 size    stage (``vidaffect extract``)
==========  ============================  ======  ==============================
embed       ``embed/<encoder>``           2048    embed
landmarks   ``face/landmarks`` flattened  140     face
pose        ``pose/keypoints[..., :2]``   36      pose
mel         ``audio/mel``                 128     mel
==========  ============================  ======  ==============================

A frame whose ``<group>/valid`` is False (no face, no body, no audio) reads as NaN; so
does a pose keypoint with confidence 0 (not detected).  :func:`normalize` scales every
input dimension to [0, 1] with the training split's minimum and maximum and then sets
NaN to 0, so a missing modality is a zero vector for the network.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Modality:
    """Where a modality lives in a store: the extract stage that writes it, its HDF5
    group, and its dataset inside the group ("" = named after the stage's encoder)."""

    stage: str
    group: str
    dataset: str


MODALITIES: dict[str, Modality] = {
    "embed": Modality("embed", "embed", ""),
    "landmarks": Modality("face", "face", "landmarks"),
    "pose": Modality("pose", "pose", "keypoints"),
    "mel": Modality("mel", "audio", "mel"),
}
DEFAULT_ENCODER = "resnet50"
STATS_CHUNK = 4096  # rows read at a time when computing normalisation statistics
MAX_OPEN_FILES = 64  # stores a dataset keeps open per process

Stats = dict[str, dict[str, np.ndarray]]  # modality -> {"min": (D,), "max": (D,)}


def stages_for(modalities: Iterable[str]) -> list[str]:
    """Extract stages that produce ``modalities`` (e.g. mel -> ``mel``, landmarks -> ``face``)."""
    out: list[str] = []
    for m in modalities:
        stage = MODALITIES[m].stage
        if stage not in out:
            out.append(stage)
    return out


def dataset_path(h5: h5py.File, modality: str) -> str:
    """The "group/dataset" holding ``modality`` in this store."""
    spec = MODALITIES[modality]
    if spec.dataset:
        return f"{spec.group}/{spec.dataset}"
    params = json.loads(h5[spec.group].attrs.get("params", "{}")) if spec.group in h5 else {}
    return f"{spec.group}/{params.get('encoder', DEFAULT_ENCODER)}"


def missing_stages(h5: h5py.File, modalities: Iterable[str]) -> list[str]:
    """Stages whose output for ``modalities`` this store lacks."""
    missing = [m for m in modalities if dataset_path(h5, m) not in h5]
    return stages_for(missing)


def feature_dim(h5: h5py.File, modality: str) -> int:
    """Values per frame :func:`load_inputs` gives for ``modality`` in this store
    (pose keeps x and y of each keypoint, not the confidence)."""
    shape = h5[dataset_path(h5, modality)].shape[1:]
    if modality == "pose":
        shape = (*shape[:-1], 2)
    return int(np.prod(shape))


def frame_count(h5: h5py.File) -> int:
    return int(h5["frames/timestamp"].shape[0])


def load_inputs(
    h5: h5py.File, modalities: Iterable[str], start: int = 0, stop: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Raw model inputs of frames [start, stop) of one store.

    Parameters
    ----------
    h5 : h5py.File
        An open feature store.
    modalities : iterable of str
        Names from :data:`MODALITIES` (``embed``, ``landmarks``, ``pose``, ``mel``).
    start : int, default 0
        First frame.
    stop : int or None, default None
        One past the last frame; None = the end of the video.

    Returns
    -------
    features : dict[str, np.ndarray]
        modality -> (n, D) float32, not normalised; NaN where the frame lacks the
        modality (its ``valid`` flag is False) and for undetected pose keypoints.
    valid : dict[str, np.ndarray]
        modality -> (n,) bool, the store's ``<group>/valid`` flag.

    Raises
    ------
    ValueError
        When the store lacks a stage; the message names the ``vidaffect extract``
        command that adds it.
    """
    modalities = list(modalities)
    missing = missing_stages(h5, modalities)
    if missing:
        raise ValueError(
            f"{h5.filename}: no {', '.join(missing)} features; run `vidaffect extract VIDEOS "
            f"--store {Path(h5.filename).parent} --stages {','.join(missing)}`"
        )
    features, valid = {}, {}
    for m in modalities:
        group = MODALITIES[m].group
        rows = h5[dataset_path(h5, m)][start:stop]
        if m == "pose":
            rows = np.where(rows[..., 2:3] > 0, rows[..., :2], np.nan)
        x = rows.reshape(len(rows), -1).astype(np.float32)
        ok = h5[f"{group}/valid"][start:stop].astype(bool) if f"{group}/valid" in h5 else np.ones(len(x), bool)
        x[~ok] = np.nan
        features[m], valid[m] = x, ok
    return features, valid


def compute_stats(paths: Iterable[str | Path], modalities: Iterable[str]) -> Stats:
    """Per-dimension minimum and maximum of each modality over the given stores
    (the training split), read :data:`STATS_CHUNK` frames at a time so memory stays
    flat; NaN (missing) values are ignored.  A dimension never seen gets min = max = 0."""
    modalities = list(modalities)
    lo: dict[str, np.ndarray] = {}
    hi: dict[str, np.ndarray] = {}
    for path in paths:
        with h5py.File(path, "r") as h5:
            n = frame_count(h5)
            for start in range(0, n, STATS_CHUNK):
                features, _ = load_inputs(h5, modalities, start, start + STATS_CHUNK)
                for m, x in features.items():
                    finite = np.isfinite(x)
                    cur_lo = np.where(finite, x, np.inf).min(axis=0)
                    cur_hi = np.where(finite, x, -np.inf).max(axis=0)
                    lo[m] = np.minimum(lo[m], cur_lo) if m in lo else cur_lo
                    hi[m] = np.maximum(hi[m], cur_hi) if m in hi else cur_hi
    stats = {}
    for m in modalities:
        if m not in lo:
            raise ValueError(f"no frames to compute {m} normalisation statistics from")
        seen = np.isfinite(lo[m])
        stats[m] = {
            "min": np.where(seen, lo[m], 0).astype(np.float32),
            "max": np.where(seen, hi[m], 0).astype(np.float32),
        }
    return stats


def normalize(features: dict[str, np.ndarray], stats: Stats) -> dict[str, np.ndarray]:
    """Scale each dimension to [0, 1] with ``stats`` (values outside the training range
    are clipped), then set NaN (missing) to 0.  Arrays keep their shape (..., D)."""
    out = {}
    for m, x in features.items():
        lo, hi = stats[m]["min"], stats[m]["max"]
        if x.shape[-1] != lo.shape[0]:
            raise ValueError(f"{m} features have {x.shape[-1]} values per frame, the statistics {lo.shape[0]}")
        scale = (1 / np.where(hi > lo, hi - lo, 1)).astype(np.float32)
        # In place on one float32 copy: this runs on every training window, and
        # whole-array temporaries cost as much as the HDF5 read.
        y = np.subtract(x, lo, dtype=np.float32)
        y *= scale
        np.clip(y, 0, 1, out=y)
        out[m] = np.nan_to_num(y, copy=False, nan=0.0)
    return out


@dataclass
class VideoData:
    """One video of a split: its store, and its annotation (n, 2) float32 (valence,
    arousal) with NaN where unannotated, already cut to the frames both have.  Only
    annotations live in memory (8 bytes a frame); features are read per window."""

    video_id: str
    store: Path
    labels: np.ndarray


class WindowDataset(torch.utils.data.Dataset):
    """Windows of ``seq_len`` consecutive frames from every video, read lazily.

    Window k of a video covers frames [k*seq_len, (k+1)*seq_len); the last one is
    padded (mask False), so every frame appears exactly once.  Windows without any
    annotated frame are left out.  The DataLoader's shuffling mixes windows of all
    videos each epoch (thesis: videos shuffled each epoch); under data-parallel
    training the distributed sampler shards the same list.

    Items are dicts: ``inputs`` {modality: (S, D) float32 normalised}, ``target``
    (S, 2) float32 (0 where masked), ``mask`` (S,) bool (annotated frames), ``video``
    (index into ``videos``) and ``start`` (first frame).

    Stores are opened on first use in each process (DataLoader workers included) and
    at most :data:`MAX_OPEN_FILES` stay open, so memory does not grow with the
    number of videos.
    """

    def __init__(self, videos: list[VideoData], modalities: list[str], stats: Stats, seq_len: int) -> None:
        if seq_len < 1:
            raise ValueError(f"sequence length must be at least 1, got {seq_len}")
        self.videos = videos
        self.modalities = list(modalities)
        self.stats = stats
        self.seq_len = seq_len
        self.windows = [
            (i, start)
            for i, v in enumerate(videos)
            for start in range(0, len(v.labels), seq_len)
            if np.isfinite(v.labels[start : start + seq_len]).all(axis=1).any()
        ]
        self._files: OrderedDict[Path, h5py.File] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.windows)

    def _open(self, path: Path) -> h5py.File:
        if self._pid != os.getpid():  # a forked worker must not share the parent's handles
            self._files = OrderedDict()
            self._pid = os.getpid()
        if path in self._files:
            self._files.move_to_end(path)
            return self._files[path]
        if len(self._files) >= MAX_OPEN_FILES:
            self._files.popitem(last=False)[1].close()
        self._files[path] = h5py.File(path, "r")
        return self._files[path]

    def __getstate__(self) -> dict:
        # open HDF5 handles cannot travel to worker processes; each opens its own
        return {**self.__dict__, "_files": OrderedDict()}

    def close(self) -> None:
        for h5 in self._files.values():
            h5.close()
        self._files.clear()

    def __getitem__(self, k: int) -> dict:
        i, start = self.windows[k]
        video = self.videos[i]
        stop = min(start + self.seq_len, len(video.labels))
        features, _ = load_inputs(self._open(video.store), self.modalities, start, stop)
        inputs = normalize(features, self.stats)
        labels = video.labels[start:stop]
        mask = np.isfinite(labels).all(axis=1)
        pad = self.seq_len - (stop - start)

        def padded(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) if pad else a)

        return {
            "inputs": {m: padded(x) for m, x in inputs.items()},
            "target": padded(np.where(mask[:, None], labels, 0).astype(np.float32)),
            "mask": padded(mask),
            "video": i,
            "start": start,
        }
