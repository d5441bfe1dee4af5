"""The pose stage: 18 body keypoints per frame in OpenPose's COCO-18 order.

Datasets of the ``pose`` group, one row per frame:

=============  ===============  =======================================================
``keypoints``  (18, 3) float32  x, y in pixels (origin at the frame's top-left corner)
                                and a confidence in [0, 1], in the order of
                                :data:`.layouts.COCO18_NAMES`; NaN rows when
                                no body was found
``valid``      () bool          a body was found in this frame
=============  ===============  =======================================================

Backends (parameter ``backend``):

``mediapipe`` (default)
    MediaPipe Pose in tracking mode (one person: the most prominent one when it
    starts, then followed), its 33 landmarks mapped to COCO-18 as
    :mod:`.layouts` documents; the confidence is MediaPipe's
    *visibility*, the neck is the shoulders' midpoint.  Points outside the frame keep
    MediaPipe's estimate with a low confidence.  ``model_complexity`` 1 (the "full"
    model, the default) is the one MediaPipe ships; it takes about 17 ms of one CPU
    core per frame (about 55 frames/s at 640x360 when the core is free).
    Complexity 0 ("lite", faster) and 2 ("heavy", more accurate) are downloaded by
    MediaPipe on first use, which needs network access once.

``openpose``
    Reads ``pose_keypoints_2d`` (COCO-18 or BODY_25) from
    ``<import_dir>/<video-id>/*_keypoints.json`` (see :mod:`.openpose`);
    joints OpenPose did not find are NaN with confidence 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidaffect.errors import SetupError
from vidaffect.io.store import Output, empty_rows
from vidaffect.io.video import VideoInfo
from vidaffect.stages.base import Batch, ModelInput, Stage, StageRun
from vidaffect.stages.imports import IMPORT_MATCHES, check_import_params, open_import
from vidaffect.stages.layouts import BODY_POINTS, pose33_to_coco18
from vidaffect.stages.mediapipe_solutions import mediapipe_solution, restart_quietly
from vidaffect.stages.openpose import read_openpose
from vidaffect.stages.params import StageParams, param

_MODEL_FILES = {0: "pose_landmark_lite.tflite", 1: "pose_landmark_full.tflite", 2: "pose_landmark_heavy.tflite"}


@dataclass(frozen=True)
class PoseParams(StageParams):
    stage = "pose"

    backend: str = param("mediapipe", "mediapipe, or openpose to import --write_json output", choices=("mediapipe", "openpose"))
    model_complexity: int = param(1, "MediaPipe pose model: 0 lite, 1 full (shipped), 2 heavy", choices=tuple(_MODEL_FILES))
    smooth_landmarks: bool = param(True, "MediaPipe's temporal filter of the landmarks")
    min_detection_confidence: float = param(0.5, "person detector score a body needs, 0-1", low=0, high=1)
    min_tracking_confidence: float = param(0.5, "landmark presence score to keep tracking, 0-1", low=0, high=1)
    import_dir: str = param("", "folder of OpenPose JSON folders, one per video (openpose backend)")
    import_match: str = param("auto", "imported rows to frames: auto or index", choices=IMPORT_MATCHES)

    def check(self) -> None:
        check_import_params(self)


class PoseStage(Stage):
    """Body keypoints in COCO-18 order (see module docs)."""

    name = "pose"
    group = "pose"
    version = "1"
    Params = PoseParams
    model_inputs = {"pose": ModelInput("keypoints", keypoints=True)}
    params: PoseParams

    def __init__(self, params: PoseParams | None = None, device: str = "cpu") -> None:
        super().__init__(params, device)
        self._pose = None

    def needs_images(self) -> bool:
        return self.params.backend == "mediapipe"

    def outputs(self) -> dict[str, Output]:
        return {"keypoints": Output((BODY_POINTS, 3), "f4"), "valid": Output((), "bool", False)}

    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        p = self.params
        if p.backend != "mediapipe":
            return open_import(p, info, self.outputs(), functools.partial(read_openpose, part="pose"))
        if self._pose is None:
            self._pose = _load_pose(p)
        else:
            restart_quietly(self._pose)  # forget the previous video's person
        return _PoseRun(self._pose, self.outputs())

    def close(self) -> None:
        if self._pose is not None:
            self._pose.close()
            self._pose = None


def _load_pose(p: PoseParams) -> Any:
    try:
        return mediapipe_solution(
            "pose.Pose",
            static_image_mode=False,
            model_complexity=p.model_complexity,
            smooth_landmarks=p.smooth_landmarks,
            enable_segmentation=False,
            min_detection_confidence=p.min_detection_confidence,
            min_tracking_confidence=p.min_tracking_confidence,
        )
    except OSError as exc:  # MediaPipe fetches the lite/heavy models on first use
        import mediapipe

        target = Path(mediapipe.__file__).parent / "modules" / "pose_landmark" / _MODEL_FILES[p.model_complexity]
        raise SetupError(
            f"pose.model_complexity={p.model_complexity} needs {target.name}, which MediaPipe could not download "
            f"({exc}); put the file at {target} (from https://storage.googleapis.com/mediapipe-assets/"
            f"{target.name}) or use pose.model_complexity=1, whose model MediaPipe ships"
        ) from None


class _PoseRun(StageRun):
    def __init__(self, pose: Any, outputs: dict[str, Output]) -> None:
        super().__init__()
        self.pose = pose
        self.outputs = outputs

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        rows = empty_rows(self.outputs, len(batch))
        for i, image in enumerate(batch.images):
            result = self.pose.process(image)
            if result.pose_landmarks is None:
                continue
            h, w = image.shape[:2]
            landmarks = np.array([(p.x * w, p.y * h, p.visibility) for p in result.pose_landmarks.landmark], np.float32)
            rows["keypoints"][i] = pose33_to_coco18(landmarks)
            rows["valid"][i] = True
        return rows

    def finish(self) -> dict[str, np.ndarray]:
        return empty_rows(self.outputs, 0)  # every row was returned by process()
