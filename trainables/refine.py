"""Post-hoc calibration refinement: the calibrator that is best for one trained model, chosen by cross-validation
inside its calibration split, so that the validation split stays out of the choice.

With `calibration: {method: ats, breakpoints: {refine: cv, pieces: [2, 6], candidates: 200, folds: 5}}`, every
evaluation (each epoch's val metrics, the test split at the end) fits a `RefinedCalibrator`:

1. The candidates: no calibration, plain temperature scaling, ATS with equal-mass (quantile) breakpoints for each
   piece count in `pieces`, ATS with random breakpoints (equal-mass quantiles of uniform draws, so no piece is
   empty), and breakpoints proposed by an inner tree-structured Parzen estimator (TPE) that has seen the scores
   of all the others.
2. Each candidate is scored by k-fold cross-validation inside the calib split: its temperatures fitted on k − 1
   folds, the ECE of the held-out fold (objective.n_bins bins; NLL breaks ties), averaged over folds.
3. The winner is refitted on the whole calib split with the exact fitter of its class (trainables.calibration).

Step 2 is vectorised across candidates and folds. Each sample's NLL and calibrated confidence are tabulated on a
grid of inverse temperatures β (log-spaced over [1/T_MAX, 1/T_MIN], with β = 1 on it); samples are sorted by
their raw confidence, so a piece is a contiguous range and its NLL at every β is a difference of prefix sums per
fold. Each piece's β is the grid point minimising its NLL plus ATS's shrinkage toward the global β (the same prior
as PiecewiseTemperatureScaling), pieces smaller than `min_samples` take the global β. The grid's spacing
(~2.4% in T) only affects the ranking of candidates, never the fitted winner.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from gce_search.trainables.validation import check_labels, check_scores

__all__ = ["refine_candidates", "score_candidates", "choose"]

# The temperature bounds of trainables.calibration (T_MIN, T_MAX); kept equal by a test. This module does not import
# calibration (calibration imports it, for RefinedCalibrator).
T_MIN, T_MAX = 0.05, 20.0

GRID_POINTS = 256  # log-spaced inverse temperatures over [1/T_MAX, 1/T_MIN]
_MAX_GRID_BYTES = 256 * 2**20  # the [N, G] tables are built in row chunks below this size
TPE_SHARE = 0.12  # of the candidates, proposed by the inner TPE after the others are scored


def _check_logits(logits: Any, name: str = "logits") -> torch.Tensor:
    z = torch.as_tensor(logits)
    if not z.is_floating_point():
        raise ValueError(f"{name}: expected floating-point logits; got dtype {z.dtype}")
    return check_scores(z, name, empty="empty split", finite="finite logits (a diverged model cannot be calibrated)")


def _beta_grid() -> np.ndarray:
    """Log-spaced β over [1/T_MAX, 1/T_MIN] with β = 1 exactly on it (no calibration is a grid point)."""
    lo, hi = math.log(1.0 / T_MAX), math.log(1.0 / T_MIN)
    step = (hi - lo) / (GRID_POINTS - 1)
    k = np.arange(GRID_POINTS) - round(-lo / step)
    return np.exp(k * step)[(k * step >= lo - 1e-12) & (k * step <= hi + 1e-12)]


def _tables(logits: torch.Tensor, labels: torch.Tensor, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample NLL [N, G] (float64) and calibrated top-label confidence [N, G] (float32) at every β of the grid.
    The exponentials are float32 (the row maximum is exp(0) = 1, so nothing overflows or vanishes entirely)."""
    z = logits.to(torch.float64)
    shifted = z - z.max(dim=1, keepdim=True).values  # row maximum 0
    gap = -shifted.gather(1, labels.unsqueeze(1)).squeeze(1)  # >= 0
    b32 = torch.from_numpy(betas.astype(np.float32))
    d32 = shifted.to(torch.float32)
    n, k = shifted.shape
    rows = max(1, _MAX_GRID_BYTES // (4 * k * b32.shape[0]))
    mass = torch.empty((n, b32.shape[0]), dtype=torch.float32)
    for start in range(0, n, rows):
        mass[start:start + rows] = torch.exp(d32[start:start + rows].unsqueeze(2) * b32).sum(dim=1)
    nll = (gap.unsqueeze(1) * torch.from_numpy(betas) + torch.log(mass).to(torch.float64)).numpy()
    conf = torch.reciprocal(mass).numpy()
    return nll, conf


def _ece_rows(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    """15-bin ECE of each row of `conf` [R, n] (one candidate's held-out confidences) against `correct` [n]."""
    r, n = conf.shape
    from gce_search.trainables.metrics import equal_width_edges

    edges = equal_width_edges(n_bins)[1:-1]  # m / M correctly rounded, as trainables.metrics bins
    bins = np.searchsorted(edges, conf, side="left")  # ((m-1)/M, m/M], as trainables.metrics bins
    flat = (bins + n_bins * np.arange(r)[:, None]).ravel()
    diff = np.broadcast_to(correct, conf.shape).ravel() - conf.ravel()
    gaps = np.bincount(flat, weights=diff, minlength=r * n_bins).reshape(r, n_bins)
    return np.abs(gaps).sum(axis=1) / n


def _quantile_breakpoints(sorted_conf: np.ndarray, fractions: np.ndarray) -> list[float] | None:
    """Breakpoints at these quantiles of the calib confidences, strictly increasing inside (0, 1); None if the
    quantiles collapse (ties)."""
    values = np.quantile(sorted_conf, np.clip(fractions, 0.0, 1.0))
    values = np.clip(values, 1e-6, 1 - 1e-6)
    out = [float(v) for v in values]
    if any(b <= a for a, b in zip(out, out[1:])):
        return None
    return out


def refine_candidates(sorted_conf: np.ndarray, pieces: tuple[int, int], count: int,
                      rng: np.random.Generator) -> list[tuple[str, list[float] | None]]:
    """(method, breakpoints) candidates: none, ts, the equal-mass ATS for each piece count, and random ATS up to
    `count` in all (method 'ats' with None breakpoints is never produced)."""
    out: list[tuple[str, list[float] | None]] = [("none", None), ("ts", None)]
    seen: set[tuple[float, ...]] = set()
    lo, hi = pieces
    for p in range(max(lo, 2), hi + 1):
        bps = _quantile_breakpoints(sorted_conf, np.arange(1, p) / p)
        if bps is not None and tuple(bps) not in seen:
            seen.add(tuple(bps))
            out.append(("ats", bps))
    tries = 0
    while hi >= 2 and len(out) < count and tries < 20 * count:
        tries += 1
        p = int(rng.integers(max(lo, 2), hi + 1))
        bps = _quantile_breakpoints(sorted_conf, np.sort(rng.uniform(0.02, 0.98, p - 1)))
        if bps is not None and tuple(bps) not in seen:
            seen.add(tuple(bps))
            out.append(("ats", bps))
    return out


class _Scorer:
    """Cross-validated held-out ECE and NLL of candidates, vectorised across candidates and folds."""

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor, folds: int, min_samples: int,
                 prior_samples: float, n_bins: int, seed: int):
        z = logits.to(torch.float64)
        shifted = z - z.max(dim=1, keepdim=True).values
        raw_conf = (1.0 / torch.exp(shifted).sum(dim=1)).numpy()
        order = np.argsort(raw_conf, kind="stable")
        self.conf_sorted = raw_conf[order]
        y = labels[torch.from_numpy(order)]
        zs = z[torch.from_numpy(order)]
        self.correct = (zs.argmax(dim=1) == y).numpy().astype(np.float64)
        self.betas = _beta_grid()
        self.nll, self.cal_conf = _tables(zs, y, self.betas)
        n = zs.shape[0]
        self.n = n
        rng = np.random.default_rng(seed)
        self.fold = np.empty(n, dtype=np.int64)
        self.fold[rng.permutation(n)] = np.arange(n) % folds
        self.folds = folds
        self.min_samples = min_samples
        self.prior_samples = prior_samples
        self.n_bins = n_bins
        # prefix sums over the sorted samples of the training part of each fold: [F, N + 1, G] and counts [F, N + 1]
        # the training part of fold f is everything but fold f: its prefix sums are the total's minus fold f's
        total_prefix = np.zeros((n + 1, self.betas.shape[0]))
        np.cumsum(self.nll, axis=0, out=total_prefix[1:])
        self.prefix = np.empty((folds, n + 1, self.betas.shape[0]))
        self.count_prefix = np.zeros((folds, n + 1))
        for f in range(folds):
            held = self.fold == f
            own = np.zeros((n + 1, self.betas.shape[0]))
            own[1:][held] = self.nll[held]
            np.cumsum(own, axis=0, out=own)
            np.subtract(total_prefix, own, out=self.prefix[f])
            np.cumsum(~held, out=self.count_prefix[f, 1:])
        # the global β of each fold's training part and its per-sample curvature (second difference in β)
        total = self.prefix[:, n, :]  # [F, G]
        self.global_index = total.argmin(axis=1)
        self.prior_precision = np.array([self._curvature(total[f], self.global_index[f]) / self.count_prefix[f, n]
                                         for f in range(folds)]) * prior_samples
        self.held = [np.flatnonzero(self.fold == f) for f in range(folds)]

    def _curvature(self, values: np.ndarray, i: int) -> float:
        b = self.betas
        i = min(max(i, 1), b.shape[0] - 2)
        h1, h2 = b[i] - b[i - 1], b[i + 1] - b[i]
        return max(0.0, 2 * (values[i + 1] * h1 - values[i] * (h1 + h2) + values[i - 1] * h2) / (h1 * h2 * (h1 + h2)))

    def piece_betas(self, breakpoints: np.ndarray) -> np.ndarray:
        """Grid index of each piece's β per fold: [F, C, P] for C candidates padded to P pieces (breakpoints [C,
        P - 1] padded with 1.0, a breakpoint no confidence exceeds)."""
        c, p_max = breakpoints.shape[0], breakpoints.shape[1] + 1
        # piece j is b_{j-1} < conf <= b_j: boundaries are the sorted positions searchsorted(side="right")
        cuts = np.searchsorted(self.conf_sorted, breakpoints, side="right")  # [C, P - 1]
        bounds = np.concatenate([np.zeros((c, 1), np.int64), cuts, np.full((c, 1), self.n, np.int64)], axis=1)
        out = np.empty((self.folds, c, p_max), dtype=np.int64)
        b = self.betas
        for f in range(self.folds):
            sums = self.prefix[f][bounds[:, 1:]] - self.prefix[f][bounds[:, :-1]]  # [C, P, G]
            counts = self.count_prefix[f][bounds[:, 1:]] - self.count_prefix[f][bounds[:, :-1]]  # [C, P]
            g = b[self.global_index[f]]
            # ATS's prior: prior_samples * (per-sample curvature of the global NLL) * (β - β_global)^2 / 2
            objective = sums + 0.5 * self.prior_precision[f] * (b - g) ** 2
            best = objective.argmin(axis=2)
            small = counts < self.min_samples
            best[small] = self.global_index[f]
            out[f] = best
        return out

    def score(self, methods: list[str], breakpoints: list[list[float] | None]) -> tuple[np.ndarray, np.ndarray]:
        """(mean held-out ECE, mean held-out NLL) of each candidate over the folds."""
        c = len(methods)
        p_max = max([len(b) + 1 if b else 1 for b in breakpoints] + [1])
        bps = np.ones((c, p_max - 1))
        for i, (m, b) in enumerate(zip(methods, breakpoints)):
            if m == "ats" and b:
                bps[i, :len(b)] = b
        index = self.piece_betas(bps)  # [F, C, P]
        one = int(np.argmin(np.abs(self.betas - 1.0)))
        none = np.array([m == "none" for m in methods])
        ts = np.array([m == "ts" for m in methods])
        eces = np.zeros(c)
        nlls = np.zeros(c)
        for f in range(self.folds):
            held = self.held[f]
            piece = (self.conf_sorted[held][None, :, None] > bps[:, None, :]).sum(axis=2)  # [C, n_f]
            g = np.take_along_axis(index[f], piece, axis=1)  # [C, n_f] grid indices
            g[ts] = self.global_index[f]
            g[none] = one
            conf = self.cal_conf[held[None, :], g]
            eces += _ece_rows(conf, self.correct[held], self.n_bins)
            nlls += self.nll[held[None, :], g].mean(axis=1)
        return eces / self.folds, nlls / self.folds


def score_candidates(logits: Any, labels: Any, candidates: list[tuple[str, list[float] | None]], folds: int = 5,
                     min_samples: int = 50, prior_samples: float = 10.0, n_bins: int = 15, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Cross-validated (held-out ECE, held-out NLL) of each (method, breakpoints) candidate on calib logits."""
    z = _check_logits(logits, "logits").detach().cpu()
    y = check_labels(labels, z.shape[0], z.shape[1])
    scorer = _Scorer(z, y, folds, min_samples, prior_samples, n_bins, seed)
    return scorer.score([m for m, _ in candidates], [b for _, b in candidates])


def choose(logits: Any, labels: Any, pieces=(2, 6), candidates: int = 200, folds: int = 5, min_samples: int = 50,
           prior_samples: float = 10.0, n_bins: int = 15, seed: int = 0) -> dict:
    """The calibrator these calib logits should get, by cross-validation inside them: {"method" (none | ts | ats),
    "breakpoints", "cv_ece", "cv_nll", "evaluated", "seconds"}. trainables.calibration.refine fits it."""
    started = time.perf_counter()
    z = _check_logits(logits, "logits").detach().cpu()
    y = check_labels(labels, z.shape[0], z.shape[1])
    folds = int(max(2, min(folds, z.shape[0])))
    scorer = _Scorer(z, y, folds, min_samples, prior_samples, n_bins, seed)
    rng = np.random.default_rng(seed)
    lo, hi = int(pieces[0]), int(pieces[1])
    n_tpe = int(round(candidates * TPE_SHARE)) if hi >= 2 else 0
    pool = refine_candidates(scorer.conf_sorted, (lo, hi), max(2, candidates - n_tpe), rng)
    eces, nlls = scorer.score([m for m, _ in pool], [b for _, b in pool])
    if n_tpe > 0:
        extra, extra_eces, extra_nlls = _tpe_candidates(scorer, pool, eces, (lo, hi), n_tpe, rng)
        pool += extra
        eces = np.concatenate([eces, extra_eces])
        nlls = np.concatenate([nlls, extra_nlls])
    # lowest held-out ECE; NLL breaks ties (ECEs within 1e-12)
    best = min(range(len(pool)), key=lambda i: (round(float(eces[i]), 12), float(nlls[i]), i))
    method, breakpoints = pool[best]
    return {"method": method, "breakpoints": list(breakpoints or []), "cv_ece": float(eces[best]),
            "cv_nll": float(nlls[best]), "evaluated": len(pool), "seconds": time.perf_counter() - started}


TPE_GAMMA = 0.15  # the best 15% of the evaluated candidates form TPE's "good" density
TPE_DRAWS = 24  # proposals drawn from the good density per candidate; the best l/g ratio is kept
TPE_BATCH = 8  # candidates proposed between two scorings


def _log_parzen(x: np.ndarray, centres: np.ndarray, width: float) -> np.ndarray:
    """log of a Gaussian mixture (one component per centre row, equal weights, the same width in every dimension,
    plus a uniform prior component) at each row of x; [D, dims] and [C, dims]."""
    if centres.shape[0] == 0:
        return np.zeros(x.shape[0])
    d2 = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)  # [D, C]
    dims = x.shape[1]
    log_k = -0.5 * d2 / width ** 2 - dims * math.log(width * math.sqrt(2 * math.pi))
    log_prior = np.zeros((x.shape[0], 1))  # the uniform density on the unit cube: log 1
    stacked = np.concatenate([log_k, log_prior], axis=1)
    top = stacked.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(stacked - top).mean(axis=1, keepdims=True))).ravel()


def _tpe_candidates(scorer: _Scorer, pool, eces, pieces: tuple[int, int], count: int, rng: np.random.Generator):
    """`count` ATS candidates proposed by a tree-structured Parzen estimator (Bergstra et al. 2011) over (piece
    count, quantile positions of the breakpoints), from the scores of every candidate so far; proposed in batches
    of TPE_BATCH and scored between batches. The piece count is drawn from its frequency among the good candidates
    (with one pseudo-count each); the positions, sorted, from a Gaussian mixture on the good candidates of that
    piece count, keeping the draw with the highest l(x) / g(x)."""
    lo, hi = max(pieces[0], 2), pieces[1]
    sorted_conf = scorer.conf_sorted
    n = len(sorted_conf)
    history: list[tuple[int, np.ndarray, float]] = []
    for (method, bps), e in zip(pool, eces):
        if method == "ats" and bps:
            q = np.searchsorted(sorted_conf, bps, side="right") / n
            history.append((len(bps) + 1, np.clip(q, 0.02, 0.98), float(e)))
    seen = {tuple(b) for m, b in pool if b}
    out, out_e, out_n = [], [], []
    tries = 0
    while len(out) < count and tries < 20 * count:
        batch = []
        values = np.array([h[2] for h in history])
        cut = np.quantile(values, TPE_GAMMA) if len(values) else np.inf
        good = [h for h in history if h[2] <= cut]
        bad = [h for h in history if h[2] > cut]
        weights = np.array([1.0 + sum(h[0] == p for h in good) for p in range(lo, hi + 1)])
        while len(batch) < min(TPE_BATCH, count - len(out)) and tries < 20 * count:
            tries += 1
            p = int(rng.choice(np.arange(lo, hi + 1), p=weights / weights.sum()))
            g_pts = np.array([h[1] for h in good if h[0] == p]).reshape(-1, p - 1)
            b_pts = np.array([h[1] for h in bad if h[0] == p]).reshape(-1, p - 1)
            width = max(0.02, 0.5 * (len(g_pts) + 1) ** (-1.0 / (p + 3)) * 0.5)
            if len(g_pts):
                centres = g_pts[rng.integers(0, len(g_pts), TPE_DRAWS)]
                draws = centres + rng.normal(0.0, width, centres.shape)
            else:
                draws = rng.uniform(0.02, 0.98, (TPE_DRAWS, p - 1))
            draws = np.sort(np.clip(draws, 0.02, 0.98), axis=1)
            score = _log_parzen(draws, g_pts, width) - _log_parzen(draws, b_pts, width)
            for k in np.argsort(-score, kind="stable"):
                bps = _quantile_breakpoints(sorted_conf, draws[k])
                if bps is not None and tuple(bps) not in seen:
                    seen.add(tuple(bps))
                    batch.append(("ats", bps, draws[k], p))
                    break
        if not batch:
            break
        e, nl = scorer.score([m for m, *_ in batch], [b for _, b, *_ in batch])
        for (m, b, q, p), value in zip(batch, e):
            history.append((p, q, float(value)))
            out.append((m, b))
        out_e.append(e)
        out_n.append(nl)
    if not out:
        return [], np.zeros(0), np.zeros(0)
    return out, np.concatenate(out_e), np.concatenate(out_n)
