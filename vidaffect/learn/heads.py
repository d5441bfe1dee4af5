"""The temporal heads: what runs over a window's per-frame features and gives
(valence, arousal) per frame.  Any network takes any head (``vidaffect train --head``).

==============  ========  =====================================================
head            causal    layers (sizes: the recipe's ``model:`` section)
==============  ========  =====================================================
lstm            yes       LSTM(rnn_hidden), Linear -> 2 (thesis §3.2.2)
gru             yes       GRU(rnn_hidden), Linear -> 2
gru-attention   yes       GRU(rnn_hidden, attention_layers layers); each frame's
                          output attends over the outputs of the last
                          attention_frames frames (itself included); Linear of
                          [output, attended] -> 2 (the Aff-Wild seed)
transformer     no        Linear -> transformer_width, LayerNorm, + sinusoidal
                          position, transformer encoder (transformer_layers
                          pre-norm layers, transformer_heads heads, feed-forward
                          transformer_ff, dropout transformer_dropout) over the
                          whole window, LayerNorm, Linear -> 2 (thesis §3.2.3)
==============  ========  =====================================================

A head's ``forward(x, frames=None)`` takes x (B, S, W) and ``frames`` (B, S) bool, the
real frames of a padded window (None: all real), and returns (B, S, 2) before the
network's tanh.  Padding never reaches a real frame's output: the causal heads only
look back and padding only ever trails, and the transformer masks padded keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

from vidaffect.errors import ParameterError


@dataclass
class Sizes:
    """Network sizes; every default lives in the recipe's ``model:`` section
    (``pipelines/thesis.yaml``), which also says why."""

    dropout: float  # after every fully connected layer of the fusion stack
    rnn_hidden: int  # units per layer of lstm, gru and gru-attention
    attention_layers: int  # GRU layers of gru-attention
    attention_frames: int  # frames each gru-attention output attends over
    transformer_width: int
    transformer_layers: int
    transformer_heads: int
    transformer_ff: int  # feed-forward width inside each transformer layer
    transformer_dropout: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            convert = float if str(f.type) == "float" else int
            try:
                setattr(self, f.name, convert(value))
            except (TypeError, ValueError):
                raise ParameterError(f"model size {f.name}: expected {f.type}, got {value!r}") from None
            if convert is float and not 0 <= getattr(self, f.name) < 1:
                raise ParameterError(f"model size {f.name} must be in [0, 1), got {value}")
            if convert is int and getattr(self, f.name) < 1:
                raise ParameterError(f"model size {f.name} must be at least 1, got {value}")
        if self.transformer_width % self.transformer_heads:
            raise ParameterError(
                f"transformer_width {self.transformer_width} must be a multiple of transformer_heads {self.transformer_heads}"
            )


class RecurrentHead(nn.Module):
    """One LSTM or GRU layer, then a linear layer to (valence, arousal)."""

    def __init__(self, rnn: type[nn.LSTM] | type[nn.GRU], in_dim: int, sizes: Sizes) -> None:
        super().__init__()
        self.rnn = rnn(in_dim, sizes.rnn_hidden, batch_first=True)
        self.out = nn.Linear(sizes.rnn_hidden, 2)

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.rnn(x)[0])


class GruAttentionHead(nn.Module):
    """A stacked GRU whose output at frame t attends (scaled dot product, one head) over
    its outputs at frames t - N + 1 .. t of the window, N = ``attention_frames``."""

    def __init__(self, in_dim: int, sizes: Sizes) -> None:
        super().__init__()
        hidden = sizes.rnn_hidden
        self.frames = sizes.attention_frames
        self.rnn = nn.GRU(in_dim, hidden, num_layers=sizes.attention_layers, batch_first=True)
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(2 * hidden, 2)

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        h = self.rnn(x)[0]
        s = h.shape[1]
        t = torch.arange(s, device=h.device)
        lag = t[:, None] - t[None, :]
        allowed = (lag >= 0) & (lag < self.frames)  # (S, S): the last N frames, itself included
        attended = F.scaled_dot_product_attention(self.query(h), self.key(h), self.value(h), attn_mask=allowed)
        return self.out(torch.cat([h, attended], dim=-1))


def positions(length: int, width: int, device: torch.device) -> torch.Tensor:
    """(length, width) sinusoidal position code of Vaswani et al. (2017)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    code = torch.zeros(length, width, device=device)
    code[:, 0::2] = torch.sin(pos * freq)
    code[:, 1::2] = torch.cos(pos * freq[: width // 2])
    return code


class TransformerHead(nn.Module):
    """A transformer encoder over the window (every frame attends to every real frame).

    The projected input is layer-normalised before the position code is added, so
    content and position start at the same scale whatever the input's size; the
    layers are pre-norm, which trains without a learning-rate warm-up."""

    def __init__(self, in_dim: int, sizes: Sizes) -> None:
        super().__init__()
        width = sizes.transformer_width
        self.project = nn.Linear(in_dim, width)
        self.norm_in = nn.LayerNorm(width)
        self.drop = nn.Dropout(sizes.transformer_dropout)
        layer = nn.TransformerEncoderLayer(
            width, sizes.transformer_heads, sizes.transformer_ff, sizes.transformer_dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, sizes.transformer_layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(width)
        self.out = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm_in(self.project(x))
        h = self.drop(h + positions(h.shape[1], h.shape[2], h.device))
        padding = None if frames is None else ~frames
        return self.out(self.norm_out(self.encoder(h, src_key_padding_mask=padding)))


@dataclass(frozen=True)
class HeadSpec:
    make: Callable[[int, Sizes], nn.Module]
    causal: bool  # a frame's output depends only on it and earlier frames
    sizes: tuple[str, ...]  # the fields of Sizes it uses


TRANSFORMER_SIZES = ("transformer_width", "transformer_layers", "transformer_heads", "transformer_ff", "transformer_dropout")
HEADS: dict[str, HeadSpec] = {
    "lstm": HeadSpec(lambda d, s: RecurrentHead(nn.LSTM, d, s), True, ("rnn_hidden",)),
    "gru": HeadSpec(lambda d, s: RecurrentHead(nn.GRU, d, s), True, ("rnn_hidden",)),
    "gru-attention": HeadSpec(GruAttentionHead, True, ("rnn_hidden", "attention_layers", "attention_frames")),
    "transformer": HeadSpec(TransformerHead, False, TRANSFORMER_SIZES),
}


def head_spec(name: str) -> HeadSpec:
    try:
        return HEADS[name]
    except KeyError:
        raise ParameterError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}") from None
