"""Model inputs read from stores: coordinates made comparable across videos, and the
validity inputs that tell a missing modality from one at its training minimum."""

import h5py
import numpy as np
import torch

from vidaffect.bench.media import write_store
from vidaffect.learn.checkpoint import describe, load_model, save
from vidaffect.learn.dataset import compute_stats, model_inputs
from vidaffect.learn.hyper import resolve_sizes
from vidaffect.learn.modalities import VALIDITY_DIMS, load_inputs
from vidaffect.learn.networks import AffectNet


def face_rows(n, rng, shift=(0.0, 0.0), scale=1.0):
    """A face mesh and its box, moved by ``shift`` pixels and scaled by ``scale``."""
    shape = rng.uniform(-0.5, 0.5, (478, 3)).astype(np.float32)  # in face widths
    width = 120.0 * scale
    centre = np.array([300.0, 180.0]) + shift
    mesh = np.repeat(shape[None] * width, n, axis=0)
    mesh[..., :2] += centre
    box = np.tile([centre[0] - width / 2, centre[1] - 0.6 * width, width, 1.2 * width], (n, 1)).astype(np.float32)
    return mesh.astype(np.float16), box, shape


def test_mesh_is_relative_to_the_face_box_and_the_box_to_the_frame(tmp_path):
    rng = np.random.default_rng(0)
    out = {}
    for name, shift, scale in (("a", (0, 0), 1.0), ("b", (-150, 60), 0.5)):
        mesh, box, shape = face_rows(4, np.random.default_rng(1), shift, scale)
        write_store(tmp_path / f"{name}.h5", {"face/mesh": mesh, "face/bbox": box, "face/landmarks": rng.random((4, 70, 2), np.float32)})
        with h5py.File(tmp_path / f"{name}.h5") as h5:
            out[name] = load_inputs(h5, ["mesh", "face_box"])[0]
    # the same face elsewhere and half the size gives the same mesh input
    np.testing.assert_allclose(out["a"]["mesh"], out["b"]["mesh"], atol=5e-3)  # float16: 0.25 px steps, / 60 px
    np.testing.assert_allclose(out["a"]["mesh"][0].reshape(478, 3), shape, atol=5e-3)
    # the box is in frame widths and heights (write_store's frames are 640 x 360)
    np.testing.assert_allclose(out["a"]["face_box"][0], [(300 - 60) / 640, (180 - 72) / 360, 120 / 640, 144 / 360], rtol=1e-6)


def test_missing_differs_from_the_minimum_and_keypoints_have_one_flag_each(tmp_path):
    n = 6
    mel = np.tile(np.linspace(-80, -20, 4, dtype=np.float32), (n, 1))
    mel[1] = mel.min(axis=0)  # a frame at the training minimum
    audio_ok = np.ones(n, bool)
    audio_ok[2] = False  # no audio in this frame
    keypoints = np.random.default_rng(0).uniform(10, 300, (n, 18, 3)).astype(np.float32)
    keypoints[..., 2] = 0.9
    keypoints[3, 5, 2] = 0  # one joint not detected
    pose_ok = np.ones(n, bool)
    pose_ok[4] = False
    path = write_store(
        tmp_path / "v.h5", {"audio/mel": mel, "audio/valid": audio_ok, "pose/keypoints": keypoints, "pose/valid": pose_ok}
    )
    with h5py.File(path) as h5:
        features, validity = load_inputs(h5, ["mel", "pose"])
    assert validity["mel"].shape == (n, 1) and validity["mel"][:, 0].tolist() == [True, True, False, True, True, True]
    assert validity["pose"].shape == (n, 18)
    assert not validity["pose"][4].any() and validity["pose"][3].sum() == 17 and not validity["pose"][3, 5]
    assert np.isnan(features["pose"][3, 10:12]).all() and np.isfinite(features["pose"][3, :10]).all()
    stats = compute_stats([path], ["mel", "pose"])
    x = model_inputs(features, validity, stats, VALIDITY_DIMS)
    assert x["mel"].shape == (n, 4 + 1) and x["pose"].shape == (n, 36 + 18)
    # the minimum and the missing frame have the same values (0) but not the same input
    np.testing.assert_array_equal(x["mel"][1, :4], x["mel"][2, :4])
    assert x["mel"][1, 4] == 1 and x["mel"][2, 4] == 0
    # a model made before validity inputs existed reads the values alone
    assert model_inputs(features, validity, stats, {"mel": 0, "pose": 0})["pose"].shape == (n, 36)


def test_info_shows_the_inputs_with_their_validity_width(tmp_path):
    model = AffectNet("pose", "gru", resolve_sizes(None, {"rnn_hidden": 4}))
    stats = {"pose": {"min": np.zeros(36, np.float32), "max": np.ones(36, np.float32)}}
    save(tmp_path / "m.ckpt", model, stats, {}, {"loss": "mse"}, 1, {}, seq_len=16)
    text = describe(tmp_path / "m.ckpt")
    assert "network   pose, head gru (dropout 0.5, rnn_hidden 4)" in text
    assert "inputs    pose 36 + validity 18" in text
    assert "windows   16 frames from a fresh state, every 8 frames, blended" in text
    loaded = load_model(tmp_path / "m.ckpt")
    assert loaded.validity == {"pose": 18} and (loaded.seq_len, loaded.hop, loaded.head) == (16, 8, "gru")
    assert loaded.model.layers["pose"].linear.in_features == 36 + 18
    x = loaded.prepare({"pose": np.full((5, 36), np.nan, np.float32)}, {"pose": np.zeros((5, 18), bool)})
    assert x["pose"].shape == (1, 5, 54) and torch.count_nonzero(x["pose"]) == 0
