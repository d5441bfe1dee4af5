"""Face accuracy (``vidaffect bench --accuracy [--faces DIR]``): landmark error per
region on human-annotated faces, steadiness on identical frames, jitter on a moving
face, and identities on a made clip where three faces cross and one leaves and
returns.

* **Landmark error** (NME): the mean distance between the tracker's 68 points and the
  annotation's, over the annotation's outer-eye distance (points 36 and 45), per
  region: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67, and all 68.
  The annotated faces are read from a folder the user gives (``--faces``): iBUG
  ``.pts`` files (300-W, menpo; pixels counted from 1) beside images of the same
  name.  Each face is also scored mirrored (image flipped, points flipped and
  renumbered): the mesh is not mirror-symmetric, so this doubles the evidence.  Each
  image is given as :data:`REPEATS` identical frames and the error is their mean.
* **Steadiness**: over those identical frames, the largest distance of any of the 68
  points from where it was in the first frame, over the outer-eye distance; and the
  change of the face box's size.  Measured on the annotated faces and on the
  photographs the made clips use.
* **Jitter**: a photograph pasted on a backdrop, moving :data:`MOTION` pixels per
  frame; with the known motion removed, the median |second difference| of the 68
  points over the outer-eye distance (0 for a perfectly steady tracker), raw and with
  the one-euro filter; and the filter's lag along the motion.
* **EVM crops**: on the same moving face, whose motion is rigid (nothing in it should
  be magnified), the mean |magnified - original| of the ``evm`` stage's magnified crop
  stream in grey levels, with crops from the raw face box and from the one-euro-
  smoothed box: how much box jitter, or filter lag, turns into magnified motion.
* **Identities** on :func:`.face_clips.crossing_clip`: tracked faces are matched to
  the visible true faces per frame (IoU >= 0.3, Hungarian).  An *identity switch* is a
  true face matched to another identity than the last time it was matched (a face
  that returns under a new identity counts one); a *merge* is an identity matched to
  two true faces.  Also the share of visible true faces tracked, and whether the
  primary identity is the true face with the most screen time.

Targets (issue "every face, steady and accurate"): NME all <= 5 %, jaw <= 8 %,
steadiness <= 0.2 %, identity switches 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from vidaffect.bench.face_clips import FaceClip, background, crossing_clip, photo, place_face
from vidaffect.errors import InputNotFound
from vidaffect.stages.boxes import box_iou, points_box
from vidaffect.stages.crop import CROP_SIZE, crop_faces
from vidaffect.stages.evm import EvmParams
from vidaffect.stages.face import FaceParams
from vidaffect.stages.face_filter import FaceSmoother
from vidaffect.stages.face_tracker import FaceTracker
from vidaffect.stages.layouts import FACE_REGIONS, IBUG_POINTS, LEFT_EYE_OUTER, RIGHT_EYE_OUTER
from vidaffect.stages.magnify import Magnifier

log = logging.getLogger(__name__)

REPEATS = 10  # identical frames per still image
MOTION = (3.0, 1.0)  # px per frame (x, y) of the moving face
MOVING_FRAMES = 40
FPS = 25.0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff")
REGIONS = {**FACE_REGIONS, "all": slice(0, IBUG_POINTS)}
# Point i of a mirrored face is point MIRROR68[i] of the original.
MIRROR68 = np.array(
    [*range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, 35, 34, 33, 32, 31, 45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
     54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
)  # fmt: skip
TARGETS = {"nme_all": 0.05, "nme_jaw": 0.08, "steadiness": 0.002, "identity_switches": 0}


@dataclass
class AnnotatedFace:
    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    points: np.ndarray  # (68, 2) float64 px, origin at the top-left corner of the image


def read_pts(path: Path) -> np.ndarray:
    """The points of an iBUG ``.pts`` file as (n, 2) pixels with the origin at the
    top-left corner of the top-left pixel, as vidaffect stores them (the file puts the
    centre of the top-left pixel at (1, 1))."""
    text = path.read_text()
    try:
        body = text.split("{", 1)[1].split("}", 1)[0]
        return np.array(body.split(), float).reshape(-1, 2) - 0.5
    except (IndexError, ValueError):
        raise InputNotFound(f"{path}: not an iBUG .pts file (expected 'version', 'n_points' and points between braces)") from None


def annotated_faces(folder: str | Path) -> list[AnnotatedFace]:
    """Every image in ``folder`` with a 68-point ``.pts`` file of the same name."""
    root = Path(folder)
    if not root.is_dir():
        raise InputNotFound(f"{root}: no such folder of annotated faces")
    faces = []
    for pts in sorted(root.glob("*.pts")):
        image_path = next((p for p in (pts.with_suffix(s) for s in IMAGE_SUFFIXES) if p.exists()), None)
        points = read_pts(pts)
        if image_path is None or len(points) != IBUG_POINTS:
            log.warning("%s: skipped (%s)", pts, "no image beside it" if image_path is None else f"{len(points)} points, not 68")
            continue
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if bgr is None:
            log.warning("%s: skipped (unreadable image)", image_path)
            continue
        faces.append(AnnotatedFace(pts.stem, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), points))
    if not faces:
        raise InputNotFound(f"{root}: no image with a 68-point .pts file beside it")
    return faces


def mirrored(face: AnnotatedFace) -> AnnotatedFace:
    """The face flipped left-right, its points flipped and renumbered."""
    points = face.points.copy()
    points[:, 0] = face.image.shape[1] - points[:, 0]
    return AnnotatedFace(face.name + " (mirrored)", np.ascontiguousarray(face.image[:, ::-1]), points[MIRROR68])


def outer_eye_distance(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[RIGHT_EYE_OUTER] - points[LEFT_EYE_OUTER]))


def region_errors(predicted: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean point error per region over the reference's outer-eye distance."""
    error = np.linalg.norm(predicted[:IBUG_POINTS] - reference[:IBUG_POINTS], axis=1) / outer_eye_distance(reference)
    return {name: float(error[part].mean()) for name, part in REGIONS.items()}


def still_face(tracker: FaceTracker, image: np.ndarray, where: np.ndarray, repeats: int = REPEATS) -> np.ndarray | None:
    """The 70 points of the face overlapping the box ``where`` most in ``repeats``
    identical frames, (repeats, 70, 2); None when that face is not found in each."""
    tracker.reset()
    out = []
    for _ in range(repeats):
        faces = tracker.step(image)
        best = max(faces, key=lambda f: box_iou(f.box, where), default=None)
        if best is None or box_iou(best.box, where) < 0.3:
            return None
        out.append(best.landmarks)
    tracker.finish()
    return np.array(out)


def steadiness(landmarks: np.ndarray, size: float) -> tuple[float, float]:
    """(largest point displacement from the first frame over ``size``, largest change
    of the 68-point box's size as a fraction) over a run of identical frames."""
    moved = np.linalg.norm(landmarks[:, :IBUG_POINTS] - landmarks[0, :IBUG_POINTS], axis=-1).max() / size
    boxes = points_box(landmarks[:, :IBUG_POINTS])
    grow = np.sqrt(boxes[:, 2] * boxes[:, 3] / (boxes[0, 2] * boxes[0, 3])) - 1
    return float(moved), float(np.abs(grow).max())


def measure_annotated(tracker: FaceTracker, faces: list[AnnotatedFace]) -> dict[str, Any]:
    """NME per region (mean over identical frames) and steadiness of every face and its
    mirror image; a face not found counts as missed."""
    per_face: dict[str, dict[str, float]] = {}
    missed = []
    for face in [f for original in faces for f in (original, mirrored(original))]:
        found = still_face(tracker, face.image, points_box(face.points))
        if found is None:
            missed.append(face.name)
            continue
        errors = [region_errors(lm, face.points) for lm in found]
        row = {f"nme_{k}": float(np.mean([e[k] for e in errors])) for k in REGIONS}
        row["steadiness"], row["box_change"] = steadiness(found, outer_eye_distance(face.points))
        per_face[face.name] = row
    keys = [f"nme_{k}" for k in REGIONS] + ["steadiness", "box_change"]
    out: dict[str, Any] = {"annotated_faces": per_face, "annotated_missed": missed}
    if per_face:
        out.update({k: float(np.mean([r[k] for r in per_face.values()])) for k in keys if k.startswith("nme")})
        out["steadiness"] = max(r["steadiness"] for r in per_face.values())
        out["box_change"] = max(r["box_change"] for r in per_face.values())
    return out


def measure_photo_steadiness(tracker: FaceTracker) -> dict[str, float]:
    """Steadiness on the made clips' photographs, whole and pasted small on a backdrop."""
    out = {}
    for name in ("astronaut", "hopper"):
        image, box = photo(name)
        canvas = background()
        small = place_face(canvas, name, 60, (320, 180))
        for label, frame, where in ((name, image, np.array(box)), (f"{name} 60 px", canvas, small)):
            found = still_face(tracker, frame, where)
            out[label] = float("nan") if found is None else steadiness(found, outer_eye_distance(found[0]))[0]
    return out


def moving_frame(i: int) -> np.ndarray:
    """Frame ``i`` of the astronaut moving :data:`MOTION` px per frame."""
    canvas = background()
    place_face(canvas, "astronaut", 110, (200 + MOTION[0] * i, 150 + MOTION[1] * i))
    return canvas


def moving_face(tracker: FaceTracker, frames: int = MOVING_FRAMES) -> np.ndarray:
    """The 70 points of the astronaut moving :data:`MOTION` px per frame, with the
    motion removed, (frames, 70, 2)."""
    tracker.reset()
    out = []
    for i in range(frames):
        faces = tracker.step(moving_frame(i))
        if not faces:
            raise RuntimeError(f"bench: the moving face was not found in frame {i}")
        out.append(faces[0].landmarks - np.array(MOTION) * i)
    tracker.finish()
    return np.array(out)


def jitter(landmarks: np.ndarray) -> float:
    """Median |second difference| of the 68 points over the outer-eye distance."""
    second = landmarks[2:, :IBUG_POINTS] - 2 * landmarks[1:-1, :IBUG_POINTS] + landmarks[:-2, :IBUG_POINTS]
    return float(np.median(np.linalg.norm(second, axis=-1)) / outer_eye_distance(landmarks[0]))


def measure_jitter(tracker: FaceTracker) -> dict[str, float]:
    """Jitter and smoothing lag on the moving face, and the EVM crop artefact with the
    raw and the smoothed box (the face stage's default filter parameters)."""
    p = FaceParams()
    still = moving_face(tracker)
    smoother = FaceSmoother(p.smooth_min_cutoff, p.smooth_beta)
    shift = np.array(MOTION) * np.arange(len(still))[:, None, None]
    raw = still + shift
    smoothed = [smoother(i / FPS, lm, points_box(lm[:IBUG_POINTS])) for i, lm in enumerate(raw)]
    smooth = np.array([lm for lm, _ in smoothed]) - shift
    direction = np.array(MOTION) / np.hypot(*MOTION)
    lag = float(((still[10:, :IBUG_POINTS] - smooth[10:, :IBUG_POINTS]) @ direction).mean()) / outer_eye_distance(still[0])
    frames = np.stack([moving_frame(i) for i in range(len(still))])
    raw_boxes = points_box(raw[:, :IBUG_POINTS])
    return {
        "jitter": jitter(still),
        "jitter_smoothed": jitter(smooth),
        "smoothing_lag": lag,
        "evm_artefact_raw_box": evm_artefact(frames, raw_boxes),
        "evm_artefact_smoothed_box": evm_artefact(frames, np.array([box for _, box in smoothed])),
    }


def evm_artefact(frames: np.ndarray, boxes: np.ndarray, settle: int = 20) -> float:
    """Mean |magnified - original| (grey levels) of the ``evm`` stage's magnification
    of the crops at ``boxes``, after ``settle`` frames of filter start-up."""
    p = EvmParams(weights="random")
    crops, _ = crop_faces(frames, boxes.astype(np.float32), p.margin)
    magnified = Magnifier(FPS, (CROP_SIZE, CROP_SIZE), p)(crops.astype(np.float32) / 255.0)
    return float(np.abs(magnified - crops / 255.0)[settle:].mean() * 255.0)


def measure_identities(tracker: FaceTracker, clip: FaceClip) -> dict[str, Any]:
    """Identity switches, merges, coverage and the primary face on a made clip."""
    tracker.reset()
    records = []  # per frame: (track, box) of each face
    for frame in clip.frames:
        records.append([(f.track, f.box) for f in tracker.step(frame)])
    tracker.finish()
    ids = tracker.identities
    n_true = len(clip.cast)
    matched: list[list[int | None]] = []
    visible_total = covered = 0
    for i, faces in enumerate(records):
        row: list[int | None] = [None] * n_true
        truth = clip.seen(i)
        visible_total += len(truth)
        if truth and faces:
            iou = np.array([[box_iou(true_box, box) for _, box in faces] for _, true_box in truth])
            for r, c in zip(*linear_sum_assignment(-iou), strict=True):
                if iou[r, c] >= 0.3:
                    row[truth[r][0]] = ids.resolve(faces[c][0], i)
                    covered += 1
        matched.append(row)
    switches: list[int] = []
    faces_of: dict[int, set[int]] = {}
    for k in range(n_true):
        last, count = None, 0
        for row in matched:
            who = row[k]
            if who is None:
                continue
            count += last is not None and who != last
            last = who
            faces_of.setdefault(who, set()).add(k)
        switches.append(count)
    truth_primary = int(np.argmax(clip.screen_time()))
    primary = ids.primary()
    primary_faces = {k for row in matched for k in range(n_true) if row[k] == primary}
    return {
        "identity_switches": int(sum(switches)),
        "identity_switches_per_face": switches,
        "identity_merges": sum(len(v) > 1 for v in faces_of.values()),
        "identity_coverage": covered / max(visible_total, 1),
        "identity_primary_correct": primary_faces == {truth_primary},
        "identity_reidentifications": [list(d) for d in ids.decisions],
    }


def face_accuracy(faces_dir: str | Path | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every face-accuracy figure (see the module docs); ``faces_dir`` holds annotated
    faces, without it the landmark error is not measured."""
    say = progress or (lambda label: None)
    tracker = FaceTracker()
    results: dict[str, Any] = {}
    try:
        if faces_dir is not None:
            say("annotated faces")
            results.update(measure_annotated(tracker, annotated_faces(faces_dir)))
        say("steadiness on photographs")
        results["photo_steadiness"] = measure_photo_steadiness(tracker)
        say("jitter on a moving face")
        results.update(measure_jitter(tracker))
        say("identities on a made clip")
        results.update(measure_identities(tracker, crossing_clip()))
    finally:
        tracker.close()
    results["face_targets"] = [
        {"target": k, "value": results[k], "bound": f"<= {v:g}", "met": bool(results[k] <= v)}
        for k, v in TARGETS.items()
        if k in results
    ]
    return results


def bench_faces(faces_dir: str | Path | None = None, json_out: str | Path | None = None) -> str:
    """Measure face accuracy (see the module docs), optionally write the figures as
    JSON, and return the printed table."""
    results = face_accuracy(faces_dir, progress=lambda label: log.info("face accuracy: %s", label))
    if json_out is not None:
        Path(json_out).write_text(json.dumps(results, indent=2, default=float) + "\n")
        log.info("figures written to %s", json_out)
    return format_face_table(results)


def format_face_table(results: dict[str, Any]) -> str:
    """The figures as a table (percent of the outer-eye distance) and the targets."""
    lines = []
    if "annotated_faces" in results:
        keys = [f"nme_{k}" for k in REGIONS] + ["steadiness", "box_change"]
        lines.append(f"{'annotated face':<28}" + "".join(f"{k.removeprefix('nme_'):>11}" for k in keys) + "   (% of the outer-eye distance)")
        for name, row in results["annotated_faces"].items():
            lines.append(f"{name:<28}" + "".join(f"{100 * row[k]:11.2f}" for k in keys))
        lines.append(f"{'mean (steadiness: worst)':<28}" + "".join(f"{100 * results[k]:11.2f}" for k in keys))
        if results["annotated_missed"]:
            lines.append(f"not found: {', '.join(results['annotated_missed'])}")
        lines.append("")
    lines.append("steadiness on photographs (% eye distance): " + ", ".join(f"{k} {100 * v:.2f}" for k, v in results["photo_steadiness"].items()))
    lines.append(
        f"moving face: jitter {100 * results['jitter']:.2f} %, smoothed {100 * results['jitter_smoothed']:.2f} % "
        f"(lag {100 * results['smoothing_lag']:.2f} %); EVM artefact with the raw box {results['evm_artefact_raw_box']:.2f}, "
        f"with the smoothed box {results['evm_artefact_smoothed_box']:.2f} grey levels"
    )
    lines.append(
        f"three-face clip: {results['identity_switches']} identity switches {results['identity_switches_per_face']}, "
        f"{results['identity_merges']} merges, coverage {100 * results['identity_coverage']:.0f} %, "
        f"primary face {'right' if results['identity_primary_correct'] else 'WRONG'}"
    )
    lines += ["", f"{'target':<24} {'value':>8} {'required':>9}  result"]
    for t in results["face_targets"]:
        lines.append(f"{t['target']:<24} {t['value']:>8.4g} {t['bound']:>9}  {'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)
