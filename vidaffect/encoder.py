"""The frozen image encoder (ResNet-50) and the ``embed`` stage.

Weights (``weights`` parameter, ``--encoder-weights`` on the command line):

* ``imagenet`` (default): torchvision's ImageNet ResNet-50 weights (IMAGENET1K_V1, the
  ones ``pretrained=True`` gave and the thesis used), downloaded once into the torch
  hub cache (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``)
  and checked against the SHA-256 prefix in their file name; ``imagenet-v2`` is
  torchvision's newer IMAGENET1K_V2 recipe;
* a path: a state dict saved from torchvision, timm or a training checkpoint holding
  one under ``state_dict`` or ``model`` (wrapper prefixes such as ``module.`` or
  ``model.`` are removed; a classifier ``fc`` of another size is ignored); its SHA-256
  goes into the stage's parameters, so a changed file re-runs the stage;
* ``random``: seeded random initialisation, for tests and smoke runs only; a warning is
  logged and the choice is stored with the features.

Checkpoints are always read with ``torch.load(..., weights_only=True)``.  One model
instance per process serves both the ``embed`` and the ``evm`` stage.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from vidaffect.crop import CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD, crop_faces
from vidaffect.resnet import FEATURES, ResNet50
from vidaffect.stages import Batch, Output, SetupError, Stage, StageRun
from vidaffect.video import VideoInfo

log = logging.getLogger(__name__)

# Named weights -> download URL.  The hex run after the last "-" of the file name is
# the start of the file's SHA-256 (torchvision's convention).
WEIGHTS_URLS = {
    "imagenet": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "imagenet-v2": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
}
RANDOM = "random"
RANDOM_SEED = 0  # every worker must build the same "random" network
ENCODERS = {"resnet50": ResNet50}
_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")
_HASH_CHUNK = 1 << 20


class WeightsError(SetupError, RuntimeError):
    """Encoder weights that cannot be found, downloaded or loaded; the message says
    which file and what to do."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's contents, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cached_weights_path(url: str) -> Path:
    """Where :func:`fetch_weights` keeps the file of ``url``: the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def fetch_weights(url: str, progress: bool = True) -> Path:
    """The local copy of a weights file, downloading it once if needed.

    Parameters
    ----------
    url : str
        Where the file lives (any URL ``urllib`` opens, ``file://`` included).  When
        its name carries a SHA-256 prefix (``name-<hex>.pth``) the download and the
        cached copy are checked against it.
    progress : bool, default True
        Show a download progress bar on stderr.

    Returns
    -------
    Path
        The file in ``torch.hub.get_dir()/checkpoints``.

    Raises
    ------
    WeightsError
        The file is not cached and cannot be downloaded (offline), or the downloaded
        or cached file fails the checksum.  The message names the file, the URL and
        where to put a manually downloaded copy.
    """
    dst = cached_weights_path(url)
    match = _HASH_PREFIX.search(dst.name)
    prefix = match.group(1) if match else None
    if dst.is_file():
        if prefix and not file_sha256(dst).startswith(prefix):
            raise WeightsError(
                f"cached encoder weights {dst} fail their SHA-256 check (expected a hash starting {prefix}); "
                f"delete the file so that it is downloaded again from {url}"
            )
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading encoder weights %s to %s", url, dst)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=prefix, progress=progress)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(
            f"encoder weights {dst.name} are not in {dst.parent} and could not be downloaded from {url} ({reason}); "
            f"download that file on a machine with network access and save it as {dst}, "
            f"or pass --encoder-weights PATH (or 'random' for a smoke test)"
        ) from None
    except RuntimeError as exc:
        if "invalid hash value" not in str(exc):
            raise
        raise WeightsError(f"download of {url} is corrupt: {exc}; nothing was saved, try again") from None
    return dst


def _find_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint (plain or under a usual key)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                return _find_state_dict(obj[key], source)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise WeightsError(f"{source}: no state dict found (expected a mapping of parameter names to tensors)")


def _strip_prefix(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Remove the wrapper prefix (``module.``, ``model.``, ``backbone.``...) in front of
    the torchvision names, found from where ``layer1.0.conv1.weight`` sits."""
    anchor = "layer1.0.conv1.weight"
    prefixes = sorted({k[: -len(anchor)] for k in state if k.endswith(anchor)})
    if len(prefixes) != 1 or (prefixes[0] and not prefixes[0].endswith(".")):
        found = ", ".join(repr(p) for p in prefixes) or "none"
        raise WeightsError(
            f"{source}: not a torchvision-style ResNet checkpoint (need exactly one '<prefix>{anchor}', found prefixes {found})"
        )
    prefix = prefixes[0]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_state_dict(model: torch.nn.Module, path: str | Path) -> None:
    """Load a torchvision/timm-style checkpoint file into ``model`` (see the module
    docstring for the accepted layouts), raising :class:`WeightsError` for anything
    that does not fit except the classifier ``fc``."""
    source = str(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"encoder weights {source}: no such file") from None
    except Exception as exc:  # torch.load raises many types for foreign or unsafe files
        raise WeightsError(f"encoder weights {source}: cannot be loaded safely as a PyTorch state dict ({exc})") from None
    state = _strip_prefix(_find_state_dict(obj, source), source)
    own = model.state_dict()
    fc_ignored = [k for k in state if k.startswith("fc.") and (k not in own or state[k].shape != own[k].shape)]
    for key in fc_ignored:
        del state[key]
    wrong = [
        f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in state.items() if k in own and v.shape != own[k].shape
    ]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if wrong or unexpected or missing:
        problems = [
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("wrong shape", wrong), ("unexpected", unexpected), ("missing", missing))
            if keys
        ]
        raise WeightsError(f"encoder weights {source} do not fit a ResNet-50 ({'; '.join(problems)})")
    model.load_state_dict(state, strict=False)
    if fc_ignored:
        log.info("%s: classifier fc does not match ImageNet's; ignored (only the pooled features are used)", source)


def resolve_weights(weights: str) -> tuple[str, str]:
    """Canonical form of a ``weights`` value and the SHA-256 that identifies it.

    Named weights (``imagenet``...) and ``random`` come back unchanged with an empty
    hash; anything else must be an existing file and comes back as an absolute path
    with the hash of its contents.

    Raises
    ------
    ValueError
        ``weights`` is neither a known name nor an existing file.
    """
    if weights in WEIGHTS_URLS or weights == RANDOM:
        return weights, ""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ValueError(
            f"encoder weights {weights!r}: no such file (give a state dict file, "
            f"{', '.join(repr(w) for w in WEIGHTS_URLS)} or {RANDOM!r})"
        )
    return str(path.resolve()), file_sha256(path)


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
        self.model = model.eval().requires_grad_(False).to(self.device, self.dtype, memory_format=torch.channels_last)
        scale = 255.0  # crops arrive as uint8
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1).mul(scale)
        self._inv_std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1).mul(scale).reciprocal()

    def prepare(self, crops: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 RGB crops -> normalised (N, 3, H, W) channels-last
        tensor on the device, in the encoder's dtype."""
        x = torch.from_numpy(np.ascontiguousarray(crops))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        # NHWC permuted to NCHW is already channels-last; elementwise ops keep it.
        # Normalise in float32, then cast (half precision on CUDA).
        x = x.permute(0, 3, 1, 2).float()
        return ((x - self._mean) * self._inv_std).to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model on a prepared batch (see :meth:`prepare`)."""
        with torch.inference_mode():
            return self.model(x)

    def __call__(self, crops: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Features of uint8 crops.

        Parameters
        ----------
        crops : np.ndarray, shape (N, H, W, 3), uint8
            RGB crops (224 x 224 for ImageNet weights).
        batch_size : int, default 32
            Crops per forward pass.

        Returns
        -------
        np.ndarray, shape (N, D), float32
        """
        out = np.empty((len(crops), FEATURES), np.float32)
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                chunk = crops[start : start + batch_size]
                out[start : start + len(chunk)] = self.forward(self.prepare(chunk)).float().cpu().numpy()
        return out


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
    ValueError
        Unknown encoder name.
    """
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; available: {', '.join(ENCODERS)}")
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
_SHARED: dict[tuple[str, str, str, str], Encoder] = {}
_FAILED: dict[tuple[str, str, str, str], WeightsError] = {}


def shared_encoder(encoder: str, weights: str, weights_sha256: str, device: str) -> Encoder:
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


def ensure_weights(weights: str, progress: bool = True) -> None:
    """Download named weights into the cache now (once, in the main process, before
    workers start); a no-op for ``random`` and for files.

    Raises
    ------
    WeightsError
        As :func:`fetch_weights`.
    """
    if weights in WEIGHTS_URLS:
        fetch_weights(WEIGHTS_URLS[weights], progress=progress)


@dataclass
class EncoderParams:
    """Parameters of the stages that encode face crops (``embed``, ``evm``).

    Parameters
    ----------
    encoder : str, default "resnet50"
        Architecture; also the name of the stored dataset (``embed/resnet50``).
    weights : str, default "imagenet"
        ``imagenet`` | ``imagenet-v2`` | ``random`` | path to a state dict or
        checkpoint file (made absolute).
    weights_sha256 : str, default ""
        SHA-256 of the weights file when ``weights`` is a path, filled in from the
        file so that a changed file re-runs the stage; give it to pin the file you
        expect (a mismatch is an error).
    batch_size : int, default 32
        Crops per forward pass.
    margin : float, default 0.15
        Extra width on each side of the square face box, as a fraction of the box's
        longer side (0.15: the crop is 1.3 times the face box).
    align : bool, default False
        Rotate each crop so that the eye line is level (pupils, else eye contours).
    """

    encoder: str = "resnet50"
    weights: str = "imagenet"
    weights_sha256: str = ""
    batch_size: int = 32
    margin: float = 0.15
    align: bool = False

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; available: {', '.join(ENCODERS)}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if float(self.margin) < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        self.weights, digest = resolve_weights(str(self.weights))
        if self.weights_sha256 and digest and self.weights_sha256 != digest:
            raise ValueError(f"encoder weights {self.weights}: SHA-256 is {digest}, not the expected {self.weights_sha256}")
        self.weights_sha256 = digest


class CropEncoder:
    """Per-frame feature rows from per-frame crops, in frame order, encoding full
    batches: frames wait until ``batch_size`` crops are queued (or :meth:`flush`).
    Frames without a face get NaN rows and ``valid`` False.

    Parameters
    ----------
    encoder : Encoder
    batch_size : int
        Crops per forward pass.
    """

    def __init__(self, encoder: Encoder, batch_size: int) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self._flags = np.zeros(0, bool)  # frames whose rows are not returned yet
        self._queued: list[np.ndarray] = []  # crops waiting for a batch
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
            self._encode(queued - queued % self.batch_size)
        return self._emit()

    def flush(self) -> dict[str, np.ndarray]:
        """Encode whatever is queued and return every remaining row."""
        self._encode(sum(len(c) for c in self._queued))
        return self._emit()

    def _encode(self, count: int) -> None:
        if count == 0:
            return
        queued = np.concatenate(self._queued)
        self._done.append(self.encoder(queued[:count], self.batch_size))
        self._queued = [queued[count:]] if count < len(queued) else []

    def _emit(self) -> dict[str, np.ndarray]:
        ready = sum(len(f) for f in self._done)
        # Frames before the first face whose crop is still queued are complete.
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


class CropRun(StageRun):
    """Shared by the crop-encoding stages: crops of the frames with a face, then the
    shared encoder.  Subclasses may transform the crop stream in :meth:`transform`."""

    def __init__(self, stage: EncoderStage) -> None:
        super().__init__()
        p = stage.params
        self.params = p
        self.rows = CropEncoder(stage.encoder(), int(p.batch_size))
        self.attrs["weights"] = self.rows.encoder.weights
        self.attrs["crop"] = f"square face box + {p.margin:g} each side, {CROP_SIZE}x{CROP_SIZE}, ImageNet normalisation" + (
            ", eye line levelled" if p.align else ""
        )

    def crops(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        return crop_faces(
            batch.images,
            batch.inputs["face/bbox"],
            float(p.margin),
            CROP_SIZE,
            batch.inputs.get("face/landmarks") if p.align else None,
            bool(p.align),
            batch.inputs.get("face/valid"),
        )

    def transform(self, crops: np.ndarray, has_face: np.ndarray, batch: Batch) -> np.ndarray:
        """The crops to encode (identity here)."""
        return crops

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        crops, has_face = self.crops(batch)
        return self.rows.push(self.transform(crops, has_face, batch), has_face)

    def finish(self) -> dict[str, np.ndarray]:
        return self.rows.flush()


class EncoderStage(Stage):
    """Base of the stages that encode face crops with the shared encoder."""

    requires = ("face",)
    Params = EncoderParams

    @classmethod
    def prepare(cls, params: EncoderParams, progress: bool = False) -> None:
        ensure_weights(params.weights, progress=progress)

    def encoder(self) -> Encoder:
        p = self.params
        return shared_encoder(p.encoder, p.weights, p.weights_sha256, self.device)

    def outputs(self) -> dict[str, Output]:
        return {self.params.encoder: Output((FEATURES,), "float16"), "valid": Output((), "bool", False)}

    def close(self) -> None:
        p = self.params
        key = (p.encoder, p.weights, p.weights_sha256, self.device)
        _SHARED.pop(key, None)
        _FAILED.pop(key, None)


class EmbedStage(EncoderStage):
    """``embed/<encoder>``: (T, 2048) float16 pooled ResNet-50 features of the face
    crop, NaN where the frame has no face; ``embed/valid``: (T,) bool."""

    name = "embed"
    group = "embed"
    version = "1"

    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        return CropRun(self)


def raw_forward_fps(encoder: Encoder, batch_size: int = 32, batches: int = 3, warmup: int = 1) -> float:
    """Crops per second of the encoder's forward pass alone, on a ready, normalised
    batch already on the device (no cropping, no transfers).

    Parameters
    ----------
    encoder : Encoder
    batch_size : int, default 32
    batches : int, default 3
        Timed forward passes.
    warmup : int, default 1
        Untimed passes first (allocations, cuDNN autotuning).
    """
    rng = np.random.default_rng(0)
    x = encoder.prepare(rng.integers(0, 256, (batch_size, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8))
    for _ in range(warmup):
        encoder.forward(x)
    _sync(encoder.device)
    t0 = time.perf_counter()
    for _ in range(batches):
        encoder.forward(x)
    _sync(encoder.device)
    return batches * batch_size / (time.perf_counter() - t0)


def stage_fps(stage: Stage, batch: Batch, info: VideoInfo, store_path: Path, repeats: int = 3) -> float:
    """Frames per second of a crop-encoding stage on decoded frames with face boxes
    (``batch.inputs`` holding ``face/*``): cropping, magnification (EVM), batching,
    transfers and the forward pass, everything but decoding and face detection.  One
    untimed run over ``batch`` first loads the model and warms up.

    Parameters
    ----------
    stage : EmbedStage or EvmStage
    batch : Batch
        Frames and face inputs, e.g. 32 frames.
    info : VideoInfo
        Describes the video (its ``fps`` drives the EVM filters).
    store_path : Path
        Passed to :meth:`Stage.open` (EVM writes its video next to it when asked).
    repeats : int, default 3
        Timed passes over ``batch``.
    """
    warm = stage.open(info, store_path)
    warm.process(batch)
    warm.finish()
    _sync(torch.device(stage.device))
    t0 = time.perf_counter()
    run = stage.open(info, store_path)
    for _ in range(repeats):
        run.process(batch)
    run.finish()
    _sync(torch.device(stage.device))
    return repeats * len(batch) / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
