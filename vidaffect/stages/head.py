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
faces far from the image centre.  A face imported from OpenFace or OpenPose has no
mesh: its pose is fitted to the 51 inner landmarks alone, without depth, which is
several degrees less accurate (the group's ``note`` says so).  Frames without a face
are NaN with ``valid`` False.
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
from vidaffect.stages.layouts import IBUG_POINTS, MESH_TO_FACE70
from vidaffect.stages.params import StageParams, param

# Without a mesh (imported landmarks), the 51 inner iBUG points: a 68-point tool's jaw
# follows the silhouette, where no fixed canonical vertex is.
INNER_POINTS = np.arange(17, IBUG_POINTS)
INNER_VERTICES = np.array(MESH_TO_FACE70[17:IBUG_POINTS])


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
    version = f"2+{load_canonical().digest}"
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
        self.from_landmarks = 0  # frames fitted from landmarks alone (a face without a mesh)

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        mesh = batch.inputs[FaceStage.key("mesh")].astype(np.float64)
        inner = batch.inputs[FaceStage.key("landmarks")][:, INNER_POINTS].astype(np.float64)
        has_mesh = np.isfinite(mesh).all(axis=(1, 2))
        only_landmarks = ~has_mesh & np.isfinite(inner).all(axis=(1, 2))
        self.from_landmarks += int(only_landmarks.sum())
        rows = empty_rows(head_outputs(), len(batch))
        for use, points, vertices in ((has_mesh, mesh, None), (only_landmarks, inner, INNER_VERTICES)):
            if not use.any():
                continue
            pose = fit_head_pose(points[use], self.focal, self.center, vertices=vertices, depth_weight=self.p.depth_weight, ipd_mm=self.p.ipd_mm)
            rows["angles"][use] = pose.degrees
            rows["translation"][use] = pose.translation
            rows["scale"][use] = pose.scale
            rows["origin"][use] = pose.origin
            rows["residual"][use] = pose.residual
            rows["valid"][use] = True
        return rows

    def finish(self) -> dict[str, np.ndarray]:
        if self.from_landmarks:
            self.attrs["note"] = (
                f"{self.from_landmarks} frame(s) without a face mesh (imported landmarks): head pose from the 51 inner "
                "landmarks alone, several degrees less accurate (pitch least)"
            )
        return empty_rows(head_outputs(), 0)
