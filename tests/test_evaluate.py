"""`vidaffect evaluate` against metrics computed by hand."""

import json
import math

import pytest
from click.testing import CliRunner

from vidaffect.cli import main
from vidaffect.commands.evaluate import evaluate

HEADER = "video,frame,timestamp,valence,arousal,face\n"


def write_csv(path, rows):
    """rows: (video, frame, valence, arousal)."""
    lines = [f"{v},{f},{f / 25:.6f},{va:.6f},{ar:.6f},1\n" for v, f, va, ar in rows]
    path.write_text(HEADER + "".join(lines))
    return path


def write_affwild2(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("valence,arousal\n" + "".join(f"{v},{a}\n" for v, a in values))


@pytest.fixture
def case(tmp_path):
    """Video a: 5 frames, frame 4 unannotated (-5); video b: no annotation file.

    valence  pred .1 .2 .3 .4  annotation .2 .2 .4 .4   means .25, .3; population
             variances .0125, .01; covariance .01 -> CCC 2(.01)/(.0125+.01+.0025) = .8,
             PCC .01/sqrt(.0125 * .01) = .894427, MSE (.01+0+.01+0)/4 = .005, SAGR 1
    arousal  pred .5 -.5 .5 -.5  annotation .5 .5 -.5 -.5  covariance 0 -> CCC 0,
             PCC 0, MSE (0+1+1+0)/4 = .5, SAGR 2/4
    """
    pred = [(0.1, 0.5), (0.2, -0.5), (0.3, 0.5), (0.4, -0.5), (0.9, 0.0)]
    write_csv(tmp_path / "r.csv", [("a", f, v, a) for f, (v, a) in enumerate(pred)] + [("b", 0, 0.1, 0.1), ("b", 1, 0.2, 0.2)])
    write_affwild2(tmp_path / "ann" / "Train_Set" / "a.txt", [(0.2, 0.5), (0.2, 0.5), (0.4, -0.5), (0.4, -0.5), (-5, -5)])
    return tmp_path


EXPECTED = {
    "valence_ccc": 0.8, "valence_pcc": 0.894427191, "valence_rmse": math.sqrt(0.005), "valence_mse": 0.005, "valence_sagr": 1.0,
    "arousal_ccc": 0.0, "arousal_pcc": 0.0, "arousal_rmse": math.sqrt(0.5), "arousal_mse": 0.5, "arousal_sagr": 0.5,
}


def test_metrics_match_hand_computed_values(case):
    table = evaluate(case / "r.csv", case / "ann", json_out=case / "m.json")
    result = json.loads((case / "m.json").read_text())
    for key, value in EXPECTED.items():
        assert result["pooled"][key] == pytest.approx(value, abs=1e-6), key
        assert result["video_mean"][key] == pytest.approx(value, abs=1e-6), key  # one video: the same
    assert result["abaw_score"] == pytest.approx(0.4)
    assert result["videos"] == 1 and result["frames"] == 4
    assert result["skipped"] == {"b": "no annotation file"}
    assert table.startswith("ABAW score (mean of pooled valence and arousal CCC): 0.4000")
    lines = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.split()[:1] in (["CCC"], ["MSE"], ["SAGR"])}
    assert lines["CCC"] == ["0.8000", "0.0000", "0.8000", "0.0000"]
    assert lines["MSE"] == ["0.0050", "0.5000", "0.0050", "0.5000"]
    assert "  b: no annotation file" in table


def test_pooled_and_per_video_ccc_differ(tmp_path):
    """Within each video valence is followed (p) or mirrored (q): per-video CCC 1 and -1,
    mean 0; pooled, the offset between the videos dominates: 2(.25)/(2 * 1.54/6)."""
    rows = [("p", i, v, v) for i, v in enumerate([0.4, 0.5, 0.6])] + [("q", i, v, v) for i, v in enumerate([-0.6, -0.5, -0.4])]
    write_csv(tmp_path / "r.csv", rows)
    write_affwild2(tmp_path / "ann" / "p.txt", [(v, v) for v in [0.4, 0.5, 0.6]])
    write_affwild2(tmp_path / "ann" / "q.txt", [(v, v) for v in [-0.4, -0.5, -0.6]])
    evaluate(tmp_path / "r.csv", tmp_path / "ann", json_out=tmp_path / "m.json")
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["per_video"]["p"]["valence_ccc"] == pytest.approx(1.0)
    assert result["per_video"]["q"]["valence_ccc"] == pytest.approx(-1.0)
    assert result["video_mean"]["valence_ccc"] == pytest.approx(0.0, abs=1e-9)
    assert result["pooled"]["valence_ccc"] == pytest.approx(0.5 / (2 * 1.54 / 6))
    assert result["abaw_score"] == pytest.approx(0.5 / (2 * 1.54 / 6))


def test_affwild2_folder_evaluates_like_the_csv(case):
    write_affwild2(case / "aw" / "a.txt", [(0.1, 0.5), (0.2, -0.5), (0.3, 0.5), (0.4, -0.5), (0.9, 0.0)])
    evaluate(case / "aw", case / "ann", json_out=case / "m.json")
    result = json.loads((case / "m.json").read_text())
    for key, value in EXPECTED.items():
        assert result["pooled"][key] == pytest.approx(value, abs=1e-6), key


def test_nothing_annotated_is_a_clear_error(case):
    write_affwild2(case / "ann" / "Train_Set" / "a.txt", [(-5, -5)] * 5)
    with pytest.raises(ValueError, match="no annotated frames"):
        evaluate(case / "r.csv", case / "ann")
    (case / "elsewhere").mkdir()
    with pytest.raises(ValueError, match="no annotations for any of the 2 video"):
        evaluate(case / "r.csv", case / "elsewhere")


def test_annotated_frame_without_prediction_is_an_error(case):
    write_csv(case / "gap.csv", [("a", 0, 0.1, 0.1), ("a", 2, 0.1, 0.1), ("a", 3, 0.2, 0.2)])
    with pytest.raises(ValueError, match="gap.csv: video 'a' has no prediction for 1 annotated frame.*frame 1"):
        evaluate(case / "gap.csv", case / "ann")


def test_cli_writes_json_and_reports_bad_files(case):
    runner = CliRunner()
    result = runner.invoke(main, ["evaluate", str(case / "r.csv"), "--annotations", str(case / "ann"), "--json", str(case / "o.json")])
    assert result.exit_code == 0, result.output
    assert "ABAW score" in result.output and json.loads((case / "o.json").read_text())["abaw_score"] == pytest.approx(0.4)
    (case / "bad.csv").write_text("frame,valence\n1,2\n")
    result = runner.invoke(main, ["evaluate", str(case / "bad.csv"), "--annotations", str(case / "ann")])
    assert result.exit_code == 2 and "bad.csv: not a vidaffect predictions CSV" in result.output
    (case / "bad.csv").write_text(HEADER + "a,zero,0,0.1,0.1,1\n")
    result = runner.invoke(main, ["evaluate", str(case / "bad.csv"), "--annotations", str(case / "ann")])
    assert result.exit_code == 2 and "bad.csv: line 2" in result.output
