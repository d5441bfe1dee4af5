"""The pose stage: 18 body keypoints per frame in OpenPose's COCO-18 order.

Datasets of the ``pose`` group, one row per frame:

=============  ===============  =======================================================
``keypoints``  (18, 3) float32  x, y in pixels (origin at the frame's top-left corner)
                                and a confidence in [0, 1], in the order of
                                :data:`.layouts.COCO18_NAMES`; NaN rows when
                                no body was found
``valid``      () bool          a body was found in this frame
``interpolated`` () bool        the row was interpolated between two frames the model
                                ran on (``every`` > 1), not measured
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

    ``every`` N > 1 runs the model on frames 0, N, 2N, ... and on the last frame
    (extrapolating would be worse than one more run), still in tracking mode, and
    interpolates x and y linearly in time between those keyframes; the confidence is
    the lower of the two keyframes'.  Rows between two keyframes of which one found no
    body stay invalid (NaN): nothing is interpolated across a gap.  The tracker's
    temporal filter sees each keyframe at the time it would see it with ``every`` 1,
    so that keyframes stay close to an every-frame run.  The pose stage's cost falls
    about N-fold; the README gives the accuracy it costs.

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
    every: int = param(1, "run the model every N frames and interpolate between (faster, less exact)", low=1)

    def check(self) -> None:
        check_import_params(self)
        if self.every > 1 and self.backend != "mediapipe":
            self.fail("every", f"applies to the mediapipe backend only; got backend={self.backend}")


class PoseStage(Stage):
    """Body keypoints in COCO-18 order (see module docs)."""

    name = "pose"
    group = "pose"
    version = "2"  # 2: the interpolated dataset
    Params = PoseParams
    model_inputs = {"pose": ModelInput("keypoints", keypoints=True)}
    params: PoseParams

    def __init__(self, params: PoseParams | None = None, device: str = "cpu") -> None:
        super().__init__(params, device)
        self._pose = None

    def needs_images(self) -> bool:
        return self.params.backend == "mediapipe"

    @classmethod
    def cost_share(cls, params: PoseParams) -> float:
        return 1.0 / params.every

    def outputs(self) -> dict[str, Output]:
        return {
            "keypoints": Output((BODY_POINTS, 3), "f4"),
            "valid": Output((), "bool", False),
            "interpolated": Output((), "bool", False),
        }

    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        p = self.params
        if p.backend != "mediapipe":
            return open_import(p, info, self.outputs(), functools.partial(read_openpose, part="pose"))
        if self._pose is None:
            self._pose = _load_pose(p)
        else:
            restart_quietly(self._pose)  # forget the previous video's person
        return _PoseRun(self._pose, self.outputs(), p.every)

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


# MediaPipe's legacy solutions stamp the n-th call n x 33333 us after the first (a
# simulated 30 fps); the landmark filter reads those stamps.  mediapipe is pinned, and
# tests/test_pose.py checks the attribute.
_STAMP = "_simulated_timestamp"
_STAMP_STEP = 33333


class _PoseRun(StageRun):
    """Keypoints of one video.  With ``every`` > 1 the rows lag: frames after the last
    keyframe wait (only their times are kept, and a copy of the newest picture for
    :meth:`finish`) until the next keyframe's rows make their interpolation possible."""

    def __init__(self, pose: Any, outputs: dict[str, Output], every: int = 1) -> None:
        super().__init__()
        self.pose = pose
        self.outputs = outputs
        self.every = every
        if every > 1 and not isinstance(getattr(pose, _STAMP, None), int):
            raise SetupError(f"pose.every={every} needs MediaPipe's {_STAMP} (this MediaPipe version lacks it); use pose.every=1")
        self._stamp0 = getattr(pose, _STAMP, 0)  # the clock when this video starts
        self._key: tuple[float, np.ndarray | None] | None = None  # last keyframe: time, keypoints or None
        self._pending: list[tuple[int, float]] = []  # frames since then: index, time
        self._last_image: np.ndarray | None = None

    def _measure(self, image: np.ndarray, index: int) -> np.ndarray | None:
        """COCO-18 keypoints of one picture, None when no body is found."""
        if self.every > 1:
            # Where an every-frame run would be on the filter's clock at this frame.
            setattr(self.pose, _STAMP, self._stamp0 + index * _STAMP_STEP)
        result = self.pose.process(image)
        if result.pose_landmarks is None:
            return None
        h, w = image.shape[:2]
        landmarks = np.array([(p.x * w, p.y * h, p.visibility) for p in result.pose_landmarks.landmark], np.float32)
        return pose33_to_coco18(landmarks)

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        if self.every == 1:
            rows = empty_rows(self.outputs, len(batch))
            for i, image in enumerate(batch.images):
                keypoints = self._measure(image, batch.start + i)
                if keypoints is not None:
                    rows["keypoints"][i], rows["valid"][i] = keypoints, True
            return rows
        parts = []
        for i, image in enumerate(batch.images):
            index, time = batch.start + i, float(batch.timestamps[i])
            if index % self.every:
                self._pending.append((index, time))
            else:
                parts.append(self._keyframe(self._measure(image, index), time))
        if self._pending:
            self._last_image = batch.images[-1].copy()
        return _concat(self.outputs, parts)

    def _keyframe(self, keypoints: np.ndarray | None, time: float) -> dict[str, np.ndarray]:
        """Rows of the frames waiting since the previous keyframe, interpolated, then
        this keyframe's row."""
        rows = empty_rows(self.outputs, len(self._pending) + 1)
        if keypoints is not None:
            rows["keypoints"][-1], rows["valid"][-1] = keypoints, True
        t0, before = self._key if self._key is not None else (0.0, None)
        if self._pending and before is not None and keypoints is not None:
            times = np.array([t for _, t in self._pending])
            w = ((times - t0) / (time - t0) if time > t0 else np.linspace(0, 1, len(times) + 2)[1:-1])[:, None, None]
            rows["keypoints"][:-1, :, :2] = (1 - w) * before[None, :, :2] + w * keypoints[None, :, :2]
            rows["keypoints"][:-1, :, 2] = np.minimum(before[:, 2], keypoints[:, 2])
            rows["valid"][:-1] = rows["interpolated"][:-1] = True
        self._key, self._pending = (time, keypoints), []
        return rows

    def finish(self) -> dict[str, np.ndarray]:
        if not self._pending:
            return empty_rows(self.outputs, 0)  # every row was returned by process()
        # The last frame becomes a keyframe: the model runs on it.
        index, time = self._pending.pop()
        assert self._last_image is not None
        rows = self._keyframe(self._measure(self._last_image, index), time)
        self._last_image = None
        return rows


def _concat(outputs: dict[str, Output], parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return empty_rows(outputs, 0)
    return {name: np.concatenate([p[name] for p in parts]) for name in outputs}
