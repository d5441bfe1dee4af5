import numpy as np
import pytest

from vidaffect.stages.evm import EvmParams
from vidaffect.stages.magnify import (
    EvmSettings,
    Magnifier,
    bandpass_sos,
    collapse_laplacian,
    frame_rate,
    laplacian_pyramid,
    motion_alphas,
)

ALPHA = 5.0


def run_stream(magnifier, frames, chunk=32):
    return np.concatenate([magnifier(frames[i : i + chunk]) for i in range(0, len(frames), chunk)])


def amplitude(series, freq, t, skip_s=3.0):
    """Amplitude of the ``freq`` component of ``series`` after the filter settles."""
    keep = t >= skip_s
    design = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones_like(t)], 1)[keep]
    coef = np.linalg.lstsq(design, series[keep], rcond=None)[0]
    return float(np.hypot(coef[0], coef[1]))


def colour_gain(freq, fps=30.0, seconds=8.0, amp=0.02, size=32):
    t = np.arange(int(seconds * fps)) / fps
    level = 0.5 + amp * np.sin(2 * np.pi * freq * t)
    frames = np.broadcast_to(level[:, None, None, None], (len(t), size, size, 3)).astype(np.float32)
    out = run_stream(Magnifier(fps, (size, size), EvmSettings(color_level=2, color_alpha=ALPHA)), frames)
    return amplitude(out[:, size // 2, size // 2, 1] - 0.5, freq, t) / amp


def test_colour_oscillation_in_band_is_amplified_by_alpha_out_of_band_is_not():
    assert colour_gain(1.5) == pytest.approx(1 + ALPHA, rel=0.05)
    assert colour_gain(10.0) == pytest.approx(1.0, abs=0.1)


def test_filters_follow_the_real_frame_rate():
    # The same 1.5 Hz oscillation sampled at 60 and at 12 fps: in band at both rates.
    assert colour_gain(1.5, fps=60.0) == pytest.approx(1 + ALPHA, rel=0.05)
    assert colour_gain(1.5, fps=12.0) == pytest.approx(1 + ALPHA, rel=0.05)
    assert frame_rate(np.arange(10) / 29.97, fallback=25.0) == pytest.approx(29.97)
    assert frame_rate(np.zeros(1), fallback=25.0) == 25.0


def translation_gain(freq, fps=30.0, seconds=6.0, shift=0.3, wavelength=56.0, size=224):
    """Output / input amplitude of a sinusoidal sub-pixel translation of a grating,
    measured from the grating's phase along a row."""
    t = np.arange(int(seconds * fps)) / fps
    x = np.arange(size)
    d = shift * np.sin(2 * np.pi * freq * t)
    rows = 0.5 + 0.2 * np.cos(2 * np.pi * (x[None, :] - d[:, None]) / wavelength)
    frames = np.repeat(np.repeat(rows[:, None, :, None], size, 1), 3, 3).astype(np.float32)
    magnifier = Magnifier(fps, (size, size), EvmSettings(color=False, motion_alpha=ALPHA))
    profile = run_stream(magnifier, frames)[:, size // 2, :, 1]
    phase = np.unwrap(np.angle((profile - profile.mean(1, keepdims=True)) @ np.exp(-2j * np.pi * x / wavelength)))
    displacement = -phase * wavelength / (2 * np.pi)
    return amplitude(displacement, freq, t) / shift


def test_small_translation_in_band_is_magnified():
    in_band = translation_gain(2.0)
    assert 4.0 < in_band <= 1 + ALPHA + 0.2
    assert translation_gain(10.0) == pytest.approx(1.0, abs=0.15)


def test_streaming_in_chunks_equals_one_pass_and_reset_has_no_transient():
    rng = np.random.default_rng(0)
    frames = (0.5 + 0.05 * rng.standard_normal((40, 32, 32, 3))).astype(np.float32)
    settings = EvmSettings(color_level=2, motion_levels=3)
    whole = Magnifier(25.0, (32, 32), settings)(frames)
    np.testing.assert_allclose(run_stream(Magnifier(25.0, (32, 32), settings), frames, chunk=7), whole, atol=1e-5)
    # After a reset, a still picture comes out unchanged (the filters start settled).
    still = np.repeat(frames[:1], 10, axis=0)
    magnifier = Magnifier(25.0, (32, 32), settings)
    magnifier(frames)
    magnifier.reset()
    np.testing.assert_allclose(magnifier(still), np.clip(still, 0, 1), atol=1e-4)


def test_laplacian_pyramid_inverts_and_band_amplification_is_attenuated():
    image = np.random.default_rng(1).random((224, 224, 3)).astype(np.float32)
    bands = laplacian_pyramid(image, 5)
    assert len(bands) == 6 and bands[-1].shape == (7, 7, 3)
    np.testing.assert_allclose(collapse_laplacian(bands), image, atol=1e-5)
    alphas = motion_alphas(ALPHA, 16.0, (224, 224), 5)
    assert alphas[0] == 0 and alphas[-1] == 0  # finest band and residual
    assert alphas[1] < ALPHA and alphas[2:5] == [ALPHA] * 3
    assert motion_alphas(ALPHA, 200.0, (224, 224), 5)[1:5] == sorted(motion_alphas(ALPHA, 200.0, (224, 224), 5)[1:5])


def test_bands_above_nyquist_are_cut_or_switched_off():
    sos = bandpass_sos(0.8, 5.0, 8.0, order=3)
    assert sos is not None and sos.shape == (3, 6)
    assert bandpass_sos(0.8, 3.0, 1.5, order=3) is None
    magnifier = Magnifier(1.5, (16, 16), EvmSettings(color_level=1, motion_levels=2))
    assert any("colour band" in n for n in magnifier.notes)
    frames = np.random.default_rng(2).random((5, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(magnifier(frames), frames, atol=1e-6)


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="color band"):
        EvmParams(weights="random", color_low=3.0, color_high=0.8)
    p = EvmParams(weights="random")
    assert (p.color_low, p.color_high, p.color_alpha, p.motion_low, p.motion_high, p.motion_alpha) == (
        0.8,
        3.0,
        5.0,
        0.8,
        5.0,
        5.0,
    )


def test_stores_carry_embed_and_evm_rows_with_validity(media, tmp_path):
    import av
    import h5py
    from media import astronaut_frame, make_video

    from vidaffect.commands.extract import extract

    face = astronaut_frame().astype(np.float32)
    t = np.arange(20) / 25.0
    # A face whose brightness pulses at 2 Hz, gone for frames 8-11.
    frames = [np.clip(face * (1 + 0.08 * np.sin(2 * np.pi * 2.0 * s)), 0, 255).astype(np.uint8) for s in t]
    for i in range(8, 12):
        frames[i] = np.full_like(frames[i], 128)
    clip = make_video(media / "pulse.mp4", frames, fps=25)
    store = tmp_path / "features"
    summary = extract(
        [clip],
        store,
        stages=["embed", "evm"],
        device="cpu",
        params={"embed": {"weights": "random"}, "evm": {"weights": "random", "save_video": True}},
    )
    assert [r.status for r in summary.results] == ["done"], summary.report()
    with h5py.File(store / "pulse.h5", "r") as h5:
        has_face = h5["face/valid"][()] & np.isfinite(h5["face/bbox"][()]).all(axis=1)
        assert has_face[:8].sum() >= 6 and not has_face[8:12].any()
        features = {}
        for group in ("embed", "evm"):
            rows, valid = h5[f"{group}/resnet50"][()], h5[f"{group}/valid"][()]
            assert rows.shape == (20, 2048) and rows.dtype == np.float16
            assert valid.dtype == bool and valid.tolist() == has_face.tolist()
            assert np.isfinite(rows[valid]).all() and np.isnan(rows[~valid]).all()
            assert h5[group].attrs["weights"].startswith("random")
            assert '"weights": "random"' in h5[group].attrs["params"]
            features[group] = rows[valid].astype(np.float32)
        assert h5["evm"].attrs["fps"] == pytest.approx(25.0)
    # The magnified crops are not the plain ones.
    assert np.abs(features["evm"] - features["embed"]).max() > 0.01
    with av.open(str(store / "pulse.evm.mp4")) as container:
        video = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(video) == 20 and video[0].shape == (224, 224, 3)
    assert all(video[i].max() < 20 for i in range(8, 12))  # black where there is no face
    assert video[0].mean() > 40


def test_an_aborted_run_leaves_no_partial_magnified_video(tmp_path):
    from vidaffect.bench.media import astronaut_frame
    from vidaffect.io.video import VideoInfo
    from vidaffect.stages.base import Batch
    from vidaffect.stages.evm import EvmStage

    n = 24  # enough frames for the H.264 encoder to emit its first packets
    stage = EvmStage(EvmParams(weights="random", save_video=True, batch_size=n), "cpu")
    info = VideoInfo(str(tmp_path / "a.mp4"), "a", 1, 0.0, 640, 360, 25.0, 4, 0.16, 0, "h264", False)
    run = stage.open(info, tmp_path / "a.h5")
    images = np.stack([astronaut_frame()] * n)
    box = np.tile(np.array([[180, 40, 110, 130]], np.float32), (n, 1))
    run.process(Batch(0, np.arange(n) / 25.0, images, {"face/bbox": box, "face/valid": np.ones(n, bool)}))
    assert (tmp_path / "a.evm.mp4.tmp").exists()
    run.abort()
    assert not list(tmp_path.glob("a.evm.mp4*"))
