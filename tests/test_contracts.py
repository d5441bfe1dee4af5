"""Package-wide contracts: the model inputs derive from the stages' own declarations,
stage parameters are checked before any work starts (in the main process, whatever the
number of workers), and errors exit with the right status."""

import dataclasses
import math

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from media import make_video, noise_frames, tone

from vidaffect.bench.media import random_arrays, write_store
from vidaffect.cli import main
from vidaffect.errors import ParameterError
from vidaffect.learn import modalities
from vidaffect.learn.hyper import resolve_sizes
from vidaffect.learn.networks import NETWORKS, AffectNet
from vidaffect.stages import registry
from vidaffect.stages.base import ModelInput
from vidaffect.stages.face import FaceParams
from vidaffect.stages.mel import MelParams, MelStage


def test_modality_table_is_the_stages_declarations():
    for name, m in modalities.MODALITIES.items():
        cls = registry.stage_class(m.stage)
        assert cls.model_inputs[name] is m.source and cls.group_name() == m.group
        shape = cls().outputs()[m.source.dataset_name(m.defaults)].shape
        expected = math.prod(shape[:-1]) * 2 if m.source.keypoints else math.prod(shape)
        assert m.dim == expected == modalities.DIMS[name]
    declared = {name for cls in registry.all_stages() for name in cls.model_inputs}
    assert declared == set(modalities.MODALITIES)
    # what the networks read is what the stores give: every network's inputs are modalities
    for net in NETWORKS:
        model = AffectNet(net, "lstm", resolve_sizes())
        assert set(model.dims.items()) <= set(modalities.DIMS.items())
        assert set(model.validity.items()) <= set(modalities.VALIDITY_DIMS.items())
    assert modalities.DIMS == {"landmarks": 140, "mesh": 1434, "face_box": 4, "pose": 36, "embed": 2048, "evm": 2048, "mel": 128, "head": 3, "gaze": 2, "egemaps": 25}
    assert modalities.VALIDITY_DIMS == {**{m: 1 for m in modalities.DIMS}, "pose": 18}


def test_a_new_stage_output_becomes_a_model_input(monkeypatch, tmp_path):
    # Declaring one more dataset of a stage as a model input is all it takes.
    monkeypatch.setattr(MelStage, "model_inputs", {**MelStage.model_inputs, "mel_again": ModelInput("mel")})
    table = modalities._modalities()
    assert table["mel_again"].dim == MelStage().outputs()["mel"].shape[0] and table["mel_again"].group == "audio"
    # and its width follows the stage's parameters as stored
    monkeypatch.setattr(modalities, "MODALITIES", table)
    with h5py.File(write_store(tmp_path / "s.h5", {"audio/mel": np.zeros((5, 64), np.float32)}), "r") as h5:
        assert modalities.feature_dim(h5, "mel_again") == 64


def test_random_stores_follow_the_stage_schema(tmp_path):
    arrays = random_arrays(7, np.random.default_rng(0))
    with h5py.File(write_store(tmp_path / "r.h5", arrays), "r") as h5:
        for name, m in modalities.MODALITIES.items():
            assert modalities.feature_dim(h5, name) == m.dim
        features, valid = modalities.load_inputs(h5, list(modalities.MODALITIES))
    assert all(np.isfinite(x).all() and v.all() for x, v in zip(features.values(), valid.values(), strict=True))
    assert {m: v.shape for m, v in valid.items()} == {m: (7, d) for m, d in modalities.VALIDITY_DIMS.items()}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"detect_every": 0}, "face.detect_every must be at least 1; got 0"),
        ({"detect_every": "often"}, "face.detect_every must be a whole number; got 'often'"),
        ({"detect_every": 2.5}, "face.detect_every must be a whole number"),
        ({"backend": "dlib"}, "face.backend must be one of mediapipe, openface, openpose; got 'dlib'"),
        ({"min_detection_confidence": 1.5}, "face.min_detection_confidence must be at most 1; got 1.5"),
    ],
)
def test_stage_parameters_are_checked_with_one_line(values, message):
    with pytest.raises(ParameterError) as info:
        FaceParams(**values)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_parameters_are_converted_from_recipe_scalars():
    p = FaceParams(detect_every="5", crop_scale=2, min_detection_confidence="0.3")
    assert (p.detect_every, p.crop_scale, p.min_detection_confidence) == (5, 2.0, 0.3)
    assert isinstance(p.crop_scale, float)
    assert MelParams(fmax=None).fmax is None and MelParams(fmax=8000).fmax == 8000.0
    with pytest.raises(ParameterError, match=r"mel.fmax must lie above fmin and at most sr / 2 = 11025 Hz"):
        MelParams(fmax=20000)
    names = [f.name for f in dataclasses.fields(FaceParams)]
    assert [name for name, _, _ in FaceParams.describe()] == names
    assert all(meaning for _, _, meaning in FaceParams.describe())


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_parameter_is_a_usage_error_before_any_worker_starts(media, tmp_path, workers):
    for i in range(2):
        make_video(media / f"v{i}.mp4", noise_frames(4), audio=tone(0.2))
    args = ["extract", str(media), "--stages", "face", "--set", "face.detect_every=0", "--workers", workers,
            "--store", str(tmp_path / "f")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "face.detect_every must be at least 1; got 0" in result.output
    assert "crashed" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "f").exists() or not list((tmp_path / "f").iterdir())


def _training_project(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        write_store(tmp_path / "f" / f"v{i}.h5", {"audio/mel": rng.normal(size=(40, 128)).astype(np.float32)})
        (tmp_path / "a").mkdir(exist_ok=True)
        np.savetxt(tmp_path / "a" / f"v{i}.txt", rng.uniform(-1, 1, (40, 2)), delimiter=",", header="valence,arousal", comments="")
    return ["train", "--net", "audio", "--store", str(tmp_path / "f"), "--annotations", str(tmp_path / "a"),
            "--epochs", "1", "--seq-len", "8", "--batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "r")]  # fmt: skip


def test_internal_error_exits_1_and_shows_its_traceback_with_v(tmp_path):
    args = _training_project(tmp_path)
    store = tmp_path / "f" / "v1.h5"
    store.write_bytes(store.read_bytes()[:2000])  # a store cut short: h5py cannot open it
    quiet = CliRunner().invoke(main, args)
    assert quiet.exit_code == 1, quiet.output
    assert "internal error: OSError" in quiet.output and "run with -v" in quiet.output
    assert "Traceback" not in quiet.output
    verbose = CliRunner().invoke(main, ["-v", *args])
    assert verbose.exit_code == 1
    assert "Traceback (most recent call last)" in verbose.output and "internal error: OSError" in verbose.output


def test_user_error_in_train_exits_2(tmp_path):
    args = _training_project(tmp_path)
    result = CliRunner().invoke(main, [*args, "--annotations", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "annotation folder" in result.output and "does not exist" in result.output
