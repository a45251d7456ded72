"""Input checks shared by the metrics and the calibrators: a bad argument gets a ValueError naming it."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_tensor(values: Any, name: str) -> torch.Tensor:
    """A detached tensor from a tensor or anything NumPy can read as numbers."""
    if isinstance(values, torch.Tensor):
        return values.detach()
    try:
        return torch.as_tensor(np.asarray(values))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name}: expected a tensor or array of numbers; got {type(values).__name__}") from err


def check_scores(t: torch.Tensor, name: str, empty: str, finite: str) -> torch.Tensor:
    """[N, K] scores (logits or probabilities) with N >= 1, K >= 2, all finite; `empty` and `finite` complete the
    messages for an empty split and for NaN/inf values."""
    if t.dim() != 2:
        raise ValueError(f"{name}: expected shape [N, K] (samples x classes); got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name}: {empty} (shape {tuple(t.shape)}); valid: at least one sample")
    if t.shape[1] < 2:
        raise ValueError(f"{name}: {t.shape[1]} class column(s); valid: K >= 2 columns")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or infinite values; valid: {finite}")
    return t


def check_labels(labels: Any, n: int, num_classes: int, name: str = "labels") -> torch.Tensor:
    """n integer class indices in [0, num_classes), as int64 on the CPU."""
    y = as_tensor(labels, name).cpu()
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{name}: expected shape [{n}] (one class index per row of the scores); "
                         f"got shape {tuple(y.shape)}")
    if y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{name}: expected integer class indices; got dtype {y.dtype}")
    if y.is_floating_point() and (not torch.isfinite(y).all() or not torch.equal(y, y.round())):
        raise ValueError(f"{name}: expected integer class indices; got non-integer values")
    y = y.to(torch.int64)
    lo, hi = y.min().item(), y.max().item()
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name}: class indices in [{lo}, {hi}]; valid: integers in [0, {num_classes - 1}]")
    return y
