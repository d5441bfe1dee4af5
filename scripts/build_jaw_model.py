"""Build ``vidaffect/stages/data/jaw_model.npz``: the canonical face mesh and the jaw
points' marching curves that :mod:`vidaffect.stages.jaw` uses.

Inputs, none of them an annotated image:

* MediaPipe's mesh (as the face stage computes it) of two frontal photographs that
  ship with pip packages, scikit-image's astronaut and matplotlib's Grace Hopper (both
  public domain), and of their mirror images.  Their similarity-aligned mean, made
  exactly left-right symmetric, is the *canonical mesh*: 468 x 3, head frame (x
  towards the subject's left, y down, z away from the camera), unit: the outer-eye
  distance.
* The mean frontal 68-point shape of a dlib (iBUG 300-W) predictor as published with
  CMU OpenFace (``openface/align_dlib.py``, ``TEMPLATE``; Apache License 2.0,
  Copyright 2015-2016 Carnegie Mellon University): where the 17 jaw points of an
  average frontal face lie relative to its eyes, nose and mouth.

Steps:

1. The template's inner points 17-67 are aligned to the canonical mesh's inner points
   (:data:`vidaffect.stages.layouts.MESH_TO_INNER`) by a similarity transform, which
   puts the template's jaw in the canonical x-y plane; the jaw is then made
   symmetric.
2. For jaw point j the *marching plane* holds the depth axis and the outward normal of
   the template jaw at that point.  Every edge of MediaPipe's tessellation that the
   plane crosses gives a curve point; only those on the outward side and outside the
   inner features (the convex hull of template points 17-67, grown by 5 %) are kept,
   ordered from the inside out.
3. Saved: the canonical mesh, the normals, and per curve point its edge (a, b) and
   the crossing fraction t.

Run from the repository root: ``python scripts/build_jaw_model.py`` (a few seconds).
The result depends only on MediaPipe's models (``mediapipe==0.10.14``).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import Delaunay

from vidaffect.bench.face_clips import MIRROR, photo
from vidaffect.stages.face_tracker import FaceTracker
from vidaffect.stages.jaw import MODEL_FILE, JawModel
from vidaffect.stages.layouts import INNER, JAW, LEFT_EYE_OUTER_VERTEX, MESH_SURFACE, MESH_TO_INNER, RIGHT_EYE_OUTER_VERTEX

# fmt: off
TEMPLATE = np.array([
    (0.079240, 0.339224), (0.082922, 0.456955), (0.096793, 0.575648), (0.122142, 0.691922),
    (0.168688, 0.800341), (0.239789, 0.895733), (0.325662, 0.977069), (0.422318, 1.043290),
    (0.531778, 1.060804), (0.641296, 1.039819), (0.738106, 0.972269), (0.824444, 0.889624),
    (0.894793, 0.792494), (0.939395, 0.681547), (0.961119, 0.562238), (0.970580, 0.441759),
    (0.971193, 0.322119), (0.163846, 0.249152), (0.217804, 0.204256), (0.291299, 0.192367),
    (0.367460, 0.203582), (0.439295, 0.233136), (0.586446, 0.228142), (0.660153, 0.195924),
    (0.737466, 0.182361), (0.813237, 0.192828), (0.870757, 0.235293), (0.515345, 0.318635),
    (0.516221, 0.396200), (0.517119, 0.473798), (0.518164, 0.553158), (0.433701, 0.604054),
    (0.475501, 0.620763), (0.520713, 0.634268), (0.565874, 0.618797), (0.607054, 0.601577),
    (0.252419, 0.331052), (0.298663, 0.302646), (0.355750, 0.303021), (0.403719, 0.338677),
    (0.352507, 0.349988), (0.296792, 0.350479), (0.631326, 0.334137), (0.679073, 0.296454),
    (0.735972, 0.294721), (0.782865, 0.321305), (0.740312, 0.341849), (0.684999, 0.343734),
    (0.353168, 0.746189), (0.414588, 0.719054), (0.477678, 0.706836), (0.522733, 0.717092),
    (0.569832, 0.705414), (0.635196, 0.715656), (0.699517, 0.739419), (0.639447, 0.805237),
    (0.576411, 0.835437), (0.525398, 0.841706), (0.476415, 0.837506), (0.413795, 0.810046),
    (0.380085, 0.749980), (0.477956, 0.745132), (0.523390, 0.748924), (0.571058, 0.743329),
    (0.672409, 0.744177), (0.572540, 0.776609), (0.524011, 0.783371), (0.477561, 0.778476),
])
# fmt: on
INNER_IBUG = slice(INNER.start, 68)  # the template's inner points (it has no pupils)
FLIP = np.diag([-1.0, 1.0, 1.0])
HULL_GROWTH = 1.05


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale s, rotation R and shift t minimising |s R src + t - dst| (Umeyama)."""
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - ms, dst - md
    u, d, vt = np.linalg.svd(b.T @ a)
    e = np.eye(src.shape[1])
    e[-1, -1] = np.sign(np.linalg.det(u @ vt))
    rotation = u @ e @ vt
    scale = float(np.trace(np.diag(d) @ e) / (a**2).sum())
    return scale, rotation, md - scale * rotation @ ms


def normalised(mesh: np.ndarray) -> np.ndarray:
    mesh = mesh - mesh.mean(axis=0)
    return mesh / np.linalg.norm(mesh[RIGHT_EYE_OUTER_VERTEX] - mesh[LEFT_EYE_OUTER_VERTEX])


def photo_meshes() -> list[tuple[bool, np.ndarray]]:
    """(mirrored, mesh) of each photograph and its mirror image; a mirror image's mesh
    is flipped back, its vertices not yet renumbered."""
    tracker = FaceTracker()
    out = []
    for name in ("astronaut", "hopper"):
        for mirrored in (False, True):
            tracker.reset()
            faces = tracker.step(photo(name + (MIRROR if mirrored else ""))[0])
            mesh = faces[0].mesh[:MESH_SURFACE].astype(np.float64)
            if mirrored:
                mesh[:, 0] = -mesh[:, 0]
            out.append((mirrored, normalised(mesh)))
    tracker.close()
    return out


def canonical_mesh() -> np.ndarray:
    meshes = photo_meshes()
    base = meshes[0][1]
    # Mirror permutation: vertex i of a face is vertex perm[i] of its mirror image.
    _, perm = linear_sum_assignment(((base[:, None, :] - (base @ FLIP)[None, :, :]) ** 2).sum(axis=-1))
    involution = perm[perm] == np.arange(MESH_SURFACE)
    assert involution.mean() > 0.95 and perm[RIGHT_EYE_OUTER_VERTEX] == LEFT_EYE_OUTER_VERTEX, "no mirror permutation found"
    perm = np.where(involution, perm, np.arange(MESH_SURFACE))
    aligned = []
    for mirrored, mesh in meshes:
        if mirrored:
            mesh = mesh[perm]
        s, r, t = similarity(mesh, base)
        aligned.append(s * mesh @ r.T + t)
    mean = normalised(np.mean(aligned, axis=0))
    # The symmetry plane: aligning the mirrored mean onto the mean gives Q; Q F is the
    # reflection in that plane, whose normal is its eigenvector of eigenvalue -1.
    _, q, _ = similarity(mean[perm] @ FLIP, mean)
    values, vectors = np.linalg.eig(q @ FLIP)
    normal = np.real(vectors[:, np.argmin(np.real(values))])
    normal *= np.sign(normal[0])
    # Turn the normal onto the x axis (smallest rotation), then symmetrise exactly.
    x = np.array([1.0, 0.0, 0.0])
    c = np.cross(normal, x)
    k = np.array([[0, -c[2], c[1]], [c[2], 0, -c[0]], [-c[1], c[0], 0]])
    canon = mean @ (np.eye(3) + k + k @ k / (1 + normal @ x)).T
    return normalised((canon + canon[perm] @ FLIP) / 2)


def build() -> JawModel:
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    canon = canonical_mesh()
    s, r, t = similarity(TEMPLATE[INNER_IBUG], canon[list(MESH_TO_INNER[: INNER_IBUG.stop - INNER.start]), :2])
    template = s * TEMPLATE @ r.T + t
    jaw = template[JAW]
    jaw = (jaw + jaw[::-1] * np.array([-1.0, 1.0])) / 2  # symmetric: left and right agree
    tangent = np.gradient(jaw, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normals = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    centre = template[INNER_IBUG].mean(axis=0)
    normals *= np.sign(((jaw - centre) * normals).sum(axis=1))[:, None]  # outward
    hull = Delaunay(centre + HULL_GROWTH * (template[INNER_IBUG] - centre))
    edges = np.array(sorted({tuple(sorted(e)) for e in FACEMESH_TESSELATION}))
    a_parts, b_parts, t_parts, offsets = [], [], [], [0]
    for point, normal in zip(jaw, normals, strict=True):
        across = (canon[:, :2] - point) @ np.array([-normal[1], normal[0]])  # signed distance to the plane
        fa, fb = across[edges[:, 0]], across[edges[:, 1]]
        crossing = (fa * fb < 0) | (fa == 0)
        e = edges[crossing]
        frac = fa[crossing] / np.where(fa[crossing] == fb[crossing], 1.0, fa[crossing] - fb[crossing])
        at = canon[e[:, 0]] + frac[:, None] * (canon[e[:, 1]] - canon[e[:, 0]])
        keep = (((at[:, :2] - centre) @ normal) > 0) & (hull.find_simplex(at[:, :2]) < 0)
        order = np.argsort((at[keep, :2] - point) @ normal)  # from the inside out
        a_parts.append(e[keep, 0][order])
        b_parts.append(e[keep, 1][order])
        t_parts.append(frac[keep][order])
        offsets.append(offsets[-1] + int(keep.sum()))
    return JawModel(
        canonical=canon.astype(np.float32),
        normals=normals.astype(np.float32),
        curve_a=np.concatenate(a_parts).astype(np.int16),
        curve_b=np.concatenate(b_parts).astype(np.int16),
        curve_t=np.concatenate(t_parts).astype(np.float32),
        offsets=np.array(offsets, np.int16),
    )


def main() -> None:
    model = build()
    model.save(MODEL_FILE)
    print(f"wrote {MODEL_FILE} ({MODEL_FILE.stat().st_size} bytes); curve points per jaw point: {np.diff(model.offsets).tolist()}")


if __name__ == "__main__":
    main()
