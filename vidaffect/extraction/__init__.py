"""The extract engine: one decoding pass per video through every stage still to run,
into the video's store (:mod:`.engine`), worker processes (:mod:`.pool`) and the
per-video results (:mod:`.summary`)."""
