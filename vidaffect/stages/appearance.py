"""What a face looks like, for telling the faces of one video apart: training-free
descriptors and the appearance model kept per identity.

A descriptor has two parts, both made from the frame and the face's mesh:

``lbp``
    The face warped to a 64x64 grey patch by the similarity transform that puts the
    two eye centres and the mouth centre at fixed places (position, scale and roll
    removed), described by uniform local binary patterns (8 neighbours, radius 1: 59
    codes) in a 4x4 grid of cells, each cell's histogram summing to 1: 944 numbers.
    The classic training-free face descriptor (Ahonen, Hadid & Pietikainen, TPAMI
    2006): unchanged by monotonic changes of brightness (exposure, gain), made of the
    texture where faces differ (eyes, brows, nose, mouth).  Distance: chi-square / 2
    averaged over the cells, in [0, 1].
``colour``
    An 8x4 hue-saturation histogram of the pixels inside the mesh's face oval and a
    band a quarter of the face high above it (hair): skin tone and hair colour.
    Distance: Hellinger, in [0, 1].  Stronger than LBP between people filmed in one
    light, weaker when the light changes.

The combined :func:`distance` is the mean of the two, each divided by its typical
spread between looks of one person (median distance between frames of one person,
measured on real videos: LBP 0.19, colour 0.08).  So 1 means "as different as one
person's frames usually are"; measured, frames of one person lie at 1.0 (median) and
1.3 (90th percentile), different people at 3.4 (10th percentile) and 4.6 (median).

The face's 3-D mesh shape is not used: MediaPipe regresses towards an average face and
expression changes its shape more than identity does (measured: no better than chance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from vidaffect.stages.layouts import (
    CHIN_VERTEX,
    FOREHEAD_VERTEX,
    LEFT_EYE_INNER_VERTEX,
    LEFT_EYE_OUTER_VERTEX,
    MESH_FACE_OVAL,
    MOUTH_CORNER_VERTICES,
    RIGHT_EYE_INNER_VERTEX,
    RIGHT_EYE_OUTER_VERTEX,
)

PATCH = 64  # px, side of the aligned grey patch
GRID = 4  # LBP cells per side
LBP_CODES = 59  # 58 uniform 8-bit patterns and one for all others
# Where the aligned patch puts the subject's right eye, left eye and mouth (patch px).
_ANCHORS = np.array([(17.0, 20.0), (47.0, 20.0), (32.0, 50.0)])
HAIR_BAND = 0.25  # height of the hair band above the face oval, fraction of the face height
LBP_SPREAD = 0.19  # typical LBP distance between two frames of one person
COLOUR_SPREAD = 0.08  # typical colour distance between two frames of one person
EXEMPLARS = 8  # descriptors an identity keeps


def _uniform_lbp_classes() -> np.ndarray:
    """Class of each 8-bit LBP code: 0-57 for the uniform patterns (at most two 0/1
    transitions around the circle), 58 for the rest."""
    classes = np.full(256, LBP_CODES - 1, np.intp)
    k = 0
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        if sum(bits[i] != bits[(i + 1) % 8] for i in range(8)) <= 2:
            classes[code] = k
            k += 1
    return classes


_LBP_CLASS = _uniform_lbp_classes()
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))
_CELL = np.searchsorted([i * (PATCH - 2) // GRID for i in range(1, GRID)], np.arange(PATCH - 2), side="right")
_CELL_OF = (_CELL[:, None] * GRID + _CELL[None, :]) * LBP_CODES  # first bin of each pixel's cell


@dataclass(frozen=True)
class Descriptor:
    """How one face looks in one frame (see the module docs)."""

    lbp: np.ndarray  # (944,) float32
    colour: np.ndarray  # (32,) float32


def aligned_patch(image: np.ndarray, mesh: np.ndarray) -> np.ndarray:
    """The face as a 64x64 uint8 grey patch, eye centres and mouth centre at fixed
    places (least-squares similarity transform)."""
    src = np.array(
        [
            mesh[[RIGHT_EYE_OUTER_VERTEX, RIGHT_EYE_INNER_VERTEX], :2].mean(axis=0),
            mesh[[LEFT_EYE_INNER_VERTEX, LEFT_EYE_OUTER_VERTEX], :2].mean(axis=0),
            mesh[list(MOUTH_CORNER_VERTICES), :2].mean(axis=0),
        ],
        np.float64,
    )
    # dst = [[a, -b], [b, a]] src + t, solved for (a, b, tx, ty)
    rows = np.zeros((6, 4))
    rows[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(3), np.zeros(3)])
    rows[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(3), np.ones(3)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, _ANCHORS.ravel(), rcond=None)
    matrix = np.array([[a, -b, tx], [b, a, ty]])
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.warpAffine(grey, matrix, (PATCH, PATCH), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def lbp_histograms(patch: np.ndarray) -> np.ndarray:
    """Uniform LBP histograms of a 64x64 grey patch in a 4x4 grid, (944,) float32."""
    p = patch.astype(np.int16)
    centre = p[1:-1, 1:-1]
    code = np.zeros(centre.shape, np.intp)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        code |= (p[1 + dy : PATCH - 1 + dy, 1 + dx : PATCH - 1 + dx] >= centre).astype(np.intp) << bit
    counts = np.bincount((_CELL_OF + _LBP_CLASS[code]).ravel(), minlength=GRID * GRID * LBP_CODES)
    hist = counts.reshape(GRID * GRID, LBP_CODES).astype(np.float32)
    return (hist / hist.sum(axis=1, keepdims=True)).ravel()


def colour_histogram(image: np.ndarray, mesh: np.ndarray) -> np.ndarray:
    """Hue-saturation histogram (8x4 bins, summing to 1) of the face oval and the hair
    band above it, (32,) float32."""
    oval = mesh[list(MESH_FACE_OVAL), :2].astype(np.float64)
    up = (mesh[FOREHEAD_VERTEX, :2] - mesh[CHIN_VERTEX, :2]).astype(np.float64) * HAIR_BAND
    lo = np.floor(np.minimum(oval.min(axis=0), oval.min(axis=0) + up)).astype(int) - 1
    hi = np.ceil(np.maximum(oval.max(axis=0), oval.max(axis=0) + up)).astype(int) + 1
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(lo[0], 0), max(lo[1], 0), min(hi[0], w), min(hi[1], h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return np.full(32, 1 / 32, np.float32)
    region = image[y0:y1, x0:x1]
    scale = min(1.0, 64.0 / max(region.shape[:2]))  # a histogram needs few pixels
    if scale < 1:
        region = cv2.resize(region, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    mask = np.zeros(region.shape[:2], np.uint8)
    polygon = ((oval - (x0, y0)) * scale).round().astype(np.int32)
    cv2.fillPoly(mask, [polygon, polygon + (up * scale).round().astype(np.int32)], 255)
    hsv = cv2.cvtColor(np.ascontiguousarray(region), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], mask, [8, 4], [0, 180, 0, 256]).ravel().astype(np.float32)
    return hist / max(float(hist.sum()), 1.0)


def describe(image: np.ndarray, mesh: np.ndarray) -> Descriptor:
    """The descriptor of the face with ``mesh`` (pixels) in an RGB frame; about 1.5 ms."""
    return Descriptor(lbp_histograms(aligned_patch(image, mesh)), colour_histogram(image, mesh))


def distance(a: Descriptor, b: Descriptor) -> float:
    """The combined distance of two descriptors (1: the typical spread of one person)."""
    num, den = (a.lbp - b.lbp) ** 2, a.lbp + b.lbp
    nonzero = den > 0
    lbp = 0.5 * float(np.sum(num[nonzero] / den[nonzero])) / (GRID * GRID)
    colour = float(np.sqrt(max(0.0, 1.0 - float(np.sum(np.sqrt(a.colour * b.colour))))))
    return 0.5 * (lbp / LBP_SPREAD + colour / COLOUR_SPREAD)


@dataclass
class AppearanceModel:
    """An identity's looks: at most :data:`EXEMPLARS` descriptors, spread over the poses,
    expressions and lights seen.

    The first ones are kept as they come; after that a new descriptor replaces the
    most redundant exemplar (the one nearest another) when it is farther from the set
    than that exemplar is from its nearest.  The pairwise distances are cached, so
    adding costs one distance per exemplar.  About 8 kB; it never grows with the video.
    """

    exemplars: list[Descriptor] = field(default_factory=list)
    _pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def add(self, new: Descriptor) -> None:
        d = np.array([distance(new, e) for e in self.exemplars])
        k = len(self.exemplars)
        if k < EXEMPLARS:
            pairs = np.zeros((k + 1, k + 1))
            pairs[:k, :k] = self._pairs
            pairs[k, :k] = pairs[:k, k] = d
            self.exemplars.append(new)
            self._pairs = pairs
            return
        nearest = (self._pairs + np.diag(np.full(k, np.inf))).min(axis=1)
        i = int(np.argmin(nearest))
        if d.min() > nearest[i]:
            self.exemplars[i] = new
            d[i] = 0.0
            self._pairs[i, :] = self._pairs[:, i] = d

    def distance(self, desc: Descriptor) -> float:
        """Distance of a look to this identity: to its nearest exemplar (inf when it
        has none)."""
        return min((distance(desc, e) for e in self.exemplars), default=float("inf"))
