"""Accuracy and calibration metrics: ECE (equal-width and equal-mass bins), classwise ECE, MCE, NLL, Brier, the
smooth ECE (smECE), the debiased L2 calibration error, the selective-prediction areas AURC and AUGRC, and bootstrap
intervals of the binned errors.

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
    "smooth_ece",
    "debiased_ece",
    "aurc",
    "augrc",
    "bootstrap_intervals",
    "BOOTSTRAP_RESAMPLES",
    "reliability_bins",
    "reliability_diagram",
    "equal_width_bins",
    "equal_width_edges",
    "equal_mass_edges",
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


def _grid_smooth(f: np.ndarray, weights: np.ndarray, sigma: float, x_eval: np.ndarray) -> np.ndarray:
    """Kernel smoothing of `weights` at positions `f` in [0, 1] with a Gaussian reflected at 0 and 1, evaluated at
    `x_eval`: the values are split linearly onto a grid, convolved, and read back by linear interpolation (relplot's
    discretisation, so smooth_ece equals relplot.smECE)."""
    points = max(2000, round(20 / sigma)) // 2 + 1
    cell = (f * (points - 1)).astype(int).clip(0, points - 2)
    frac = f * (points - 1) - cell
    grid = (np.bincount(cell, weights=(1 - frac) * weights, minlength=points)
            + np.bincount(cell + 1, weights=frac * weights, minlength=points))
    t = np.linspace(0, 1, points)
    kernel = np.exp(-(t - 0.5) * (t - 0.5) / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    extended = np.concatenate([np.flip(grid)[:-1], grid, np.flip(grid)[1:]])
    smoothed = np.convolve(extended, kernel, "valid")[points // 2: points // 2 + points]
    index = (x_eval * (points - 1)).astype(int).clip(0, points - 2)
    residual = (x_eval - index / (points - 1)) * (points - 1)
    return smoothed[index] * (1 - residual) + smoothed[index + 1] * residual


def _smooth_ece_at(f: np.ndarray, residual: np.ndarray, sigma: float) -> float:
    """smECE at bandwidth sigma: the density-weighted mean |smoothed (f - y)| over an even mesh of [0, 1]."""
    x_eval = np.linspace(0, 1, max(round(10 / sigma), 200))
    smoothed = _grid_smooth(f, residual, sigma, x_eval)
    density = _grid_smooth(f, np.ones_like(f), sigma, x_eval) + 1e-4
    return float(np.sum(np.abs(smoothed / density) * density) / np.sum(density))


def _smooth_ece(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """smECE with the bandwidth sigma* at which smECE_sigma = sigma (found by 10 bisection steps from 1, as
    relplot.smECE finds it)."""
    f = confidence.numpy()
    residual = f - correct.numpy()

    def small_enough(sigma: float) -> bool:
        return sigma < 1e-3 or sigma < _smooth_ece_at(f, residual, sigma)

    sigma = 1.0
    if not small_enough(sigma):
        upper, lower = 1.0, 0.0
        for _ in range(10):
            mid = (upper + lower) / 2
            if small_enough(mid):
                lower = mid
            else:
                upper = mid
        sigma = upper
    return _smooth_ece_at(f, residual, sigma)


def equal_mass_edges(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Upper edges of equal-mass bins as Kumar et al. (2019) cut them: the sorted confidences split into `n_bins`
    groups (sizes differ by at most one, the first N mod M larger), each edge the midpoint between the last value of
    a group and the first of the next, the last edge 1; equal edges (ties) merge. A confidence equal to an edge
    belongs to the bin below it."""
    ordered = np.sort(confidence)
    groups = np.array_split(ordered, min(n_bins, ordered.shape[0]))
    edges = [(a[-1] + b[0]) / 2.0 for a, b in zip(groups[:-1], groups[1:])] + [1.0]
    return np.unique(np.asarray(edges, dtype=np.float64))


def _debiased_from_sums(count, conf_sum, correct_sum, n: int):
    """Debiased squared-error sum over bins (arrays [..., M]); bins with fewer than two samples count 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = conf_sum / count
        mean_acc = correct_sum / count
        per_bin = (mean_conf - mean_acc) ** 2 - mean_acc * (1.0 - mean_acc) / (count - 1.0)
    per_bin = np.where(count >= 2, per_bin, 0.0)
    return np.sqrt(np.maximum((count / n * per_bin).sum(axis=-1), 0.0))


def _debiased_ece(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int) -> float:
    conf = confidence.numpy()
    edges = equal_mass_edges(conf, n_bins)
    bins = np.searchsorted(edges, conf, side="left")
    m = edges.shape[0]
    count = np.bincount(bins, minlength=m).astype(np.float64)
    return float(_debiased_from_sums(count, np.bincount(bins, weights=conf, minlength=m),
                                     np.bincount(bins, weights=correct.numpy(), minlength=m), conf.shape[0]))


def _cumulative_errors(confidence: torch.Tensor, correct: torch.Tensor) -> np.ndarray:
    """E_i, the number of errors among the i most confident samples (i = 1..N); within a group of tied confidences
    E grows linearly, which is its mean over every order of the tied samples."""
    conf = confidence.numpy()
    order = np.argsort(-conf, kind="stable")
    errors = 1.0 - correct.numpy()[order]
    cum = np.cumsum(errors)
    sorted_conf = conf[order]
    n = conf.shape[0]
    last = np.r_[sorted_conf[1:] != sorted_conf[:-1], True]  # the last position of each tie group
    ends = np.flatnonzero(last)
    starts = np.r_[0, ends[:-1] + 1]
    if ends.shape[0] == n:  # no ties
        return cum
    before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    size = (ends - starts + 1).astype(np.float64)
    group = np.repeat(np.arange(ends.shape[0]), (ends - starts + 1))
    step = (np.arange(n) - starts[group] + 1).astype(np.float64)
    return before[group] + step * (cum[ends] - before)[group] / size[group]


def _aurc(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    e = _cumulative_errors(confidence, correct)
    return float(np.mean(e / np.arange(1, e.shape[0] + 1)))


def _augrc(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    e = _cumulative_errors(confidence, correct)
    return float(np.mean(e) / e.shape[0])


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


def smooth_ece(probs: Any, labels: Any) -> float:
    """Smooth ECE (smECE, Błasiok & Nakkiran, ICLR 2024) of the top-label confidence: the calibration error of the
    residual f - y smoothed by a Gaussian kernel reflected at 0 and 1, at the bandwidth sigma* where it equals
    sigma*. It has no bins to choose and is consistent. Computed as the `relplot` package computes it (same
    discretisation, equal to relplot.smECE), in NumPy alone, so a trial does not import relplot's plotting stack."""
    return _smooth_ece(*_top1(*_prepare(probs, labels)))


def debiased_ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Debiased top-label L2 calibration error (Kumar, Liang & Ma, NeurIPS 2019) over equal-mass bins:
    sqrt(max(0, sum_b |B_b|/N * [(conf_b - acc_b)^2 - acc_b (1 - acc_b) / (|B_b| - 1)])), bins with fewer than two
    samples counting 0 (the `uncertainty-calibration` package's estimator). Subtracting each bin's sampling
    variance removes the upward bias that makes a plug-in ECE of a calibrated model positive at small n."""
    n_bins = _check_n_bins(n_bins)
    return _debiased_ece(*_top1(*_prepare(probs, labels)), n_bins)


def aurc(probs: Any, labels: Any) -> float:
    """Area under the risk-coverage curve: (1/N) sum_i E_i / i, E_i the errors among the i most confident samples
    (Geifman et al. 2019). Lower is better; ties in confidence count as every order of them on average."""
    return _aurc(*_top1(*_prepare(probs, labels)))


def augrc(probs: Any, labels: Any) -> float:
    """Area under the generalized risk-coverage curve: (1/N) sum_i E_i / N, the joint rate of accepted errors
    (Traub et al., NeurIPS 2024). Equals (1 - AUROC) acc (1 - acc) + (1 - acc)^2 / 2 + (1 - acc) / (2N), AUROC that
    of confidence separating correct from wrong predictions."""
    return _augrc(*_top1(*_prepare(probs, labels)))


BOOTSTRAP_RESAMPLES = 200


def bootstrap_intervals(confidence: Any, correct: Any, n_bins: int = 15, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Bootstrap 95% intervals of the 15-bin `ece` and of `debiased_ece` from one split's top-label (confidence,
    correct) pairs: `resamples` resamples of the N samples with replacement (seeded), the bins of the full sample
    kept, all resamples at once. Returns {"ece": (lo, hi), "debiased_ece": (lo, hi)}.

    The intervals are the basic (pivotal) bootstrap, [2 e - q_hi, 2 e - q_lo] with e the full sample's value and
    q the resamples' quantiles, clipped at 0, as the `uncertainty-calibration` package computes them: a plug-in
    ECE is biased upwards and each resample adds that bias once more, so the plain percentile interval would sit
    above the value it is for."""
    n_bins = _check_n_bins(n_bins)
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    n = conf.shape[0]
    width_bins = equal_width_bins(conf, n_bins)
    mass_edges = equal_mass_edges(conf, n_bins)
    mass_bins = np.searchsorted(mass_edges, conf, side="left")
    m_mass = mass_edges.shape[0]
    rng = np.random.default_rng(seed)
    eces, debiased = [], []
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))  # bounded memory: about 2M drawn indices at a time
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(r, n))
        rows = np.repeat(np.arange(r), n)
        c, k = conf[idx].ravel(), corr[idx].ravel()
        flat = rows * n_bins + width_bins[idx].ravel()
        gap = (np.bincount(flat, weights=k, minlength=r * n_bins)
               - np.bincount(flat, weights=c, minlength=r * n_bins)).reshape(r, n_bins)
        eces.append(np.abs(gap).sum(axis=1) / n)
        flat = rows * m_mass + mass_bins[idx].ravel()
        sums = [np.bincount(flat, weights=w, minlength=r * m_mass).reshape(r, m_mass) for w in (None, c, k)]
        debiased.append(_debiased_from_sums(sums[0], sums[1], sums[2], n))
    tail = (1.0 - level) / 2 * 100
    c, k = torch.from_numpy(conf), torch.from_numpy(corr)
    point = {"ece": _ece(c, k, n_bins), "debiased_ece": _debiased_ece(c, k, n_bins)}
    out = {}
    for name, vals in (("ece", eces), ("debiased_ece", debiased)):
        q_lo, q_hi = np.percentile(np.concatenate(vals), [tail, 100 - tail])
        out[name] = (float(max(2 * point[name] - q_hi, 0.0)), float(max(2 * point[name] - q_lo, 0.0)))
    return out


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


def summary(logits: Any, labels: Any, n_bins: int = 15, num_classes: int | None = None,
            intervals: bool = False, seed: int = 0) -> dict[str, float]:
    """Every metric of one split from logits: acc, ece, adaece, cece, mce, nll, brier, smece, debiased_ece, aurc,
    augrc (floats) and n (int); with `intervals`, also the bootstrap 95% intervals ece_lo, ece_hi, debiased_ece_lo
    and debiased_ece_hi (`bootstrap_intervals`, seeded by `seed`).

    The softmax is taken in float64; NLL comes from log-softmax so that confident mistakes stay exact.
    """
    n_bins = _check_n_bins(n_bins)
    z = check_scores(_as_float64(logits, "logits"), "logits", empty="no samples", finite="finite numbers")
    _check_num_classes(num_classes, z.shape[1], "logits")
    y = check_labels(labels, z.shape[0], z.shape[1])
    log_p = torch.log_softmax(z, dim=1)
    p = log_p.exp()
    confidence, correct = _top1(p, y)
    out = {
        "acc": float(correct.mean().item()),
        "ece": _ece(confidence, correct, n_bins),
        "adaece": _adaptive_ece(confidence, correct, n_bins),
        "cece": _classwise_ece(p, y, n_bins),
        "mce": _mce(confidence, correct, n_bins),
        "nll": float(-log_p.gather(1, y.unsqueeze(1)).mean().item()),
        "brier": _brier(p, y),
        "smece": _smooth_ece(confidence, correct),
        "debiased_ece": _debiased_ece(confidence, correct, n_bins),
        "aurc": _aurc(confidence, correct),
        "augrc": _augrc(confidence, correct),
        "n": int(z.shape[0]),
    }
    if intervals:
        for name, (lo, hi) in bootstrap_intervals(confidence.numpy(), correct.numpy(), n_bins, seed=seed).items():
            out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
    return out
