import hashlib
import urllib.error

import numpy as np
import pytest
import torch

from vidaffect.stages import weights as enc
from vidaffect.stages.crop import IMAGENET_MEAN, IMAGENET_STD
from vidaffect.stages.embed import EncoderParams
from vidaffect.stages.encoder import CropEncoder, load_encoder
from vidaffect.stages.registry import params_hash
from vidaffect.stages.resnet import FEATURES, ResNet50
from vidaffect.stages.weights import WeightsError, fetch_weights


@pytest.fixture(scope="module")
def model_and_file(tmp_path_factory):
    """A ResNet-50 with non-trivial weights (seeded init, perturbed BN statistics) and
    its state dict saved in torchvision naming."""
    torch.manual_seed(123)
    model = ResNet50().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / "resnet50-mine.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture
def hub_dir(tmp_path):
    """An empty torch hub cache for the test, restored afterwards."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def crops(n=2, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def reference_features(model, images):
    """The model on ImageNet-normalised images, computed independently of Encoder."""
    x = (images.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    with torch.no_grad():
        return model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()


def test_architecture_matches_torchvision_naming():
    state = ResNet50().state_dict()
    assert len(state) == 320
    assert (
        sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
        == 25557032
    )
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.bias",
        "layer4.2.conv3.weight",
        "layer4.2.bn3.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert key in state
    assert ResNet50()(torch.zeros(1, 3, 64, 64)).shape == (1, FEATURES)


def test_state_dict_round_trip(model_and_file):
    model, path = model_and_file
    images = crops()
    encoder = load_encoder(str(path), "cpu")
    got = encoder(images)
    assert got.shape == (2, FEATURES) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_features(model, images), rtol=1e-4, atol=1e-4)
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_wrapped_checkpoint_with_prefixes_and_other_classifier_loads(model_and_file, tmp_path):
    model, _ = model_and_file
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    state["module.fc.weight"] = torch.zeros(8631, FEATURES)  # e.g. a VGGFace2 classifier
    state["module.fc.bias"] = torch.zeros(8631)
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    images = crops(seed=1)
    np.testing.assert_allclose(load_encoder(str(path))(images), reference_features(model, images), rtol=1e-4, atol=1e-4)


def test_checkpoints_that_do_not_fit_are_refused(model_and_file, tmp_path):
    model, _ = model_and_file
    partial = {k: v for k, v in model.state_dict().items() if not k.startswith("layer4.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match=r"partial.pth do not fit a ResNet-50 \(missing: layer4"):
        load_encoder(str(tmp_path / "partial.pth"))
    torch.save({"weights": [1, 2, 3]}, tmp_path / "nothing.pth")
    with pytest.raises(WeightsError, match="nothing.pth: no state dict found"):
        load_encoder(str(tmp_path / "nothing.pth"))
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="text.pth: cannot be loaded safely"):
        load_encoder(str(tmp_path / "text.pth"))


def test_random_weights_are_seeded_and_warned_about(caplog):
    images = crops(n=1, size=32)
    with caplog.at_level("WARNING"):
        a = load_encoder("random")
    assert "RANDOM weights" in caplog.text
    assert a.weights.startswith("random")
    np.testing.assert_array_equal(a(images), load_encoder("random")(images))


def test_missing_weights_offline_give_the_documented_error(hub_dir, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(WeightsError) as info:
        load_encoder("imagenet")
    message = str(info.value)
    dst = hub_dir / "checkpoints" / "resnet50-0676ba61.pth"
    assert "resnet50-0676ba61.pth" in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert str(dst) in message and "--encoder-weights" in message
    assert not dst.exists()


def named_with_hash(path, folder):
    """Copy ``path`` to ``folder`` under a torchvision-style name carrying its hash."""
    data = path.read_bytes()
    target = folder / f"resnet50-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    folder.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def test_download_is_cached_and_checksummed(model_and_file, hub_dir, tmp_path, monkeypatch):
    model, path = model_and_file
    source = named_with_hash(path, tmp_path / "server")
    monkeypatch.setitem(enc.WEIGHTS_URLS, "imagenet", source.as_uri())
    images = crops(seed=2)
    encoder = load_encoder("imagenet", progress=False)
    cached = hub_dir / "checkpoints" / source.name
    assert cached.read_bytes() == source.read_bytes()
    np.testing.assert_allclose(encoder(images), reference_features(model, images), rtol=1e-4, atol=1e-4)
    # Second time: served from the cache, no download.
    source.unlink()
    assert fetch_weights(enc.WEIGHTS_URLS["imagenet"], progress=False) == cached
    # A cached file that was damaged fails the check and says what to do.
    with open(cached, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00garbage\x00")
    with pytest.raises(WeightsError, match="fail their SHA-256 check.*delete the file"):
        load_encoder("imagenet", progress=False)


def test_corrupt_download_is_refused_and_not_cached(tmp_path, hub_dir):
    server = tmp_path / "server"
    server.mkdir()
    bad = server / "resnet50-00000000.pth"
    bad.write_bytes(b"truncated download")
    with pytest.raises(WeightsError, match="is corrupt: invalid hash value"):
        fetch_weights(bad.as_uri(), progress=False)
    assert not (hub_dir / "checkpoints" / bad.name).exists()


def test_weights_file_content_is_part_of_the_parameters(model_and_file, tmp_path):
    _, path = model_and_file
    a = EncoderParams(weights=str(path))
    assert a.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    copy = tmp_path / "changed.pth"
    copy.write_bytes(path.read_bytes() + b"\0")
    b = EncoderParams(weights=str(copy))
    from vidaffect.stages.embed import EmbedStage

    assert params_hash(EmbedStage, a, []) != params_hash(EmbedStage, b, [])
    with pytest.raises(ValueError, match="SHA-256 is"):
        EncoderParams(weights=str(copy), weights_sha256=a.weights_sha256)
    with pytest.raises(ValueError, match="no-such.pth.*no such file"):
        EncoderParams(weights=str(tmp_path / "no-such.pth"))
    assert EncoderParams(weights="random").weights_sha256 == ""


def test_crop_encoder_keeps_frame_order_and_marks_missing_faces():
    encoder = load_encoder("random")
    rng = np.random.default_rng(5)
    flags = [np.array(f, bool) for f in ([1, 0, 1], [0, 0], [1, 1, 1, 0], [1], [0])]
    all_crops = rng.integers(0, 256, (sum(int(f.sum()) for f in flags), 32, 32, 3), dtype=np.uint8)
    rows = CropEncoder(encoder, batch_size=2)
    out, used, returned = [], 0, 0
    for f in flags:
        got = rows.push(all_crops[used : used + f.sum()], f)
        used += int(f.sum())
        returned += len(got["valid"])
        assert returned <= sum(len(x) for x in flags)
        out.append(got)
    out.append(rows.flush())
    features = np.concatenate([o["resnet50"] for o in out])
    valid = np.concatenate([o["valid"] for o in out])
    assert valid.tolist() == np.concatenate(flags).tolist()
    assert features.dtype == np.float16 and features.shape == (len(valid), FEATURES)
    assert np.isnan(features[~valid]).all()
    expected = encoder(all_crops).astype(np.float16)
    np.testing.assert_allclose(features[valid].astype(np.float32), expected.astype(np.float32), rtol=2e-3, atol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_runs_half_precision_channels_last_with_the_same_features(model_and_file):
    model, path = model_and_file
    images = crops(n=4, size=224, seed=3)
    gpu = load_encoder(str(path), "cuda")
    assert gpu.dtype == torch.float16
    assert gpu.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(gpu(images), reference_features(model, images), rtol=0.02, atol=0.02)


def test_extract_without_weights_offline_stops_once_with_the_reason(hub_dir, monkeypatch, media, tmp_path):
    from click.testing import CliRunner
    from media import astronaut_frame, make_video

    from vidaffect.cli import main

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    for name in ("a", "b"):
        make_video(media / f"{name}.mp4", [astronaut_frame()] * 3)
    result = CliRunner().invoke(main, ["-q", "extract", str(media), "--stages", "embed", "--device", "cpu", "--store", str(tmp_path / "features")])
    assert result.exit_code == 1
    assert "resnet50-0676ba61.pth" in result.output and "--encoder-weights" in result.output
    assert "Traceback" not in result.output
    assert len(calls) == 1  # checked once, before any video or worker starts
    assert not (tmp_path / "features" / "a.h5").exists()
