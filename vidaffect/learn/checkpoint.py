"""Trained models on disk: what a checkpoint holds, loading it safely, and checking that
a feature store fits it.

A checkpoint is a ``torch.save`` of a plain dict (tensors, numbers, strings, lists,
dicts only, so it loads with ``torch.load(weights_only=True)``)::

    format            "vidaffect-checkpoint"; format_version 2
    net, head         e.g. "full", "lstm" (:data:`~vidaffect.learn.networks.NETWORKS`,
                      :data:`~vidaffect.learn.heads.HEADS`)
    sizes             the network sizes (the recipe's model: section)
    modalities        e.g. ["embed", "landmarks", "pose", "mel"]
    dims              {modality: values per frame}
    validity          {modality: validity flags per frame}
    window            {"seq_len", "hop"}: how a video is cut into windows
                      (:mod:`vidaffect.learn.windows`)
    stages            extract stages the inputs come from, e.g. ["embed", "face", "pose", "mel"]
    state_dict        the network's weights
    stats             {modality: {"min": tensor (D,), "max": tensor (D,)}}: training-split
                      min-max normalisation
    provenance        {stage: {"group", "params_hash", "params", "version"}} of the stores
                      the model was trained on
    config            training options (recipe, hyper-parameters, split)
    epoch, metrics    when it was saved and the validation metrics then
    vidaffect_version, created

Format 1 (before heads, validity inputs and blended windows) still loads: an LSTM head
with the thesis's sizes, no validity inputs, windows of the run's ``seq_len``.

Contract used by ``vidaffect predict`` (:mod:`vidaffect.learn.inference` does it)::

    loaded = load_model("runs/x/best.ckpt", device="cpu")
    with h5py.File(store) as h5:
        check_store(loaded, h5)                      # raises on other shapes, warns on other params
        features, validity = vidaffect.learn.modalities.load_inputs(h5, loaded.modalities, start, stop)
    pred = loaded.model(loaded.prepare(features, validity))   # (1, n, 2), n <= loaded.seq_len
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from vidaffect import __version__
from vidaffect.errors import InputNotFound, ParameterError
from vidaffect.learn.dataset import Stats, model_inputs
from vidaffect.learn.heads import Sizes, head_spec
from vidaffect.learn.hyper import resolve_sizes
from vidaffect.learn.modalities import dataset_path, extract_hint, feature_dim, missing_stages, stages_for
from vidaffect.learn.networks import AffectNet, net_spec
from vidaffect.learn.windows import hop_for
from vidaffect.stages import registry
from vidaffect.stages.weights import RANDOM

log = logging.getLogger(__name__)

FORMAT = "vidaffect-checkpoint"
FORMAT_VERSION = 2
FORMAT1_SIZES = {"rnn_hidden": 256, "dropout": 0.5}  # what format-1 networks were (thesis §3.2.2)
FORMAT1_KEYS = {"lstm.": "head.rnn.", "classifier.": "head.out."}  # their weights' names -> today's
SUMMARY_METRICS = ("ccc_mean", "valence_ccc", "arousal_ccc", "valence_rmse", "arousal_rmse")  # shown by `info`


def stage_provenance(h5: h5py.File, stages: list[str]) -> dict[str, dict[str, Any]]:
    """What made each stage's features in this store: group, params_hash, params
    (dict) and stage version, from the stage group's attributes."""
    out = {}
    for stage in stages:
        group = registry.stage_class(stage).group_name()
        attrs = h5[group].attrs
        out[stage] = {
            "group": group,
            "params_hash": str(attrs.get("params_hash", "")),
            "params": json.loads(attrs.get("params", "{}")),
            "version": str(attrs.get("version", "")),
        }
    return out


def random_encoder(provenance: dict[str, dict[str, Any]]) -> list[str]:
    """Stages of ``provenance`` whose encoder had random (untrained) weights."""
    return [s for s, p in provenance.items() if p.get("params", {}).get("weights") == RANDOM]


@dataclass
class LoadedModel:
    """A checkpoint ready to predict.

    Attributes
    ----------
    path : Path
    net, head : str
        Network and temporal head.
    model : AffectNet
        In eval mode on ``device``; ``model(inputs, frames=None) -> pred (B, S, 2)``.
    modalities : list[str]
        Inputs the network reads (keys of ``prepare``'s arguments).
    dims, validity : dict[str, int]
        Values and validity flags per frame of each modality.
    seq_len, hop : int
        The window geometry (:mod:`vidaffect.learn.windows`).
    stages : list[str]
        Extract stages the store must have.
    stats : Stats
        Normalisation, modality -> {"min": (D,), "max": (D,)} float32 arrays.
    provenance : dict
        Stage parameters of the training stores (see :func:`stage_provenance`).
    config : dict
        Training options.
    epoch : int
    metrics : dict
        Validation metrics when the checkpoint was saved.
    device : str
    """

    path: Path
    net: str
    head: str
    model: torch.nn.Module
    modalities: list[str]
    dims: dict[str, int]
    validity: dict[str, int]
    seq_len: int
    hop: int
    stages: list[str]
    stats: Stats
    provenance: dict[str, dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    @property
    def causal(self) -> bool:
        return bool(self.model.causal)

    def arrays(self, features: dict[str, np.ndarray], validity: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model inputs as float32 arrays (..., D + V) from raw features and validity
        flags (as :func:`vidaffect.learn.modalities.load_inputs` returns them): the
        saved min-max normalisation, NaN (missing) -> 0, validity flags appended."""
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise ParameterError(f"model {self.path} needs {', '.join(missing)} features")
        return model_inputs({m: features[m] for m in self.modalities}, validity, self.stats, self.validity)

    def prepare(self, features: dict[str, np.ndarray], validity: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """:meth:`arrays` as tensors on the model's device.  (n, D) arrays get a
        leading batch axis, so the result goes straight into ``model``; (B, n, D)
        arrays keep their shape."""
        out = {}
        for m, x in self.arrays(features, validity).items():
            t = torch.from_numpy(x)
            out[m] = (t[None] if t.ndim == 2 else t).to(self.device)
        return out


def save(
    path: str | Path,
    model: AffectNet,
    stats: Stats,
    provenance: dict[str, dict[str, Any]],
    config: dict[str, Any],
    epoch: int,
    metrics: dict[str, Any],
    seq_len: int,
    resume: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (temporary file, then rename), so an interrupted
    run never leaves a truncated ``best.ckpt``.  ``seq_len`` is the window length the
    model was trained on; ``resume`` (optimizer and scheduler state, early-stopping
    counters) goes into ``last.ckpt`` for `train --resume`."""
    path = Path(path)
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "net": model.net,
        "head": model.head_name,
        "sizes": asdict(model.sizes),
        "modalities": list(model.modalities),
        "dims": dict(model.dims),
        "validity": dict(model.validity),
        "window": {"seq_len": int(seq_len), "hop": hop_for(seq_len)},
        "stages": stages_for(model.modalities),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "stats": {m: {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in s.items()} for m, s in stats.items()},
        "provenance": provenance,
        "config": config,
        "epoch": int(epoch),
        "metrics": metrics,
        "vidaffect_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if resume is not None:
        ckpt["resume"] = resume
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def read(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict, loaded with ``weights_only=True`` on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ParameterError(f"{path}: not a loadable vidaffect checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ParameterError(f"{path}: not a vidaffect checkpoint (made by `vidaffect train`)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise ParameterError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this vidaffect reads; upgrade vidaffect")
    if ckpt.get("format_version", 1) < 2:
        ckpt = _from_format1(path, ckpt)
    return ckpt


def _from_format1(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint in today's terms: LSTM head, no validity inputs, the
    run's seq_len as the window."""
    seq_len = ckpt.get("config", {}).get("seq_len")
    if not seq_len:
        raise ParameterError(f"{path}: this older checkpoint does not record its sequence length (config seq_len)")
    renamed = {}
    for key, value in ckpt["state_dict"].items():
        for old, new in FORMAT1_KEYS.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        renamed[key] = value
    return {
        **ckpt,
        "head": "lstm",
        "sizes": asdict(resolve_sizes(None, FORMAT1_SIZES)),
        "validity": {m: 0 for m in ckpt["modalities"]},
        "window": {"seq_len": int(seq_len), "hop": hop_for(int(seq_len))},
        "state_dict": renamed,
    }


def build_network(ckpt: dict[str, Any]) -> AffectNet:
    """The untrained network a checkpoint (as :func:`read` returns it) describes."""
    return AffectNet(ckpt["net"], ckpt["head"], Sizes(**ckpt["sizes"]), ckpt["dims"], ckpt["validity"])


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Load a checkpoint for prediction.

    Parameters
    ----------
    path : str or Path
        A ``.ckpt`` written by ``vidaffect train`` (any format up to :data:`FORMAT_VERSION`).
    device : str, default "cpu"
        Torch device for the model and the tensors :meth:`LoadedModel.prepare` makes.

    Returns
    -------
    LoadedModel

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, not a vidaffect checkpoint, weights that do not fit the network.
    """
    ckpt = read(path)
    model = build_network(ckpt)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ParameterError(f"{path}: weights do not fit the {ckpt['net']} network ({str(exc).splitlines()[0]})") from None
    model.to(device).eval()
    provenance = ckpt.get("provenance", {})
    randoms = random_encoder(provenance)
    if randoms:
        log.warning(
            "%s was trained on features from a RANDOM (untrained) encoder (%s); its predictions mean little",
            path,
            ", ".join(randoms),
        )
    return LoadedModel(
        path=Path(path),
        net=ckpt["net"],
        head=ckpt["head"],
        model=model,
        modalities=list(ckpt["modalities"]),
        dims={m: int(d) for m, d in ckpt["dims"].items()},
        validity={m: int(d) for m, d in ckpt["validity"].items()},
        seq_len=int(ckpt["window"]["seq_len"]),
        hop=int(ckpt["window"]["hop"]),
        stages=list(ckpt["stages"]),
        stats={m: {k: v.numpy() for k, v in s.items()} for m, s in ckpt["stats"].items()},
        provenance=provenance,
        config=ckpt.get("config", {}),
        epoch=int(ckpt.get("epoch", 0)),
        metrics=ckpt.get("metrics", {}),
        device=str(device),
    )


def check_store(loaded: LoadedModel, h5: h5py.File) -> None:
    """Check that a feature store can feed the model.

    Raises :class:`ParameterError` when the store lacks a stage the model needs (naming the
    ``vidaffect extract`` command) or holds features of another size than the model
    was trained on; logs a warning when a stage ran with other parameters than the
    training stores, and a loud one when the store's encoder weights were random.
    """
    missing = missing_stages(h5, loaded.modalities)
    if missing:
        raise ParameterError(
            f"{h5.filename}: no {', '.join(missing)} features, which model {loaded.path} needs; "
            + extract_hint(Path(h5.filename).parent, missing)
        )
    for m in loaded.modalities:
        dim = feature_dim(h5, m)
        if dim != loaded.dims[m]:
            raise ParameterError(
                f"{h5.filename}: {m} features ({dataset_path(h5, m)}) have {dim} values per frame, but model "
                f"{loaded.path} was trained on {loaded.dims[m]}; extract with the parameters it was trained with "
                f"(`vidaffect info {loaded.path}`)"
            )
    here = stage_provenance(h5, loaded.stages)
    for stage, prov in here.items():
        trained = loaded.provenance.get(stage)
        if trained and trained.get("params_hash") and prov["params_hash"] != trained["params_hash"]:
            changed = sorted(
                k for k in set(prov["params"]) | set(trained["params"]) if prov["params"].get(k) != trained["params"].get(k)
            )
            log.warning(
                "%s: %s features were made with other parameters than model %s was trained on (%s)",
                h5.filename,
                stage,
                loaded.path,
                ", ".join(f"{k}: {trained['params'].get(k)!r} -> {prov['params'].get(k)!r}" for k in changed)
                or f"stage version {trained.get('version')} -> {prov['version']}",
            )
    for stage in random_encoder(here):
        log.warning("%s: %s features come from a RANDOM (untrained) encoder; predictions mean little", h5.filename, stage)


def describe(path: str | Path) -> str:
    """What ``vidaffect info CKPT`` prints: network, head, inputs, windows, training,
    provenance."""
    ckpt = read(path)
    cfg = ckpt.get("config", {})
    sizes = ckpt["sizes"]
    size_names = (("dropout",) if net_spec(ckpt["net"]).layers else ()) + head_spec(ckpt["head"]).sizes
    window = ckpt["window"]
    lines = [
        f"{path}: vidaffect checkpoint (format {ckpt['format_version']}, vidaffect {ckpt.get('vidaffect_version', '?')}, "
        f"{ckpt.get('created', '?')})",
        f"  network   {ckpt['net']}, head {ckpt['head']} (" + ", ".join(f"{k} {sizes[k]}" for k in size_names) + ")",
        "  inputs    " + ", ".join(f"{m} {ckpt['dims'][m]} + validity {ckpt['validity'].get(m, 0)}" for m in ckpt["modalities"]),
        f"  windows   {window['seq_len']} frames from a fresh state, every {window['hop']} frames, blended",
        f"  stages    {', '.join(ckpt['stages'])}",
        f"  epoch     {ckpt.get('epoch', '?')}",
    ]
    hyper = ("loss", "optimizer", "seq_len", "batch_size", "epochs", "lr", "momentum", "weight_decay", "seed")
    lines.append("  training  " + ", ".join(f"{k} {cfg[k]}" for k in hyper if k in cfg))
    split = cfg.get("split", {})
    if split:
        lines.append(f"  split     {len(split.get('train', []))} train / {len(split.get('val', []))} validation videos ({split.get('how', '')})")
    metrics = ckpt.get("metrics", {})
    if metrics:
        shown = [f"{k} {v:.4f}" for k, v in metrics.items() if k.split("_", 1)[-1] in SUMMARY_METRICS]
        lines.append("  metrics   " + ", ".join(shown))
    lines.append("  features:")
    for stage, prov in ckpt.get("provenance", {}).items():
        lines.append(f"    {stage}: /{prov['group']} v{prov['version']} hash {prov['params_hash']} {json.dumps(prov['params'], sort_keys=True)}")
    for stage in random_encoder(ckpt.get("provenance", {})):
        lines.append(f"  WARNING: {stage} features came from a random (untrained) encoder")
    return "\n".join(lines)
