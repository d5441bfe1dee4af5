"""Runs of consecutive frames that share a flag (a face seen, a modality present)."""

from __future__ import annotations

import numpy as np


def segments(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges of the runs where ``flags`` is True, in order."""
    edges = np.diff(np.concatenate([[0], np.asarray(flags).astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))
