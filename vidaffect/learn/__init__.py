"""Learning from the stores: the model inputs (:mod:`.modalities`), normalisation and
training windows (:mod:`.dataset`), the networks, losses and metrics, checkpoints, the
run folder, the training loop and the one way a video goes through a network
(:mod:`.inference`)."""
