"""The head stage: head pose per frame from the face mesh, no model of its own.

A rigid fit of the stored face mesh (``face/mesh``) to a canonical frontal face that
the project derives itself (:mod:`.head_pose` says how it is fitted,
``scripts/make_canonical_face.py`` how the face was made).  Datasets of the ``head``
group, one row per frame:

===============  ===========  ==========================================================
``angles``       (3,) float32 pitch, yaw, roll in degrees: OpenFace 2's ``pose_Rx``,
                              ``pose_Ry``, ``pose_Rz`` (which are radians) in degrees
``translation``  (3,) float32 head origin (centroid of the 68 points) in the camera
                              frame, mm: OpenFace's ``pose_Tx, pose_Ty, pose_Tz``
``scale``        () float32   pixels per millimetre of the head at its distance
``origin``       (2,) float32 image position of the head origin, pixels
``residual``     () float32   RMS image distance between the fitted canonical face and
                              the mesh's rigid vertices, pixels (a quality measure)
``valid``        () bool      the frame has a face mesh
===============  ===========  ==========================================================

Conventions are OpenFace 2's (camera frame: x right, y down, z away from the camera;
``R = Rx(pitch) Ry(yaw) Rz(roll)``).  For a subject facing the camera, pitch > 0: head
lowered; yaw > 0: head turned towards the subject's right (the nose towards the
image's left); roll > 0: the face turned clockwise on screen.  The translation is in
millimetres only under the assumed focal length (parameter ``focal``; OpenFace's
default for an uncalibrated camera, ``500 (W/640 + H/480) / 2``, principal point at
the image centre) and face size (``ipd_mm``); the group's attributes record both
(``focal_px``, ``principal_point``).  A wrong focal length also biases the angles of
faces far from the image centre.  Frames without a mesh (no face, or a face imported
from OpenFace or OpenPose, which give no mesh) are NaN with ``valid`` False.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidaffect.io.store import Output, empty_rows
from vidaffect.io.video import VideoInfo
from vidaffect.stages.base import Batch, ModelInput, Stage, StageRun
from vidaffect.stages.face import FaceStage
from vidaffect.stages.head_pose import IPD_MM, default_focal, fit_head_pose, load_canonical
from vidaffect.stages.params import StageParams, param


@dataclass(frozen=True)
class HeadParams(StageParams):
    stage = "head"

    focal: float | None = param(None, "camera focal length, px; none = OpenFace's default 500 (W/640 + H/480) / 2", above=0)
    ipd_mm: float = param(IPD_MM, "mm between the subject's pupils; scales the translation only", above=0)
    depth_weight: float = param(0.5, "weight of the mesh's relative depth against its x, y in the fit, 0-1", low=0, high=1)


def head_outputs() -> dict[str, Output]:
    return {
        "angles": Output((3,), "f4"),
        "translation": Output((3,), "f4"),
        "scale": Output((), "f4"),
        "origin": Output((2,), "f4"),
        "residual": Output((), "f4"),
        "valid": Output((), "bool", False),
    }


class HeadStage(Stage):
    """Head pose (pitch, yaw, roll in degrees; translation in mm) from the face mesh."""

    name = "head"
    # The canonical face is part of what determines the output: a new one re-runs caches.
    version = f"1+{load_canonical().digest}"
    requires = ("face",)
    Params = HeadParams
    model_inputs = {"head": ModelInput("angles")}
    params: HeadParams

    def needs_images(self) -> bool:
        return False

    def outputs(self) -> dict[str, Output]:
        return head_outputs()

    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        return _HeadRun(self.params, info)


class _HeadRun(StageRun):
    def __init__(self, p: HeadParams, info: VideoInfo) -> None:
        super().__init__()
        self.p = p
        self.focal = p.focal if p.focal is not None else default_focal(info.width, info.height)
        self.center = (info.width / 2.0, info.height / 2.0)
        self.attrs = {"focal_px": self.focal, "principal_point": list(self.center), "ipd_mm": p.ipd_mm}
        self.meshes = 0  # frames with a face mesh
        self.faces = 0  # frames with a face

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        mesh = batch.inputs[FaceStage.key("mesh")].astype(np.float64)
        has_mesh = np.isfinite(mesh).all(axis=(1, 2))
        self.meshes += int(has_mesh.sum())
        self.faces += int(batch.inputs[FaceStage.key("valid")].sum())
        rows = empty_rows(head_outputs(), len(batch))
        if has_mesh.any():
            pose = fit_head_pose(mesh[has_mesh], self.focal, self.center, depth_weight=self.p.depth_weight, ipd_mm=self.p.ipd_mm)
            rows["angles"][has_mesh] = pose.degrees
            rows["translation"][has_mesh] = pose.translation
            rows["scale"][has_mesh] = pose.scale
            rows["origin"][has_mesh] = pose.origin
            rows["residual"][has_mesh] = pose.residual
            rows["valid"][has_mesh] = True
        return rows

    def finish(self) -> dict[str, np.ndarray]:
        if self.faces and not self.meshes:
            self.attrs["note"] = "the face stage stored no mesh (imported landmarks); head pose needs the mediapipe face backend"
        return empty_rows(head_outputs(), 0)
