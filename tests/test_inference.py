"""Running a model over whole stored videos: the blended windows, the independence
from the chunk size (the seam test), bounded reading, checkpoints of every head and
of the older format."""

import h5py
import numpy as np
import pytest
import torch

from vidaffect.bench.media import write_store
from vidaffect.learn import inference
from vidaffect.learn.checkpoint import FORMAT, load_model, save
from vidaffect.learn.dataset import compute_stats
from vidaffect.learn.heads import HEADS, Sizes
from vidaffect.learn.inference import predict_video, predict_windows
from vidaffect.learn.modalities import load_inputs
from vidaffect.learn.networks import AffectNet
from vidaffect.learn.windows import blend_weights, hop_for, window_starts

SEQ = 16
FRAMES = 150
TINY = Sizes(
    dropout=0.5, rnn_hidden=8, attention_layers=2, attention_frames=5, transformer_width=8, transformer_layers=1,
    transformer_heads=2, transformer_ff=16, transformer_dropout=0.1,
)  # fmt: skip
# The chunk size changes only how many windows go through one forward pass, and so the
# order of float32 sums inside the batched matrix products; each window's arithmetic
# is otherwise the same.  Float32 rounding (1.2e-7 relative) through a few layers and
# the float64 blend stays below 1e-6 on outputs in [-1, 1] (measured: ~1e-7), which is
# also below the 5e-7 rounding of the six-decimal CSV.
SEAM_TOLERANCE = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


def trained_like(tmp_path, head, net="audio", seed=0):
    """A store with a varying Mel track (a gap of missing audio) and a model with random
    weights and BatchNorm statistics moved off their defaults, saved and loaded back."""
    rng = np.random.default_rng(seed)
    mel = (np.cumsum(rng.normal(0, 1, (FRAMES, 128)), axis=0) - 40).astype(np.float32)
    ok = np.ones(FRAMES, bool)
    ok[60:70] = False
    store = write_store(tmp_path / f"{head}.h5", {"audio/mel": mel, "audio/valid": ok})
    torch.manual_seed(seed)
    model = AffectNet(net, head, TINY)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2)
    save(tmp_path / f"{head}.ckpt", model, compute_stats([store], model.modalities), {}, {}, 1, {}, SEQ)
    return load_model(tmp_path / f"{head}.ckpt"), store


def reference(loaded, store):
    """Each window run alone on the whole video's inputs, blended in float64."""
    with h5py.File(store) as h5:
        x = loaded.prepare(*load_inputs(h5, loaded.modalities))
    n = next(iter(x.values())).shape[1]
    length = min(SEQ, n)
    w = blend_weights(length, loaded.causal)[:, None]
    total, weight = np.zeros((n, 2)), np.zeros((n, 1))
    with torch.no_grad():
        for s in window_starts(n, SEQ, hop_for(SEQ)):
            out = loaded.model({m: t[:, s : s + length] for m, t in x.items()})[0].double().numpy()
            total[s : s + length] += w * out
            weight[s : s + length] += w
    return total / weight


@pytest.mark.parametrize("head", HEADS)
def test_chunk_size_never_changes_the_prediction(tmp_path, head):
    """The seam test: reading 1x, 0.5x and 3x seq-len frames at a time (and the
    default) gives the same predictions, which are the blend of the windows."""
    loaded, store = trained_like(tmp_path, head)
    expected = reference(loaded, store)
    for chunk in (SEQ, SEQ // 2, 3 * SEQ, inference.CHUNK):
        with h5py.File(store) as h5:
            blocks = list(predict_windows(loaded, h5, chunk))
        assert blocks[0][0] == 0 and all(a + len(p) == b for (a, p), (b, _) in zip(blocks, blocks[1:], strict=False))
        got = np.concatenate([p for _, p in blocks])
        assert got.shape == (FRAMES, 2) and np.abs(got).max() <= 1
        np.testing.assert_allclose(got, expected, rtol=0, atol=SEAM_TOLERANCE)
    # frames only the first window covers take its output; the blend elsewhere differs
    # from any single window's output (the test can tell windows apart)
    with h5py.File(store) as h5, torch.no_grad():
        first = loaded.model(loaded.prepare(*load_inputs(h5, loaded.modalities, 0, SEQ)))[0].numpy()
        second = loaded.model(loaded.prepare(*load_inputs(h5, loaded.modalities, SEQ // 2, SEQ // 2 + SEQ)))[0].numpy()
    np.testing.assert_allclose(got[: SEQ // 2], first[: SEQ // 2], atol=SEAM_TOLERANCE)
    assert np.abs(got[SEQ // 2 : SEQ] - first[SEQ // 2 :]).max() > 1e-4
    assert np.abs(got[SEQ // 2 : SEQ] - second[: SEQ // 2]).max() > 1e-4


def test_a_short_video_is_one_window_of_its_own_length(tmp_path):
    loaded, store = trained_like(tmp_path, "transformer")
    with h5py.File(store) as h5, torch.no_grad():
        x = loaded.prepare(*load_inputs(h5, loaded.modalities, 0, 11))
    short = write_store(tmp_path / "short.h5", {"audio/mel": h5py.File(store)["audio/mel"][:11]})
    with h5py.File(short) as h5, torch.no_grad():
        direct = loaded.model(loaded.prepare(*load_inputs(h5, loaded.modalities)))[0].numpy()
    np.testing.assert_allclose(predict_video(loaded, short), direct, atol=1e-6)
    assert x["mel"].shape == (1, 11, 129)


def test_memory_is_bounded_by_the_chunk(tmp_path, monkeypatch):
    """Reading never runs more than one chunk ahead of what is handed out, however long
    the video."""
    loaded, store = trained_like(tmp_path, "lstm")
    reads = []

    def counting(h5, modalities, start=0, stop=None, subject=0):
        reads.append((start, stop))
        return load_inputs(h5, modalities, start, stop, subject)

    monkeypatch.setattr(inference, "load_inputs", counting)
    with h5py.File(store) as h5:
        for start, _ in predict_windows(loaded, h5, chunk=20):
            read_to = min(reads[-1][1], FRAMES)
            assert read_to - start <= 20 + SEQ  # held: at most a chunk and a window
    assert all(stop - start <= 20 for start, stop in reads)
    assert reads[-1][1] >= FRAMES and len(reads) == -(-FRAMES // 20)


@pytest.mark.parametrize("head", HEADS)
def test_checkpoint_round_trip_for_every_head(tmp_path, head):
    torch.manual_seed(1)
    model = AffectNet("pose", head, TINY).eval()
    rng = np.random.default_rng(0)
    stats = {"pose": {"min": np.zeros(36, np.float32), "max": np.full(36, 300, np.float32)}}
    save(tmp_path / "m.ckpt", model, stats, {}, {"seq_len": 24}, 3, {"val_ccc_mean": 0.5}, 24)
    loaded = load_model(tmp_path / "m.ckpt")
    assert (loaded.net, loaded.head, loaded.seq_len, loaded.hop, loaded.epoch) == ("pose", head, 24, 12, 3)
    assert loaded.model.sizes == TINY and loaded.validity == {"pose": 18} and not loaded.model.training
    keypoints = np.concatenate([rng.uniform(0, 300, (30, 18, 2)), np.ones((30, 18, 1))], axis=2).astype(np.float32)
    features = {"pose": keypoints[..., :2].reshape(30, 36)}
    validity = {"pose": np.ones((30, 18), bool)}
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(loaded.prepare(features, validity)), model(loaded.prepare(features, validity)))
    saved = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert saved["format_version"] == 2 and saved["head"] == head and saved["window"] == {"seq_len": 24, "hop": 12}
    assert saved["sizes"]["rnn_hidden"] == 8


def test_a_checkpoint_of_the_older_format_loads_and_predicts(tmp_path):
    """Format 1: an audio network whose LSTM was called ``lstm`` and its output layer
    ``classifier``, no head, no validity inputs, no window record (its config's
    seq_len)."""
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    state = {
        "layers.mel.linear.weight": t(256, 128), "layers.mel.linear.bias": t(256),
        "layers.mel.norm.weight": 1 + t(256), "layers.mel.norm.bias": t(256),
        "layers.mel.norm.running_mean": t(256), "layers.mel.norm.running_var": 1 + t(256).abs(),
        "layers.mel.norm.num_batches_tracked": torch.tensor(10),
        "lstm.weight_ih_l0": t(1024, 256), "lstm.weight_hh_l0": t(1024, 256), "lstm.bias_ih_l0": t(1024), "lstm.bias_hh_l0": t(1024),
        "classifier.weight": t(2, 256), "classifier.bias": t(2),
    }  # fmt: skip
    torch.save(
        {
            "format": FORMAT, "format_version": 1, "net": "audio", "modalities": ["mel"], "dims": {"mel": 128}, "stages": ["mel"],
            "state_dict": state, "stats": {"mel": {"min": torch.full((128,), -80.0), "max": torch.full((128,), 0.0)}},
            "provenance": {}, "config": {"seq_len": 20, "loss": "ccc"}, "epoch": 4, "metrics": {},
        },
        tmp_path / "old.ckpt",
    )  # fmt: skip
    loaded = load_model(tmp_path / "old.ckpt")
    assert (loaded.head, loaded.seq_len, loaded.hop, loaded.validity) == ("lstm", 20, 10, {"mel": 0})
    mel = np.random.default_rng(0).uniform(-80, 0, (15, 128)).astype(np.float32)
    store = write_store(tmp_path / "v.h5", {"audio/mel": mel})
    got = predict_video(loaded, store)  # 15 frames: one window from a zero state
    # the old network by hand: per-frame Linear, BatchNorm (running), ReLU; LSTM; Linear; tanh
    x = torch.from_numpy((mel + 80) / 80)
    h = torch.relu(
        torch.nn.functional.batch_norm(
            x @ state["layers.mel.linear.weight"].T + state["layers.mel.linear.bias"],
            state["layers.mel.norm.running_mean"], state["layers.mel.norm.running_var"],
            state["layers.mel.norm.weight"], state["layers.mel.norm.bias"],
        )
    )  # fmt: skip
    lstm = torch.nn.LSTM(256, 256, batch_first=True)
    lstm.load_state_dict({k[len("lstm.") :]: v for k, v in state.items() if k.startswith("lstm.")})
    with torch.no_grad():
        expected = torch.tanh(lstm(h[None])[0][0] @ state["classifier.weight"].T + state["classifier.bias"])
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    from vidaffect.learn.checkpoint import describe

    assert "network   audio, head lstm" in describe(tmp_path / "old.ckpt") and "mel 128 + validity 0" in describe(tmp_path / "old.ckpt")
