"""The networks: per-frame layers that bring the modalities together, then a temporal
head (:mod:`vidaffect.learn.heads`) over the window, then tanh so that valence and
arousal lie in [-1, 1] like the annotations.

===================  ===========================================  ======================================  ============
net                  inputs per frame (default stage parameters)  per-frame layers                        default head
===================  ===========================================  ======================================  ============
full                 embed 2048, landmarks 140, pose 36, mel 128  [embed+landmarks]->1024 "landmark",     lstm
                                                                  [1024+pose]->512 "pose",
                                                                  [512+mel]->256 "mel"
without-mel          embed, landmarks, pose                       "landmark", "pose"                      lstm
audio                mel                                          [mel]->256 "mel"                        lstm
pose                 pose                                         [pose]->256 "pose"                      lstm
mesh-transformer     mesh 1434, face_box 4                        none: the head's input projection       transformer
evm-transformer      evm 2048                                     none                                    transformer
feature-transformer  embed 2048                                   none                                    transformer
multi-transformer    mesh, face_box, evm, embed (+ pose, mel      none: all concatenated into the         transformer
                     when every training store has them)          head's input projection
===================  ===========================================  ======================================  ============

"mel" above is the audio input: ``--audio-features`` (:data:`AUDIO_FEATURES`) makes it
openSMILE's eGeMAPS low-level descriptors (25 per frame, stage ``egemaps``) or both
concatenated, in the same layer.

Every modality comes with its validity flags (1 per frame, 18 for pose), appended to
its values (:func:`vidaffect.learn.dataset.model_inputs`).

The four fusion networks follow the thesis (§3.2.2): every fully connected layer is
followed by BatchNorm1d and dropout (0.5), applied per frame over (B*S, D).  The thesis
writes the layers as ``sigma(W y + b)`` without naming sigma; ReLU is used (without a
non-linearity the stack would collapse into one linear map).  The BatchNorm is masked:
in a padded window its batch statistics, and the running statistics it keeps, come from
the real frames only.  The transformer networks (§3.2.3, whose figure of the
architecture is missing from the text) are a linear projection of the per-frame inputs,
a transformer encoder over time and a linear layer to (valence, arousal); with another
head the head's own input layer is the projection.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from vidaffect.errors import ParameterError
from vidaffect.learn.heads import Sizes, head_spec
from vidaffect.learn.modalities import DIMS, VALIDITY_DIMS


@dataclass(frozen=True)
class NetSpec:
    """layers: the fusion stack, in order: (layer name, modalities concatenated to the
        previous layer's output, output size); the first layer's input is only its
        modalities.  Empty: the head reads ``inputs`` concatenated.
    inputs: modalities every store must have (besides those of ``layers``).
    optional: modalities read when every training store has them.
    head: the default temporal head."""

    layers: tuple[tuple[str, tuple[str, ...], int], ...] = ()
    inputs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    head: str = "lstm"

    def required(self) -> list[str]:
        return [m for _, mods, _ in self.layers for m in mods] + list(self.inputs)

    def with_audio(self, audio: str) -> NetSpec:
        """The network reading ``audio`` (a name of :data:`AUDIO_FEATURES`) where it reads ``mel``."""
        try:
            chosen = AUDIO_FEATURES[audio]
        except KeyError:
            raise ParameterError(f"unknown audio features {audio!r}; choose one of: {', '.join(AUDIO_FEATURES)}") from None

        def swap(mods: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(x for m in mods for x in (chosen if m == "mel" else (m,)))

        return replace(self, layers=tuple((n, swap(mods), d) for n, mods, d in self.layers), inputs=swap(self.inputs), optional=swap(self.optional))


# What a network's audio input (``mel`` in NETWORKS) reads: ``vidaffect train --audio-features``.
# Both: the two are concatenated into the same layer.
AUDIO_FEATURES: dict[str, tuple[str, ...]] = {"mel": ("mel",), "egemaps": ("egemaps",), "both": ("mel", "egemaps")}


NETWORKS: dict[str, NetSpec] = {
    "full": NetSpec(layers=(("landmark", ("embed", "landmarks"), 1024), ("pose", ("pose",), 512), ("mel", ("mel",), 256))),
    "without-mel": NetSpec(layers=(("landmark", ("embed", "landmarks"), 1024), ("pose", ("pose",), 512))),
    "audio": NetSpec(layers=(("mel", ("mel",), 256),)),
    "pose": NetSpec(layers=(("pose", ("pose",), 256),)),
    "mesh-transformer": NetSpec(inputs=("mesh", "face_box"), head="transformer"),
    "evm-transformer": NetSpec(inputs=("evm",), head="transformer"),
    "feature-transformer": NetSpec(inputs=("embed",), head="transformer"),
    "multi-transformer": NetSpec(inputs=("mesh", "face_box", "evm", "embed"), optional=("pose", "mel"), head="transformer"),
}


def net_spec(net: str, audio: str = "mel") -> NetSpec:
    """The network ``net`` with ``audio`` features (:data:`AUDIO_FEATURES`) as its audio input."""
    try:
        spec = NETWORKS[net]
    except KeyError:
        raise ParameterError(f"unknown network {net!r}; choose one of: {', '.join(NETWORKS)}") from None
    return spec.with_audio(audio)


def net_modalities(net: str, audio: str = "mel") -> list[str]:
    """Modalities a network can read, in the order its layers take them in (the
    optional ones last)."""
    spec = net_spec(net, audio)
    return spec.required() + list(spec.optional)


def audio_of(modalities: Iterable[str]) -> str:
    """The :data:`AUDIO_FEATURES` choice whose modalities are those among ``modalities``
    ("mel" when there are none)."""
    present = tuple(m for m in AUDIO_FEATURES["both"] if m in set(modalities))
    return next((name for name, mods in AUDIO_FEATURES.items() if mods == present), "mel")


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over the rows ``frames`` marks: in training, the batch statistics
    and the running statistics come from those rows only (other rows come out 0);
    in evaluation every row is normalised with the running statistics."""

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:  # x (N, C), frames (N,)
        if frames is None or not self.training or bool(frames.all()):
            return super().forward(x)
        rows = frames.nonzero().squeeze(1)
        if len(rows) > 1:
            normed = super().forward(x[rows])
        else:  # one real row has no batch variance: use the running statistics, keep them
            normed = F.batch_norm(x[rows], self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return x.new_zeros(x.shape).index_put((rows,), normed)


class FusionLayer(nn.Module):
    """Linear -> masked BatchNorm1d -> ReLU -> Dropout, applied to every frame."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = MaskedBatchNorm1d(out_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:  # x (B*S, in_dim)
        return self.drop(torch.relu(self.norm(self.linear(x), frames)))


class AffectNet(nn.Module):
    """One of :data:`NETWORKS` with one of the heads, mapping per-frame features to
    (valence, arousal).

    Parameters
    ----------
    net : str
        A name of :data:`NETWORKS`.
    head : str
        A name of :data:`vidaffect.learn.heads.HEADS`.
    sizes : Sizes
        The recipe's ``model:`` section (:func:`vidaffect.learn.hyper.resolve_sizes`).
    dims : dict[str, int] or None, default None
        Values per frame of each modality the network reads (its optional modalities
        only when present here; ``egemaps`` here makes it the audio input, with ``mel``
        too both, see :data:`AUDIO_FEATURES`); None = every modality of the net, mel
        audio, with the stages' default parameters (:data:`vidaffect.learn.modalities.DIMS`).
    validity : dict[str, int] or None, default None
        Validity flags per frame of each modality (0: none, as in checkpoints made
        before validity inputs existed); None = :data:`~vidaffect.learn.modalities.VALIDITY_DIMS`.

    Notes
    -----
    ``forward(inputs, frames=None) -> pred``: ``inputs`` maps each modality of
    :attr:`modalities` to a float tensor (B, S, dims + validity), made by
    :func:`vidaffect.learn.dataset.model_inputs`; ``frames`` (B, S) bool marks the real
    frames of padded windows (None: no padding); ``pred`` is (B, S, 2) in [-1, 1].
    Each window is run from a fresh state (:mod:`vidaffect.learn.windows`).
    """

    def __init__(
        self, net: str, head: str, sizes: Sizes, dims: dict[str, int] | None = None, validity: dict[str, int] | None = None
    ) -> None:
        super().__init__()
        audio = audio_of(dims or ())  # the audio features the inputs include
        spec = net_spec(net, audio)
        self.net, self.head_name, self.sizes = net, head, sizes
        self.causal = head_spec(head).causal
        dims = dims if dims is not None else {m: DIMS[m] for m in net_modalities(net)}
        self.modalities = [m for m in net_modalities(net, audio) if m in dims]
        lacking = [m for m in spec.required() if m not in dims]
        if lacking:
            raise ParameterError(f"the {net} network needs {', '.join(lacking)} inputs")
        self.dims = {m: int(dims[m]) for m in self.modalities}
        validity = validity if validity is not None else VALIDITY_DIMS
        self.validity = {m: int(validity.get(m, 0)) for m in self.modalities}
        width_of = {m: self.dims[m] + self.validity[m] for m in self.modalities}
        self.layer_inputs: list[tuple[str, ...]] = []
        layers = {}
        width = 0
        for name, mods, out_dim in spec.layers:
            layers[name] = FusionLayer(width + sum(width_of[m] for m in mods), out_dim, sizes.dropout)
            self.layer_inputs.append(mods)
            width = out_dim
        self.layers = nn.ModuleDict(layers)
        self.direct = [m for m in self.modalities if m not in {m for mods in self.layer_inputs for m in mods}]
        self.head = head_spec(head).make(width + sum(width_of[m] for m in self.direct), sizes)

    def forward(self, inputs: dict[str, torch.Tensor], frames: torch.Tensor | None = None) -> torch.Tensor:
        first = inputs[self.modalities[0]]
        b, s = first.shape[:2]
        rows = None if frames is None else frames.reshape(b * s)
        x = first.new_zeros((b * s, 0))
        for layer, mods in zip(self.layers.values(), self.layer_inputs, strict=True):
            x = layer(torch.cat([x, *(inputs[m].reshape(b * s, -1) for m in mods)], dim=1), rows)
        x = torch.cat([x.reshape(b, s, -1), *(inputs[m] for m in self.direct)], dim=2)
        return torch.tanh(self.head(x, frames))
