"""`vidaffect bench`: throughput and memory of decoding, every stage, extraction,
training and prediction on this machine, on media it makes itself (:mod:`.media`),
against the project's targets (:mod:`.targets`).  :func:`.run.bench` is the entry
point; the measurements live in :mod:`.stages`, :mod:`.pipeline` and :mod:`.memory`."""
