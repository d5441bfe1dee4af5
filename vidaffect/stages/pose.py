"""The pose stage: 18 body keypoints per frame in OpenPose's COCO-18 order, of the person
whose face the face stage tracks.

Datasets of the ``pose`` group, one row per frame:

=============  ===============  =======================================================
``keypoints``  (18, 3) float32  x, y in pixels (origin at the frame's top-left corner)
                                and a confidence in [0, 1], in the order of
                                :data:`.layouts.COCO18_NAMES`; a keypoint that is not
                                there is NaN with confidence 0, a frame without a
                                person NaN throughout
``valid``      () bool          a person was found in this frame
``interpolated`` () bool        the row was interpolated between two frames the model
                                ran on (``every`` > 1), not measured
=============  ===============  =======================================================

**Only what is there** (both backends, the same rules): a keypoint whose confidence is
below ``min_keypoint_confidence`` (MediaPipe's *visibility*, OpenPose's score), or that
lies outside the image the pose model saw by more than ``outside_margin`` of its width
or height, is NaN with confidence 0.  MediaPipe extrapolates a whole body below a face
close-up (hips and ankles several frame heights under the image) and OpenPose puts
joints it cannot see on the image border with a low score; neither reaches the store.
A frame whose body keeps no keypoint has ``valid`` False.  The default 0.5 is
MediaPipe's own visibility convention; on real OpenPose output it removes the joints
clamped to the border (scores up to 0.49) and keeps 99 % of the others.

**The tracked face's person.**  The stage requires the face stage and follows its face
(``face/bbox``): a body counts only when its head (the nose, else the eyes) lies on
that face.  MediaPipe pose runs on the region around the face where that person's body
can be (:func:`.body.person_region`: 3.5 face sizes to each side, 2 above, 12 below, cut to
the frame), which keeps other people out of view; the region is moved only when the face
has moved by half its size, and MediaPipe's tracking restarts only when the region
jumps by more than a quarter of its size.  OpenPose imports
keep, of the people in a frame, the one whose head is on the face.  While the face
stage has no face, the last region is kept for a second, then the whole frame is used
and the most prominent body is taken.  When the face stage fails on a video, pose still
runs, without a face to follow, and its ``note`` says so.

**A person, not a picture of one.**  MediaPipe finds bodies in logos and drawings (a
title card gave a skeleton with visibility near 1).  A body whose face MediaPipe reports
as visible (nose and both eyes above the threshold, in the image) must have a real face
there: when the face stage has none at that frame, a face detector looks at an enlarged
crop of the body's head, and without a face the frame has no person.  People seen from
behind or with hidden faces are not checked.  Imported OpenPose bodies cannot be checked
this way (the pictures are not decoded for an import).

The group attributes ``frames_not_tracked_face`` and ``frames_without_face`` count the
frames where a body was rejected by these two rules.

Backends (parameter ``backend``):

``mediapipe`` (default)
    MediaPipe Pose in tracking mode, its 33 landmarks mapped to COCO-18 as
    :mod:`.layouts` documents; the confidence is MediaPipe's *visibility*, the neck is
    the shoulders' midpoint.  ``model_complexity`` 1 (the "full" model, the default) is
    the one MediaPipe ships; it takes about 17 ms of one CPU core per frame (about 55
    frames/s at 640x360 when the core is free).  Complexity 0 ("lite", faster) and 2
    ("heavy", more accurate) are downloaded by MediaPipe on first use, which needs
    network access once.

    ``every`` N > 1 runs the model on frames 0, N, 2N, ... and on the last frame
    (extrapolating would be worse than one more run), still in tracking mode and with
    every rule above applied to those keyframes, and interpolates x and y linearly in
    time between two keyframes; the confidence is the lower of the two keyframes'.
    Only keypoints present at both keyframes are interpolated (the others stay NaN,
    confidence 0), and nothing is interpolated when either keyframe has no person: the
    rows between stay invalid.  The region MediaPipe looks at still follows the face
    frame by frame.  The tracker's temporal filter sees each keyframe at the time it
    would see it with ``every`` 1, so that keyframes stay close to an every-frame run.
    The pose stage's cost falls about N-fold; the README gives the accuracy it costs.

``openpose``
    Reads ``pose_keypoints_2d`` (COCO-18 or BODY_25) from
    ``<import_dir>/<video-id>/*.json`` (see :mod:`.openpose` and :mod:`.imports`).
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
from vidaffect.stages.body import (
    HEAD,
    REGION_MOVE,
    REGION_RESTART,
    head_on_face,
    person_region,
    present_keypoints,
    region_jump,
    shows_face,
)
from vidaffect.stages.boxes import points_box
from vidaffect.stages.face import FaceStage
from vidaffect.stages.imports import IMPORT_MATCHES, Imported, ImportRun, check_import_params, import_files, open_import
from vidaffect.stages.layouts import BODY_POINTS, pose33_to_coco18
from vidaffect.stages.mediapipe_solutions import mediapipe_solution, restart_quietly
from vidaffect.stages.openpose import follow, read_openpose
from vidaffect.stages.params import StageParams, param

_MODEL_FILES = {0: "pose_landmark_lite.tflite", 1: "pose_landmark_full.tflite", 2: "pose_landmark_heavy.tflite"}
FACE_BBOX, FACE_VALID = FaceStage.key("bbox"), FaceStage.key("valid")
_HEAD_CROP, _HEAD_CROP_PX = 2.0, 256  # head check: crop side over the head's extent, pixels


@dataclass(frozen=True)
class PoseParams(StageParams):
    stage = "pose"

    backend: str = param("mediapipe", "mediapipe, or openpose to import --write_json output", choices=("mediapipe", "openpose"))
    min_keypoint_confidence: float = param(
        0.5, "keypoints below this confidence (MediaPipe visibility, OpenPose score) are NaN, confidence 0", low=0, high=1
    )
    outside_margin: float = param(
        0.01, "keypoints further outside the image than this fraction of its width/height are NaN, confidence 0", low=0
    )
    model_complexity: int = param(1, "MediaPipe pose model: 0 lite, 1 full (shipped), 2 heavy", choices=tuple(_MODEL_FILES))
    smooth_landmarks: bool = param(True, "MediaPipe's temporal filter of the landmarks")
    min_detection_confidence: float = param(0.5, "person detector score a body needs, 0-1", low=0, high=1)
    min_tracking_confidence: float = param(0.5, "landmark presence score to keep tracking, 0-1", low=0, high=1)
    import_dir: str = param("", "folder of OpenPose JSON folders, one per video (openpose backend; made absolute)")
    import_match: str = param("auto", "imported rows to frames: auto or index", choices=IMPORT_MATCHES)
    every: int = param(1, "run the model every N frames and interpolate between (faster, less exact)", low=1)

    def check(self) -> None:
        check_import_params(self)
        if self.every > 1 and self.backend != "mediapipe":
            self.fail("every", f"applies to the mediapipe backend only; got backend={self.backend}")


class PoseStage(Stage):
    """Body keypoints in COCO-18 order of the tracked face's person (see module docs)."""

    name = "pose"
    group = "pose"
    version = "3"  # 3: the interpolated dataset (pose.every)
    requires = ("face",)
    can_do_without = ("face",)
    Params = PoseParams
    model_inputs = {"pose": ModelInput("keypoints", keypoints=True)}
    params: PoseParams

    def __init__(self, params: PoseParams | None = None, device: str = "cpu") -> None:
        super().__init__(params, device)
        self._pose: Any = None
        self._faces: Any = None

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

    def imported_files(self, info: VideoInfo) -> list[Path] | None:
        return import_files(self.params, info.video_id) if self.params.backend != "mediapipe" else None

    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        p = self.params
        if p.backend != "mediapipe":
            run = functools.partial(_PoseImportRun, params=p, size=(info.width, info.height))
            return open_import(p, info, self.outputs(), functools.partial(read_openpose, part="pose"), run)
        if self._pose is None:
            self._pose = _load_pose(p)
        else:
            restart_quietly(self._pose)  # forget the previous video's person
        return _PoseRun(self, info)

    def face_detector(self) -> Any:
        """MediaPipe's short-range face detector, for the head check (loaded when first
        needed)."""
        if self._faces is None:
            self._faces = mediapipe_solution("face_detection.FaceDetection", model_selection=0, min_detection_confidence=0.5)
        return self._faces

    def close(self) -> None:
        for solution in (self._pose, self._faces):
            if solution is not None:
                solution.close()
        self._pose = self._faces = None


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


def _faces_of(batch: Batch) -> list[np.ndarray | None]:
    """The tracked face's box in each frame of the batch (None: no face, or no face stage)."""
    boxes, valid = batch.inputs.get(FACE_BBOX), batch.inputs.get(FACE_VALID)
    if boxes is None or valid is None:
        return [None] * len(batch)
    return [box if ok else None for box, ok in zip(boxes, valid, strict=True)]


_RULES = {
    "frames_not_tracked_face": "a body that was not the tracked face's person",
    "frames_without_face": "a body showing a face where no face was found (not a person, e.g. a logo)",
}


class _Rejections:
    """Frames whose body was not taken, by rule, kept in the group's attributes (and
    its ``note``)."""

    def __init__(self, attrs: dict[str, Any], rules: tuple[str, ...]) -> None:
        self.attrs = attrs
        self.attrs.update(dict.fromkeys(rules, 0))
        self.rules = rules

    def add(self, rule: str) -> None:
        self.attrs[rule] += 1

    def note(self) -> None:
        said = [f"{self.attrs[r]} frame(s) with {_RULES[r]} have no pose" for r in self.rules if self.attrs[r]]
        if said:
            self.attrs["note"] = "; ".join([self.attrs["note"], *said] if self.attrs.get("note") else said)


# MediaPipe's legacy solutions stamp the n-th call n x 33333 us after the first (a
# simulated 30 fps); the landmark filter reads those stamps.  mediapipe is pinned, and
# tests/test_pose.py checks the attribute.
_STAMP = "_simulated_timestamp"
_STAMP_STEP = 33333


class _PoseRun(StageRun):
    """Keypoints of one video.  With ``every`` > 1 the rows lag: frames after the last
    keyframe wait (only their times are kept, and a copy of the newest picture and its
    face for :meth:`finish`) until the next keyframe's rows make their interpolation
    possible."""

    def __init__(self, stage: PoseStage, info: VideoInfo) -> None:
        super().__init__()
        self.stage = stage
        self.p = stage.params
        self.pose = stage._pose
        self.outputs = stage.outputs()
        self.size = (info.width, info.height)
        self.region: tuple[int, int, int, int] | None = None  # where MediaPipe looks now
        self.region_face = 0.0  # size of the face the region was placed for
        self.faceless = 0  # frames since the face stage last had a face
        self.hold = max(1, round(info.fps)) if info.fps > 0 else 25  # frames the region outlives its face
        self.rejected = _Rejections(self.attrs, ("frames_not_tracked_face", "frames_without_face"))
        self.every = self.p.every
        if self.every > 1 and not isinstance(getattr(self.pose, _STAMP, None), int):
            raise SetupError(f"pose.every={self.every} needs MediaPipe's {_STAMP} (this MediaPipe version lacks it); use pose.every=1")
        self._stamp0 = getattr(self.pose, _STAMP, 0)  # the clock when this video starts
        self._key: tuple[float, np.ndarray | None] | None = None  # last keyframe: time, keypoints or None
        self._pending: list[tuple[int, float]] = []  # frames since then: index, time
        self._last: tuple[np.ndarray, np.ndarray | None] | None = None  # newest picture and its face

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        parts = []
        for i, (image, face) in enumerate(zip(batch.images, _faces_of(batch), strict=True)):
            h, w = image.shape[:2]
            region = self._region(face, w, h)  # follows the face on every frame, keyframe or not
            index, time = batch.start + i, float(batch.timestamps[i])
            if index % self.every:
                self._pending.append((index, time))
            else:
                parts.append(self._keyframe(self._measure(image, face, region, index), time))
        if self._pending:
            self._last = (batch.images[-1].copy(), _faces_of(batch)[-1])
        if not parts:
            return empty_rows(self.outputs, 0)
        return {name: np.concatenate([p[name] for p in parts]) for name in self.outputs}

    def _measure(
        self, image: np.ndarray, face: np.ndarray | None, region: tuple[int, int, int, int], index: int
    ) -> np.ndarray | None:
        """The tracked person's keypoints in one picture after the keypoint rules, None
        when there is no such person."""
        h, w = image.shape[:2]
        x0, y0, x1, y1 = region
        view = image if (x0, y0, x1, y1) == (0, 0, w, h) else np.ascontiguousarray(image[y0:y1, x0:x1])
        if self.every > 1:
            # Where an every-frame run would be on the filter's clock at this frame.
            setattr(self.pose, _STAMP, self._stamp0 + index * _STAMP_STEP)
        result = self.pose.process(view)
        if result.pose_landmarks is None:
            return None
        vw, vh = x1 - x0, y1 - y0
        landmarks = np.array([(q.x * vw + x0, q.y * vh + y0, q.visibility) for q in result.pose_landmarks.landmark], np.float32)
        body = pose33_to_coco18(landmarks)
        if face is not None:
            if not head_on_face(body, face):
                self.rejected.add("frames_not_tracked_face")
                return None
        elif shows_face(body, region, self.p.min_keypoint_confidence) and not self._face_at_head(image, body):
            self.rejected.add("frames_without_face")
            return None
        kept = present_keypoints(body, region, self.p.min_keypoint_confidence, self.p.outside_margin)
        return kept if np.isfinite(kept[:, 0]).any() else None

    def _keyframe(self, keypoints: np.ndarray | None, time: float) -> dict[str, np.ndarray]:
        """Rows of the frames waiting since the previous keyframe, interpolated, then
        this keyframe's row."""
        rows = empty_rows(self.outputs, len(self._pending) + 1)
        if keypoints is not None:
            rows["keypoints"][-1], rows["valid"][-1] = keypoints, True
        t0, before = self._key if self._key is not None else (0.0, None)
        if self._pending and before is not None and keypoints is not None:
            both = np.isfinite(before[:, 0]) & np.isfinite(keypoints[:, 0])  # present at both ends
            if both.any():
                times = np.array([t for _, t in self._pending])
                w = ((times - t0) / (time - t0) if time > t0 else np.linspace(0, 1, len(times) + 2)[1:-1])[:, None, None]
                between = rows["keypoints"][:-1]  # a view: written in place
                between[:, both, :2] = (1 - w) * before[None, both, :2] + w * keypoints[None, both, :2]
                between[:, both, 2] = np.minimum(before[both, 2], keypoints[both, 2])
                between[:, ~both, 2] = 0.0
                rows["valid"][:-1] = rows["interpolated"][:-1] = True
        self._key, self._pending = (time, keypoints), []
        return rows

    def _region(self, face: np.ndarray | None, w: int, h: int) -> tuple[int, int, int, int]:
        """The part of the frame MediaPipe looks at (see the module docs); moving it
        restarts MediaPipe's tracking, whose state is in the region's coordinates."""
        if face is None:
            self.faceless += 1
            wanted = self.region if self.region is not None and self.faceless <= self.hold else (0, 0, w, h)
            if wanted != self.region:
                self.region_face = 0.0
        else:
            self.faceless = 0
            side = float(max(face[2], face[3]))
            wanted = person_region(face, w, h)
            if self.region is not None and self.region_face > 0:
                moved = max(abs(a - b) for a, b in zip(wanted, self.region, strict=True))
                if moved <= REGION_MOVE * min(side, self.region_face):
                    wanted = self.region
            if wanted != self.region:
                self.region_face = side
        if wanted != self.region:
            if self.region is not None and region_jump(self.region, wanted) > REGION_RESTART:
                self.pose.reset()
            self.region = wanted
        return wanted

    def _face_at_head(self, image: np.ndarray, body: np.ndarray) -> bool:
        """A face detector finds a face in an enlarged crop around the body's head."""
        import cv2

        head = body[HEAD]
        head = head[(head[:, 2] > 0) & np.isfinite(head[:, 0]), :2]
        x, y, bw, bh = points_box(head)
        side = _HEAD_CROP * max(bw, bh, 1.0)
        s = _HEAD_CROP_PX / side
        centre = _HEAD_CROP_PX / 2
        matrix = np.array([[s, 0.0, centre - s * (x + bw / 2)], [0.0, s, centre - s * (y + bh / 2)]])
        crop = cv2.warpAffine(image, matrix, (_HEAD_CROP_PX, _HEAD_CROP_PX), flags=cv2.INTER_LINEAR)
        return bool(self.stage.face_detector().process(crop).detections)

    def finish(self) -> dict[str, np.ndarray]:
        rows = empty_rows(self.outputs, 0)  # without frames waiting, process() returned every row
        if self._pending:
            # The last frame becomes a keyframe: the model runs on it, in the region
            # process() placed for it.
            index, time = self._pending.pop()
            assert self._last is not None and self.region is not None
            image, face = self._last
            rows = self._keyframe(self._measure(image, face, self.region, index), time)
            self._last = None
        self.rejected.note()
        return rows


class _PoseImportRun(ImportRun):
    """OpenPose bodies: the tracked face's person, with the same keypoint rules."""

    def __init__(self, imported: Imported, outputs: dict[str, Output], match: str, times: np.ndarray, video: str, *,
                 params: PoseParams, size: tuple[int, int]) -> None:  # fmt: skip
        super().__init__(imported, outputs, match, times, video)
        self.p = params
        self.frame = (0.0, 0.0, float(size[0]), float(size[1]))
        self.previous: np.ndarray | None = None
        self.rejected = _Rejections(self.attrs, ("frames_not_tracked_face",))  # no pictures to look for a face in

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        rows = empty_rows(self.outputs, len(batch))
        assert self.imported.people is not None
        for i, (source, face) in enumerate(zip(self.rows_of(batch), _faces_of(batch), strict=True)):
            people = self.imported.people[source] if source >= 0 else np.empty((0, BODY_POINTS, 3), np.float32)
            if face is not None:
                on_face = [k for k, body in enumerate(people) if head_on_face(body, face)]
                pick = follow(people[on_face], self.previous)
                choice = on_face[pick] if pick is not None else None
                if choice is None and len(people):
                    self.rejected.add("frames_not_tracked_face")
            else:
                choice = follow(people, self.previous)
            self.previous = points_box(people[choice]) if choice is not None else None
            if choice is None:
                continue
            kept = present_keypoints(people[choice], self.frame, self.p.min_keypoint_confidence, self.p.outside_margin)
            if np.isfinite(kept[:, 0]).any():
                rows["keypoints"][i] = kept
                rows["valid"][i] = True
        return rows

    def finish(self) -> dict[str, np.ndarray]:
        self.rejected.note()
        return {}
