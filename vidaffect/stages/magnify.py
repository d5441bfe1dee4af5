"""Eulerian video magnification (Wu et al., SIGGRAPH 2012) of a stream of same-size
frames (the ``evm`` stage runs it on the face crops).

Two linear magnifications are added to each crop:

* colour: the crop is blurred and down-sampled to one Gaussian-pyramid level, each
  pixel of that level is band-passed in time (0.8-3 Hz), multiplied by alpha (5) and
  up-sampled back (reveals blood-flow colour changes);
* motion: every band of a Laplacian pyramid is band-passed in time (0.8-5 Hz) and
  multiplied by alpha (5), attenuated for bands whose representative wavelength is
  short compared with ``lambda_c`` (the paper's bound ``(1 + alpha) delta < lambda / 8``),
  then the pyramid is collapsed (reveals small facial motion such as action units).

Unlike the paper's ideal (FFT) filters, the temporal filters here are causal
Butterworth band-passes run as second-order sections with per-pixel state, so a video
streams through in constant memory.  They are designed for the video's real frame rate
(from the frame timestamps).  A frame without a face ends a segment; the filters
restart in steady state on the next face, so nothing leaks across the gap.
Pixel values are floats in [0, 1]; the result is clipped back to [0, 1].
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import signal

from vidaffect.stages.params import StageParams, param

log = logging.getLogger(__name__)

_NYQUIST_MARGIN = 0.95  # a band edge is kept below this fraction of the Nyquist rate


def bandpass_sos(low: float, high: float, fps: float, order: int) -> np.ndarray | None:
    """Causal Butterworth band-pass as second-order sections.

    Parameters
    ----------
    low, high : float
        Band edges in Hz (-3 dB points).
    fps : float
        Frame rate in Hz.
    order : int
        Butterworth order of each edge (the band-pass has ``2 * order`` poles).

    Returns
    -------
    np.ndarray, shape (order, 6), or None
        The sections (``scipy.signal`` layout).  ``high`` is lowered to just below the
        Nyquist rate when needed; None when the band lies entirely above it (the
        frame rate is too low to see that band).
    """
    nyquist = fps / 2.0
    top = min(high, _NYQUIST_MARGIN * nyquist)
    if not 0 < low < top:
        return None
    if top < high:
        log.info("EVM band %.2f-%.2f Hz cut to %.2f Hz at %.3g fps (Nyquist rate)", low, high, top, fps)
    return signal.butter(order, [low, top], btype="bandpass", fs=fps, output="sos")


class TemporalBandpass:
    """A band-pass applied independently to every element of an array stream.

    Holds only the filter state (two values per section and element), so memory does
    not depend on the stream's length.

    Parameters
    ----------
    sos : np.ndarray, shape (sections, 6)
        Filter from :func:`bandpass_sos`.
    """

    def __init__(self, sos: np.ndarray) -> None:
        self.sos = sos
        self._zi_step = signal.sosfilt_zi(sos)  # steady state for a unit step
        self._state: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the past: the next sample starts a new segment."""
        self._state = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Filter the next samples.

        Parameters
        ----------
        x : np.ndarray, shape (n, ...)
            n consecutive samples (time on axis 0) of any number of elements.

        Returns
        -------
        np.ndarray, shape (n, ...), float32
        """
        if len(x) == 0:
            return x.astype(np.float32)
        if self._state is None:
            # Start as if the first sample had always been there: no step transient.
            self._state = self._zi_step.reshape(*self._zi_step.shape, *([1] * (x.ndim - 1))) * x[0]
        y, self._state = signal.sosfilt(self.sos, x, axis=0, zi=self._state)
        return y.astype(np.float32)


def gaussian_level(image: np.ndarray, level: int) -> np.ndarray:
    """Level ``level`` of the Gaussian pyramid (each level halves the size).

    Parameters
    ----------
    image : np.ndarray, shape (H, W, C), float32
    level : int
        0 returns the image.
    """
    for _ in range(level):
        image = cv2.pyrDown(image)
    return image


def upsample_to(image: np.ndarray, shape: tuple[int, int], levels: int) -> np.ndarray:
    """Undo :func:`gaussian_level` in size: ``levels`` smoothing up-samplings, the
    last one to ``shape`` (H, W)."""
    sizes = [shape]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    for h, w in reversed(sizes):
        image = cv2.pyrUp(image, dstsize=(w, h))
    return image


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Band-pass decomposition: ``levels`` Laplacian bands, finest first, then the
    low-pass residual.  :func:`collapse_laplacian` inverts it exactly.

    Parameters
    ----------
    image : np.ndarray, shape (H, W, C), float32
    levels : int
        Number of band levels (the residual is ``2**levels`` times smaller).
    """
    bands = []
    current = image
    for _ in range(levels):
        down = cv2.pyrDown(current)
        bands.append(current - cv2.pyrUp(down, dstsize=(current.shape[1], current.shape[0])))
        current = down
    bands.append(current)
    return bands


def collapse_laplacian(bands: list[np.ndarray]) -> np.ndarray:
    """Image from :func:`laplacian_pyramid` bands (finest first, residual last)."""
    current = bands[-1]
    for band in reversed(bands[:-1]):
        current = cv2.pyrUp(current, dstsize=(band.shape[1], band.shape[0])) + band
    return current


def motion_alphas(alpha: float, lambda_c: float, shape: tuple[int, int], levels: int, exaggeration: float = 2.0) -> list[float]:
    """Amplification of each Laplacian band (finest first, residual last), per Wu et
    al. 2012 §3.2 and their reference code.

    The coarsest band's representative wavelength is a third of the image diagonal and
    halves with each finer band.  A band of wavelength lambda keeps ``alpha`` while
    ``(1 + alpha) * delta < lambda / 8`` with ``delta = lambda_c / (8 (1 + alpha))``;
    below that its amplification falls linearly (times ``exaggeration``).  The finest
    band (mostly noise) and the residual (overall brightness, not motion) are not
    amplified.

    Parameters
    ----------
    alpha : float
        Amplification (output motion = (1 + alpha) x input motion).
    lambda_c : float
        Cut-off wavelength in pixels below which amplification is attenuated.
    shape : tuple of int
        (H, W) of the image in pixels.
    levels : int
        Laplacian band levels (as in :func:`laplacian_pyramid`).
    exaggeration : float, default 2
        Factor on the attenuated amplification (the reference code's 2).

    Returns
    -------
    list of float, length ``levels + 1``
    """
    delta = lambda_c / 8.0 / (1.0 + alpha)
    wavelength = math.hypot(*shape) / 3.0
    alphas = []
    for index in range(levels, -1, -1):  # coarsest (residual) to finest
        if index in (0, levels):
            alphas.append(0.0)
        else:
            alphas.append(float(np.clip((wavelength / delta / 8.0 - 1.0) * exaggeration, 0.0, alpha)))
        wavelength /= 2.0
    return alphas[::-1]


@dataclass(frozen=True)
class EvmSettings(StageParams):
    """The magnification, in physical units (defaults: thesis §1.2.5).  A
    ``filter_order`` of 3 lets a 10 Hz signal at 25-30 fps through the 0.8-5 Hz band
    at under 3 %; ``color_level`` 4 is 14 x 14 pixels for a 224-pixel crop; the
    residual of ``motion_levels`` 5 on a 224-pixel crop is 7 x 7."""

    stage = "evm"

    color: bool = param(True, "colour magnification on")
    color_low: float = param(0.8, "Hz, lower edge of the colour band", above=0)
    color_high: float = param(3.0, "Hz, upper edge of the colour band", above=0)
    color_alpha: float = param(5.0, "colour amplification: the band comes out (1 + alpha) times larger", low=0)
    color_level: int = param(4, "Gaussian-pyramid level the colour band is taken from", low=0)
    motion: bool = param(True, "motion magnification on")
    motion_low: float = param(0.8, "Hz, lower edge of the motion band", above=0)
    motion_high: float = param(5.0, "Hz, upper edge of the motion band", above=0)
    motion_alpha: float = param(5.0, "motion amplification: motion comes out (1 + alpha) times larger", low=0)
    motion_lambda_c: float = param(16.0, "px, spatial wavelength below which motion amplification is attenuated", above=0)
    motion_levels: int = param(5, "Laplacian band levels", low=1)
    filter_order: int = param(3, "Butterworth order of each band edge", low=1)

    def check(self) -> None:
        for label in ("color", "motion"):
            low, high = getattr(self, f"{label}_low"), getattr(self, f"{label}_high")
            if not low < high:
                self.fail(f"{label}_low", f"must be below {label}_high: the {label} band {low:g}-{high:g} Hz is empty")


class Magnifier:
    """Streaming Eulerian magnification of a fixed-size frame stream.

    Parameters
    ----------
    fps : float
        Frame rate in Hz of the stream.
    shape : tuple of int
        (H, W) of the frames in pixels.
    settings : EvmSettings or None, default None
        Bands and amplifications (defaults: colour 0.8-3 Hz and motion 0.8-5 Hz, both
        alpha 5).

    Attributes
    ----------
    notes : list of str
        Bands that cannot be seen at this frame rate and were switched off.
    """

    def __init__(self, fps: float, shape: tuple[int, int], settings: EvmSettings | None = None) -> None:
        s = settings or EvmSettings()
        self.settings = s
        self.shape = shape
        self.notes: list[str] = []
        self._color = self._filter("colour", s.color, s.color_low, s.color_high, fps, s.filter_order)
        self._motion = self._filter("motion", s.motion, s.motion_low, s.motion_high, fps, s.filter_order)
        alphas = motion_alphas(s.motion_alpha, s.motion_lambda_c, shape, s.motion_levels)
        self._motion_bands = [(i, a) for i, a in enumerate(alphas) if a > 0]

    def _filter(self, label: str, enabled: bool, low: float, high: float, fps: float, order: int) -> TemporalBandpass | None:
        if not enabled:
            return None
        sos = bandpass_sos(low, high, fps, order)
        if sos is None:
            self.notes.append(f"{label} band {low:g}-{high:g} Hz is above the Nyquist rate at {fps:.3g} fps; not magnified")
            log.warning("EVM: %s", self.notes[-1])
            return None
        return TemporalBandpass(sos)

    def reset(self) -> None:
        """Start a new segment (after frames without a face)."""
        for f in (self._color, self._motion):
            if f is not None:
                f.reset()

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Magnify the next frames of the stream.

        Parameters
        ----------
        frames : np.ndarray, shape (n, H, W, 3), float32
            Consecutive frames with values in [0, 1].

        Returns
        -------
        np.ndarray, shape (n, H, W, 3), float32, clipped to [0, 1]
        """
        s = self.settings
        out = frames.astype(np.float32, copy=True)
        if len(frames) == 0:
            return out
        h, w = self.shape
        if self._color is not None:
            low = np.stack([gaussian_level(f, s.color_level) for f in frames])
            band = self._color(low) * np.float32(s.color_alpha)
            for k in range(len(frames)):
                out[k] += upsample_to(band[k], (h, w), s.color_level)
        if self._motion is not None and self._motion_bands:
            pyramids = [laplacian_pyramid(f, s.motion_levels) for f in frames]
            sizes = [pyramids[0][i].size for i, _ in self._motion_bands]
            flat = np.stack([np.concatenate([p[i].ravel() for i, _ in self._motion_bands]) for p in pyramids])
            filtered = self._motion(flat)
            for k, pyramid in enumerate(pyramids):
                parts = np.split(filtered[k], np.cumsum(sizes)[:-1])
                bands = [np.zeros_like(b) for b in pyramid]
                for (i, alpha), part in zip(self._motion_bands, parts, strict=True):
                    bands[i] = part.reshape(pyramid[i].shape) * np.float32(alpha)
                out[k] += collapse_laplacian(bands)
        return np.clip(out, 0.0, 1.0, out=out)


def frame_rate(timestamps: np.ndarray, fallback: float) -> float:
    """Frame rate in Hz from frame timestamps (median spacing), or ``fallback`` (the
    container's average rate) when there are fewer than two distinct timestamps."""
    steps = np.diff(np.asarray(timestamps, np.float64))
    steps = steps[steps > 0]
    if len(steps):
        return float(1.0 / np.median(steps))
    if fallback > 0:
        return float(fallback)
    raise ValueError("cannot tell the frame rate: one frame and no rate in the container")
