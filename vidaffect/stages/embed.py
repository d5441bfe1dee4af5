"""The ``embed`` stage: the frozen encoder's features of the face crop of every frame,
and what it shares with the ``evm`` stage (parameters, the crop-and-encode run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from vidaffect.io.store import Output
from vidaffect.io.video import VideoInfo
from vidaffect.stages.base import Batch, ModelInput, Stage, StageRun
from vidaffect.stages.crop import CROP_SIZE, crop_faces
from vidaffect.stages.encoder import ENCODERS, BatchEncoder, CropEncoder, release_encoder, shared_encoder
from vidaffect.stages.face import FaceStage
from vidaffect.stages.params import StageParams, param
from vidaffect.stages.resnet import FEATURES
from vidaffect.stages.weights import ensure_weights, resolve_weights

FACE_BBOX, FACE_LANDMARKS, FACE_VALID = (FaceStage.key(d) for d in ("bbox", "landmarks", "valid"))


@dataclass(frozen=True)
class EncoderParams(StageParams):
    """Parameters of the stages that encode face crops (``embed``, ``evm``).

    ``weights_sha256`` is filled in from the file when ``weights`` is a path, so that a
    changed file re-runs the stage; give it to pin the file you expect (a mismatch is
    an error).  ``margin`` 0.15 makes the crop 1.3 times the face box.
    """

    stage = "embed"

    encoder: str = param("resnet50", "architecture; also the name of the stored dataset (embed/resnet50)", choices=tuple(ENCODERS))
    weights: str = param("imagenet", "imagenet | imagenet-v2 | random | path to a state dict or checkpoint (made absolute)")
    weights_sha256: str = param("", "SHA-256 of the weights file when weights is a path (filled in from the file)")
    batch_size: int = param(32, "crops per forward pass", low=1)
    margin: float = param(0.15, "extra width on each side of the square face box, fraction of its longer side", low=0)
    align: bool = param(False, "rotate each crop so that the eye line is level (pupils, else eye contours)")

    def check(self) -> None:
        weights, digest = resolve_weights(self.weights)
        if self.weights_sha256 and digest and self.weights_sha256 != digest:
            self.fail("weights", f"{weights}: SHA-256 is {digest}, not the expected {self.weights_sha256}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "weights_sha256", digest)


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
            batch.inputs[FACE_BBOX],
            float(p.margin),
            CROP_SIZE,
            batch.inputs.get(FACE_LANDMARKS) if p.align else None,
            bool(p.align),
            batch.inputs.get(FACE_VALID),
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
    neural = True
    Params: ClassVar[type[EncoderParams]] = EncoderParams
    params: EncoderParams

    @classmethod
    def prepare(cls, params: EncoderParams, progress: bool = False) -> None:
        ensure_weights(params.weights, progress=progress)

    def encoder(self) -> BatchEncoder:
        p = self.params
        return shared_encoder(p.encoder, p.weights, p.weights_sha256, self.device)

    def outputs(self) -> dict[str, Output]:
        return {self.params.encoder: Output((FEATURES,), "float16"), "valid": Output((), "bool", False)}

    def close(self) -> None:
        p = self.params
        release_encoder(p.encoder, p.weights, p.weights_sha256, self.device)


class EmbedStage(EncoderStage):
    """``embed/<encoder>``: (T, 2048) float16 pooled ResNet-50 features of the face
    crop, NaN where the frame has no face; ``embed/valid``: (T,) bool."""

    name = "embed"
    group = "embed"
    version = "1"
    model_inputs = {"embed": ModelInput("{encoder}")}

    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        return CropRun(self)
