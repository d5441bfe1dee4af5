"""The model inputs ("modalities"): which stage and store dataset each comes from and
how wide it is, all derived from the stages' own declarations
(:attr:`vidaffect.stages.base.Stage.model_inputs` and their outputs), and reading them
from a store.

With the default stages and parameters the table is:

==========  ======================================  ======  ========  ================================
modality    store dataset                           size    validity  stage
==========  ======================================  ======  ========  ================================
landmarks   ``face/landmarks`` flattened (pixels)   140     1         face
mesh        ``face/mesh`` relative to ``face/bbox``  1434    1         face
face_box    ``face/bbox`` / frame width and height  4       1         face
pose        ``pose/keypoints`` x and y (pixels)     36      18        pose
embed       ``embed/<encoder>``                     2048    1         embed
evm         ``evm/<encoder>``                       2048    1         evm
mel         ``audio/mel``                           128     1         mel
head        ``head/angles``                         3       1         head
gaze        ``gaze/angles``                         2       1         gaze
egemaps     ``egemaps/lld``                         25      1         egemaps (``vidaffect[egemaps]``)
==========  ======================================  ======  ========  ================================

``mesh`` is centred on the face box and divided by the box's width (which, unlike its
height, does not change when the mouth opens), so the face's position and size in the
picture drop out and its shape and depth remain.

A frame whose ``<group>/valid`` is False (no face, no body, no audio) reads as NaN, and
so does a keypoint with confidence 0 (not detected).  Beside the values each modality
has a validity input, so that "missing" differs from "at the training minimum" (both
are 0 after normalisation): one flag per frame (the stage's ``valid`` and at least one
finite value; an imported face without a mesh has no valid ``mesh``), or one per point
for keypoint modalities.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vidaffect.errors import ParameterError
from vidaffect.stages import registry
from vidaffect.stages.base import ModelInput


@dataclass(frozen=True)
class Modality:
    """One model input.

    name: the modality's name (``landmarks``).
    stage, group: the stage that writes it and its HDF5 group.
    source: the stage's declaration (dataset name, keypoints or not, coordinates).
    defaults: the stage's default parameters (they fill ``{encoder}`` in a dataset name
        when a store records none).
    dim: values per frame with the stage's default parameters.
    validity_dim: validity flags per frame (1, or the number of keypoints).
    """

    name: str
    stage: str
    group: str
    source: ModelInput
    defaults: dict[str, Any]
    dim: int
    validity_dim: int


def _width(shape: tuple[int, ...], source: ModelInput) -> int:
    """Values per frame of a dataset whose rows have ``shape``."""
    if source.keypoints:
        shape = (*shape[:-1], 2)
    return int(math.prod(shape))


def _validity_width(shape: tuple[int, ...], source: ModelInput) -> int:
    """Validity flags per frame: one per keypoint, else one."""
    return int(math.prod(shape[:-1])) if source.keypoints else 1


def _modalities() -> dict[str, Modality]:
    table: dict[str, Modality] = {}
    for cls in registry.all_stages():
        stage = cls()  # default parameters; stages load no model until they open a video
        params = stage.params.as_dict()
        outputs = stage.outputs()
        for name, source in cls.model_inputs.items():
            shape = outputs[source.dataset_name(params)].shape
            table[name] = Modality(
                name, cls.name, cls.group_name(), source, params, _width(shape, source), _validity_width(shape, source)
            )
    return table


MODALITIES: dict[str, Modality] = _modalities()
DIMS: dict[str, int] = {name: m.dim for name, m in MODALITIES.items()}  # with default stage parameters
VALIDITY_DIMS: dict[str, int] = {name: m.validity_dim for name, m in MODALITIES.items()}


def stages_for(modalities: Iterable[str]) -> list[str]:
    """Extract stages that produce ``modalities`` (e.g. mel -> ``mel``, landmarks -> ``face``)."""
    out: list[str] = []
    for m in modalities:
        stage = MODALITIES[m].stage
        if stage not in out:
            out.append(stage)
    return out


def extract_hint(store: str | Path, stages: Iterable[str]) -> str:
    """The command that adds ``stages`` to the stores in ``store``."""
    return f"run `vidaffect extract VIDEOS --store {store} --stages {','.join(stages)}`"


def dataset_path(h5: h5py.File, modality: str) -> str:
    """The "group/dataset" holding ``modality`` in this store."""
    spec = MODALITIES[modality]
    stored = json.loads(h5[spec.group].attrs.get("params", "{}")) if spec.group in h5 else {}
    return f"{spec.group}/{spec.source.dataset_name({**spec.defaults, **stored})}"


def missing_stages(h5: h5py.File, modalities: Iterable[str]) -> list[str]:
    """Stages whose output for ``modalities`` this store lacks."""
    return stages_for(m for m in modalities if dataset_path(h5, m) not in h5)


def feature_dim(h5: h5py.File, modality: str) -> int:
    """Values per frame :func:`load_inputs` gives for ``modality`` in this store."""
    return _width(h5[dataset_path(h5, modality)].shape[1:], MODALITIES[modality].source)


def validity_dim(h5: h5py.File, modality: str) -> int:
    """Validity flags per frame :func:`load_inputs` gives for ``modality`` in this store."""
    return _validity_width(h5[dataset_path(h5, modality)].shape[1:], MODALITIES[modality].source)


def frame_count(h5: h5py.File) -> int:
    return int(h5["frames/timestamp"].shape[0])


def _relative(h5: h5py.File, group: str, rows: np.ndarray, relative_to: str, start: int, stop: int | None) -> np.ndarray:
    """Pixel coordinates made comparable across videos (see :class:`ModelInput`)."""
    if relative_to == "frame":
        try:
            width, height = float(h5.attrs["width"]), float(h5.attrs["height"])
        except KeyError:
            raise ParameterError(f"{h5.filename}: the store does not record the frame size (width, height)") from None
        return rows / np.array([width, height, width, height], np.float32)
    box = h5[f"{group}/{relative_to}"][start:stop].astype(np.float32)
    centre = box[:, :2] + box[:, 2:] / 2
    with np.errstate(invalid="ignore"):
        scale = np.where(box[:, 2] > 0, box[:, 2], np.nan)
    out = rows.copy()
    out[..., :2] -= centre[:, None, :]
    return out / scale[:, None, None]


def load_inputs(
    h5: h5py.File, modalities: Iterable[str], start: int = 0, stop: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Raw model inputs of frames [start, stop) of one store.

    Parameters
    ----------
    h5 : h5py.File
        An open feature store.
    modalities : iterable of str
        Names from :data:`MODALITIES` (``embed``, ``landmarks``, ``pose``, ``mel``, ...).
    start : int, default 0
        First frame.
    stop : int or None, default None
        One past the last frame; None = the end of the video.

    Returns
    -------
    features : dict[str, np.ndarray]
        modality -> (n, D) float32, not normalised (coordinates made relative as the
        stage declares); NaN where the frame lacks the modality (its ``valid`` flag is
        False) and for undetected keypoints.
    validity : dict[str, np.ndarray]
        modality -> (n, V) bool: V = 1 (the frame has the modality: its ``valid`` flag
        and at least one finite value), or one flag per keypoint (detected in a valid
        frame).

    Raises
    ------
    ParameterError
        When the store lacks a stage; the message names the ``vidaffect extract``
        command that adds it.
    """
    modalities = list(modalities)
    missing = missing_stages(h5, modalities)
    if missing:
        raise ParameterError(f"{h5.filename}: no {', '.join(missing)} features; {extract_hint(Path(h5.filename).parent, missing)}")
    features, validity = {}, {}
    for m in modalities:
        spec = MODALITIES[m]
        rows = h5[dataset_path(h5, m)][start:stop].astype(np.float32)
        ok = h5[f"{spec.group}/valid"][start:stop].astype(bool) if f"{spec.group}/valid" in h5 else np.ones(len(rows), bool)
        if spec.source.keypoints:
            found = (rows[..., -1] > 0) & ok[:, None]
            rows = rows[..., :2]
        if spec.source.relative_to:
            rows = _relative(h5, spec.group, rows, spec.source.relative_to, start, stop)
        if spec.source.keypoints:
            rows = np.where(found[..., None], rows, np.nan)
        x = np.ascontiguousarray(rows.reshape(len(rows), -1))
        x[~ok] = np.nan
        features[m] = x
        validity[m] = found if spec.source.keypoints else (ok & np.isfinite(x).any(axis=1))[:, None]
    return features, validity
