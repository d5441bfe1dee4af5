"""The 70 face points of a MediaPipe face mesh, with jaw points that follow the face
outline ("landmark marching").

The inner points 17-67 and the pupils are fixed mesh vertices
(:data:`.layouts.MESH_TO_INNER`).  A fixed vertex cannot serve the jaw: annotators
(and 68-point detectors) draw jaw points 0-16 on the face's *outline*, and when the
head turns, the outline on the far side is the silhouette, where the line of sight
grazes the surface, while a fixed vertex stays on the skin and slides onto the cheek.
Following Zhu et al. (CVPR 2015, "High-fidelity pose and expression normalization")
and 3DDFA, each jaw point j has a *marching curve* on the mesh: where the mesh surface
meets the plane through the viewing axis and the outward normal n_j of an average
68-point jaw at that point, from the inner features out to the mesh's edge.  Per frame:

1. an affine camera A (2x3) is fitted from a canonical mesh to the observed x, y of
   the 468 surface vertices (least squares; the pseudo-inverse is precomputed);
2. the jaw point's outward direction in the image is u_j = A n_j;
3. the jaw point is the point of its curve farthest out along u_j, refined by a
   parabola through that curve point and its two neighbours so that it slides
   smoothly instead of hopping from one mesh edge to the next.

On a frontal face, and on the side turned towards the camera, the farthest point is
the curve's outer end on the mesh's face oval; on the far side of a turned head it is
the silhouette.  The mesh stops at its face oval, so on the near side of a strongly
turned head the point stays at the oval, short of the visible jaw line that runs back
to the ear.

The canonical mesh and the curves are package data (``data/jaw_model.npz``, about
10 kB), made by ``scripts/build_jaw_model.py`` from the meshes of two photographs that
ship with pip packages and the mean frontal 68-point shape published with CMU
OpenFace; the script documents the steps.  Cost: about 0.3 ms per face and frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidaffect.stages.layouts import FACE_POINTS, INNER, JAW, MESH_SURFACE, MESH_TO_INNER

MODEL_FILE = Path(__file__).with_name("data") / "jaw_model.npz"
JAW_POINTS = JAW.stop - JAW.start


@dataclass(frozen=True)
class JawModel:
    """What landmark marching needs (the arrays of ``jaw_model.npz``).

    canonical: (468, 3) the canonical mesh, head frame (x to the subject's left, y
        down, z away from the camera), unit: outer-eye distance.
    normals: (17, 2) outward direction of the average jaw outline at each jaw point,
        in the head frame's x-y plane (unit vectors).
    curve_a, curve_b, curve_t: (K,) the curve points as mesh edges (a, b) and the
        fraction t from a to b where the marching plane crosses them, every curve from
        the inside out, curve j at ``offsets[j]:offsets[j + 1]``.
    offsets: (18,) start of each curve.
    """

    canonical: np.ndarray
    normals: np.ndarray
    curve_a: np.ndarray
    curve_b: np.ndarray
    curve_t: np.ndarray
    offsets: np.ndarray

    @classmethod
    def load(cls, path: Path = MODEL_FILE) -> JawModel:
        with np.load(path) as z:
            return cls(**{name: z[name] for name in ("canonical", "normals", "curve_a", "curve_b", "curve_t", "offsets")})

    def save(self, path: Path = MODEL_FILE) -> None:
        np.savez_compressed(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})


class JawMarcher:
    """Jaw points 0-16 of a face mesh by landmark marching (see the module docs)."""

    def __init__(self, model: JawModel | None = None) -> None:
        m = model or JawModel.load()
        design = np.concatenate([m.canonical.astype(np.float64), np.ones((MESH_SURFACE, 1))], axis=1)
        self._pinv = np.linalg.pinv(design)  # (4, 468): mesh x, y -> affine camera
        self._normals = np.concatenate([m.normals, np.zeros((JAW_POINTS, 1))], axis=1).astype(np.float64)
        self._a, self._b = m.curve_a.astype(np.intp), m.curve_b.astype(np.intp)
        self._t = m.curve_t.astype(np.float64)[:, None]
        self._offsets = m.offsets.astype(np.intp)
        self._curve_of = np.repeat(np.arange(JAW_POINTS), np.diff(self._offsets))

    def __call__(self, mesh: np.ndarray) -> np.ndarray:
        """The 17 jaw points.

        Parameters
        ----------
        mesh : np.ndarray, shape (>=468, >=2)
            A face mesh in pixels.

        Returns
        -------
        np.ndarray, shape (17, 2), float64
            Pixels.
        """
        xy = np.asarray(mesh, np.float64)[:, :2]
        camera = (self._pinv @ xy[:MESH_SURFACE])[:3].T  # (2, 3) linear part
        outward = self._normals @ camera.T  # (17, 2) outward direction in the image
        outward /= np.linalg.norm(outward, axis=1, keepdims=True)
        points = xy[self._a] + self._t * (xy[self._b] - xy[self._a])  # (K, 2) curve points
        reach = np.einsum("kd,kd->k", points, outward[self._curve_of])
        out = np.empty((JAW_POINTS, 2))
        for j in range(JAW_POINTS):
            lo, hi = self._offsets[j], self._offsets[j + 1]
            q = reach[lo:hi]
            k = int(np.argmax(q))
            out[j] = points[lo + k]
            if 0 < k < len(q) - 1:
                curvature = q[k - 1] - 2 * q[k] + q[k + 1]
                if curvature < 0:  # a maximum inside the curve: interpolate its position
                    f = float(np.clip(0.5 * (q[k - 1] - q[k + 1]) / curvature, -0.5, 0.5))
                    out[j] += abs(f) * (points[lo + k + (1 if f > 0 else -1)] - points[lo + k])
        return out


@functools.cache
def _marcher() -> JawMarcher:
    return JawMarcher()


def mesh_to_face70(mesh: np.ndarray) -> np.ndarray:
    """The 70 face points of a 478-point MediaPipe face mesh: marched jaw points 0-16,
    fixed vertices for the inner points and the pupils.

    Parameters
    ----------
    mesh : np.ndarray, shape (478, >=2)
        Mesh vertices in pixels; only x and y are used.

    Returns
    -------
    np.ndarray, shape (70, 2), float32
    """
    out = np.empty((FACE_POINTS, 2), np.float32)
    out[INNER] = np.asarray(mesh)[list(MESH_TO_INNER), :2]
    out[JAW] = _marcher()(mesh)
    return out
