"""Head pose from a face mesh: a rigid fit to a canonical frontal face.

Pure numpy, batched over frames.  The stage around it is :mod:`.head`.

**Camera frame** (OpenCV's, the one OpenFace 2 writes its ``pose_*`` columns in):
origin at the camera centre, x to the image's right, y down the image, z away from
the camera.  **Head frame** (the canonical face's, ``data/canonical_face.npz``):
origin at the centroid of the 68 iBUG points, x from the subject's right eye towards
their left eye, y from the eyes towards the mouth, z from the face into the head, in
millimetres.  A head point X is seen at ``R @ X + T`` with

    R = Rx(pitch) @ Ry(yaw) @ Rz(roll)      (OpenFace's Euler2RotationMatrix)

so a head looking straight into the camera has R = I.  For a subject facing the
camera: pitch > 0 lowers the head (nose down the image); yaw > 0 turns it towards the
subject's right (nose towards the image's left); roll > 0 turns the face clockwise on
screen (the head tilts towards the subject's left shoulder).

**Fit** (:func:`fit_head_pose`): (1) a weighted 3-D similarity (Umeyama) between the
canonical's rigid vertices and the mesh (x, y pixels, z MediaPipe's relative depth in
pixels), (2) redone with visibility weights ``clip(-(R n)_z, 0.05, 1)`` because
MediaPipe guesses the vertices turned away from the camera, (3) a scaled-orthographic
Gauss-Newton refinement on x, y plus ``depth_weight`` times the depth residuals, (4)
the rotation relative to the line of sight turned into the camera frame with the focal
length, (5) a perspective (pinhole) Gauss-Newton refinement of R and T in millimetres,
as OpenFace refines its pose with solvePnP.  T is in millimetres only under two
assumptions recorded with the result: the focal length and the face size (the
canonical's pupils are :data:`IPD_MM` apart).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

CANONICAL_PATH = Path(__file__).parent / "data" / "canonical_face.npz"
IPD_MM = 63.0  # adult mean interpupillary distance (Dodgson 2004: 63.4 mm, SD 3.8)
FIT_ITERATIONS = 3  # Gauss-Newton steps per refinement: within 0.002 degrees of 10 on real meshes
MIN_VISIBILITY = 0.05  # weight of a vertex facing away from the camera


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation matrices ``Rx(pitch) @ Ry(yaw) @ Rz(roll)`` from (..., 3) angles in
    radians (pitch, yaw, roll), OpenFace's convention.  Returns (..., 3, 3)."""
    a = np.asarray(angles, np.float64)
    s1, s2, s3 = np.sin(a[..., 0]), np.sin(a[..., 1]), np.sin(a[..., 2])
    c1, c2, c3 = np.cos(a[..., 0]), np.cos(a[..., 1]), np.cos(a[..., 2])
    return np.stack(
        [
            np.stack([c2 * c3, -c2 * s3, s2], -1),
            np.stack([c1 * s3 + c3 * s1 * s2, c1 * c3 - s1 * s2 * s3, -c2 * s1], -1),
            np.stack([s1 * s3 - c1 * c3 * s2, c3 * s1 + c1 * s2 * s3, c1 * c2], -1),
        ],
        -2,
    )


def matrix_to_euler(r: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) in radians of (..., 3, 3) rotations, the inverse of
    :func:`euler_to_matrix` (yaw in [-pi/2, pi/2])."""
    r = np.asarray(r, np.float64)
    yaw = np.arcsin(np.clip(r[..., 0, 2], -1.0, 1.0))
    return np.stack([np.arctan2(-r[..., 1, 2], r[..., 2, 2]), yaw, np.arctan2(-r[..., 0, 1], r[..., 0, 0])], -1)


def _skew(v: np.ndarray) -> np.ndarray:
    """(..., 3, 3) matrices [v]x of (..., 3) vectors."""
    z = np.zeros(v.shape[:-1])
    x, y, w = v[..., 0], v[..., 1], v[..., 2]
    return np.stack([np.stack([z, -w, y], -1), np.stack([w, z, -x], -1), np.stack([-y, x, z], -1)], -2)


def axis_angle_to_matrix(w: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of rotation vectors (..., 3) in radians (Rodrigues)."""
    w = np.asarray(w, np.float64)
    theta = np.linalg.norm(w, axis=-1)[..., None, None]
    k = _skew(w)
    safe = np.where(theta < 1e-12, 1.0, theta)
    a = np.where(theta < 1e-12, 1.0, np.sin(safe) / safe)
    b = np.where(theta < 1e-12, 0.5, (1 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * k + b * (k @ k)


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotations taking the directions ``a`` to ``b`` (..., 3)."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    axis = np.cross(a, b)
    sin = np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = np.arctan2(sin, np.sum(a * b, axis=-1, keepdims=True))
    return axis_angle_to_matrix(axis / np.where(sin > 1e-12, sin, 1.0) * angle)


@dataclass(frozen=True)
class Canonical:
    """The canonical frontal face (made by ``scripts/make_canonical_face.py``).

    vertices: (478, 3) mm in the head frame (module docs), pupils :data:`IPD_MM` apart.
    rigid: indices of the vertices the fit uses (those expressions move least).
    mirror: (478,) the vertex at each vertex's mirror image.
    normals: (478, 3) outward unit normals (-z on the front of the face).
    digest: SHA-256 prefix of the file, part of the head stage's cache key.
    """

    vertices: np.ndarray
    rigid: np.ndarray
    mirror: np.ndarray
    normals: np.ndarray
    meta: dict
    digest: str


@cache
def load_canonical(path: Path = CANONICAL_PATH) -> Canonical:
    """The canonical face stored at ``path`` (read once per process)."""
    with np.load(path) as z:
        return Canonical(
            z["vertices"].astype(np.float64),
            z["rigid"].astype(np.int64),
            z["mirror"].astype(np.int64),
            z["normals"].astype(np.float64),
            json.loads(str(z["meta"])),
            hashlib.sha256(path.read_bytes()).hexdigest()[:16],
        )


def default_focal(width: int, height: int) -> float:
    """OpenFace's focal length in pixels for an uncalibrated camera:
    ``500 (W/640 + H/480) / 2``, with the principal point at the image centre."""
    return 500.0 * (width / 640.0 + height / 480.0) / 2.0


@dataclass
class HeadPose:
    """Head pose of T frames; NaN where a frame has no mesh.

    rotation: (T, 3, 3) head-to-camera rotation.
    translation: (T, 3) head origin in the camera frame, mm (assumed focal and size).
    scale: (T,) pixels per millimetre of the head at its distance.
    origin: (T, 2) image position of the head origin, pixels.
    residual: (T,) RMS image distance of the fitted vertices, pixels.
    """

    rotation: np.ndarray
    translation: np.ndarray
    scale: np.ndarray
    origin: np.ndarray
    residual: np.ndarray

    @property
    def degrees(self) -> np.ndarray:
        """(T, 3) pitch, yaw, roll in degrees."""
        return np.degrees(matrix_to_euler(self.rotation))


def camera_of(translation: np.ndarray, scale: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pinhole camera a pose was fitted with, from what the head stage stores:
    focal length ``scale * Tz`` (T,) and principal point ``origin - scale * T_xy``
    (T, 2), pixels.  Lets later stages and drawings use the same camera without
    repeating the head stage's parameters."""
    focal = scale * translation[..., 2]
    return focal, origin - scale[..., None] * translation[..., :2]


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity transforms ``dst ≈ s R src + t`` by weighted least squares
    (Umeyama 1991).  src (n, 3) model points, dst (T, n, 3) observations, weights
    (n,) or (T, n).  Returns R (T, 3, 3), s (T,), t (T, 3)."""
    w = np.ones(dst.shape[:2]) if weights is None else np.broadcast_to(weights, dst.shape[:2])
    w = w / w.sum(axis=1, keepdims=True)
    mu_s = w @ src
    mu_d = np.einsum("tn,tnk->tk", w, dst)
    sc = src[None] - mu_s[:, None]
    cov = np.einsum("tn,tni,tnj->tij", w, dst - mu_d[:, None], sc)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones((len(dst), 3))
    d[:, 2] = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    r = u @ (d[:, :, None] * vt)
    s = np.sum(sig * d, axis=1) / np.einsum("tn,tnk->t", w, sc**2)
    return r, s, mu_d - s[:, None] * np.einsum("tij,tj->ti", r, mu_s)


def _gauss_newton_step(j: np.ndarray, res: np.ndarray, w: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """Weighted least-squares step: Jacobians j (T, n, k, p), residuals res (T, n, k),
    point weights w (T, n), component weights comp (k,) -> (T, p)."""
    sw = np.sqrt(w[:, :, None] * comp)
    t, n, k, p = j.shape
    a = (j * sw[..., None]).reshape(t, n * k, p)
    b = (res * sw).reshape(t, n * k, 1)
    at = np.swapaxes(a, 1, 2)
    return -np.linalg.solve(at @ a + 1e-9 * np.eye(p), at @ b)[..., 0]


def _refine_orthographic(
    src: np.ndarray, y: np.ndarray, r: np.ndarray, s: np.ndarray, t2: np.ndarray, w: np.ndarray, depth_weight: float,
    iterations: int = FIT_ITERATIONS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Scaled orthographic fit: minimise the x, y residuals of ``s (R X)[:2] + t2`` and
    ``depth_weight`` times the z residuals (with a free depth offset)."""
    k = 3 if depth_weight > 0 else 2
    comp = np.array([1.0, 1.0, depth_weight])[:k]
    rx = np.einsum("tij,nj->tni", r, src)
    tz = (y[..., 2] - s[:, None] * rx[..., 2]).mean(axis=1) if k == 3 else np.zeros(len(y))
    for _ in range(iterations):
        rx = np.einsum("tij,nj->tni", r, src)
        t = np.concatenate([t2, tz[:, None]], axis=1)[:, :k]
        res = s[:, None, None] * rx[..., :k] + t[:, None] - y[..., :k]
        # d(R X)/d(omega) for R <- exp([omega]x) R is -[R X]x
        jw = -s[:, None, None, None] * _skew(rx)[..., :k, :]
        j = np.concatenate([jw, rx[..., :k, None], np.broadcast_to(np.eye(k), rx.shape[:2] + (k, k))], axis=-1)
        step = _gauss_newton_step(j, res, w, comp)
        r = axis_angle_to_matrix(step[:, :3]) @ r
        s = s + step[:, 3]
        t2 = t2 + step[:, 4:6]
        if k == 3:
            tz = tz + step[:, 6]
    return r, s, t2


def _refine_perspective(
    src: np.ndarray, y: np.ndarray, r: np.ndarray, tr: np.ndarray, focal: float, center: tuple[float, float],
    w: np.ndarray, depth_weight: float,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Pinhole fit of R and T (mm): image residuals of ``f (RX + T)_xy / (RX + T)_z + c``,
    plus ``depth_weight`` times the residuals of the depth along the line of sight at
    image scale against the mesh's relative depth (with a free offset)."""
    cx, cy = center
    oz: np.ndarray | None = None
    for _ in range(FIT_ITERATIONS + 1):
        rx = np.einsum("tij,nj->tni", r, src)
        p = rx + tr[:, None]
        z = p[..., 2]
        res = np.stack([focal * p[..., 0] / z + cx, focal * p[..., 1] / z + cy], -1) - y[..., :2]
        dproj = np.zeros(p.shape[:2] + (2, 3))
        dproj[..., 0, 0] = dproj[..., 1, 1] = focal / z
        dproj[..., 0, 2] = -focal * p[..., 0] / z**2
        dproj[..., 1, 2] = -focal * p[..., 1] / z**2
        skew = -_skew(rx)
        j = np.concatenate([dproj @ skew, dproj], axis=-1)  # (T, n, 2, 6)
        comp = np.ones(2)
        if depth_weight > 0:
            dist = np.linalg.norm(tr, axis=1)
            d = tr / dist[:, None]
            k = focal / dist
            zhat = k[:, None] * np.einsum("tnj,tj->tn", rx, d)
            if oz is None:
                oz = (y[..., 2] - zhat).mean(axis=1)
            jz = np.zeros(p.shape[:2] + (1, 7))
            jz[..., 0, :3] = k[:, None, None] * np.einsum("tj,tnji->tni", d, skew)
            jz[..., 0, 6] = 1.0
            j = np.concatenate([np.concatenate([j, np.zeros(j.shape[:3] + (1,))], axis=-1), jz], axis=2)
            res = np.concatenate([res, (zhat + oz[:, None] - y[..., 2])[..., None]], axis=-1)
            comp = np.array([1.0, 1.0, depth_weight])
        step = _gauss_newton_step(j, res, w, comp)
        r = axis_angle_to_matrix(step[:, :3]) @ r
        tr = tr + step[:, 3:6]
        if oz is not None:
            oz = oz + step[:, 6]
    return r, tr


def fit_head_pose(
    points: np.ndarray,
    focal: float,
    center: tuple[float, float],
    *,
    vertices: np.ndarray | None = None,
    depth_weight: float = 0.5,
    ipd_mm: float = IPD_MM,
    canonical: Canonical | None = None,
) -> HeadPose:
    """Head pose of every frame of a face-mesh (or landmark) sequence (module docs).

    Parameters
    ----------
    points : np.ndarray, shape (T, 478, 3) or (T, n, 2)
        MediaPipe meshes as the face stage stores them (x, y in pixels, z relative
        depth in pixels, negative towards the camera); or, with ``vertices``, image
        points (x, y pixels) of those canonical vertices, e.g. imported landmarks,
        fitted from a frontal start (fine to about 45 degrees; pitch is the least
        reliable angle without depth).  Frames with NaN get NaN.
    focal : float
        Focal length in pixels (:func:`default_focal` when the camera is unknown).
    center : tuple of float
        Principal point (cx, cy) in pixels.
    vertices : np.ndarray or None, default None
        (n,) canonical vertex of each point; None: ``points`` are whole meshes and the
        canonical's rigid vertices are fitted.
    depth_weight : float, default 0.5
        Weight of the mesh's relative depth against its x, y in the refinements (0:
        image positions only, 1: depth trusted as much); unused for 2-D points.
    ipd_mm : float, default 63
        The subject's interpupillary distance in mm; scales the translation only.
    canonical : Canonical or None, default None
        The canonical face; None loads the packaged one.
    """
    can = canonical or load_canonical()
    index = can.rigid if vertices is None else np.asarray(vertices)
    src = can.vertices[index] * (ipd_mm / IPD_MM)
    m = np.asarray(points, np.float64)
    m = m[:, index] if vertices is None else m
    t_all = len(m)
    ok = np.isfinite(m).all(axis=(1, 2))
    pose = HeadPose(
        np.full((t_all, 3, 3), np.nan), np.full((t_all, 3), np.nan), np.full(t_all, np.nan),
        np.full((t_all, 2), np.nan), np.full(t_all, np.nan),
    )  # fmt: skip
    if not ok.any():
        return pose
    y = m[ok]
    if y.shape[-1] == 3:
        r, s, t = umeyama(src, y)
        # MediaPipe guesses the vertices facing away; weight by how squarely each faces us.
        w = np.clip(-np.einsum("tij,nj->tni", r, can.normals[index])[..., 2], MIN_VISIBILITY, 1.0)
        r, s, t = umeyama(src, y, w)
        r, s, t2 = _refine_orthographic(src, y, r, s, t[:, :2], w, depth_weight)
    else:
        depth_weight = 0.0
        w = np.ones(y.shape[:2])
        spread = np.sqrt(((y - y.mean(axis=1, keepdims=True)) ** 2).sum(axis=(1, 2)) / ((src[:, :2] - src[:, :2].mean(axis=0)) ** 2).sum())
        r = np.broadcast_to(np.eye(3), (len(y), 3, 3)).copy()
        t2 = y.mean(axis=1) - spread[:, None] * src[:, :2].mean(axis=0)
        r, s, t2 = _refine_orthographic(src, y, r, spread, t2, w, 0.0, iterations=4 * FIT_ITERATIONS)
    # The orthographic rotation is relative to the line of sight to the face.
    cx, cy = center
    ray = np.stack([(t2[:, 0] - cx) / focal, (t2[:, 1] - cy) / focal, np.ones(len(t2))], axis=1)
    r = rotation_between(np.array([0.0, 0.0, 1.0]), ray) @ r
    tz = focal / s
    tr = np.stack([(t2[:, 0] - cx) * tz / focal, (t2[:, 1] - cy) * tz / focal, tz], axis=1)
    r, tr = _refine_perspective(src, y, r, tr, focal, center, w, depth_weight)
    p = np.einsum("tij,nj->tni", r, src) + tr[:, None]
    projected = focal * p[..., :2] / p[..., 2:] + np.array(center)
    pose.rotation[ok] = r
    pose.translation[ok] = tr
    pose.scale[ok] = focal / tr[:, 2]
    pose.origin[ok] = focal * tr[:, :2] / tr[:, 2:] + np.array(center)
    pose.residual[ok] = np.sqrt(np.mean(np.sum((projected - y[..., :2]) ** 2, axis=-1), axis=1))
    return pose


def project(points: np.ndarray, rotation: np.ndarray, translation: np.ndarray, focal: float, center: tuple[float, float]) -> np.ndarray:
    """Pinhole projection of head-frame points (n, 3) in mm for one pose, in the form
    the face stage stores a mesh: (n, 3) x, y pixels and a relative depth z in pixels
    (depth along the line of sight from the head origin, times focal / distance;
    negative towards the camera).  Used to draw head axes and to make synthetic meshes."""
    cam = points @ rotation.T + translation
    xy = focal * cam[:, :2] / cam[:, 2:] + np.asarray(center)
    dist = float(np.linalg.norm(translation))
    z = ((cam - translation) @ (translation / dist)) * focal / dist
    return np.concatenate([xy, z[:, None]], axis=1)
