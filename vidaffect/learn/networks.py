"""The four fusion networks of the thesis (§3.2.2): per-frame fully connected layers
that take in one modality after another, an LSTM over the sequence, and a linear
classifier to (valence, arousal).

=============  ======================================  ===================================
net            inputs per frame                        layers
=============  ======================================  ===================================
full           embed 2048, landmarks 140, pose 36,     [embed+landmarks]->1024 "landmark",
               mel 128                                 [1024+pose]->512 "pose",
                                                       [512+mel]->256 "mel", LSTM(256), ->2
without-mel    embed, landmarks, pose                  "landmark", "pose", LSTM(256), ->2
audio          mel                                     [mel]->256 "mel", LSTM(256), ->2
pose           pose                                    [pose]->256 "pose", LSTM(256), ->2
=============  ======================================  ===================================

Every fully connected layer of the fusion stack is followed by BatchNorm1d and dropout
0.5 (thesis §3.2.2, §4.2), applied per frame over (B*S, D).  The thesis writes the
layers as ``sigma(W y + b)`` without naming sigma; ReLU is used (without a
non-linearity the stack would collapse into one linear map).  The classifier's two
outputs go through tanh so predictions lie in [-1, 1] like the annotations.
"""

from __future__ import annotations

import torch
from torch import nn

from vidaffect.errors import ParameterError
from vidaffect.learn.modalities import DIMS

# net -> fusion layers, in order: (layer name, modalities concatenated to the previous
# layer's output, output size).  The first layer's input is only its modalities.
NETWORKS: dict[str, list[tuple[str, tuple[str, ...], int]]] = {
    "full": [("landmark", ("embed", "landmarks"), 1024), ("pose", ("pose",), 512), ("mel", ("mel",), 256)],
    "without-mel": [("landmark", ("embed", "landmarks"), 1024), ("pose", ("pose",), 512)],
    "audio": [("mel", ("mel",), 256)],
    "pose": [("pose", ("pose",), 256)],
}
LSTM_HIDDEN = 256
DROPOUT = 0.5


def net_modalities(net: str) -> list[str]:
    """Modalities a network reads, in the order its layers take them in."""
    try:
        layers = NETWORKS[net]
    except KeyError:
        raise ParameterError(f"unknown network {net!r}; choose one of: {', '.join(NETWORKS)}") from None
    return [m for _, mods, _ in layers for m in mods]


class FusionLayer(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Dropout(0.5), applied to every frame."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.BatchNorm1d(out_dim)
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B*S, in_dim)
        return self.drop(torch.relu(self.norm(self.linear(x))))


class AffectNet(nn.Module):
    """One of :data:`NETWORKS`, mapping per-frame features to (valence, arousal).

    Parameters
    ----------
    net : str
        ``"full"``, ``"without-mel"``, ``"audio"`` or ``"pose"``.
    dims : dict[str, int] or None, default None
        Per-frame size of each modality; None = the sizes with the stages' default
        parameters (:data:`vidaffect.learn.modalities.DIMS`).

    Notes
    -----
    ``forward(inputs, state=None) -> (pred, state)``: ``inputs`` maps each modality of
    :attr:`modalities` to a float tensor (B, S, D), normalised to [0, 1] with missing
    values set to 0 (see ``LoadedModel.prepare``); ``pred`` is (B, S, 2) (valence,
    arousal) in [-1, 1]; ``state`` is the LSTM's ``(h, c)``, each (1, B, 256), so a long
    video can be run window by window, handing each window's state to the next.
    """

    def __init__(self, net: str, dims: dict[str, int] | None = None) -> None:
        super().__init__()
        self.net = net
        self.modalities = net_modalities(net)
        self.dims = {m: int((dims or DIMS)[m]) for m in self.modalities}
        self.layer_inputs: list[tuple[str, ...]] = []
        layers = {}
        width = 0
        for name, mods, out_dim in NETWORKS[net]:
            layers[name] = FusionLayer(width + sum(self.dims[m] for m in mods), out_dim)
            self.layer_inputs.append(mods)
            width = out_dim
        self.layers = nn.ModuleDict(layers)
        self.lstm = nn.LSTM(width, LSTM_HIDDEN, batch_first=True)
        self.classifier = nn.Linear(LSTM_HIDDEN, 2)

    def forward(
        self, inputs: dict[str, torch.Tensor], state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        first = inputs[self.modalities[0]]
        b, s = first.shape[:2]
        x = first.new_zeros((b * s, 0))
        for layer, mods in zip(self.layers.values(), self.layer_inputs, strict=True):
            x = layer(torch.cat([x, *(inputs[m].reshape(b * s, -1) for m in mods)], dim=1))
        out, state = self.lstm(x.reshape(b, s, -1), state)
        return torch.tanh(self.classifier(out)), state
