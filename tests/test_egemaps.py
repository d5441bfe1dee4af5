"""The egemaps stage (openSMILE eGeMAPSv02 LLDs per video frame).  openSMILE is an
optional extra; CI installs it (see the Makefile), and where it is missing the tests
that need it are skipped and the stage's error names the extra."""

import builtins
import importlib.util

import h5py
import numpy as np
import pytest
from media import make_video, noise_frames, tone

from vidaffect.commands.extract import extract
from vidaffect.errors import SetupError
from vidaffect.stages.smile import F0, LLD_NAMES, SmileStream

LOUDNESS = LLD_NAMES.index("Loudness_sma3")
needs_opensmile = pytest.mark.skipif(
    importlib.util.find_spec("opensmile") is None,
    reason="openSMILE is not installed (pip install 'vidaffect[egemaps]')",
)


def store(tmp_path, name):
    return h5py.File(tmp_path / "f" / f"{name}.h5", "r")


@needs_opensmile
def test_one_row_per_frame_and_a_louder_tone_is_louder(media, tmp_path):
    sr = 22050
    gain = np.repeat([0.02, 0.08, 0.3], sr)  # one second each
    make_video(media / "ramp.mp4", noise_frames(75), audio=tone(3.0, sr, 220, gain), sr=sr)
    make_video(media / "silent_video.mp4", noise_frames(20))  # no audio track
    summary = extract([media], tmp_path / "f", ["egemaps"])
    assert summary.exit_code == 0, summary.report()
    with store(tmp_path, "ramp") as h5:
        lld, valid = h5["egemaps/lld"][:], h5["egemaps/valid"][:]
        assert lld.shape == (75, 25) and len(h5["frames/timestamp"]) == 75
        assert valid.all() and list(h5["egemaps"].attrs["names"]) == list(LLD_NAMES)
        loud = [np.mean(lld[a + 3 : a + 22, LOUDNESS]) for a in (0, 25, 50)]  # away from the steps
        assert loud[0] < loud[1] < loud[2], loud
        # a 220 Hz tone is 36 semitones above 27.5 Hz and voiced throughout
        assert np.allclose(lld[3:72, F0], 36.0, atol=0.1) and (h5["egemaps/voiced"][3:72] == 1).all()
    with store(tmp_path, "silent_video") as h5:
        assert len(h5["egemaps/valid"]) == 20 and not h5["egemaps/valid"][:].any()
        assert np.isnan(h5["egemaps/lld"][:]).all() and h5["egemaps"].attrs["note"] == "no audio track"


@needs_opensmile
def test_rows_follow_the_sound_in_time_and_unvoiced_frames_have_no_pitch(media, tmp_path):
    sr = 22050
    t = np.arange(3 * sr) / sr
    audio = np.where((t >= 1.0) & (t < 2.0), tone(3.0, sr, 220), 0).astype(np.float32)
    make_video(media / "burst.mp4", noise_frames(75), audio=audio, sr=sr)
    extract([media], tmp_path / "f", ["egemaps"])
    with store(tmp_path, "burst") as h5:
        voiced, lld = h5["egemaps/voiced"][:], h5["egemaps/lld"][:]
    # 25 fps: the tone covers frames 25-49; 60 ms analysis frames straddle its edges
    assert (voiced[:24] == 0).all() and (voiced[26:48] == 1).all() and (voiced[51:] == 0).all()
    voiced_only = np.array([n.endswith("nz") for n in LLD_NAMES])
    assert np.isnan(lld[:24][:, voiced_only]).all() and np.isfinite(lld[:24][:, ~voiced_only]).all()
    assert lld[30, LOUDNESS] > 20 * lld[10, LOUDNESS]


@needs_opensmile
def test_the_stream_equals_opensmiles_own_api():
    import opensmile

    sr = 16000
    rng = np.random.default_rng(0)
    t = np.arange(3 * sr) / sr
    x = 0.2 * np.sin(2 * np.pi * (150 + 50 * np.sin(t)) * t) * (1 + np.sin(3 * t)) / 2 + 0.01 * rng.normal(size=len(t))
    pcm = (x * 32768).astype(np.int16)
    stream = SmileStream(sr)
    parts = [stream.push(pcm[i : i + 593]) for i in range(0, len(pcm), 593)] + [stream.close()]
    starts, lld = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    ref = smile.process_signal(pcm.astype(np.float32) / 32768, sr)
    assert list(ref.columns) == list(LLD_NAMES)
    assert np.array_equal(lld, ref.to_numpy(np.float32))
    assert np.allclose(starts, ref.index.get_level_values("start").total_seconds().to_numpy())


def test_without_opensmile_the_stage_names_the_extra(monkeypatch, media, tmp_path):
    real_import = builtins.__import__

    def no_opensmile(name, *args, **kwargs):
        if name == "opensmile" or name.startswith("opensmile."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_opensmile)
    make_video(media / "v.mp4", noise_frames(4), audio=tone(0.2))
    with pytest.raises(SetupError) as info:
        extract([media], tmp_path / "f", ["egemaps"])
    message = str(info.value)
    assert "pip install 'vidaffect[egemaps]'" in message and "non-commercial" in message and "\n" not in message
    assert not (tmp_path / "f").exists() or not list((tmp_path / "f").glob("*.h5"))
