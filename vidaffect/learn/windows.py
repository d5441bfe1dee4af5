"""How a network sees a video: the one definition of its windows, used by training,
validation and ``vidaffect predict`` alike.

* A video is cut into windows of ``seq_len`` frames (the run's ``--seq-len``), each run
  through the network from a fresh state: nothing is carried from one window to the
  next, so the network sees at prediction time exactly what it was trained on.
* Windows start every ``hop`` = ``seq_len // 2`` frames (they overlap by half); the last
  one is aligned to end at the video's last frame, so every window is full length when
  the video has at least ``seq_len`` frames.  A shorter video is one window of its own
  length (padded to ``seq_len`` in a training batch, never at prediction time).
* A frame's prediction is the weighted mean of the outputs of the windows covering
  it (:func:`blend_weights`), with weights that favour positions with more context
  and fall towards zero at both ends of a window, so the blend has no seams.  A frame
  covered by one window (the first ``hop`` frames) takes that window's output.
"""

from __future__ import annotations

import numpy as np

CAUSAL_PEAK = 0.75  # where a causal head's blend weight peaks, as a fraction of the window


def hop_for(seq_len: int) -> int:
    """Frames between window starts: half a window (at least 1)."""
    return max(1, seq_len // 2)


def window_starts(frames: int, seq_len: int, hop: int) -> list[int]:
    """First frame of every window of a video of ``frames`` frames, in order.

    Windows start at 0, hop, 2 hop, ... and the last one starts at ``frames -
    seq_len`` so that it ends at the last frame; a video of at most ``seq_len`` frames
    is one window starting at 0.
    """
    if frames <= seq_len:
        return [0]
    starts = list(range(0, frames - seq_len, hop))
    starts.append(frames - seq_len)
    return starts


def blend_weights(length: int, causal: bool) -> np.ndarray:
    """(length,) float64 weight of each position of a window in the blend, all > 0.

    Causal heads (lstm, gru, gru-attention) have seen k + 1 frames at position k, so
    their weight rises linearly over the first :data:`CAUSAL_PEAK` of the window, then
    falls over the rest; it must fall before the window's end, because a weight that is
    still high at the last position would make the blend jump where the window stops.
    Non-causal heads (transformer) see the whole window and are surest in its middle:
    a Hann bump, sin^2(pi (k + 1/2) / length), whose windows at half overlap sum to
    exactly 1.  Positions are taken at their centres (k + 1/2), so no weight is 0.
    """
    k = np.arange(length) + 0.5
    if causal:
        peak = CAUSAL_PEAK * length
        return np.minimum(k / peak, (length - k) / (length - peak))
    return np.sin(np.pi * k / length) ** 2
