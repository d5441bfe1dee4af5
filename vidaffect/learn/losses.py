"""Training losses on (valence, arousal) sequences (thesis §3.1 and appendix A; formulas in README.md).

Every loss takes ``pred`` and ``target`` shaped (B, S, 2) (valence, arousal) and an
optional ``mask`` (B, S) bool of the frames that count (annotated, not padding), and
returns a scalar tensor.  Masked-out frames never contribute, whatever their values
(NaN included).  Each term is averaged where it is defined; a term with nothing to
average over is 0.

* ``mse``: mean of (x - y)^2 over valid frames and both dimensions.
* ``ccc``: 1 - mean(CCC_valence, CCC_arousal), CCC over all valid frames of the batch
  with population statistics.
* ``noninertial`` = mean distance + mean velocity + mean direction:
  distance ``||x_t - y_t||`` and direction ``|x^_t x y^_t|`` (2-D cross product of the
  unit vectors, x^ = x / (||x|| + 1e-8)) over valid frames; velocity
  ``| ||x_t - x_{t-1}|| - ||y_t - y_{t-1}|| |`` over consecutive pairs of valid frames.
* ``noninertial-ext`` = (D + V + A + Ac) / 4 with D = mean (x - y)^2,
  V = |mean(dx - dy)|, A = |mean(dx_v dy_a - dx_a dy_v)|, Ac = |mean(d2x - d2y)|, where
  d and d2 are first and second differences along time over runs of valid frames.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vidaffect.errors import ParameterError

Loss = Callable[..., torch.Tensor]
UNIT_EPS = 1e-8  # guards the unit vector of a point at the origin (see README.md)
CCC_EPS = 1e-8  # keeps CCC finite when prediction and target are both constant


def _prepare(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes; the mask as bool (B, S) and the target with masked frames zeroed
    (so NaN annotations cannot leak into gradients)."""
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred and target must both be (B, S, 2), got {tuple(pred.shape)} and {tuple(target.shape)}")
    if mask is None:
        mask = torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)
    elif mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must be (B, S) = {tuple(pred.shape[:2])}, got {tuple(mask.shape)}")
    mask = mask.bool()
    return mask, torch.where(mask[..., None], target, torch.zeros_like(target))


def _mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` (same shape); 0 when nothing is masked in."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1)


def _diff(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First difference along time and where it is defined (both frames valid)."""
    return x[:, 1:] - x[:, :-1], mask[:, 1:] & mask[:, :-1]


def mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    mask, target = _prepare(pred, target, mask)
    return _mean((pred - target) ** 2, mask[..., None].expand_as(pred))


def ccc_per_dim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(2,) CCC of valence and arousal over all valid frames of the batch."""
    mask, target = _prepare(pred, target, mask)
    m = mask[..., None].to(pred.dtype)
    n = m.sum().clamp(min=1)
    mx = (pred * m).sum(dim=(0, 1)) / n
    my = (target * m).sum(dim=(0, 1)) / n
    dx, dy = (pred - mx) * m, (target - my) * m
    vx, vy = (dx**2).sum(dim=(0, 1)) / n, (dy**2).sum(dim=(0, 1)) / n
    cov = (dx * dy).sum(dim=(0, 1)) / n
    return 2 * cov / (vx + vy + (mx - my) ** 2 + CCC_EPS)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return 1 - ccc_per_dim(pred, target, mask).mean()


def noninertial_terms(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The three terms of the non-inertial loss (thesis eq. 3.3-3.5): ``distance``,
    ``velocity`` and ``direction``, each a scalar averaged where defined."""
    mask, target = _prepare(pred, target, mask)
    distance = torch.linalg.vector_norm(pred - target, dim=-1)
    dx, pairs = _diff(pred, mask)
    dy, _ = _diff(target, mask)
    velocity = (torch.linalg.vector_norm(dx, dim=-1) - torch.linalg.vector_norm(dy, dim=-1)).abs()
    ux = pred / (torch.linalg.vector_norm(pred, dim=-1, keepdim=True) + UNIT_EPS)
    uy = target / (torch.linalg.vector_norm(target, dim=-1, keepdim=True) + UNIT_EPS)
    direction = (ux[..., 0] * uy[..., 1] - ux[..., 1] * uy[..., 0]).abs()
    return {"distance": _mean(distance, mask), "velocity": _mean(velocity, pairs), "direction": _mean(direction, mask)}


def noninertial_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return torch.stack(list(noninertial_terms(pred, target, mask).values())).sum()


def noninertial_ext_terms(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The four terms of the extended loss (thesis appendix A): ``distance``,
    ``velocity``, ``alpha`` (cross product of the two velocity vectors) and
    ``acceleration``."""
    mask, target = _prepare(pred, target, mask)
    dx, pairs = _diff(pred, mask)
    dy, _ = _diff(target, mask)
    d2x, triples = _diff(dx, pairs)
    d2y, _ = _diff(dy, pairs)
    both = pairs[..., None].expand_as(dx)
    return {
        "distance": _mean((pred - target) ** 2, mask[..., None].expand_as(pred)),
        "velocity": _mean(dx - dy, both).abs(),
        "alpha": _mean(dx[..., 0] * dy[..., 1] - dx[..., 1] * dy[..., 0], pairs).abs(),
        "acceleration": _mean(d2x - d2y, triples[..., None].expand_as(d2x)).abs(),
    }


def noninertial_ext_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return torch.stack(list(noninertial_ext_terms(pred, target, mask).values())).mean()


LOSSES: dict[str, Loss] = {
    "mse": mse_loss,
    "ccc": ccc_loss,
    "noninertial": noninertial_loss,
    "noninertial-ext": noninertial_ext_loss,
}


def get_loss(name: str) -> Loss:
    """The loss called ``name`` (``mse``, ``ccc``, ``noninertial``, ``noninertial-ext``):
    a callable ``(pred, target, mask=None) -> scalar tensor``."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ParameterError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}") from None
