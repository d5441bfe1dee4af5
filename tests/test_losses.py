import math

import numpy as np
import pytest
import torch

from vidaffect.learn.losses import (
    LOSSES,
    ccc_per_dim,
    get_loss,
    noninertial_ext_terms,
    noninertial_terms,
)


def t(rows):
    """(1, S, 2) float64 tensor from a list of (valence, arousal)."""
    return torch.tensor([rows], dtype=torch.float64)


# One sequence worked by hand:
#   x = (0.6, 0.8), (0, 1), (0.5, 0)      y = (0, 1), (0, 1), (0, 0.5)
# distance: |x-y| = sqrt(.36+.04)=sqrt(.4), 0, sqrt(.25+.25)=sqrt(.5)
# velocity: |x1-x0| = sqrt(.36+.04)=sqrt(.4), |y1-y0| = 0  -> sqrt(.4)
#           |x2-x1| = sqrt(.25+1)=sqrt(1.25), |y2-y1| = .5 -> sqrt(1.25)-.5
# direction: x^ = x (unit), y^ = (0,1): |0.6*1 - 0.8*0| = .6 ; 0 ; x^=(1,0), y^=(0,1): 1
X = [(0.6, 0.8), (0.0, 1.0), (0.5, 0.0)]
Y = [(0.0, 1.0), (0.0, 1.0), (0.0, 0.5)]
DISTANCE = (math.sqrt(0.4) + 0 + math.sqrt(0.5)) / 3
VELOCITY = (math.sqrt(0.4) + math.sqrt(1.25) - 0.5) / 2
DIRECTION = (0.6 + 0 + 1) / 3


def test_noninertial_terms_by_hand():
    terms = noninertial_terms(t(X), t(Y))
    assert terms["distance"].item() == pytest.approx(DISTANCE, abs=1e-7)
    assert terms["velocity"].item() == pytest.approx(VELOCITY, abs=1e-7)
    assert terms["direction"].item() == pytest.approx(DIRECTION, abs=1e-7)
    assert get_loss("noninertial")(t(X), t(Y)).item() == pytest.approx(DISTANCE + VELOCITY + DIRECTION, abs=1e-7)


def test_direction_is_sine_of_angle_difference():
    # points at 30 and 90 degrees: |sin(60 deg)|, whatever their lengths
    x = t([(0.5 * math.cos(math.pi / 6), 0.5 * math.sin(math.pi / 6))])
    y = t([(0.0, 0.9)])
    assert noninertial_terms(x, y)["direction"].item() == pytest.approx(math.sin(math.pi / 3), abs=1e-7)
    # at the origin the guard keeps it finite (0)
    assert noninertial_terms(t([(0.0, 0.0)]), y)["direction"].item() == 0.0


def test_noninertial_masks_frames_and_pairs():
    # mask out the middle frame: distance/direction over frames 0 and 2, no valid pair
    mask = torch.tensor([[True, False, True]])
    terms = noninertial_terms(t(X), t(Y), mask)
    assert terms["distance"].item() == pytest.approx((math.sqrt(0.4) + math.sqrt(0.5)) / 2, abs=1e-7)
    assert terms["direction"].item() == pytest.approx((0.6 + 1) / 2, abs=1e-7)
    assert terms["velocity"].item() == 0.0
    # mask out the last frame: one pair (0, 1) left
    terms = noninertial_terms(t(X), t(Y), torch.tensor([[True, True, False]]))
    assert terms["velocity"].item() == pytest.approx(math.sqrt(0.4), abs=1e-7)


@pytest.mark.parametrize("name", list(LOSSES))
def test_masked_frames_do_not_matter(name):
    rng = np.random.default_rng(0)
    pred = torch.tensor(rng.uniform(-1, 1, (3, 10, 2)), requires_grad=True)
    target = torch.tensor(rng.uniform(-1, 1, (3, 10, 2)))
    mask = torch.tensor(rng.random((3, 10)) > 0.3)
    loss = get_loss(name)(pred, target, mask)
    changed_pred = pred.detach().clone()
    changed_target = target.clone()
    changed_pred[~mask] = 0.77
    changed_target[~mask] = float("nan")  # unannotated frames may hold anything
    again = get_loss(name)(changed_pred, changed_target, mask)
    assert again.item() == pytest.approx(loss.item(), abs=1e-12)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~mask] == 0).all()  # no gradient reaches masked frames
    assert pred.grad[mask].abs().sum() > 0


def test_mse_by_hand_and_mask():
    x, y = t(X), t(Y)
    expected = np.mean((np.array(X) - np.array(Y)) ** 2)
    assert get_loss("mse")(x, y).item() == pytest.approx(expected)
    mask = torch.tensor([[False, True, True]])
    assert get_loss("mse")(x, y, mask).item() == pytest.approx(np.mean((np.array(X[1:]) - np.array(Y[1:])) ** 2))


def numpy_ccc(a, b):
    ma, mb = a.mean(), b.mean()
    return 2 * np.mean((a - ma) * (b - mb)) / (a.var() + b.var() + (ma - mb) ** 2)


def test_ccc_loss_matches_numpy_over_whole_batch():
    rng = np.random.default_rng(1)
    pred = rng.uniform(-1, 1, (4, 7, 2))
    target = 0.5 * pred + rng.normal(0, 0.3, (4, 7, 2)) + 0.1
    mask = rng.random((4, 7)) > 0.2
    per_dim = ccc_per_dim(torch.tensor(pred), torch.tensor(target), torch.tensor(mask)).numpy()
    expected = [numpy_ccc(pred[..., d][mask], target[..., d][mask]) for d in range(2)]
    assert per_dim == pytest.approx(expected, abs=1e-7)
    loss = get_loss("ccc")(torch.tensor(pred), torch.tensor(target), torch.tensor(mask)).item()
    assert loss == pytest.approx(1 - np.mean(expected), abs=1e-7)
    # perfect prediction: loss 0; negated prediction: concordance -1 each -> loss 2
    y = torch.tensor(target)
    assert get_loss("ccc")(y, y).item() == pytest.approx(0, abs=1e-6)
    centred = y - y.mean(dim=(0, 1))
    assert get_loss("ccc")(-centred, centred).item() == pytest.approx(2, abs=1e-6)


def test_noninertial_ext_terms_by_hand():
    # x = (0,0),(1,0),(1,1)   y = (0,0),(0,1),(0,1)
    # D = mean((x-y)^2) = (0+0 + 1+1 + 1+0)/6 = 0.5
    # dx = (1,0),(0,1)  dy = (0,1),(0,0) ; dx-dy = (1,-1),(0,1) -> |mean| = |1/4| = .25
    # alpha: dx_v*dy_a - dx_a*dy_v = 1*1-0*0 = 1 ; 0*0-1*0 = 0 -> |mean| = .5
    # d2x = (-1,1) d2y = (0,-1) ; d2x-d2y = (-1,2) -> |mean| = .5
    x = t([(0, 0), (1, 0), (1, 1)])
    y = t([(0, 0), (0, 1), (0, 1)])
    terms = noninertial_ext_terms(x, y)
    assert {k: v.item() for k, v in terms.items()} == pytest.approx(
        {"distance": 0.5, "velocity": 0.25, "alpha": 0.5, "acceleration": 0.5}
    )
    assert get_loss("noninertial-ext")(x, y).item() == pytest.approx((0.5 + 0.25 + 0.5 + 0.5) / 4)
    # masking the last frame leaves one pair and no triple
    terms = noninertial_ext_terms(x, y, torch.tensor([[True, True, False]]))
    assert terms["velocity"].item() == pytest.approx(0.0)  # mean of (1, -1)
    assert terms["alpha"].item() == pytest.approx(1.0)
    assert terms["acceleration"].item() == 0.0


def test_bad_shapes_and_names_are_errors():
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("huber")
    with pytest.raises(ValueError, match=r"\(B, S, 2\)"):
        get_loss("mse")(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="mask"):
        get_loss("mse")(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.ones(1, 4, dtype=torch.bool))
