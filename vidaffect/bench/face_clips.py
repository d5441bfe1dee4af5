"""Made face clips with known truth, for the face benchmark and the tests.

Faces come from photographs that ship with pip packages: scikit-image's astronaut
(Eileen Collins, NASA, public domain) and matplotlib's Grace Hopper (US Navy, public
domain).  A *cast* name is a photograph's name, optionally with ``-mirror`` (flipped
left-right): a copy that the appearance descriptors see as a similar face, so it tests
that tracking, not appearance alone, keeps look-alikes apart.

Faces are pasted onto a textured, face-free backdrop (scikit-image's coffee photograph,
tiled).  Coordinates are pixels with the origin at the frame's top-left corner; boxes
are ``(x, y, w, h)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

# The face box (x, y, w, h) of each photograph, from MediaPipe's full-range detector.
PHOTO_FACES: dict[str, tuple[float, float, float, float]] = {
    "astronaut": (173.7, 67.8, 103.9, 103.9),
    "hopper": (165.9, 128.4, 200.4, 200.4),
}
MIRROR = "-mirror"


@functools.cache
def photo(name: str) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A photograph (H, W, 3) uint8 RGB and its face box.

    Parameters
    ----------
    name : str
        ``astronaut`` or ``hopper``, optionally followed by ``-mirror``.

    Raises
    ------
    ImportError
        scikit-image (the ``bench`` and ``test`` extras) is not installed.
    """
    base = name.removesuffix(MIRROR)
    if base == "astronaut":
        from skimage import data

        image = data.astronaut()
    elif base == "hopper":
        import matplotlib.cbook
        import matplotlib.image

        image = matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    else:
        raise KeyError(f"unknown face photograph {name!r}; known: {', '.join(PHOTO_FACES)} (+ {MIRROR})")
    x, y, w, h = PHOTO_FACES[base]
    if name.endswith(MIRROR):
        image = image[:, ::-1]
        x = image.shape[1] - x - w
    image = np.ascontiguousarray(image)
    image.flags.writeable = False
    return image, (x, y, w, h)


def place_face(canvas: np.ndarray, name: str, height: float, centre: tuple[float, float]) -> np.ndarray:
    """Paste a photograph's face region (a square 1.8 times its face box) so that the
    face is ``height`` px high and centred on ``centre`` (x, y); parts outside the
    canvas are cut off.

    Parameters
    ----------
    canvas : np.ndarray, shape (H, W, 3), uint8
        Modified in place.
    name : str
        A cast name (see :func:`photo`).
    height : float
        Face height in pixels.
    centre : tuple of float
        Where the face's centre goes, pixels.

    Returns
    -------
    np.ndarray, shape (4,), float64
        The pasted face's box (may reach outside the canvas).
    """
    image, (fx, fy, fw, fh) = photo(name)
    scale = height / fh
    cx, cy = fx + fw / 2, fy + fh / 2
    half = 0.9 * max(fw, fh)
    side = int(round(2 * half * scale))
    # The region around the face centre, scaled, as a side x side patch.
    matrix = np.array([[scale, 0.0, side / 2 - scale * cx], [0.0, scale, side / 2 - scale * cy]])
    flags = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    patch = cv2.warpAffine(image, matrix, (side, side), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    ox, oy = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    h, w = canvas.shape[:2]
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + side, w), min(oy + side, h)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = patch[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return np.array([centre[0] - fw * scale / 2, centre[1] - height / 2, fw * scale, height])


@functools.cache
def _backdrop(height: int, width: int) -> np.ndarray:
    from skimage import data

    coffee = data.coffee()
    reps = (-(-height // coffee.shape[0]), -(-width // coffee.shape[1]), 1)
    return np.ascontiguousarray(np.tile(coffee, reps)[:height, :width])


def background(height: int = 360, width: int = 640) -> np.ndarray:
    """A textured, face-free backdrop (a new array each call)."""
    return _backdrop(height, width).copy()


# A face's place in frame i: (height px, centre (x, y)), or None when it is not drawn.
Path = Callable[[int], "tuple[float, tuple[float, float]] | None"]


@dataclass
class FaceClip:
    """Frames and the truth of a made clip.

    frames: (H, W, 3) uint8 RGB each.
    cast: the cast name of each true face.
    boxes: per frame, per true face, its box or None when not drawn.
    visible: per frame, per true face, whether it can be seen: at least 60 % of it
        inside the frame and at most 50 % covered by faces drawn after it.
    """

    frames: list[np.ndarray]
    cast: tuple[str, ...]
    boxes: list[list[np.ndarray | None]]
    visible: list[list[bool]]

    def seen(self, frame: int) -> list[tuple[int, np.ndarray]]:
        """``(true face, box)`` of the faces visible in ``frame``."""
        return [(k, box) for k, box in enumerate(self.boxes[frame]) if box is not None and self.visible[frame][k]]

    def screen_time(self) -> np.ndarray:
        """Per true face, the sum over the frames it is visible of its height over the
        frame height: the rule that picks the primary face."""
        total = np.zeros(len(self.cast))
        for i, frame in enumerate(self.frames):
            for k, box in self.seen(i):
                total[k] += box[3] / frame.shape[0]
        return total


def make_clip(cast: tuple[str, ...], paths: list[Path], frames: int, size: tuple[int, int] = (360, 640)) -> FaceClip:
    """Draw ``cast[k]`` along ``paths[k]`` on the backdrop, later faces over earlier
    ones, for ``frames`` frames of ``size`` (height, width)."""
    h, w = size
    clip = FaceClip([], cast, [], [])
    for i in range(frames):
        canvas = background(h, w)
        boxes: list[np.ndarray | None] = []
        pasted: list[np.ndarray | None] = []  # the squares each face covers
        for name, path in zip(cast, paths, strict=True):
            place = path(i)
            if place is None:
                boxes.append(None)
                pasted.append(None)
                continue
            height, centre = place
            box = place_face(canvas, name, height, centre)
            side = 1.8 * max(box[2], box[3])
            boxes.append(box)
            pasted.append(np.array([centre[0] - side / 2, centre[1] - side / 2, side, side]))
        clip.frames.append(canvas)
        clip.boxes.append(boxes)
        clip.visible.append([_visible(b, pasted[k + 1 :], w, h) for k, b in enumerate(boxes)])
    return clip


def _visible(box: np.ndarray | None, later: list[np.ndarray | None], width: int, height: int) -> bool:
    if box is None:
        return False
    x, y, w, h = box
    inside = max(0.0, min(x + w, width) - max(x, 0)) * max(0.0, min(y + h, height) - max(y, 0)) / (w * h)
    covered = 0.0
    for other in later:
        if other is not None:
            iw = min(x + w, other[0] + other[2]) - max(x, other[0])
            ih = min(y + h, other[1] + other[3]) - max(y, other[1])
            covered = max(covered, max(0.0, iw) * max(0.0, ih) / (w * h))
    return bool(inside >= 0.6 and covered <= 0.5)


CROSSING_CAST = ("astronaut", "hopper", "astronaut-mirror")
CROSSING_FRAMES = 150
EXIT_FRAMES = (50, 70)  # face C is out of the frame for these frames (20)


def crossing_clip(cast: tuple[str, str, str] = CROSSING_CAST, frames: int = CROSSING_FRAMES) -> FaceClip:
    """Three faces in a 640x360 clip (25 fps) that move and cross:

    * A (110 px high) walks left to right with a slight bob;
    * B (95 px) walks right to left and passes in front of A (A is mostly hidden
      around frames 60-80);
    * C (85 px) drifts right and leaves through the right edge for frames 50-69
      (20 frames), comes back and crosses B's path on its way down-left.

    The default cast is the astronaut, Grace Hopper and the astronaut mirrored; B is
    the face with the most screen time weighted by size (the primary face).
    """

    def a(i: int) -> tuple[float, tuple[float, float]]:
        return 110, (90 + 3.2 * i, 150 + 8 * np.sin(i / 9))

    def b(i: int) -> tuple[float, tuple[float, float]]:
        return 95, (560 - 3.0 * i, 175)

    def c(i: int) -> tuple[float, tuple[float, float]] | None:
        if i < EXIT_FRAMES[0]:
            return 85, (420 + 5.5 * i, 80 + 0.4 * i)
        if i < EXIT_FRAMES[1]:
            return None
        k = i - EXIT_FRAMES[1]
        return 85, (700 - 5.0 * k, 100 + 2.2 * k)

    return make_clip(cast, [a, b, c], frames)
