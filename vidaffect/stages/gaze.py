"""The gaze stage: a geometric gaze estimate and eye and mouth openness per frame.

From the face mesh (MediaPipe's iris centres, vertices 468 and 473, and the eye and lip
contours) and the head pose of the :mod:`.head` stage; no model of its own.  Each eye
is a sphere of radius :data:`EYEBALL_RADIUS_MM` (OpenFace's value) fixed in the head;
its centre is the canonical face's iris centre 12 mm into the head (so irises where
the canonical face, photographs looking into the camera, has them mean "looking
straight ahead"), moved across the image with this face's own eye corners, since eyes
are set wider or narrower apart in different people.  As OpenFace does, the camera's ray through the iris centre is
intersected with the sphere, and the gaze is the direction from the sphere's centre
to that point.  This is an estimate from geometry, not a learned gaze model: it
ignores the angle between the optical and visual axes (kappa, about 5 degrees and
person-specific), the lids covering the iris and refraction, and it inherits the head
pose's errors.  One pixel of iris position is several degrees on a small face (about
6 degrees with 40 px between the pupils).

Datasets of the ``gaze`` group, one row per frame:

==============  =============  ==========================================================
``vectors``     (2, 3) float32 unit gaze vectors in the camera frame (x right, y down, z
                               away from the camera): row 0 the subject's right eye (on
                               the image's left: OpenFace's ``gaze_0_x/y/z``), row 1 the
                               left eye (``gaze_1_*``); looking into the camera is about
                               (0, 0, -1).  NaN for an eye too closed to trust its iris
``angles``      (2,) float32   horizontal and vertical gaze angle of the mean of the two
                               vectors, degrees: ``atan2(x, -z)``, ``atan2(y, -z)``
                               (OpenFace's ``gaze_angle_x/y``, which are radians).
                               Positive x: looking towards the image's right (the
                               subject's left); positive y: looking down
``eye_open``    (2,) float32   lid gap over eye width (subject's right, left eye),
                               measured in the head frame so that a turned head does not
                               read as a closing eye; about 0.3 open, below 0.1 closed
``mouth_open``  () float32     inner-lip gap over mouth width, head frame
``valid``       () bool        both eyes gave a gaze (so ``angles`` is defined)
==============  =============  ==========================================================

A face imported from OpenFace or OpenPose has no mesh, hence no gaze.  ``eye_open``
and ``mouth_open`` are filled wherever the face mesh and its head pose are,
also when the eyes are closed.  An eye with ``eye_open`` below ``min_eye_open`` gets
no gaze: MediaPipe's iris under a nearly closed lid is a guess (on a real close-up the
frame-to-frame jitter of the angle fell from 18 to 4 degrees with this rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidaffect.io.store import Output, empty_rows
from vidaffect.io.video import VideoInfo
from vidaffect.stages.base import Batch, ModelInput, Stage, StageRun
from vidaffect.stages.face import FaceStage
from vidaffect.stages.head import HeadStage
from vidaffect.stages.head_pose import camera_of, euler_to_matrix, load_canonical
from vidaffect.stages.params import StageParams, param

EYEBALL_RADIUS_MM = 12.0
# Mesh vertices, eye 0 (the subject's right eye) then eye 1.
IRIS_CENTRES = (468, 473)
EYE_CORNERS = ((33, 133), (362, 263))
MID_LIDS = ((159, 145), (386, 374))  # (upper, lower)
MOUTH_INNER = (13, 14)
MOUTH_CORNERS = (61, 291)


@dataclass(frozen=True)
class GazeParams(StageParams):
    stage = "gaze"

    min_eye_open: float = param(0.12, "eyes more closed than this lid gap / eye width get no gaze", low=0, high=1)


@dataclass
class Gaze:
    """Gaze of T frames (see the module docs for the meaning of each field)."""

    vectors: np.ndarray  # (T, 2, 3)
    angles: np.ndarray  # (T, 2) radians
    eye_open: np.ndarray  # (T, 2)
    mouth_open: np.ndarray  # (T,)


def estimate_gaze(
    mesh: np.ndarray, rotation: np.ndarray, translation: np.ndarray, scale: np.ndarray, origin: np.ndarray, min_eye_open: float = 0.12
) -> Gaze:
    """Gaze vectors, angles and openness ratios of T frames.

    Parameters
    ----------
    mesh : np.ndarray, shape (T, 478, 3)
        Face meshes as the face stage stores them (x, y pixels, z relative depth).
    rotation : np.ndarray, shape (T, 3, 3)
        Head-to-camera rotations.
    translation, scale, origin : np.ndarray
        (T, 3) mm, (T,) px/mm and (T, 2) px, as the head stage stores them (they also
        give the camera it fitted with, :func:`.head_pose.camera_of`).
    min_eye_open : float, default 0.12
        Eyes with a smaller lid gap / eye width get NaN vectors.
    """
    m = np.asarray(mesh, np.float64)
    can = load_canonical().vertices
    centres = can[list(IRIS_CENTRES)] + (0.0, 0.0, EYEBALL_RADIUS_MM)
    focal, principal = camera_of(translation, scale, origin)
    vectors = np.empty((len(m), 2, 3))
    for e, iris in enumerate(IRIS_CENTRES):
        c = np.einsum("tij,j->ti", rotation, centres[e]) + translation  # eyeball centre, camera frame, mm
        # Faces differ in how far apart their eyes are: follow this face's own eye
        # corners (moving the centre by their offset from the fitted canonical's).
        corners = np.einsum("tij,j->ti", rotation, can[list(EYE_CORNERS[e])].mean(axis=0)) + translation
        seen = m[:, list(EYE_CORNERS[e]), :2].mean(axis=1)
        c[:, :2] += (seen - (focal[:, None] * corners[:, :2] / corners[:, 2:] + principal)) * corners[:, 2:] / focal[:, None]
        ray = np.concatenate([(m[:, iris, :2] - principal) / focal[:, None], np.ones((len(m), 1))], axis=1)
        ray /= np.linalg.norm(ray, axis=1, keepdims=True)
        # nearest intersection of the ray with the sphere; a miss takes the closest approach
        b = np.einsum("ti,ti->t", ray, c)
        k = b - np.sqrt(np.maximum(b**2 - np.einsum("ti,ti->t", c, c) + EYEBALL_RADIUS_MM**2, 0.0))
        g = k[:, None] * ray - c
        vectors[:, e] = g / np.linalg.norm(g, axis=1, keepdims=True)
    # Openness in the head frame: undo the similarity that takes the head to the image.
    depth = np.nanmean(m[:, :, 2], axis=1, keepdims=True)
    head = np.einsum("tji,tnj->tni", rotation, m - np.concatenate([origin, depth], axis=1)[:, None]) / scale[:, None, None]
    eye_open = np.stack([_ratio(head, MID_LIDS[e], EYE_CORNERS[e]) for e in range(2)], axis=1)
    vectors[~(eye_open >= min_eye_open)] = np.nan
    mean = vectors.mean(axis=1)  # NaN unless both eyes gave a gaze: one-eye angles jump by tens of degrees
    angles = np.stack([np.arctan2(mean[:, 0], -mean[:, 2]), np.arctan2(mean[:, 1], -mean[:, 2])], axis=1)
    return Gaze(vectors, angles, eye_open, _ratio(head, MOUTH_INNER, MOUTH_CORNERS))


def _ratio(points: np.ndarray, gap: tuple[int, int], width: tuple[int, int]) -> np.ndarray:
    return np.linalg.norm(points[:, gap[0]] - points[:, gap[1]], axis=1) / np.linalg.norm(points[:, width[0]] - points[:, width[1]], axis=1)


def gaze_outputs() -> dict[str, Output]:
    return {
        "vectors": Output((2, 3), "f4"),
        "angles": Output((2,), "f4"),
        "eye_open": Output((2,), "f4"),
        "mouth_open": Output((), "f4"),
        "valid": Output((), "bool", False),
    }


class GazeStage(Stage):
    """Geometric gaze (vectors, angles in degrees) and eye/mouth openness (module docs)."""

    name = "gaze"
    version = "2"
    requires = ("face", "head")
    Params = GazeParams
    model_inputs = {"gaze": ModelInput("angles")}
    params: GazeParams

    def needs_images(self) -> bool:
        return False

    def outputs(self) -> dict[str, Output]:
        return gaze_outputs()

    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        return _GazeRun(self.params)


class _GazeRun(StageRun):
    def __init__(self, p: GazeParams) -> None:
        super().__init__()
        self.p = p

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        rows = empty_rows(gaze_outputs(), len(batch))
        head = {k: batch.inputs[HeadStage.key(k)].astype(np.float64) for k in ("angles", "translation", "scale", "origin")}
        mesh = batch.inputs[FaceStage.key("mesh")]
        ok = batch.inputs[HeadStage.key("valid")].astype(bool) & np.isfinite(mesh).all(axis=(1, 2))
        if ok.any():
            g = estimate_gaze(
                mesh[ok],
                euler_to_matrix(np.radians(head["angles"][ok])),
                head["translation"][ok],
                head["scale"][ok],
                head["origin"][ok],
                self.p.min_eye_open,
            )
            rows["vectors"][ok] = g.vectors
            rows["angles"][ok] = np.degrees(g.angles)
            rows["eye_open"][ok] = g.eye_open
            rows["mouth_open"][ok] = g.mouth_open
            rows["valid"][ok] = np.isfinite(g.angles).all(axis=1)
        return rows

    def finish(self) -> dict[str, np.ndarray]:
        return empty_rows(gaze_outputs(), 0)
