"""The uncertainty of a trial's ECE: a bootstrap over its validation predictions, rebuilt from its last checkpoint.

A trial reports only scalar metrics per epoch; its checkpoint holds the model and the fitted calibrator, and the
splits are a pure function of data.split_seed, so the validation predictions can be rebuilt exactly
(`val_predictions`) and the ECE resampled (`ece_std_bootstrap`, binned as trainables.metrics.ece bins). Without a
usable checkpoint, the docs/design.md approximation 0.13/sqrt(n) (`ece_std_from_n`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gce_search.search.records import TrialRecord, _finite, _num, warn
from gce_search.trainables.checkpoints import CHECKPOINT_FILE, newest_checkpoint

__all__ = [
    "ECE_STD_TIMES_SQRT_N",
    "latest_checkpoint",
    "val_predictions",
    "ece_uncertainty",
    "ece_std_from_n",
    "ece_std_bootstrap",
]

# 15-bin ECE of a perfectly calibrated model, simulated on realistic confidences (docs/design.md, "ECE is noisy at small
# n"): std 0.004 at n = 1k, 0.002 at 5k, 0.0013 at 10k, i.e. std * sqrt(n) = 0.126, 0.141, 0.130. We use
# ECE_STD_TIMES_SQRT_N / sqrt(n) only when the validation predictions cannot be bootstrapped (ece_uncertainty).
ECE_STD_TIMES_SQRT_N = 0.13
BOOTSTRAP_RESAMPLES = 400


def ece_std_from_n(n: float) -> float:
    """Approximate standard deviation of a 15-bin ECE measured on n samples (docs/design.md simulation, ~0.13/sqrt(n))."""
    return ECE_STD_TIMES_SQRT_N / math.sqrt(n) if _finite(n) and n > 0 else float("nan")


def latest_checkpoint(trial: TrialRecord) -> Path | None:
    """The trial's checkpoint.pt of its last epoch: the complete checkpoint folder (its manifest matches) with the
    latest epoch; for folders without a manifest, the highest-numbered one holding a checkpoint.pt."""
    import pyarrow.fs  # pyarrow and torch (below): imported when a checkpoint is read, not at start-up

    found = newest_checkpoint(pyarrow.fs.LocalFileSystem(), str(trial.path))
    if found is not None:
        return Path(found[0]) / CHECKPOINT_FILE
    folders = sorted(trial.path.glob(f"checkpoint_*/{CHECKPOINT_FILE}"), key=lambda p: p.parent.name)
    return folders[-1] if folders else None


def val_predictions(trial: TrialRecord) -> dict | None:
    """Raw and calibrated validation logits of a trial, recomputed from its last checkpoint on the CPU:
    {"raw": [N, K], "calibrated": [N, K], "labels": [N]} (torch tensors), or None without a usable checkpoint.

    The trial reports only scalar metrics per epoch; the checkpoint holds the model and the fitted calibrator,
    and the splits are a pure function of data.split_seed, so the validation predictions can be rebuilt exactly.
    Cached on the record.
    """
    cached = getattr(trial, "_val_predictions", False)
    if cached is not False:
        return cached
    result = None
    ckpt = latest_checkpoint(trial)
    if ckpt is not None and trial.status == "complete":
        import torch

        from gce_search.trainables.calibration import build_calibrator
        from gce_search.trainables.inference import split_logits

        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state.setdefault("config", trial.config)
        raw, labels = split_logits(state, ("val",))["val"]
        calibrated = raw
        if state.get("calibrator") is not None:
            calibrator = build_calibrator(state["config"]["calibration"])
            calibrator.load_state_dict(state["calibrator"])
            calibrated = calibrator.transform(raw)
        result = {"raw": raw, "calibrated": calibrated, "labels": labels}
    trial._val_predictions = result
    return result


def ece_std_bootstrap(confidence, correct, n_bins: int = 15, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> float:
    """Standard deviation of the equal-width ECE over bootstrap resamples of the (confidence, correct) pairs, each
    confidence binned as trainables.metrics.ece bins it (equal_width_bins)."""
    from gce_search.trainables.metrics import equal_width_bins  # imports torch: only when predictions are resampled

    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    n = confidence.shape[0]
    bins = equal_width_bins(confidence, n_bins)
    rng = np.random.default_rng(seed)
    eces = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, n, n)
        b = bins[idx]
        gap = np.abs(np.bincount(b, weights=correct[idx], minlength=n_bins)
                     - np.bincount(b, weights=confidence[idx], minlength=n_bins))
        eces[r] = gap.sum() / n  # sum over bins of |B_m| * |acc_m - conf_m| / n
    return float(eces.std(ddof=1))


def ece_uncertainty(trial: TrialRecord, split: str = "val", predictions: bool = True) -> dict:
    cache = trial.__dict__.setdefault("_ece_uncertainty", {})
    if (split, predictions) not in cache:
        cache[(split, predictions)] = _ece_uncertainty(trial, split, predictions)
    return cache[(split, predictions)]


def _ece_uncertainty(trial: TrialRecord, split: str, predictions: bool) -> dict:
    """{"n", "std", "method"} of a trial's final `<split>/ece`.

    In order of preference: a bootstrap over the validation samples recomputed from the trial's checkpoint
    (`predictions=True`, val only), else the docs/design.md approximation 0.13/sqrt(n).
    """
    n = trial.final.get(f"{split}/n")
    unreadable = None
    if predictions and split == "val":
        try:
            preds = val_predictions(trial)
        except Exception as err:  # an unreadable checkpoint must not block the result files
            preds = None
            trial._val_predictions = None
            unreadable = f"{latest_checkpoint(trial)}: checkpoint unreadable ({type(err).__name__}: {err})"
        if preds is not None:
            import torch

            probs = torch.softmax(preds["calibrated"].double(), dim=1)
            conf, pred = probs.max(dim=1)
            correct = (pred == preds["labels"]).double()
            n_bins = int(trial.config.get("objective", {}).get("n_bins", 15))
            return {"n": int(conf.shape[0]), "std": ece_std_bootstrap(conf.numpy(), correct.numpy(), n_bins),
                    "method": "bootstrap over val samples (predictions rebuilt from the last checkpoint)"}
    result = {"n": int(n) if _finite(n) else None, "std": ece_std_from_n(_num(n)),
              "method": f"{ECE_STD_TIMES_SQRT_N}/sqrt(n)"}
    if unreadable is not None:
        message = (f"{unreadable}; the val/ece ± of trial {trial.trial_id} is the {result['method']} estimate, not "
                   f"the bootstrap over its val predictions")
        trial.notes.append(message)
        warn(message)
    return result
