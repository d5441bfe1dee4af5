"""The frozen image encoder (ResNet-50 by default): uint8 face crops in, pooled
features out, batched, in half precision on CUDA.  One model instance per process
serves both the ``embed`` and the ``evm`` stage (:func:`shared_encoder`); an encoder
in another process can stand in for it (:func:`install_encoder`, see
:mod:`vidaffect.extraction.encoder_service`).

On the CPU a crop's features depend on the number of crops in its forward pass (by
about 1e-4), never on which other crops share it; the shared encoder process therefore
runs, on the CPU, exactly the passes a worker would run, and its arrays are identical."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vidaffect.errors import ParameterError
from vidaffect.stages.crop import IMAGENET_MEAN, IMAGENET_STD
from vidaffect.stages.resnet import FEATURES, ResNet50
from vidaffect.stages.weights import (
    RANDOM,
    RANDOM_SEED,
    WEIGHTS_URLS,
    WeightsError,
    fetch_weights,
    file_sha256,
    load_state_dict,
)

log = logging.getLogger(__name__)

ENCODERS = {"resnet50": ResNet50}


class Features(Protocol):
    """Features of a batch of crops on their way through an encoder."""

    def ready(self) -> bool:
        """Whether :meth:`result` would return without waiting."""
        ...

    def result(self) -> np.ndarray:
        """(N, D) float32 features, waiting for them when needed."""
        ...


class BatchEncoder(Protocol):
    """What the crop-encoding stages need from an encoder: its dataset name, where its
    weights came from, and features of uint8 crops (:class:`Encoder`, or a client of
    an encoder in another process)."""

    name: str
    weights: str

    def submit(self, crops: np.ndarray, batch_size: int) -> Features: ...


class Done:
    """Features already computed."""

    def __init__(self, features: np.ndarray) -> None:
        self.features = features

    def ready(self) -> bool:
        return True

    def result(self) -> np.ndarray:
        return self.features


class Encoder:
    """A frozen image encoder on a device: uint8 crops in, pooled features out.

    On CUDA it runs in half precision; on every device the input is channels-last
    (the natural layout of decoded RGB images).  Normalisation happens on the device.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (N, 3, H, W) normalised float images to (N, D) features.
    device : str
        ``cpu``, ``cuda`` or ``cuda:N``.
    name : str
        Encoder name (the stored dataset name), e.g. ``resnet50``.
    weights : str
        Where the weights came from, as recorded in the store.
    """

    def __init__(self, model: torch.nn.Module, device: str, name: str, weights: str) -> None:
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.name = name
        self.weights = weights
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one fixed input size: pick the fastest kernels once
        self.model = model.eval().requires_grad_(False).to(device=self.device, dtype=self.dtype)
        self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # the stubs lack memory_format
        self._staging: torch.Tensor | None = None  # pinned host buffer for transfers (CUDA)
        scale = 255.0  # crops arrive as uint8
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1).mul(scale)
        self._inv_std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1).mul(scale).reciprocal()

    def prepare(self, crops: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 RGB crops -> normalised (N, 3, H, W) channels-last
        tensor on the device, in the encoder's dtype."""
        x = torch.from_numpy(np.ascontiguousarray(crops))
        if self.device.type == "cuda":
            x = self._staged(x).to(self.device, non_blocking=True)
        # NHWC permuted to NCHW is already channels-last; elementwise ops keep it.
        # Normalise in float32, then cast (half precision on CUDA).
        x = x.permute(0, 3, 1, 2).float()
        return ((x - self._mean) * self._inv_std).to(self.dtype)

    def _staged(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` copied into page-locked memory, allocated once and grown as needed, from
        which the transfer to the GPU runs asynchronously.  Reusing the buffer is safe:
        each batch's features are read back (a synchronisation) before the next batch
        is staged."""
        if self._staging is None or self._staging.shape[1:] != x.shape[1:] or len(self._staging) < len(x):
            self._staging = torch.empty(x.shape, dtype=x.dtype).pin_memory()
        staged = self._staging[: len(x)]
        staged.copy_(x)
        return staged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model on a prepared batch (see :meth:`prepare`)."""
        with torch.inference_mode():
            return self.model(x)

    def __call__(self, crops: np.ndarray, batch_size: int = 32, pad_to: int | None = None) -> np.ndarray:
        """Features of uint8 crops.

        Parameters
        ----------
        crops : np.ndarray, shape (N, H, W, 3), uint8
            RGB crops (224 x 224 for ImageNet weights).
        batch_size : int, default 32
            Crops per forward pass.
        pad_to : int or None, default None
            Pad a chunk with blank crops to a multiple of this many crops (few distinct
            shapes for cuDNN's autotuner); None: no padding.

        Returns
        -------
        np.ndarray, shape (N, D), float32
        """
        out = np.empty((len(crops), FEATURES), np.float32)
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                chunk = crops[start : start + batch_size]
                n = len(chunk)
                if pad_to and n % pad_to:
                    chunk = np.concatenate([chunk, np.zeros((pad_to - n % pad_to, *chunk.shape[1:]), chunk.dtype)])
                out[start : start + n] = self.forward(self.prepare(chunk))[:n].float().cpu().numpy()
        return out

    def submit(self, crops: np.ndarray, batch_size: int = 32) -> Done:
        """:meth:`__call__`, as :class:`BatchEncoder` asks for it (here the features are
        ready at once)."""
        return Done(self(crops, batch_size))


def load_encoder(weights: str = "imagenet", device: str = "cpu", encoder: str = "resnet50", progress: bool = True) -> Encoder:
    """Build the encoder and load its weights.

    Parameters
    ----------
    weights : str, default "imagenet"
        ``imagenet``, ``imagenet-v2``, ``random`` or a path to a state dict /
        checkpoint file (see the module docstring).
    device : str, default "cpu"
        ``cpu``, ``cuda`` or ``cuda:N`` (already resolved from ``auto``).
    encoder : str, default "resnet50"
        Architecture; only ``resnet50`` exists.
    progress : bool, default True
        Show a progress bar if the weights must be downloaded.

    Returns
    -------
    Encoder

    Raises
    ------
    WeightsError
        Weights missing offline, corrupt, or not a ResNet-50 checkpoint.
    ParameterError
        Unknown encoder name.
    """
    if encoder not in ENCODERS:
        raise ParameterError(f"unknown encoder {encoder!r}; available: {', '.join(ENCODERS)}")
    if weights == RANDOM:
        log.warning(
            "encoder %s uses RANDOM weights (seed %d): its features carry no learned meaning; use them for tests only",
            encoder,
            RANDOM_SEED,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = ENCODERS[encoder]()
        return Encoder(model, device, encoder, f"{RANDOM} (seed {RANDOM_SEED})")
    model = ENCODERS[encoder]()
    if weights in WEIGHTS_URLS:
        path = fetch_weights(WEIGHTS_URLS[weights], progress=progress)
        described = f"{weights} ({WEIGHTS_URLS[weights]})"
    else:
        path = Path(weights)
        described = str(path)
    load_state_dict(model, path)
    return Encoder(model, device, encoder, described)


# One encoder per (architecture, weights, device) in a process, shared by the stages;
# a failure to get the weights is remembered so later videos fail at once instead of
# retrying a download that cannot work.
_SHARED: dict[tuple[str, str, str, str], BatchEncoder] = {}
_FAILED: dict[tuple[str, str, str, str], WeightsError] = {}


def shared_encoder(encoder: str, weights: str, weights_sha256: str, device: str) -> BatchEncoder:
    """The process-wide encoder for these settings, loaded on first use.  A file given
    by path is checked against ``weights_sha256`` (the hash its parameters recorded)."""
    key = (encoder, weights, weights_sha256, device)
    if key in _FAILED:
        raise _FAILED[key]
    if key not in _SHARED:
        try:
            if weights_sha256 and file_sha256(weights) != weights_sha256:
                raise WeightsError(f"encoder weights {weights} changed since the extraction was planned; run again")
            _SHARED[key] = load_encoder(weights, device, encoder)
        except WeightsError as exc:
            _FAILED[key] = exc
            raise
    return _SHARED[key]


def install_encoder(instance: BatchEncoder, encoder: str, weights: str, weights_sha256: str, device: str) -> None:
    """Serve these settings from ``instance`` (e.g. the client of an encoder running in
    another process) instead of loading the model in this process."""
    _SHARED[(encoder, weights, weights_sha256, device)] = instance


def release_encoder(encoder: str, weights: str, weights_sha256: str, device: str) -> None:
    """Forget the process-wide encoder for these settings (and a remembered failure)."""
    key = (encoder, weights, weights_sha256, device)
    _SHARED.pop(key, None)
    _FAILED.pop(key, None)


class CropEncoder:
    """Per-frame feature rows from per-frame crops, in frame order, encoding full
    batches: frames wait until ``batch_size`` crops are queued (or :meth:`flush`).
    Batches are submitted to the encoder and their rows returned once their features
    are ready, so an encoder in another process works while this one goes on with the
    next frames.  Frames without a face get NaN rows and ``valid`` False.

    Parameters
    ----------
    encoder : BatchEncoder
    batch_size : int
        Crops per forward pass.
    """

    def __init__(self, encoder: BatchEncoder, batch_size: int) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self._flags = np.zeros(0, bool)  # frames whose rows are not returned yet
        self._queued: list[np.ndarray] = []  # crops waiting for a batch
        self._pending: list[Features] = []  # batches submitted, in order
        self._done: list[np.ndarray] = []  # features of crops not returned yet

    def push(self, crops: np.ndarray, has_face: np.ndarray) -> dict[str, np.ndarray]:
        """Queue the crops of the next frames; returns the rows that are complete.

        Parameters
        ----------
        crops : np.ndarray, shape (m, H, W, 3), uint8
            One crop per frame with a face.
        has_face : np.ndarray, shape (n,), bool
            The next n frames; ``m == has_face.sum()``.
        """
        self._flags = np.concatenate([self._flags, has_face])
        if len(crops):
            self._queued.append(crops)
        queued = sum(len(c) for c in self._queued)
        if queued >= self.batch_size:
            self._submit(queued - queued % self.batch_size)
        return self._emit(wait=False)

    def flush(self) -> dict[str, np.ndarray]:
        """Encode whatever is queued and return every remaining row."""
        self._submit(sum(len(c) for c in self._queued))
        return self._emit(wait=True)

    def _submit(self, count: int) -> None:
        if count == 0:
            return
        queued = np.concatenate(self._queued)
        for start in range(0, count, self.batch_size):
            self._pending.append(self.encoder.submit(queued[start : min(start + self.batch_size, count)], self.batch_size))
        self._queued = [queued[count:]] if count < len(queued) else []

    def _emit(self, wait: bool) -> dict[str, np.ndarray]:
        while self._pending and (wait or self._pending[0].ready()):
            self._done.append(self._pending.pop(0).result())
        ready = sum(len(f) for f in self._done)
        # Frames before the first face whose features are not ready are complete.
        faces_so_far = np.cumsum(self._flags)
        if ready < int(self._flags.sum()):
            n = int(np.searchsorted(faces_so_far, ready, side="right"))
        else:
            n = len(self._flags)
        flags, self._flags = self._flags[:n], self._flags[n:]
        rows = np.full((n, FEATURES), np.nan, np.float16)
        used = int(flags.sum())
        if used:
            features = np.concatenate(self._done)
            rows[flags] = features[:used]
            self._done = [features[used:]] if used < len(features) else []
        return {self.encoder.name: rows, "valid": flags}
