"""vidaffect: continuous emotion recognition (valence, arousal) from video.

    vidaffect extract ./videos                      # cached HDF5 feature stores
    vidaffect train --net full --loss noninertial   # fusion network with an LSTM head
    vidaffect predict ./videos --out results.csv    # per-frame valence/arousal
"""

__version__ = "0.1.0"
