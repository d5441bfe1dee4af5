"""Following every face of a video with MediaPipe, steadily, each with an identity.

Per frame (:meth:`FaceTracker.step`):

1. Each tracked face's mesh runs on that face's own region of the frame
   (:mod:`.face_mesh`: a square ``crop_scale`` times the face's size, turned upright by
   the face's roll), with nothing carried over from earlier calls, so the result
   depends on the frame and the region alone.
2. The full-range face detector runs every ``detect_every`` frames, whenever a face
   was lost, and on every frame while no face is tracked.  It refreshes the scores of
   the tracked faces and finds new ones (the largest first, up to ``max_faces`` at
   once); it never moves a tracked face's region.  A new face is confirmed by the
   mesh in static-image mode (a detection without a face there is ignored); its
   region is made from that mesh and made again once from the region's own mesh
   before anything is reported, so the first frame already has the region the next
   frame keeps.
3. :mod:`.face_identities` keeps the faces' identities and screen time.
4. Each region is moved for the next frame only when the face has left its
   tolerance (:class:`SteadyCrop`).

Why the region is steady: the mesh depends on where the face sits in its region
(moving the region by a quarter of a pixel moves the 68 points by about 0.25 % of the
eye distance, by 1-3.5 % for a shift of 5-10 % of its side), so a region re-centred on
every frame from the last frame's mesh carries one frame's noise into the next, and
on a still image the shape wanders.  A region that stays put while the face stays
within its tolerance gives identical points for identical frames; on real videos the
frame-to-frame jitter was the same or lower with this tolerance than with tighter
ones (which move the region, and so the points, more often).  A region that moves is
led by one frame of the face's motion.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from vidaffect.stages.boxes import box_iou, overlap_of_smaller, points_box
from vidaffect.stages.face_identities import Identities, Seen
from vidaffect.stages.face_mesh import Crop, FaceDetector, FaceMesher, MeshResult, face_roll
from vidaffect.stages.jaw import mesh_to_face70
from vidaffect.stages.layouts import IBUG_POINTS, MESH_SURFACE
from vidaffect.stages.params import StageParams, param

SAME_FACE_IOU = 0.3  # boxes of one face in consecutive frames overlap far more than this
DUPLICATE_IOU = 0.5  # two tracks whose boxes overlap this much follow one face
_DETECTION_OVERLAP = 0.5  # a detection covering this much of a tracked face is that face
RECENTRE_SHIFT = 0.10  # move a region when the face's centre is off by this fraction of its side
RECENTRE_SCALE = 0.20  # ... or the size it should have differs by this fraction
RECENTRE_ROLL = math.radians(15)  # ... or the face's roll changed by more than this


@dataclass(frozen=True)
class TrackerSettings(StageParams):
    """How the tracker finds and follows faces (the face stage's parameters for its
    mediapipe backend)."""

    stage = "face"

    min_detection_confidence: float = param(0.5, "face detector score a face needs, 0-1", low=0, high=1)
    min_tracking_confidence: float = param(0.5, "face-presence score the mesh needs to keep a face, 0-1", low=0, high=1)
    max_faces: int = param(4, "faces followed at once, the largest first (each costs a mesh per frame); count saturates here", low=1)
    detect_every: int = param(10, "frames between detector runs while faces are tracked", low=1)
    detect_tile: int = param(480, "px; larger frames are also searched in tiles of this size", low=128)
    crop_scale: float = param(1.5, "side of the region the mesh looks at over the face's size (MediaPipe's own rule: 1.5)", low=1.1)
    reid_threshold: float = param(
        2.0, "appearance distance up to which a face is taken for a known person (1: the typical spread of one person's frames)",
        above=0,
    )  # fmt: skip


@dataclass
class Face:
    """One face in one frame."""

    track: int  # the track (unique in the video) that followed it
    identity: int  # the track's identity so far; -1 while it is being confirmed
    mesh: np.ndarray  # (478, 3) float32 px
    score: float  # the detector's score at its latest detection of this face

    @functools.cached_property
    def landmarks(self) -> np.ndarray:
        """(70, 2) float32 px (:func:`.jaw.mesh_to_face70`)."""
        return mesh_to_face70(self.mesh)

    @property
    def box(self) -> np.ndarray:
        """(4,) float32, the tight box of the 68 iBUG points."""
        return points_box(self.landmarks[:IBUG_POINTS])


class SteadyCrop:
    """The region of one face, which moves only when the face leaves its tolerance."""

    def __init__(self, crop: Crop, scale: float) -> None:
        self.crop = crop
        self.scale = scale

    def wanted(self, mesh: np.ndarray, lead: np.ndarray) -> Crop:
        """The region the face of ``mesh`` would like, ahead by ``lead`` pixels:
        centred on the mesh's box taken along and across the eye line, ``scale`` times
        that box's longer side, turned by the face's roll (MediaPipe's own rule takes
        the box along the frame's axes, which is larger for a rolled face)."""
        roll = face_roll(mesh)
        c, s = math.cos(roll), math.sin(roll)
        upright = mesh[:MESH_SURFACE, :2].astype(np.float64) @ np.array([[c, -s], [s, c]])
        lo, hi = upright.min(axis=0), upright.max(axis=0)
        mid = (lo + hi) / 2
        centre = np.array([c * mid[0] - s * mid[1], s * mid[0] + c * mid[1]]) + lead
        return Crop(float(centre[0]), float(centre[1]), self.scale * float(max(hi - lo)), roll)

    def update(self, mesh: np.ndarray, lead: np.ndarray) -> bool:
        """Move to the wanted region when the face has left the tolerance; True when
        it moved."""
        want, have = self.wanted(mesh, lead), self.crop
        shift = math.hypot(want.cx - have.cx, want.cy - have.cy) / have.side
        turn = abs((want.angle - have.angle + math.pi) % (2 * math.pi) - math.pi)
        if shift <= RECENTRE_SHIFT and abs(math.log(want.side / have.side)) <= math.log1p(RECENTRE_SCALE) and turn <= RECENTRE_ROLL:
            return False
        self.crop = want
        return True


@dataclass
class _Track:
    id: int
    crop: SteadyCrop
    result: MeshResult
    score: float
    seen: bool = True
    centre: np.ndarray | None = None  # the box centre in the previous frame

    @property
    def box(self) -> np.ndarray:
        return self.result.box


class FaceTracker:
    """Every face of a video (up to ``max_faces`` at once), each with an identity.

    Usable on its own (``tracker.step(rgb_frame)``) as well as through the face stage.
    Call :meth:`reset` before each video and :meth:`finish` after its last frame.
    """

    def __init__(self, params: TrackerSettings | None = None) -> None:
        self.p = params or TrackerSettings()
        self._detector = FaceDetector(self.p.min_detection_confidence, self.p.detect_tile)
        self._mesher = FaceMesher(self.p.min_detection_confidence, self.p.min_tracking_confidence)
        self.reset()

    def reset(self) -> None:
        """Start a new video."""
        self.identities = Identities(self.p.reid_threshold)
        self.frame = -1
        self._tracks: list[_Track] = []
        self._since_detect = 0

    def close(self) -> None:
        self._detector.close()
        self._mesher.close()

    def step(self, image: np.ndarray) -> list[Face]:
        """The faces of the next frame (RGB, uint8), largest first."""
        image = np.ascontiguousarray(image)  # MediaPipe reads the buffer as it lies
        self.frame += 1
        for track in sorted(self._tracks, key=lambda t: -float(t.box[2] * t.box[3])):
            result = self._mesher(image, track.crop.crop, track.box, SAME_FACE_IOU)
            track.seen = result is not None
            if result is not None:
                track.result = result
        lost = [t for t in self._tracks if not t.seen]
        self._since_detect += 1
        if not self._tracks or lost or self._since_detect >= self.p.detect_every:
            self._detect(image, lost)
        for track in self._tracks:
            if not track.seen:
                self.identities.end(track.id, self.frame - 1)
        self._tracks = [t for t in self._tracks if t.seen]
        self._drop_duplicates(image)
        self._tracks.sort(key=lambda t: -float(t.box[2] * t.box[3]))
        faces = [Face(t.id, -1, t.result.mesh, t.score) for t in self._tracks]
        splits = self.identities.observe(image, [Seen(f.track, f.box, f.mesh) for f in faces], self.frame)
        for track, face in zip(self._tracks, faces, strict=True):
            track.id = face.track = splits.get(track.id, track.id)
            face.identity = self.identities.identity(track.id)
            centre = track.box[:2] + track.box[2:] / 2
            lead = centre - track.centre if track.centre is not None else np.zeros(2)
            track.crop.update(track.result.mesh, lead)
            track.centre = centre
        return faces

    def finish(self) -> None:
        """The video has ended: decide the identities still pending."""
        self.identities.finish([t.id for t in self._tracks], self.frame)

    def _acquire(self, image: np.ndarray, box: np.ndarray) -> tuple[SteadyCrop, MeshResult] | None:
        """The region and mesh of a face the detector found at ``box``; None when the
        mesh finds no face there.  The region is made from a first mesh and, when the
        mesh in it wants another, made once more, so that the first frame of a face
        already has the region the next frame would keep."""
        found = self._mesher.find(image, box, SAME_FACE_IOU)
        if found is None:
            return None
        crop = SteadyCrop(Crop(0.0, 0.0, 1.0), self.p.crop_scale)
        crop.crop = crop.wanted(found.mesh, np.zeros(2))
        result = self._mesher(image, crop.crop, found.box, SAME_FACE_IOU)
        if result is None:
            return None
        if crop.update(result.mesh, np.zeros(2)):
            result = self._mesher(image, crop.crop, result.box, SAME_FACE_IOU) or result
        return crop, result

    def _detect(self, image: np.ndarray, lost: list[_Track]) -> None:
        self._since_detect = 0
        detections = self._detector(image)
        seen = [t for t in self._tracks if t.seen]
        matched: set[int] = set()
        if seen and detections:
            iou = np.array([[box_iou(t.box, box) for box, _ in detections] for t in seen])
            for r, c in zip(*linear_sum_assignment(-iou), strict=True):
                if iou[r, c] >= SAME_FACE_IOU:
                    seen[r].score = detections[c][1]
                    matched.add(int(c))
        free = [
            d for i, d in enumerate(detections)
            if i not in matched and all(overlap_of_smaller(d[0], t.box) < _DETECTION_OVERLAP for t in seen)
        ]  # fmt: skip
        for track in lost:  # a face that moved fast: the detection over its last box
            overlap, best = max(((box_iou(track.box, box), k) for k, (box, _) in enumerate(free)), default=(0.0, -1))
            if overlap < SAME_FACE_IOU:
                continue
            acquired = self._acquire(image, free[best][0])
            if acquired is not None:
                track.crop, track.result = acquired
                track.seen, track.score, track.centre = True, free[best][1], None
                del free[best]
        for box, score in sorted(free, key=lambda d: -float(d[0][2] * d[0][3])):
            active = [t for t in self._tracks if t.seen]
            if len(active) >= self.p.max_faces or any(overlap_of_smaller(box, t.box) >= _DETECTION_OVERLAP for t in active):
                continue
            acquired = self._acquire(image, box)
            if acquired is not None:
                self._tracks.append(_Track(self.identities.start(self.frame), *acquired, score))

    def _drop_duplicates(self, image: np.ndarray) -> None:
        for a in list(self._tracks):
            for b in list(self._tracks):
                if a is b or a not in self._tracks or b not in self._tracks or box_iou(a.box, b.box) < DUPLICATE_IOU:
                    continue
                loser = self.identities.drop_duplicate(image, Seen(a.id, a.box, a.result.mesh), Seen(b.id, b.box, b.result.mesh))
                self.identities.end(loser, self.frame)
                self._tracks = [t for t in self._tracks if t.id != loser]
