"""The commands, as functions a Python user can call: :func:`.extract.extract`,
:func:`.train.train`, :func:`.predict.predict`, :func:`.evaluate.evaluate`,
:func:`.plot.plot`, and :mod:`.info` (descriptions of stores, checkpoints and recipes).
Each is a thin layer over :mod:`vidaffect.io`, :mod:`vidaffect.stages`,
:mod:`vidaffect.extraction` and :mod:`vidaffect.learn`; ``vidaffect.cli`` is a thinner
one over these."""
