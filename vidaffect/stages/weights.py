"""Weights of the image encoder: where they come from and how they are checked.

``weights`` parameter of the ``embed`` and ``evm`` stages (``--encoder-weights``):

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

Checkpoints are always read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from vidaffect.errors import ParameterError, SetupError

log = logging.getLogger(__name__)

# Named weights -> download URL.  The hex run after the last "-" of the file name is
# the start of the file's SHA-256 (torchvision's convention).
WEIGHTS_URLS = {
    "imagenet": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "imagenet-v2": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
}
RANDOM = "random"
RANDOM_SEED = 0  # every worker must build the same "random" network
_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")
_HASH_CHUNK = 1 << 20


class WeightsError(SetupError):
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
    ParameterError
        ``weights`` is neither a known name nor an existing file.
    """
    if weights in WEIGHTS_URLS or weights == RANDOM:
        return weights, ""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ParameterError(
            f"encoder weights {weights!r}: no such file (give a state dict file, "
            f"{', '.join(repr(w) for w in WEIGHTS_URLS)} or {RANDOM!r})"
        )
    return str(path.resolve()), file_sha256(path)


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
