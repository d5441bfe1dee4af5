"""Training data: min-max normalisation statistics of the training split, the model
inputs made from raw features, and the training windows read lazily from the stores.

:func:`normalize` scales every input dimension to [0, 1] with the training split's
minimum and maximum and then sets NaN (missing) to 0; :func:`model_inputs` appends
each modality's validity flags, so the network can tell a missing modality (zeros,
flag 0) from one at its training minimum (zeros, flag 1).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from vidaffect.errors import ParameterError
from vidaffect.learn.modalities import frame_count, load_inputs
from vidaffect.learn.windows import hop_for, window_starts

log = logging.getLogger(__name__)

STATS_CHUNK = 4096  # rows read at a time when computing normalisation statistics
MAX_OPEN_FILES = 64  # stores a dataset keeps open per process

Stats = dict[str, dict[str, np.ndarray]]  # modality -> {"min": (D,), "max": (D,)}


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
            raise ParameterError(f"no frames to compute {m} normalisation statistics from")
        seen = np.isfinite(lo[m])
        if not seen.any():
            log.warning("no training frame has %s values: the network learns nothing from that input", m)
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


def model_inputs(
    features: dict[str, np.ndarray], validity: dict[str, np.ndarray], stats: Stats, validity_dims: dict[str, int]
) -> dict[str, np.ndarray]:
    """What a network reads, from :func:`~vidaffect.learn.modalities.load_inputs`'s
    output: each modality normalised (:func:`normalize`), followed by its validity
    flags as 0/1 when ``validity_dims`` gives it any (checkpoints made before validity
    inputs existed give 0).  Arrays (..., D + V) float32."""
    out = normalize(features, stats)
    for m, x in out.items():
        if validity_dims.get(m, 0):
            out[m] = np.concatenate([x, validity[m].astype(np.float32)], axis=-1)
    return out


@dataclass
class FeatureSet:
    """What the stores give a network: the modalities read (a network's optional ones
    only when every store has them), their values and validity flags per frame, and
    the stage parameters that made them (see
    :func:`vidaffect.learn.checkpoint.stage_provenance`)."""

    modalities: list[str]
    dims: dict[str, int]
    validity: dict[str, int]
    provenance: dict[str, dict[str, Any]]


@dataclass
class VideoData:
    """One video of a split: its store, its frame count, and its annotation (n, 2)
    float32 (valence, arousal) with NaN where unannotated, cut to the frames both have
    (n <= frames).  Only annotations live in memory (8 bytes a frame); features are
    read per window."""

    video_id: str
    store: Path
    labels: np.ndarray
    frames: int

    def targets(self) -> np.ndarray:
        """(frames, 2) annotation of every frame, NaN past the annotation's end."""
        return np.pad(self.labels, ((0, self.frames - len(self.labels)), (0, 0)), constant_values=np.nan)


class WindowDataset(torch.utils.data.Dataset):
    """The training windows of every video (:mod:`vidaffect.learn.windows`: ``seq_len``
    frames, half overlapping, the last one ending at the video's end), read lazily.

    A video shorter than ``seq_len`` is one window padded at the end; ``frames`` marks
    the real frames, so the network ignores the padding.  Windows without any annotated
    frame are left out.  The DataLoader's shuffling mixes windows of all videos each
    epoch (thesis: videos shuffled each epoch); under data-parallel training the
    distributed sampler shards the same list.

    Items are dicts: ``inputs`` {modality: (S, D + V) float32, see :func:`model_inputs`},
    ``target`` (S, 2) float32 (0 where masked), ``mask`` (S,) bool (annotated frames),
    ``frames`` (S,) bool (real frames, not padding), ``video`` (index into ``videos``)
    and ``start`` (first frame).

    Stores are opened on first use in each process (DataLoader workers included) and
    at most :data:`MAX_OPEN_FILES` stay open, so memory does not grow with the
    number of videos.
    """

    def __init__(
        self, videos: list[VideoData], modalities: list[str], stats: Stats, seq_len: int, validity_dims: dict[str, int]
    ) -> None:
        if seq_len < 1:
            raise ParameterError(f"sequence length must be at least 1, got {seq_len}")
        self.videos = videos
        self.modalities = list(modalities)
        self.stats = stats
        self.seq_len = seq_len
        self.validity_dims = validity_dims
        hop = hop_for(seq_len)
        self.windows = [
            (i, start)
            for i, v in enumerate(videos)
            for start in window_starts(v.frames, seq_len, hop)
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
        stop = min(start + self.seq_len, video.frames)
        features, validity = load_inputs(self._open(video.store), self.modalities, start, stop)
        inputs = model_inputs(features, validity, self.stats, self.validity_dims)
        labels = video.labels[start:stop]
        labels = np.pad(labels, ((0, stop - start - len(labels)), (0, 0)), constant_values=np.nan)
        mask = np.isfinite(labels).all(axis=1)
        pad = self.seq_len - (stop - start)

        def padded(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) if pad else a)

        return {
            "inputs": {m: padded(x) for m, x in inputs.items()},
            "target": padded(np.where(mask[:, None], labels, 0).astype(np.float32)),
            "mask": padded(mask),
            "frames": padded(np.ones(stop - start, bool)),
            "video": i,
            "start": start,
        }


class EpochShuffle(torch.utils.data.Sampler[int]):
    """One process's share of a shuffle of ``n`` windows that depends only on ``seed``
    and :attr:`epoch`: the processes deal the shuffle out in turn (process ``rank``
    takes positions rank, rank + P, ...; P = ``processes``), the shuffle padded with its
    first windows to a multiple of P so that every process takes as many steps.  So
    global step k trains on positions [kG, (k+1)G) of the shuffle (G = P x batch size)
    whatever P is, and a resumed run shuffles as if it had never stopped.

    The epoch is an attribute, not a ``set_epoch`` method, which Fabric's data loader
    would call with its own count of passes (restarting at 0 in a resumed run).
    """

    def __init__(self, n: int, seed: int, processes: int = 1, rank: int = 0) -> None:
        self.n, self.seed, self.processes, self.rank = n, seed, processes, rank
        self.epoch = 0

    def __iter__(self) -> Any:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        order += (order * self.processes)[: -self.n % self.processes]
        return iter(order[self.rank :: self.processes])

    def __len__(self) -> int:
        return -(-self.n // self.processes)
