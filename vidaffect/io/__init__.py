"""Files in and out: video decoding and encoding, the per-video HDF5 feature stores,
annotation files, prediction files and recipes."""
