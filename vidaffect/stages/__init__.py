"""The feature extractors ("stages"): the protocol they follow (:mod:`.base`), their
parameters (:mod:`.params`), the registry (:mod:`.registry`), and one module per stage
with the pure functions it is built from (face and pose landmarks, face crops, the image
encoder, Eulerian magnification, log-Mel, head pose, gaze, eGeMAPS), the importers of
OpenFace and OpenPose output, and the table names of the stages' datasets."""
