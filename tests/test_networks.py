"""The networks and heads on made tensors: shapes, padding that never reaches a real
frame, causality, masked BatchNorm, and the window geometry and blend weights that
training, validation and predict share."""

import itertools

import numpy as np
import pytest
import torch

from vidaffect.errors import ParameterError
from vidaffect.learn.heads import HEADS, Sizes
from vidaffect.learn.hyper import resolve_hyper, resolve_sizes
from vidaffect.learn.modalities import DIMS, VALIDITY_DIMS
from vidaffect.learn.networks import NETWORKS, AffectNet, MaskedBatchNorm1d, net_modalities
from vidaffect.learn.windows import blend_weights, hop_for, window_starts

TINY = Sizes(
    dropout=0.5, rnn_hidden=8, attention_layers=2, attention_frames=3, transformer_width=8, transformer_layers=1,
    transformer_heads=2, transformer_ff=16, transformer_dropout=0.1,
)  # fmt: skip
SMALL_DIMS = {"embed": 12, "landmarks": 6, "pose": 4, "mel": 5, "mesh": 9, "face_box": 4, "evm": 7}
SMALL_VALIDITY = {**{m: 1 for m in SMALL_DIMS}, "pose": 2}
PAIRS = list(itertools.product(NETWORKS, HEADS))


pytestmark = pytest.mark.usefixtures("one_thread")


def make(net, head, seed=0):
    torch.manual_seed(seed)
    mods = net_modalities(net)
    return AffectNet(net, head, TINY, {m: SMALL_DIMS[m] for m in mods}, {m: SMALL_VALIDITY[m] for m in mods})


def inputs(model, b, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.rand(b, s, model.dims[m] + model.validity[m], generator=g) for m in model.modalities}


@pytest.mark.parametrize("net, head", PAIRS)
def test_every_net_and_head_gives_bounded_valence_and_arousal(net, head):
    model = make(net, head)
    x = inputs(model, 3, 10)
    for mode in (True, False):
        model.train(mode)
        pred = model(x)
        assert pred.shape == (3, 10, 2) and pred.abs().max() <= 1 and torch.isfinite(pred).all()
    assert model.causal == (head != "transformer")
    assert model({m: t[:, :1] for m, t in x.items()}).shape == (3, 1, 2)  # a one-frame video


@pytest.mark.parametrize("net, head", PAIRS)
def test_padding_never_changes_real_frames(net, head):
    """A window of 7 real frames padded to 12: whatever the padding holds, the real
    frames' outputs are those of the unpadded window, in evaluation and (same dropout
    draws) in training, where BatchNorm's statistics come from the real frames only."""
    model = make(net, head)
    real = inputs(model, 1, 7, seed=1)
    other = inputs(model, 1, 12, seed=2)  # a second, full window in the same batch
    frames = torch.ones(2, 12, dtype=torch.bool)
    frames[0, 7:] = False

    def batch(fill):
        return {m: torch.cat([torch.cat([real[m], torch.full((1, 5, real[m].shape[2]), fill)], dim=1), other[m]]) for m in real}

    model.eval()
    a, b = model(batch(0.0), frames), model(batch(123.0), frames)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    alone = model(real)
    torch.testing.assert_close(a[0, :7], alone[0], rtol=1e-5, atol=1e-6)

    model.train()
    torch.manual_seed(5)
    a = model(batch(0.0), frames)
    torch.manual_seed(5)
    b = model(batch(-7.0), frames)
    torch.testing.assert_close(a[0, :7], b[0, :7], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


def test_masked_batchnorm_statistics_come_from_real_rows():
    torch.manual_seed(0)
    real = torch.randn(9, 4) * 3 + 1
    padded = torch.cat([real, torch.full((5, 4), 1000.0)])
    frames = torch.tensor([True] * 9 + [False] * 5)
    a, b = MaskedBatchNorm1d(4), MaskedBatchNorm1d(4)
    out_a = a(padded, frames)
    out_b = b(real)
    torch.testing.assert_close(out_a[:9], out_b)
    assert (out_a[9:] == 0).all()
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    # one real row has no batch variance: the running statistics serve, unchanged
    before = a.running_mean.clone()
    out = a(padded[:2], torch.tensor([True, False]))
    torch.testing.assert_close(a.running_mean, before)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("head", HEADS)
def test_causal_heads_never_look_ahead(head):
    model = make("audio", head).eval()
    x = inputs(model, 1, 12)
    changed = {m: t.clone() for m, t in x.items()}
    changed["mel"][0, 8:] += 1
    a, b = model(x), model(changed)
    assert not torch.allclose(a[0, 8:], b[0, 8:])
    if model.causal:
        torch.testing.assert_close(a[0, :8], b[0, :8], rtol=0, atol=0)
    else:  # the transformer sees the whole window
        assert not torch.allclose(a[0, :8], b[0, :8])


def test_gru_attention_attends_to_the_last_n_frames():
    model = make("audio", "gru-attention").eval()
    h = torch.randn(1, 10, TINY.rnn_hidden)
    head = model.head
    q, k, v = head.query(h), head.key(h), head.value(h)
    scores = (q @ k.transpose(1, 2)) / TINY.rnn_hidden**0.5
    t = 6
    window = slice(t - TINY.attention_frames + 1, t + 1)
    expected = torch.softmax(scores[0, t, window], dim=0) @ v[0, window]
    lag = torch.arange(10)[:, None] - torch.arange(10)[None, :]
    allowed = (lag >= 0) & (lag < TINY.attention_frames)
    got = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(got[0, t], expected)


def test_default_sizes_and_inputs_come_from_the_recipe_and_the_stages():
    sizes = resolve_sizes()
    assert (sizes.rnn_hidden, sizes.transformer_width, sizes.attention_frames, sizes.dropout) == (256, 256, 30, 0.5)
    model = AffectNet("full", "lstm", sizes)
    assert model.dims == {m: DIMS[m] for m in ("embed", "landmarks", "pose", "mel")}
    assert model.validity == {"embed": 1, "landmarks": 1, "pose": 18, "mel": 1} == {m: VALIDITY_DIMS[m] for m in model.modalities}
    assert model.layers["landmark"].linear.in_features == 2048 + 1 + 140 + 1
    assert model.head.rnn.hidden_size == 256
    multi = AffectNet("multi-transformer", "transformer", sizes)
    assert multi.modalities == ["mesh", "face_box", "evm", "embed", "pose", "mel"]
    assert multi.head.project.in_features == sum(DIMS[m] + VALIDITY_DIMS[m] for m in multi.modalities)
    without_optional = AffectNet("multi-transformer", "lstm", sizes, {m: DIMS[m] for m in ("mesh", "face_box", "evm", "embed")})
    assert without_optional.modalities == ["mesh", "face_box", "evm", "embed"]
    with pytest.raises(ParameterError, match="needs face_box"):
        AffectNet("mesh-transformer", "lstm", sizes, {"mesh": 1434})
    assert resolve_hyper(None, {"net": "mesh-transformer"}).head == "transformer"
    assert resolve_hyper(None, {"net": "audio"}).head == "lstm"
    transformer = resolve_hyper("thesis-transformer", {})
    assert (transformer.optimizer, transformer.lr, transformer.seq_len, transformer.batch_size) == ("adam", 1e-5, 128, 8)
    with pytest.raises(ParameterError, match="unknown head 'rnn'"):
        resolve_hyper(None, {"head": "rnn"})
    with pytest.raises(ParameterError, match="multiple of transformer_heads"):
        resolve_sizes(None, {"transformer_width": 10, "transformer_heads": 4})
    with pytest.raises(ParameterError, match="unknown model option"):
        resolve_sizes(None, {"depth": 3})


@pytest.mark.parametrize("frames, seq_len", [(1, 8), (7, 8), (8, 8), (9, 8), (16, 8), (17, 8), (100, 8), (100, 7)])
def test_windows_cover_the_video_at_half_overlap_and_end_at_its_end(frames, seq_len):
    hop = hop_for(seq_len)
    starts = window_starts(frames, seq_len, hop)
    if frames <= seq_len:
        assert starts == [0]
        return
    assert starts[0] == 0 and starts[-1] == frames - seq_len  # every window full length
    assert all(0 < b - a <= hop for a, b in zip(starts, starts[1:], strict=False))
    assert all(b - a == hop for a, b in zip(starts[:-1], starts[1:-1], strict=False))
    covered = np.zeros(frames, int)
    for s in starts:
        covered[s : s + seq_len] += 1
    assert covered[:hop].min() >= 1 and covered[-hop:].min() >= 1
    assert (covered[hop:-hop] >= 2).all()  # only the first and last hop frames may have one window


@pytest.mark.parametrize("causal", [True, False])
def test_blend_weights_are_positive_and_leave_no_seams(causal):
    s = 64
    w = blend_weights(s, causal)
    assert (w > 0).all() and w.max() <= 1
    # at both ends of a window the weight is small, so a window joining or leaving the
    # blend moves a frame's value by a small fraction of the windows' difference
    assert w[0] < 2 / s * 2 and w[-1] < 3 / s * 2
    if causal:  # more context, more weight, up to the peak
        assert np.argmax(w) > s / 2 and (np.diff(w[: int(0.7 * s)]) > 0).all()
    else:  # symmetric, and two windows at half overlap sum to exactly 1
        np.testing.assert_allclose(w, w[::-1])
        np.testing.assert_allclose(w[: s // 2] + w[s // 2 :], 1.0)
    # blending two windows that disagree by 1 (0 and 1): the blend changes by at most
    # a few hundredths from one frame to the next, the largest jump of the weights' share
    hop = s // 2
    share = w[hop:] / (w[hop:] + w[:hop])  # earlier window's share over the overlap
    steps = np.abs(np.diff(np.concatenate([[1.0], share, [0.0]])))
    assert steps.max() < 0.1
