"""A statistically non-dominated set: the trials no other trial dominates in at least 95% of paired bootstrap
resamples of the validation samples they share.

Every complete trial of a search is scored on the same validation split, so its predictions can be resampled
jointly: one draw of N sample indices gives every trial an (acc, ECE) pair on the same resampled split. Trial A
*robustly dominates* B when A's pair dominates B's (acc ≥, ECE ≤, one strictly) in at least `level` of the
resamples. The robust set holds every complete trial that no trial robustly dominates; it contains the usual front,
and each further member is "tied within noise" with the front members that do not robustly dominate it.

The predictions are rebuilt from each trial's last checkpoint (search.uncertainty.val_predictions); the ECE is the
15-bin ECE (with `objective.ece_metric: debiased`, the debiased one; smECE, too slow to resample here, falls back
to the 15-bin ECE and says so).
"""
from __future__ import annotations

import numpy as np

from gce_search.errors import UsageError
from gce_search.search.records import require_complete

__all__ = ["ROBUST_LEVEL", "ROBUST_RESAMPLES", "robust_front"]

ROBUST_LEVEL = 0.95
ROBUST_RESAMPLES = 200


def _predictions(trials) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from gce_search.search.uncertainty import val_predictions

    confs, corrects, labels = [], [], None
    for trial in trials:
        preds = val_predictions(trial)
        if preds is None:
            raise UsageError(f"{trial.path}: trial {trial.trial_id} has no checkpoint to rebuild its val predictions "
                             f"from; valid: an experiment whose complete trials kept their last checkpoint")
        probs = torch.softmax(preds["calibrated"].double(), dim=1)
        conf, pred = probs.max(dim=1)
        if labels is None:
            labels = preds["labels"]
        elif preds["labels"].shape != labels.shape or not bool((preds["labels"] == labels).all()):
            raise UsageError(f"trial {trial.trial_id}: its val split differs from the other trials' (another "
                             f"data.split_seed or data section); valid: trials scored on one shared val split")
        confs.append(conf.numpy())
        corrects.append((pred == preds["labels"]).double().numpy())
    return np.stack(confs), np.stack(corrects)


def _resampled(conf: np.ndarray, correct: np.ndarray, idx: np.ndarray, n_bins: int, debiased: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """(acc [T, R], error [T, R]) of every trial on every resample (rows of idx [R, N])."""
    from gce_search.trainables.metrics import _debiased_from_sums, equal_mass_edges, equal_width_bins

    t, n = conf.shape
    r = idx.shape[0]
    acc = correct[:, idx].mean(axis=2)  # [T, R]
    err = np.empty((t, r))
    rows = np.repeat(np.arange(r), n)
    for i in range(t):
        c, k = conf[i][idx].ravel(), correct[i][idx].ravel()
        if debiased:
            edges = equal_mass_edges(conf[i], n_bins)
            m = edges.shape[0]
            flat = rows * m + np.searchsorted(edges, conf[i], side="left")[idx].ravel()
            sums = [np.bincount(flat, weights=w, minlength=r * m).reshape(r, m) for w in (None, c, k)]
            err[i] = _debiased_from_sums(sums[0], sums[1], sums[2], n)
        else:
            flat = rows * n_bins + equal_width_bins(conf[i], n_bins)[idx].ravel()
            gap = (np.bincount(flat, weights=k, minlength=r * n_bins)
                   - np.bincount(flat, weights=c, minlength=r * n_bins)).reshape(r, n_bins)
            err[i] = np.abs(gap).sum(axis=1) / n
    return acc, err


def robust_front(exp, resamples: int = ROBUST_RESAMPLES, level: float = ROBUST_LEVEL, seed: int = 0) -> dict:
    """{"members": [trial ids of the robust set, front first], "front": [...], "tied": {extra member: [front
    members it is tied with]}, "dominance": {a: {b: fraction of resamples a dominates b}} (non-zero only),
    "resamples", "level", "error": the ECE key resampled, "note"}."""
    complete = require_complete(exp)
    front = exp.front()
    key = exp.ece_key
    n_bins = 15
    base = getattr(exp.search_spec, "base_config", None) or {}
    if isinstance(base, dict):
        n_bins = int((base.get("objective") or {}).get("n_bins", 15))
    debiased = key == "val/debiased_ece"
    note = ""
    if key == "val/smece":
        note = "smECE is too slow to resample for every trial: the robust set uses the 15-bin ECE"
    conf, correct = _predictions(complete)
    t, n = conf.shape
    rng = np.random.default_rng(seed)
    counts = np.zeros((t, t))
    chunk = max(1, min(resamples, 4_000_000 // max(n * t, 1)))
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        acc, err = _resampled(conf, correct, idx, n_bins, debiased)
        # a dominates b on a resample: acc_a >= acc_b and err_a <= err_b, one strictly
        ge = acc[:, None, :] >= acc[None, :, :]
        le = err[:, None, :] <= err[None, :, :]
        strict = (acc[:, None, :] > acc[None, :, :]) | (err[:, None, :] < err[None, :, :])
        counts += (ge & le & strict).sum(axis=2)
    share = counts / resamples
    np.fill_diagonal(share, 0.0)
    dominated = (share >= level).any(axis=0)
    ids = [tr.trial_id for tr in complete]
    front_ids = [tr.trial_id for tr in front]
    index = {tid: i for i, tid in enumerate(ids)}
    extra = [ids[j] for j in np.argsort([exp_metric(complete[j], key) for j in range(t)], kind="stable")
             if not dominated[j] and ids[j] not in front_ids]
    tied = {b: [f for f in front_ids if share[index[f], index[b]] < level] for b in extra}
    dominance = {ids[a]: {ids[b]: round(float(share[a, b]), 4) for b in range(t) if share[a, b] > 0}
                 for a in range(t)}
    members = [f for f in front_ids if not dominated[index[f]]] + extra
    if len(members) < len(front_ids) + len(extra):
        note = "; ".join(filter(None, [note, "front member(s) " + ", ".join(
            f for f in front_ids if dominated[index[f]]) + " robustly dominated by another trial"]))
    return {"members": members, "front": front_ids, "tied": tied, "dominance": dominance,
            "resamples": resamples, "level": level, "error": "val/debiased_ece" if debiased else "val/ece",
            "note": note}


def exp_metric(trial, key: str) -> float:
    value = trial.metric(key)
    return value if np.isfinite(value) else np.inf
