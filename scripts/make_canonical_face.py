"""Derive the canonical frontal face of the head stage: vidaffect/stages/data/canonical_face.npz.

Made only from what the dependencies ship, with no download: two near-frontal public
domain portraits (scikit-image's ``astronaut``, matplotlib's sample ``grace_hopper.jpg``)
meshed by vidaffect's own face tracker, i.e. the mesh the face stage stores.

1. Each photograph is meshed in 6 views (as is and mirrored, each turned in the image
   plane by -10, 0, +10 degrees; the mesh is turned back), so MediaPipe's per-view noise
   averages out.
2. A generalised Procrustes analysis (3-D similarity) of the unmirrored views gives a
   first mean; the mirror permutation (vertex i <-> the vertex at its mirror image) is
   found on it by optimal assignment between the shape and its reflection about its best
   symmetry plane.
3. The mirrored views, relabelled by the permutation, join a second analysis; the mean is
   made exactly symmetric.
4. Head frame: origin at the centroid of the 68 iBUG points; x the symmetry plane's
   normal towards the subject's left; y from the mean of the four eye corners to the mean
   of the mouth corners (so zero pitch means that line is perpendicular to the optical
   axis); z = x cross y, into the head.  Millimetres, the pupils 63 mm apart.
5. Rigid subset for the fit: surface vertices above the nose base, not on the brows, not
   near the lids, plus the four eye corners.  Normals: plane fits over each vertex's
   neighbours in MediaPipe's tessellation.

Usage: python scripts/make_canonical_face.py [OUT.npz]   (about 10 s, prints its checks)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from vidaffect.stages.face_tracker import FaceTracker
from vidaffect.stages.head_pose import CANONICAL_PATH, IPD_MM, umeyama
from vidaffect.stages.layouts import IBUG_POINTS, MESH_POINTS, MESH_SURFACE, MESH_TO_FACE70

ROTATIONS = (-10.0, 0.0, 10.0)
EYE_CORNERS = (33, 133, 362, 263)
MOUTH_CORNERS = (61, 291)
NOSE_BASE = 2
PUPILS = (468, 473)
LID_RADIUS = 0.6  # eye widths around each eye centre left out of the rigid subset


def photographs() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import matplotlib.image
    import skimage.data

    hopper = matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return {"skimage.data.astronaut": skimage.data.astronaut(), "matplotlib grace_hopper.jpg": hopper}


def views(image: np.ndarray, tracker: FaceTracker) -> list[tuple[bool, np.ndarray]]:
    """(mirrored, mesh in the original photograph's pixels) of each view with a face."""
    h, w = image.shape[:2]
    out = []
    for mirrored in (False, True):
        src = np.ascontiguousarray(image[:, ::-1, :3] if mirrored else image[..., :3])
        for angle in ROTATIONS:
            m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
            tracker.reset()
            _, face = tracker.step(cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
            if face is None:
                print(f"  no face (mirrored={mirrored}, rotation={angle})", file=sys.stderr)
                continue
            mesh = face.mesh.astype(np.float64)
            inv = cv2.invertAffineTransform(m)
            mesh[:, :2] = mesh[:, :2] @ inv[:, :2].T + inv[:, 2]
            if mirrored:
                mesh[:, 0] = w - mesh[:, 0]
            out.append((mirrored, mesh))
    return out


def align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """src (n, 3) moved onto dst (n, 3) by the least-squares similarity."""
    r, s, t = umeyama(dst, src[None])
    return ((src - t[0]) @ r[0]) / s[0]


def procrustes_mean(shapes: list[np.ndarray], rounds: int = 10) -> np.ndarray:
    def normalised(x: np.ndarray) -> np.ndarray:
        x = x - x.mean(axis=0)
        return x / np.sqrt((x**2).sum(axis=1).mean())

    mean = normalised(shapes[0])
    for _ in range(rounds):
        mean = align(normalised(np.mean([align(s, mean) for s in shapes], axis=0)), mean)
    return mean


def symmetry_plane(shape: np.ndarray, perm: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit normal n and offset c (n . x = c) of the plane mapping shape[i] to shape[perm[i]]."""
    d = shape - shape[perm]
    n = np.linalg.svd(d[np.linalg.norm(d, axis=1) > 1e-9], full_matrices=False)[2][0]
    return n, float(np.mean((shape + shape[perm]) / 2 @ n))


def reflect(shape: np.ndarray, n: np.ndarray, c: float) -> np.ndarray:
    return shape - 2.0 * ((shape @ n) - c)[:, None] * n[None]


def mirror_permutation(shape: np.ndarray) -> np.ndarray:
    n = (shape[263] - shape[33]) / np.linalg.norm(shape[263] - shape[33])
    c = float(shape.mean(axis=0) @ n)
    perm = np.arange(len(shape))
    for _ in range(3):
        ref = reflect(shape, n, c)
        for block in (np.arange(MESH_SURFACE), np.arange(MESH_SURFACE, MESH_POINTS)):  # surface and irises apart
            rows, cols = linear_sum_assignment(np.linalg.norm(shape[block][:, None] - ref[block][None], axis=2))
            perm[block[rows]] = block[cols]
        n, c = symmetry_plane(shape, perm)
    return perm


def normals_of(vertices: np.ndarray) -> np.ndarray:
    import mediapipe as mp

    ring: list[set[int]] = [{i} for i in range(MESH_POINTS)]
    for a, b in mp.solutions.face_mesh_connections.FACEMESH_TESSELATION:
        ring[a].add(b)
        ring[b].add(a)
    inside = np.array([0.0, 0.0, vertices[:MESH_SURFACE, 2].max()])
    out = np.tile([0.0, 0.0, -1.0], (MESH_POINTS, 1))
    for i, nb in enumerate(ring):
        if len(nb) >= 3:
            p = vertices[sorted(nb)]
            n = np.linalg.svd(p - p.mean(axis=0))[2][2]
            out[i] = n if n @ (vertices[i] - inside) > 0 else -n
    return out


def rigid_subset(v: np.ndarray, perm: np.ndarray) -> np.ndarray:
    import mediapipe as mp

    conn = mp.solutions.face_mesh_connections
    brows = {i for edge in conn.FACEMESH_LEFT_EYEBROW | conn.FACEMESH_RIGHT_EYEBROW for i in edge}
    eye_width = np.linalg.norm(v[133] - v[33])
    centres = (v[[33, 133]].mean(axis=0), v[[362, 263]].mean(axis=0))
    near_eye = np.min([np.linalg.norm(v[:MESH_SURFACE] - c, axis=1) for c in centres], axis=0) < LID_RADIUS * eye_width
    surface = np.arange(MESH_SURFACE)
    keep = (v[:MESH_SURFACE, 1] < v[NOSE_BASE, 1]) & ~near_eye & ~np.isin(surface, sorted(brows))
    keep[list(EYE_CORNERS)] = True
    chosen = set(surface[keep].tolist())
    return np.array(sorted(chosen & set(perm[sorted(chosen)].tolist())), np.int64)  # symmetric too


def main(out: Path) -> None:
    import mediapipe
    import skimage

    tracker = FaceTracker()
    meshes = [(name, mirrored, mesh) for name, image in photographs().items() for mirrored, mesh in views(image, tracker)]
    tracker.close()
    perm = mirror_permutation(procrustes_mean([m for _, mirrored, m in meshes if not mirrored]))
    assert (perm[perm] == np.arange(MESH_POINTS)).all(), "mirror permutation is not an involution"
    pairs = [(MESH_TO_FACE70[i], MESH_TO_FACE70[j]) for i, j in ((36, 45), (39, 42), (48, 54), (31, 35), (17, 26), (0, 16), (68, 69))]
    assert all(perm[a] == b for a, b in pairs), "known mirror pairs of the face layout are not mirror pairs"

    shapes = [m[perm] if mirrored else m for _, mirrored, m in meshes]
    mean = procrustes_mean(shapes)
    n, c = symmetry_plane(mean, perm)
    sym = (mean + reflect(mean, n, c)[perm]) / 2.0
    origin = sym[list(MESH_TO_FACE70[:IBUG_POINTS])].mean(axis=0)
    x = n if (sym[263] - sym[33]) @ n > 0 else -n
    y = sym[list(MOUTH_CORNERS)].mean(axis=0) - sym[list(EYE_CORNERS)].mean(axis=0)
    y -= (y @ x) * x
    y /= np.linalg.norm(y)
    v = (sym - origin) @ np.stack([x, y, np.cross(x, y)]).T
    assert v[1, 2] < v[:MESH_SURFACE, 2].mean(), "the nose tip must point towards the camera (-z)"
    v *= IPD_MM / np.linalg.norm(v[PUPILS[0]] - v[PUPILS[1]])
    rigid = rigid_subset(v, perm)
    spread = [float(np.sqrt(np.mean(np.sum((align(s, v)[:MESH_SURFACE] - v[:MESH_SURFACE]) ** 2, axis=1)))) for s in shapes]
    meta = {
        "axes": "mm; x towards the subject's left, y down (eyes to mouth), z into the head; origin: centroid of the 68 iBUG points",
        "pitch_zero": "the line from the mean of eye corners 33,133,362,263 to the mean of mouth corners 61,291 is perpendicular to the optical axis",
        "scale": f"pupils (vertices 468, 473) {IPD_MM} mm apart",
        "sources": sorted({name for name, *_ in meshes}),
        "views": len(meshes),
        "view_rms_to_mean_mm": [round(r, 3) for r in spread],
        "versions": {"mediapipe": mediapipe.__version__, "scikit-image": skimage.__version__, "numpy": np.__version__},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, vertices=v.astype(np.float32), rigid=rigid, mirror=perm, normals=normals_of(v).astype(np.float32), meta=json.dumps(meta)
    )
    print(f"wrote {out} ({out.stat().st_size} bytes) from {len(meshes)} views; {len(rigid)} rigid vertices")
    print(f"per-view RMS distance to the mean: {np.round(spread, 2).tolist()} mm")
    print(f"outer eye corners {np.linalg.norm(v[33] - v[263]):.1f} mm apart; face extent {np.ptp(v[:MESH_SURFACE], axis=0).round(1).tolist()} mm")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else CANONICAL_PATH)
