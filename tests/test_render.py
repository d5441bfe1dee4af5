"""`vidaffect render`: the input's frames, duration and audio, with the overlay drawn
where the landmarks are; predictions add a strip; wrong inputs are clear errors."""

import av
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from media import astronaut_frame, make_video, tone

from vidaffect.cli import main
from vidaffect.commands.extract import extract
from vidaffect.commands.render import render
from vidaffect.errors import InputNotFound, ParameterError
from vidaffect.io.predictions import CsvWriter
from vidaffect.io.video import VideoSource, decode, probe
from vidaffect.visual.overlay import LANDMARK_COLOR

FRAMES = 8
FACE = [True] * 3 + [False] * 2 + [True] * 3


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    photo = astronaut_frame()
    blank = np.full_like(photo, 128)
    make_video(root / "videos" / "clip.mp4", [photo if f else blank for f in FACE], audio=tone(FRAMES / 25))
    assert extract([root / "videos"], root / "features", ["face", "pose", "head", "gaze"]).exit_code == 0
    return root


def frames_of(path):
    info = probe(VideoSource(path, "x"))
    return info, [f.image for f in decode(info, audio=False)]


def write_predictions(path, video_id, n):
    writer = CsvWriter(path)
    with writer.video(video_id) as write:
        t = np.arange(n) / 25
        write(0, t, np.stack([np.sin(t), np.cos(t)], axis=1) * 0.8, np.ones(n, bool))
    writer.close()


def test_render_keeps_frames_duration_and_audio_and_draws_on_the_landmarks(project, tmp_path):
    out = render(project / "videos" / "clip.mp4", tmp_path / "r.mp4", store=project / "features")
    src_info, src = frames_of(project / "videos" / "clip.mp4")
    info, rendered = frames_of(out)
    assert len(rendered) == len(src) == FRAMES and (info.width, info.height) == (src_info.width, src_info.height)
    assert info.duration == pytest.approx(src_info.duration, abs=0.03)
    with av.open(str(out)) as c, av.open(str(project / "videos" / "clip.mp4")) as s:
        assert c.streams.audio and c.streams.audio[0].codec_context.name == s.streams.audio[0].codec_context.name
        assert float(c.duration) / 1e6 == pytest.approx(float(s.duration) / 1e6, abs=0.03)
    with h5py.File(project / "features" / "clip.h5") as h5:
        landmarks = h5["face/landmarks"][0, :68]
    x, y = np.round(landmarks).astype(int).T
    cyan = np.asarray(LANDMARK_COLOR, float)
    drawn = np.linalg.norm(rendered[0][y, x].astype(float) - cyan, axis=1)
    before = np.linalg.norm(src[0][y, x].astype(float) - cyan, axis=1)
    assert np.median(drawn) < 60 and np.median(before) > 150  # the dots sit on the landmarks
    # away from every overlay the picture is the input's
    assert np.abs(rendered[0][300:, :100].astype(int) - src[0][300:, :100]).mean() < 3
    # a frame without a face says so (a dark label in the corner), nothing drawn on it elsewhere
    assert rendered[3][8:20, 8:40].mean() < 60 < src[3][8:20, 8:40].mean()
    assert np.abs(rendered[3][100:].astype(int) - src[3][100:]).mean() < 3


def test_predictions_add_a_strip_and_must_belong_to_the_video(project, tmp_path):
    write_predictions(tmp_path / "ok.csv", "clip", FRAMES)
    out = render(project / "videos" / "clip.mp4", tmp_path / "p.mp4", store=project / "features", predictions=tmp_path / "ok.csv", layers=("face",))
    info, rendered = frames_of(out)
    assert len(rendered) == FRAMES and info.height == 360 + 120 and rendered[0][360:].std() > 10
    write_predictions(tmp_path / "other.csv", "another", FRAMES + 5)
    with pytest.raises(ParameterError, match="has 13 frames of predictions but the video has 8; the predictions belong to another video"):
        render(project / "videos" / "clip.mp4", tmp_path / "x.mp4", store=project / "features", predictions=tmp_path / "other.csv")
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.mp4.tmp").exists()


def test_a_missing_stage_or_store_names_the_extract_command(project, tmp_path):
    assert extract([project / "videos"], tmp_path / "face_only", ["face"]).exit_code == 0
    args = ["render", str(project / "videos" / "clip.mp4"), "--store", str(tmp_path / "face_only"), "--out", str(tmp_path / "o.mp4")]
    result = CliRunner().invoke(main, [*args, "--draw", "face,head,gaze"])
    assert result.exit_code == 2
    assert "has no head, gaze stage" in result.output and "--stages head,gaze" in result.output
    assert not (tmp_path / "o.mp4").exists()
    # without --draw, what the store has is drawn
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(frames_of(tmp_path / "o.mp4")[1]) == FRAMES
    with pytest.raises(InputNotFound, match="no feature store for .* run `vidaffect extract .* --stages face`"):
        render(project / "videos" / "clip.mp4", tmp_path / "o.mp4", store=tmp_path / "empty", layers=("face",))


def test_audio_mp4_cannot_hold_is_carried_as_aac(tmp_path):
    # PCM audio in Matroska: MP4 has no place for it, so render re-encodes it.
    path = tmp_path / "videos" / "pcm.mkv"
    path.parent.mkdir()
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 640, 360, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=22050, layout="mono")
        samples = (tone(0.4) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts = 22050, 0
        for packet in audio.encode(frame):
            out.mux(packet)
        for image in [astronaut_frame()] * 10:
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)
    assert extract([path], tmp_path / "f", ["face"]).exit_code == 0
    out = render(path, tmp_path / "pcm.mp4", store=tmp_path / "f", layers=("face",))
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        assert sum(f.samples for f in c.decode(audio=0)) == pytest.approx(0.4 * 22050, abs=2048)
    assert len(frames_of(out)[1]) == 10
