"""What every training loop shares: an epoch's scores from raw logits, the device, the process RNG state a
checkpoint carries, and plain values for checkpoints and results.

The shipped loop (trainables.trial) and your own training loop (trainables.user_loop) end each epoch the same way:
`score_epoch` fits the configured calibrator on the calib logits and computes the raw and calibrated metrics on val
(`split_metrics`), the score and the status; a non-finite loss or logit gives `diverged_metrics` instead. One rule,
so a trial of either kind is ranked, early-stopped and recorded alike.
"""
from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

# Calibrated metrics under the contract names; the uncalibrated ones get a `_raw` suffix.
CALIBRATED_KEYS = ("acc", "ece", "adaece", "cece", "mce", "nll", "brier", "smece", "debiased_ece", "aurc", "augrc")
RAW_KEYS = ("ece", "adaece", "cece", "mce", "nll", "brier", "smece", "debiased_ece", "aurc", "augrc")
# Bootstrap 95% intervals (trainables.metrics.bootstrap_intervals): `<split>/ece_lo`, `<split>/ece_hi`, ... for the
# calibrated predictions and `<split>/ece_raw_lo`, `<split>/ece_raw_hi`, ... for the raw ones.
INTERVAL_KEYS = ("ece", "debiased_ece")


def resolve_device(name: str) -> torch.device:
    """`train.device` -> torch.device; auto picks cuda when a GPU is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: got 'cuda' but no GPU is visible to this process; valid: 'cpu' or 'auto'")
    return torch.device(name)


def split_metrics(split: str, raw_logits: torch.Tensor, labels: torch.Tensor, calibrator, num_classes: int,
                  n_bins: int) -> dict:
    """`<split>/<key>` for the calibrated metrics (CALIBRATED_KEYS), `<split>/<key>_raw` for the uncalibrated ones
    (RAW_KEYS), the bootstrap 95% intervals of INTERVAL_KEYS (`<split>/ece_lo`, `<split>/ece_raw_hi`, ...) and
    `<split>/n`, from CPU float32 logits [N, K] and int64 labels [N]."""
    from gce_search.trainables.metrics import summary

    raw = summary(raw_logits, labels, n_bins=n_bins, num_classes=num_classes, intervals=True)
    cal = summary(calibrator.transform(raw_logits), labels, n_bins=n_bins, num_classes=num_classes, intervals=True)
    out = {f"{split}/{key}": float(cal[key]) for key in CALIBRATED_KEYS}
    out.update({f"{split}/{key}_raw": float(raw[key]) for key in RAW_KEYS})
    for key in INTERVAL_KEYS:
        for end in ("lo", "hi"):
            out[f"{split}/{key}_{end}"] = float(cal[f"{key}_{end}"])
            out[f"{split}/{key}_raw_{end}"] = float(raw[f"{key}_{end}"])
    out[f"{split}/n"] = int(labels.shape[0])
    return out


def diverged_metrics(epoch: int) -> dict:
    """The metrics of a diverged epoch. A diverged trial must never look like a scored one (docs/design.md: a NaN
    trial can land on the front with ECE 0): every val metric and the score are NaN, and the trial stops."""
    metrics: dict[str, Any] = {f"val/{key}": math.nan for key in CALIBRATED_KEYS}
    metrics.update({f"val/{key}_raw": math.nan for key in RAW_KEYS})
    metrics.update({f"val/{key}{raw}_{end}": math.nan for key in INTERVAL_KEYS for raw in ("", "_raw")
                    for end in ("lo", "hi")})
    metrics.update({"score": math.nan, "status": "diverged", "diverged_epoch": epoch, "final": False,
                    "calibration/temperatures": []})
    return metrics


def is_finite(train_loss: float, *logits: torch.Tensor) -> bool:
    """Whether an epoch's training loss and every logit are finite (else the epoch diverged)."""
    return math.isfinite(train_loss) and all(bool(torch.isfinite(t).all()) for t in logits)


def score_epoch(cfg: dict, calib: tuple, val: tuple, num_classes: int) -> tuple[dict, Any]:
    """(metrics, calibrator) of a finite epoch: the calibrator of `cfg["calibration"]` fitted on `calib`
    (logits, labels), the val metrics through it, `score` by `cfg["objective"]` (w_acc * val/acc - w_ece * the
    key of objective.ece_metric), `calibration/temperatures` and
    `status: ok`. Logits are CPU float32 [N, K], labels int64 [N]."""
    from gce_search.trainables.calibration import build_calibrator

    obj = cfg["objective"]
    calibrator = build_calibrator(cfg["calibration"])
    if hasattr(calibrator, "n_bins"):  # a refinement scores its candidates with the objective's ECE bins
        calibrator.n_bins = int(obj["n_bins"])
    calibrator.fit(calib[0], calib[1])
    metrics = split_metrics("val", val[0], val[1], calibrator, num_classes, obj["n_bins"])
    from gce_search.trainables.config import objective_ece_key

    metrics["score"] = float(obj["w_acc"] * metrics["val/acc"] - obj["w_ece"] * metrics[objective_ece_key(obj)])
    metrics["calibration/temperatures"] = [float(t) for t in calibrator.temperatures]
    info = getattr(calibrator, "refine_info", None)
    if info:  # calibration.breakpoints {refine: cv}: which calibrator won, and how it scored inside calib
        metrics["calibration/method"] = info["method"]
        metrics["calibration/breakpoints"] = [float(b) for b in info["breakpoints"]]
        metrics["calibration/cv_ece"] = float(info["cv_ece"])
        metrics["calibration/refine_s"] = float(info["seconds"])
    metrics["status"] = "ok"
    return metrics, calibrator


def rng_state() -> dict:
    """This process's torch/CUDA/numpy/python RNG states, as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def set_rng_state(state: dict) -> None:
    """Put back what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def plain(obj: Any) -> Any:
    """Metrics as builtin containers and numbers, so torch.load(weights_only=True) and JSON both take them."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj
