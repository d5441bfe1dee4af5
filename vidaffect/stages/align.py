"""One row per video frame from audio analysis frames that arrive as the audio streams.

The audio stages (``mel``, ``egemaps``) analyse the sound in frames of their own
(every 512 samples, every 10 ms); a video frame t spans [timestamp_t, timestamp_{t+1})
(the last one: one nominal frame interval).  Row t is the mean of the analysis frames
whose centres fall in that span; when none does (video faster than the analysis hop)
the analysis frame nearest the span's middle is used.  Spans that do not overlap the
audio are invalid.  Rows come out as soon as the audio has passed their span, and
analysis frames are dropped once no span can use them, so memory stays flat.
"""

from __future__ import annotations

import numpy as np

SILENCE_PEAK = 2.0**-15  # one 16-bit step: a track whose samples all stay below it is silent


def level_attrs(peak: float) -> dict[str, float | str]:
    """Store attributes for an audio track whose largest sample magnitude was ``peak``
    (full scale 1.0): ``peak_dbfs``, and a ``note`` saying ``silent`` when every sample
    stayed below :data:`SILENCE_PEAK` (-90 dBFS), so "no sound was recorded" can be
    told from "quiet audio".  A silent track's rows stay valid: it is audio."""
    dbfs = 20 * float(np.log10(peak)) if peak > 0 else -np.inf
    attrs: dict[str, float | str] = {"peak_dbfs": dbfs}
    if peak < SILENCE_PEAK:
        level = "digital silence, every sample is 0" if peak == 0 else f"peak {dbfs:.1f} dBFS"
        attrs["note"] = f"silent: the audio track stays below -90 dBFS ({level})"
    return attrs


class FrameAligner:
    """Averages analysis frames over video-frame spans (see the module docs).

    Parameters
    ----------
    width : int
        Values per analysis frame.
    frame_interval : float
        Seconds; the span of the last video frame.
    offsets : np.ndarray or None, default None
        (width,) seconds from an analysis frame's time to the centre of each column
        (columns measured over windows of different lengths have different centres);
        None: the times are the centres.
    """

    def __init__(self, width: int, frame_interval: float, offsets: np.ndarray | None = None) -> None:
        self.width = width
        self.frame_interval = frame_interval
        self.offsets = np.zeros(width) if offsets is None else np.asarray(offsets, np.float64)
        self.groups = [(float(o), np.flatnonzero(self.offsets == o)) for o in np.unique(self.offsets)]
        self.times = np.empty(0)
        self.values = np.empty((0, width), np.float32)
        self.counted = np.empty((0, width), bool)
        self.pending: list[float] = []  # timestamps of video frames without a row yet
        self.audio_start: float | None = None  # seconds, set by the first analysis frame's owner
        self.audio_end = np.inf  # seconds, known once the audio has ended

    def add(self, times: np.ndarray, values: np.ndarray, counted: np.ndarray | None = None) -> None:
        """Analysis frames at ``times`` (seconds, increasing) with ``values`` (k, width);
        ``counted`` (k, width) bool leaves values out of the means (e.g. unvoiced F0)."""
        if len(times):
            self.times = np.concatenate([self.times, times])
            self.values = np.concatenate([self.values, values.astype(np.float32, copy=False)])
            mask = np.ones(values.shape, bool) if counted is None else counted
            self.counted = np.concatenate([self.counted, mask])

    def rows(self, timestamps: np.ndarray | list[float], final: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Queue video frames at ``timestamps`` and return (means (n, width) float32,
        valid (n,) bool) for the queued frames whose spans the audio has passed, in
        order; with ``final`` (the audio has ended) for every queued frame.  A column
        with no counted value in a span is NaN."""
        self.pending.extend(float(t) for t in timestamps)
        out, valid = [], []
        reached = self.times[-1] + self.offsets.min() if len(self.times) else -np.inf
        for i, start in enumerate(self.pending):
            if i + 1 < len(self.pending):
                end = self.pending[i + 1]
            elif final:
                end = start + self.frame_interval
            else:
                break
            if not final and reached < end:
                break  # the audio has not reached the end of this span yet
            row, ok = self._row(start, end)
            out.append(row)
            valid.append(ok)
        done = len(out)
        self.pending = self.pending[done:]
        if done and len(self.times):
            # Keep, for every column, one analysis frame before the next span (nearest fallback).
            t_next = self.pending[0] if self.pending else np.inf
            keep = max(int(np.searchsorted(self.times + self.offsets.max(), t_next)) - 1, 0)
            self.times, self.values, self.counted = self.times[keep:], self.values[keep:], self.counted[keep:]
        return np.array(out, np.float32).reshape(-1, self.width), np.array(valid, bool)

    def _row(self, start: float, end: float) -> tuple[np.ndarray, bool]:
        row = np.full(self.width, np.nan, np.float32)
        if not len(self.times) or self.audio_start is None or end <= self.audio_start or start >= self.audio_end:
            return row, False
        for offset, cols in self.groups:
            centres = self.times + offset
            lo, hi = np.searchsorted(centres, [start, end])
            if hi <= lo:
                lo = int(np.argmin(np.abs(centres - 0.5 * (start + end))))
                hi = lo + 1
            values, counted = self.values[lo:hi, cols], self.counted[lo:hi, cols]
            n = counted.sum(axis=0)
            with np.errstate(invalid="ignore"):
                row[cols] = np.where(counted, values, 0.0).sum(axis=0) / np.where(n > 0, n, np.nan)
        return row, True
