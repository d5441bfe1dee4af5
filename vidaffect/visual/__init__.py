"""Visual output: what the stages found drawn on video frames (:mod:`.overlay`) and
per-frame predictions as a strip under them (:mod:`.affect_panel`), for
``vidaffect render``."""
