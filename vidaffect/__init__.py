"""vidaffect: continuous emotion recognition (valence, arousal) from video.

    vidaffect extract ./videos                      # cached HDF5 feature stores
    vidaffect train --net full --loss noninertial   # fusion network with an LSTM head
    vidaffect predict ./videos --out results.csv    # per-frame valence/arousal
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__version__ = "0.1.0"


def load(path: Any, stages: list[str] | None = None) -> pd.DataFrame:
    """One feature store (``features/<video-id>.h5``) as a pandas DataFrame, one row per
    frame (see :func:`vidaffect.commands.export.load`)."""
    from vidaffect.commands.export import load as load_store

    return load_store(path, stages)


def load_arrays(path: Any, stages: list[str] | None = None) -> dict[str, Any]:
    """One feature store's datasets as numpy arrays keyed "group/dataset" (see
    :func:`vidaffect.commands.export.load_arrays`)."""
    from vidaffect.commands.export import load_arrays as load_store_arrays

    return load_store_arrays(path, stages)
