"""Accuracy and calibration metrics: ECE (equal-width and equal-mass bins), classwise ECE, MCE, NLL, Brier.

Conventions (docs/design.md, "Metric conventions"):

- Equal-width bins are ((m-1)/M, m/M], m = 1..M (Guo et al. 2017; Mukhoti et al. 2020's code); a confidence of
  exactly 0 goes to the first bin. torchmetrics bins [a, b) instead, so the two agree only away from bin edges.
- Confidence is the top-1 probability and the prediction its argmax (first index on ties).
- The metric functions take probabilities ``probs [N, K]`` and integer ``labels [N]``; `summary` takes logits and
  computes the softmax in float64, because in fp16 confidences above ~0.9998 round to 1.0.
- Every function returns Python floats (or NumPy arrays for `reliability_bins`), computed in float64 on the CPU.

ECE is noisy at small n (docs/design.md): `summary` reports ``n`` so that every ECE travels with its sample size.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gce_search.trainables.validation import as_tensor, check_labels, check_scores

__all__ = [
    "accuracy",
    "ece",
    "adaptive_ece",
    "classwise_ece",
    "mce",
    "nll",
    "brier",
    "reliability_bins",
    "reliability_diagram",
    "equal_width_bins",
    "equal_width_edges",
    "summary",
]

# Rows of a probability matrix may miss 1 by this much (fp16 softmax outputs are off by up to ~1e-3).
_ROW_SUM_TOLERANCE = 2e-3
# Probabilities may leave [0, 1] by float rounding only.
_RANGE_TOLERANCE = 1e-6


def _as_float64(values: Any, name: str) -> torch.Tensor:
    t = as_tensor(values, name)
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected real numbers; got dtype {t.dtype}")
    return t.to(device="cpu", dtype=torch.float64)


def _check_probs(probs: Any, name: str = "probs") -> torch.Tensor:
    p = check_scores(_as_float64(probs, name), name, empty="no samples", finite="probabilities in [0, 1]")
    lo, hi = p.min().item(), p.max().item()
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{name}: values in [{lo:.4g}, {hi:.4g}] are not probabilities; valid: rows of softmax outputs in [0, 1] "
            "(for logits use metrics.summary(logits, labels))"
        )
    row_error = (p.sum(dim=1) - 1.0).abs().max().item()
    if row_error > _ROW_SUM_TOLERANCE:
        raise ValueError(
            f"{name}: rows must sum to 1 (largest deviation {row_error:.3g}); "
            "valid: softmax outputs, one row per sample"
        )
    return p.clamp(0.0, 1.0)


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins: got {n_bins!r}; valid: an integer >= 1 (15 is the usual choice, 20 also common)")
    return int(n_bins)


def _prepare(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p = _check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    return p, y


def equal_width_edges(n_bins: int) -> np.ndarray:
    """The M + 1 edges m / M of the equal-width bins, float64."""
    # m / M, correctly rounded: linspace's edges are off by an ulp at some m (0.55 of 20 bins comes out as
    # 0.5499999999999999), which moves a confidence sitting on that edge into the next bin.
    return np.arange(n_bins + 1, dtype=np.float64) / n_bins


def equal_width_bins(confidence: Any, n_bins: int) -> np.ndarray:
    """The equal-width bin (0 .. M-1) of each confidence of a NumPy array, as `ece` bins them: bin m-1 holds
    ((m-1)/M, m/M]; a value of exactly 0 goes to bin 0."""
    # searchsorted(side="left") returns i with edges[i-1] < v <= edges[i]: the left-open, right-closed convention.
    return np.searchsorted(equal_width_edges(_check_n_bins(n_bins))[1:-1], np.asarray(confidence, dtype=np.float64),
                           side="left")


def _equal_width_bin_index(values: torch.Tensor, n_bins: int) -> torch.Tensor:
    """equal_width_bins for a tensor: bin m-1 holds ((m-1)/M, m/M]; a value of exactly 0 goes to bin 0."""
    # bucketize(right=False) returns i with edges[i-1] < v <= edges[i]: the left-open, right-closed convention.
    return torch.bucketize(values, torch.from_numpy(equal_width_edges(n_bins)[1:-1]), right=False)


def _top1(p: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    confidence, prediction = p.max(dim=1)
    return confidence, (prediction == y).to(torch.float64)


def _bin_sums(bin_index: torch.Tensor, confidence: torch.Tensor, correct: torch.Tensor,
              n_bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    count = torch.bincount(bin_index, minlength=n_bins).to(torch.float64)
    conf_sum = torch.bincount(bin_index, weights=confidence, minlength=n_bins)
    correct_sum = torch.bincount(bin_index, weights=correct, minlength=n_bins)
    return count, conf_sum, correct_sum


def _ece(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int) -> float:
    _, conf_sum, correct_sum = _bin_sums(_equal_width_bin_index(confidence, n_bins), confidence, correct, n_bins)
    # |B|/N * |acc - conf| = |sum correct - sum conf| / N
    return float((correct_sum - conf_sum).abs().sum().item() / confidence.shape[0])


def _mce(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int) -> float:
    count, conf_sum, correct_sum = _bin_sums(_equal_width_bin_index(confidence, n_bins), confidence, correct, n_bins)
    filled = count > 0
    return float(((correct_sum[filled] - conf_sum[filled]).abs() / count[filled]).max().item())


def _adaptive_ece(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int) -> float:
    n = confidence.shape[0]
    order = torch.sort(confidence, stable=True).indices
    base, extra = divmod(n, n_bins)
    sizes = torch.full((n_bins,), base, dtype=torch.int64)
    sizes[:extra] += 1
    bin_of_rank = torch.repeat_interleave(torch.arange(n_bins), sizes)
    bin_index = torch.empty(n, dtype=torch.int64)
    bin_index[order] = bin_of_rank
    _, conf_sum, correct_sum = _bin_sums(bin_index, confidence, correct, n_bins)
    return float((correct_sum - conf_sum).abs().sum().item() / n)


def _classwise_ece(p: torch.Tensor, y: torch.Tensor, n_bins: int) -> float:
    n, k = p.shape
    bin_index = _equal_width_bin_index(p, n_bins)  # [N, K]
    # One flat histogram over (class, bin) pairs; a sample counts towards freq_k only in the bin of its own label.
    flat = (bin_index + n_bins * torch.arange(k).unsqueeze(0)).reshape(-1)
    prob_sum = torch.bincount(flat, weights=p.reshape(-1), minlength=k * n_bins)
    label_cell = y * n_bins + bin_index.gather(1, y.unsqueeze(1)).squeeze(1)
    freq_sum = torch.bincount(label_cell, minlength=k * n_bins).to(torch.float64)
    return float((freq_sum - prob_sum).abs().sum().item() / (n * k))


def _brier(p: torch.Tensor, y: torch.Tensor) -> float:
    squared = p.square()
    # sum_k (p_k - onehot_k)^2 = sum_k p_k^2 - 2 p_t + 1, without materialising the one-hot matrix
    p_true = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return float((squared.sum(dim=1) - 2 * p_true + 1).mean().item())


def _check_num_classes(num_classes: Any, k: int, name: str) -> None:
    if num_classes is None:
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes != k:
        raise ValueError(f"num_classes: got {num_classes!r} but {name} has {k} columns; valid: {k} (or None)")


def accuracy(probs: Any, labels: Any) -> float:
    """Fraction of samples whose argmax is the label."""
    p, y = _prepare(probs, labels)
    return float(_top1(p, y)[1].mean().item())


def ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error: sum_m |B_m|/N * |acc(B_m) - conf(B_m)| over equal-width bins ((m-1)/M, m/M]."""
    n_bins = _check_n_bins(n_bins)
    return _ece(*_top1(*_prepare(probs, labels)), n_bins)


def mce(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Maximum calibration error: the largest |acc(B_m) - conf(B_m)| over non-empty equal-width bins."""
    n_bins = _check_n_bins(n_bins)
    return _mce(*_top1(*_prepare(probs, labels)), n_bins)


def adaptive_ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE over equal-mass bins (AdaECE, Nguyen & O'Connor 2015; Mukhoti et al. 2020).

    Samples are sorted by confidence (stable sort, so ties keep their input order) and cut into `n_bins` groups
    whose sizes differ by at most one (the first N mod M groups get the extra sample, as `numpy.array_split`).
    With fewer samples than bins, the empty groups contribute nothing.
    """
    n_bins = _check_n_bins(n_bins)
    return _adaptive_ece(*_top1(*_prepare(probs, labels)), n_bins)


def classwise_ece(probs: Any, labels: Any, num_classes: int | None = None, n_bins: int = 15) -> float:
    """Classwise ECE: (1/K) sum_k sum_m |B_mk|/N * |freq_k(B_mk) - mean p_k(B_mk)| (Kull et al. 2019).

    Bins are equal-width on each class's own probability p_k. The average runs over all K classes, also those that
    never occur in `labels`; `num_classes`, when given, must equal the number of probability columns.
    """
    n_bins = _check_n_bins(n_bins)
    p = _check_probs(probs)
    _check_num_classes(num_classes, p.shape[1], "probs")
    y = check_labels(labels, p.shape[0], p.shape[1])
    return _classwise_ece(p, y, n_bins)


def nll(probs: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the labels, -log p_t.

    A probability of exactly 0 would give an infinite mean; it is clamped to the smallest normal float64
    (-log = 708.4), so one such sample dominates but stays finite. `summary` avoids this by using log-softmax.
    """
    p, y = _prepare(probs, labels)
    p_true = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return float(-torch.log(p_true.clamp_min(torch.finfo(torch.float64).tiny)).mean().item())


def brier(probs: Any, labels: Any) -> float:
    """Mean over samples of sum_k (p_k - onehot_k)^2 (summed over classes, not divided by K; range [0, 2])."""
    return _brier(*_prepare(probs, labels))


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width bin: ``edges`` [M+1], ``count`` [M], mean ``confidence`` [M] and ``accuracy`` [M].

    Empty bins have count 0 and NaN confidence/accuracy. ``sum(count * |accuracy - confidence|) / N`` over the
    non-empty bins is `ece`.
    """
    n_bins = _check_n_bins(n_bins)
    p, y = _prepare(probs, labels)
    confidence, correct = _top1(p, y)
    count, conf_sum, correct_sum = _bin_sums(_equal_width_bin_index(confidence, n_bins), confidence, correct, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count.numpy() > 0, conf_sum.numpy() / count.numpy(), np.nan)
        mean_acc = np.where(count.numpy() > 0, correct_sum.numpy() / count.numpy(), np.nan)
    return {
        "edges": equal_width_edges(n_bins),
        "count": count.numpy().astype(np.int64),
        "confidence": mean_conf,
        "accuracy": mean_acc,
    }


def reliability_diagram(probs: Any, labels: Any, n_bins: int = 15, calibrated_probs: Any = None,
                        names: tuple[str, str] = ("uncalibrated", "calibrated"), title: str | None = None,
                        ax: Any = None, path: str | None = None):
    """Reliability diagram: accuracy per confidence bin against the diagonal; returns the matplotlib Figure.

    `calibrated_probs` (same labels) is overlaid as a line so raw and calibrated models can be compared on one
    plot. `ax` draws into an existing Axes; otherwise a new Figure with an Agg canvas is made (no pyplot, so the
    caller's backend is left alone). `path` saves the figure there.
    """
    # Imported here so that `import trainables.metrics` stays light.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(4.5, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    raw = reliability_bins(probs, labels, n_bins)
    raw_ece = ece(probs, labels, n_bins)
    n = int(raw["count"].sum())
    edges = raw["edges"]
    width = edges[1] - edges[0]
    filled = raw["count"] > 0
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", linewidth=1, label="perfect calibration")
    ax.bar(edges[:-1][filled], raw["accuracy"][filled], width=width, align="edge", color="tab:blue", alpha=0.45,
           edgecolor="tab:blue", label=f"{names[0]} (ECE {raw_ece:.4f})")
    # Gap between mean confidence and accuracy, the quantity ECE sums.
    ax.bar(edges[:-1][filled], raw["confidence"][filled] - raw["accuracy"][filled], bottom=raw["accuracy"][filled],
           width=width, align="edge", fill=False, edgecolor="tab:red", hatch="//", linewidth=0.5, label="gap")
    if calibrated_probs is not None:
        cal = reliability_bins(calibrated_probs, labels, n_bins)
        cal_ece = ece(calibrated_probs, labels, n_bins)
        cal_filled = cal["count"] > 0
        centres = (edges[:-1] + edges[1:]) / 2
        ax.plot(centres[cal_filled], cal["accuracy"][cal_filled], marker="o", color="tab:orange",
                label=f"{names[1]} (ECE {cal_ece:.4f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title if title is not None else f"reliability, {n_bins} bins, n = {n}")
    ax.legend(loc="upper left", fontsize="small")
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def summary(logits: Any, labels: Any, n_bins: int = 15, num_classes: int | None = None) -> dict[str, float]:
    """Every metric of one split from logits: acc, ece, adaece, cece, mce, nll, brier (floats) and n (int).

    The softmax is taken in float64; NLL comes from log-softmax so that confident mistakes stay exact.
    """
    n_bins = _check_n_bins(n_bins)
    z = check_scores(_as_float64(logits, "logits"), "logits", empty="no samples", finite="finite numbers")
    _check_num_classes(num_classes, z.shape[1], "logits")
    y = check_labels(labels, z.shape[0], z.shape[1])
    log_p = torch.log_softmax(z, dim=1)
    p = log_p.exp()
    confidence, correct = _top1(p, y)
    return {
        "acc": float(correct.mean().item()),
        "ece": _ece(confidence, correct, n_bins),
        "adaece": _adaptive_ece(confidence, correct, n_bins),
        "cece": _classwise_ece(p, y, n_bins),
        "mce": _mce(confidence, correct, n_bins),
        "nll": float(-log_p.gather(1, y.unsqueeze(1)).mean().item()),
        "brier": _brier(p, y),
        "n": int(z.shape[0]),
    }
