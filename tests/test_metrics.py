import math

import numpy as np
import pytest

from vidaffect.learn.metrics import ccc, frame_metrics, mse, pcc, rmse, sagr, summarize

# x = 1,2,3,4  y = 2,2,4,4
# means 2.5, 3; population variances 1.25, 1; covariance (1.5*1 + .5*1 + .5*1 + 1.5*1)/4 = 1
X = np.array([1.0, 2.0, 3.0, 4.0])
Y = np.array([2.0, 2.0, 4.0, 4.0])


def test_metrics_by_hand():
    assert ccc(X, Y) == pytest.approx(2 * 1 / (1.25 + 1 + 0.25))
    assert pcc(X, Y) == pytest.approx(1 / math.sqrt(1.25 * 1))
    assert mse(X, Y) == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert rmse(X, Y) == pytest.approx(math.sqrt(0.5))
    assert sagr(np.array([0.5, -0.2, 0.1, -0.3]), np.array([0.1, 0.4, 0.2, -0.9])) == pytest.approx(0.75)


def test_degenerate_inputs():
    assert math.isnan(pcc(np.ones(3), X[:3]))  # constant prediction: correlation undefined
    assert ccc(np.zeros(4), Y) == 0.0  # but concordance is defined (no covariance)
    assert math.isnan(ccc(np.array([]), np.array([])))
    with pytest.raises(ValueError, match="length"):
        ccc(X, Y[:3])


def test_summarize_pools_and_averages_and_skips_unannotated():
    rng = np.random.default_rng(0)
    a_pred, a_true = rng.uniform(-1, 1, (50, 2)), rng.uniform(-1, 1, (50, 2))
    b_pred, b_true = rng.uniform(-1, 1, (30, 2)), rng.uniform(-1, 1, (30, 2))
    b_true_marked = b_true.copy()
    b_true_marked[:5] = -5  # Aff-Wild2 unannotated
    b_true_marked[5, 1] = np.nan
    b_pred_marked = b_pred.copy()
    b_pred_marked[:6] = 100.0  # must not matter
    out = summarize({"a": (a_pred, a_true), "b": (b_pred_marked, b_true_marked), "empty": (a_pred[:2], np.full((2, 2), -5.0))})
    assert out["videos"] == 2 and out["frames"] == 50 + 24
    pooled_pred = np.concatenate([a_pred, b_pred[6:]])
    pooled_true = np.concatenate([a_true, b_true[6:]])
    assert out["pooled"]["valence_ccc"] == pytest.approx(ccc(pooled_pred[:, 0], pooled_true[:, 0]))
    assert out["pooled"]["arousal_rmse"] == pytest.approx(rmse(pooled_pred[:, 1], pooled_true[:, 1]))
    per_a = ccc(a_pred[:, 1], a_true[:, 1])
    per_b = ccc(b_pred[6:, 1], b_true[6:, 1])
    assert out["video_mean"]["arousal_ccc"] == pytest.approx((per_a + per_b) / 2)
    assert out["pooled"]["ccc_mean"] == pytest.approx((out["pooled"]["valence_ccc"] + out["pooled"]["arousal_ccc"]) / 2)
    assert set(out["per_video"]) == {"a", "b"}


def test_frame_metrics_keys_and_errors():
    m = frame_metrics(np.c_[X, -X] / 4, np.c_[Y, -Y] / 4)
    assert set(m) == {f"{d}_{k}" for d in ("valence", "arousal") for k in ("ccc", "pcc", "rmse", "mse", "sagr")} | {"ccc_mean"}
    assert m["valence_ccc"] == pytest.approx(m["arousal_ccc"])
    with pytest.raises(ValueError):
        frame_metrics(X, Y)
    with pytest.raises(ValueError, match="no annotated frames"):
        summarize({"a": (np.zeros((3, 2)), np.full((3, 2), np.nan))})
