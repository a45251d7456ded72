"""Post-hoc calibrators: identity, temperature scaling (TS) and adaptive piecewise temperature scaling (ATS).

Every calibrator divides logits by a positive temperature, so argmax and accuracy never change.

- `TemperatureScaling` (Guo et al. 2017): one T fitted by NLL on the calibration split.
- `PiecewiseTemperatureScaling` (ATS): breakpoints 0 < b_1 < ... < b_{m-1} < 1 split the *uncalibrated*
  confidence (max softmax) into m pieces (b_{j-1}, b_j] (b_0 = 0, b_m = 1); each piece gets its own T fitted by
  the NLL of its samples. The closest published relative is bin-wise TS (Ji et al. 2019), which uses equal-mass
  bins instead of searched breakpoints.

How a temperature is fitted. With beta = 1/T, shifted logits d_ik = z_ik - max_k z_ik and gaps r_i = max_k z_ik -
z_iy, the NLL of a set of samples is

    L(beta) = sum_i [ beta * r_i + log sum_k exp(beta * d_ik) ],

a log-sum-exp of affine functions plus a linear term, hence convex in beta, with gradient sum_i (r_i + E_p[d_i])
and curvature sum_i Var_p(d_i) under p = softmax(beta * d_i). A bracketed (safeguarded) Newton search on
beta in [1/T_MAX, 1/T_MIN] therefore reaches the bounded minimiser in a handful of passes over the logits,
where a golden-section search needs ~40; each pass is one exp over [N, K] and three row sums. It is a pure
function of the data, so fits are deterministic.

A piece whose calibration samples are all correct has no finite NLL minimum: L keeps falling as T -> 0, and a
bounded search returns its lower bound (T = T_MIN), which then makes every error in that piece on new data cost
an NLL of ~1/T_MIN times its logit gap. ATS therefore fits each piece's beta as a MAP estimate: the piece's NLL
plus a Gaussian prior on beta centred at the global beta, whose precision is `prior_samples` times the
per-sample curvature of the global NLL at its minimum, i.e. the second-order approximation of adding
`prior_samples` "average" calibration samples to the piece. A well-populated piece barely moves (the pull is
~prior_samples / n_piece of the gap to the global value); an all-correct piece gets a finite temperature below
the global one instead of the bound. `prior_samples=0` gives the plain per-piece NLL minimiser.
Pieces with fewer than `min_samples` calibration samples use the global temperature.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from gce_search.trainables.catalog import CALIBRATORS
from gce_search.trainables.config import DEFAULTS, SCHEMA, check_breakpoints
from gce_search.trainables.validation import as_tensor, check_labels, check_scores

__all__ = [
    "CALIBRATORS",
    "Calibrator",
    "IdentityCalibrator",
    "NotFittedError",
    "PiecewiseTemperatureScaling",
    "TemperatureScaling",
    "build_calibrator",
    "calibrator_from_state",
    "RefinedCalibrator",
    "refine",
]

# Bounds of every fitted temperature, symmetric in log T. Mukhoti et al.'s grid spans 0.1..10; fitted CIFAR
# temperatures are ~1-3 (docs/design.md, "Metric conventions"), so these bounds are only reached by degenerate splits.
T_MIN = 0.05
T_MAX = 20.0
# Newton stops when a step (or the bracket) is below this fraction of beta: ten times the float32 round-off of
# the gradient (see _solver_copy), far below any effect on calibration.
_RELATIVE_TOLERANCE = 1e-7
_MAX_ITERATIONS = 100


class NotFittedError(ValueError):
    """`transform` (or `temperatures`) was used before `fit` or `load_state_dict`."""


def _check_logits(logits: Any, name: str = "logits") -> torch.Tensor:
    z = as_tensor(logits, name)
    if not z.is_floating_point():
        raise ValueError(f"{name}: expected floating-point logits; got dtype {z.dtype}")
    return check_scores(z, name, empty="empty split",
                        finite="finite logits (a diverged model cannot be calibrated)")


def _confidence_of_shifted(shifted: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """Top-1 softmax probability 1 / sum_k exp(d_ik) of shifted logits (row maximum 0); `work` is scratch space."""
    torch.exp(shifted, out=work)
    return work.sum(dim=1).reciprocal_()


def _max_softmax(z: torch.Tensor) -> torch.Tensor:
    """Top-1 softmax probability per row, in float64 (fp16 rounds confidences above ~0.9998 to 1.0).

    Same arithmetic as `fit` uses on its float64 copy, so a sample gets the same ATS piece in both.
    """
    shifted = z.to(torch.float64, copy=True)
    shifted.sub_(shifted.max(dim=1, keepdim=True).values)
    return _confidence_of_shifted(shifted, shifted)


def _nll_gradient_curvature(shifted: torch.Tensor, gap: torch.Tensor, beta: float,
                            work: torch.Tensor | None = None) -> tuple[float, float]:
    """Gradient and curvature in beta of sum_i [beta * gap_i + log sum_k exp(beta * shifted_ik)].

    `work` (at least as many rows as `shifted`) is reused across calls: allocating a fresh multi-MB [N, K] buffer
    per evaluation can cost more than the arithmetic (measured: page faults on each new block).
    """
    weights = torch.empty_like(shifted) if work is None else work[: shifted.shape[0]]
    torch.mul(shifted, beta, out=weights)
    weights.exp_()  # the row maximum is exp(0) = 1, so no overflow and no total underflow
    mass = weights.sum(dim=1).to(torch.float64)
    weights.mul_(shifted)
    first = weights.sum(dim=1).to(torch.float64) / mass  # E_p[d]
    weights.mul_(shifted)
    second = weights.sum(dim=1).to(torch.float64) / mass  # E_p[d^2]
    gradient = (gap + first).sum().item()
    curvature = (second - first * first).clamp_min(0.0).sum().item()
    return gradient, curvature


def _solver_copy(shifted: torch.Tensor) -> torch.Tensor:
    """float32 copy of the shifted logits for the Newton passes.

    exp over [N, K] dominates the fit and costs half as much in float32. Row sums are formed in float32
    (relative error ~1e-7) but combined across samples in float64, so the gradient's error is ~1e-7 of its
    scale and the fitted 1/T is off by ~1e-8 relative (checked against a float64 SciPy fit in the tests).
    """
    return shifted.to(torch.float32)


def _fit_inverse_temperature(shifted: torch.Tensor, gap: torch.Tensor, work: torch.Tensor | None = None,
                             start: float = 1.0, prior_precision: float = 0.0,
                             prior_mean: float = 1.0) -> tuple[float, float]:
    """Minimise NLL(beta) + prior_precision/2 * (beta - prior_mean)^2 over beta in [1/T_MAX, 1/T_MIN].

    Returns (beta, per-sample curvature of the NLL at beta). Bracketed Newton on a convex function: the sign of
    the gradient tells on which side of the current point the minimiser lies, so the bracket only shrinks; a
    Newton step that leaves the bracket is replaced by its geometric midpoint, or by the bound itself while that
    bound has not been evaluated yet (so a minimiser at a bound is found in one step, not by ~30 bisections).
    """
    beta_low, beta_high = 1.0 / T_MAX, 1.0 / T_MIN
    low, high = beta_low, beta_high
    low_seen = high_seen = False
    beta = min(max(start, beta_low), beta_high)
    curvature = 0.0
    for _ in range(_MAX_ITERATIONS):
        gradient, curvature = _nll_gradient_curvature(shifted, gap, beta, work)
        gradient += prior_precision * (beta - prior_mean)
        total_curvature = curvature + prior_precision
        if gradient > 0:
            high, high_seen = beta, True
        elif gradient < 0:
            low, low_seen = beta, True
        else:
            break
        if high - low <= _RELATIVE_TOLERANCE * low:  # includes a minimiser at a bound just evaluated
            beta = min(max(beta, low), high)
            break
        step = beta - gradient / total_curvature if total_curvature > 0 else math.nan
        if abs(step - beta) <= _RELATIVE_TOLERANCE * beta:
            beta = min(max(step, low), high)
            break
        if not low < step < high:
            if step >= high and not high_seen:
                step = beta_high
            elif step <= low and not low_seen:
                step = beta_low
            else:
                step = math.sqrt(low * high)
        beta = step
    return beta, curvature / shifted.shape[0]


class Calibrator:
    """Shared interface: `fit(logits, labels) -> self`, `transform(logits) -> logits`, `temperatures`, and a
    JSON-serialisable `state_dict()` / `load_state_dict()`.

    `fit` validates its input, moves it to the CPU in float64 and hands shifted logits d_ik = z_ik - max_k z_ik
    and gaps r_i = max_k z_ik - z_iy to `_fit`;
    subclasses say how they pick temperatures (`_fit`) and which temperature each sample gets (`_per_sample`).
    """

    @property
    def name(self) -> str:
        """The calibration.method this class is registered under in CALIBRATORS (its state's "method")."""
        for name, entry in CALIBRATORS.items():
            if entry.implemented and entry.impl is type(self):
                return name
        return type(self).__name__

    def __init__(self) -> None:
        self._fitted = False
        self.fit_info: dict[str, Any] = {}

    # -- interface -------------------------------------------------------------------------------------------
    def fit(self, logits: Any, labels: Any) -> "Calibrator":
        z = _check_logits(logits)
        y = check_labels(labels, z.shape[0], z.shape[1])
        shifted = z.to(device="cpu", dtype=torch.float64, copy=True)
        shifted.sub_(shifted.max(dim=1, keepdim=True).values)
        gap = -shifted.gather(1, y.unsqueeze(1)).squeeze(1)
        self._fit(shifted, gap)
        self._fitted = True
        self.fit_info["n"] = int(z.shape[0])
        return self

    def transform(self, logits: Any) -> torch.Tensor:
        """Calibrated logits: `logits / T(sample)`, same shape, dtype and device."""
        self._require_fitted()
        z = _check_logits(logits)
        temperature = self._per_sample(z).to(device=z.device)
        return (z.to(torch.float64) / temperature.unsqueeze(1)).to(z.dtype)

    @property
    def fitted(self) -> bool:
        return self._fitted

    @property
    def temperatures(self) -> list[float]:
        self._require_fitted()
        return [float(t) for t in self._temperatures()]

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON types only: exported with trial configs and reloaded by `calibrator_from_state`."""
        state = {"method": self.name, "fitted": self._fitted, **self._config()}
        if self._fitted:
            state["temperatures"] = self.temperatures
            state["fit_info"] = _plain(self.fit_info)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> "Calibrator":
        if not isinstance(state, dict) or state.get("method") != self.name:
            got = state.get("method") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state['method']: got {got!r}; valid: {self.name!r} for {type(self).__name__}")
        self._load_config(state)
        if state.get("fitted"):
            temps = state.get("temperatures")
            if not isinstance(temps, (list, tuple)) or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0 for t in temps
            ):
                raise ValueError(f"state['temperatures']: got {temps!r}; valid: a list of positive finite numbers")
            self._load_temperatures([float(t) for t in temps])
            self.fit_info = dict(state.get("fit_info", {}))
            self._fitted = True
        else:
            self._fitted = False
        return self

    # -- for subclasses --------------------------------------------------------------------------------------
    def _fit(self, shifted: torch.Tensor, gap: torch.Tensor) -> None:
        """Pick the temperatures; may overwrite `shifted` (a private float64 CPU copy)."""
        raise NotImplementedError

    def _per_sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature of each row, float64 on the CPU or the logits' device."""
        raise NotImplementedError

    def _temperatures(self) -> list[float]:
        raise NotImplementedError

    def _load_temperatures(self, temperatures: list[float]) -> None:
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        return {}

    def _load_config(self, state: dict[str, Any]) -> None:
        pass

    @classmethod
    def from_config(cls, cal_cfg: dict[str, Any], path: str = "calibration") -> "Calibrator":
        return cls()

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(calib_logits, calib_labels) "
                                 "or load_state_dict(state) first")

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self._config().items()]
        if self._fitted:
            parts.append(f"temperatures={[round(t, 4) for t in self.temperatures]}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item()
    return value


class IdentityCalibrator(Calibrator):
    """No calibration (`method: none`): temperatures [1.0]; same interface so the trial code has one path."""

    def _fit(self, shifted, gap) -> None:
        pass

    def transform(self, logits: Any) -> torch.Tensor:
        self._require_fitted()
        return _check_logits(logits)

    def _per_sample(self, logits):
        return torch.ones(logits.shape[0], dtype=torch.float64, device=logits.device)

    def _temperatures(self) -> list[float]:
        return [1.0]

    def _load_temperatures(self, temperatures: list[float]) -> None:
        if temperatures != [1.0]:
            raise ValueError(f"state['temperatures']: got {temperatures!r}; valid: [1.0] for method 'none'")


class TemperatureScaling(Calibrator):
    """One temperature T in [T_MIN, T_MAX] minimising the NLL of the calibration split (Guo et al. 2017).

    A split without a single misclassified sample has no finite minimum; T is then T_MIN (reported as
    `fit_info["at_bound"]`), the bounded-NLL answer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.temperature = 1.0

    def _fit(self, shifted, gap) -> None:
        solver_shifted = _solver_copy(shifted)
        beta, _ = _fit_inverse_temperature(solver_shifted, gap, torch.empty_like(solver_shifted))
        self.temperature = 1.0 / beta
        self.fit_info = {"at_bound": _at_bound(self.temperature)}

    def _per_sample(self, logits):
        return torch.full((logits.shape[0],), self.temperature, dtype=torch.float64, device=logits.device)

    def _temperatures(self) -> list[float]:
        return [self.temperature]

    def _load_temperatures(self, temperatures: list[float]) -> None:
        if len(temperatures) != 1:
            raise ValueError(f"state['temperatures']: got {len(temperatures)} values; valid: exactly 1 for 'ts'")
        self.temperature = temperatures[0]


def _at_bound(temperature: float) -> bool:
    return math.isclose(temperature, T_MIN, rel_tol=1e-6) or math.isclose(temperature, T_MAX, rel_tol=1e-6)


class PiecewiseTemperatureScaling(Calibrator):
    """ATS: one temperature per piece of uncalibrated confidence, (b_{j-1}, b_j] with b_0 = 0 and b_m = 1.

    Args:
        breakpoints: strictly increasing numbers inside (0, 1); m - 1 breakpoints make m pieces.
        min_samples: pieces with fewer calibration samples use the global temperature.
        prior_samples: weight of the Gaussian prior that shrinks each piece's 1/T toward the global 1/T, in
            calibration samples (module docstring); 0 fits each piece by its NLL alone.

    After `fit`: `temperatures` (one per piece), `global_temperature`, and `fit_info` with the per-piece sample
    counts (`piece_counts`), which pieces fell back to the global T (`fallback`), and which pieces had no
    misclassified sample (`all_correct`).
    """

    def __init__(self, breakpoints=tuple(SCHEMA["calibration.breakpoints"].default),
                 min_samples: int = SCHEMA["calibration.min_samples"].default,
                 prior_samples: float = SCHEMA["calibration.prior_samples"].default, *, _path: str = "") -> None:
        super().__init__()
        problem = check_breakpoints(breakpoints)
        if problem is not None:
            raise ValueError(f"{_path}breakpoints: {problem}; valid: a strictly increasing list of numbers "
                             "inside (0, 1), e.g. [0.5, 0.8, 0.95]")
        if isinstance(min_samples, bool) or not isinstance(min_samples, (int, np.integer)) or min_samples < 1:
            raise ValueError(f"{_path}min_samples: got {min_samples!r}; valid: an integer >= 1")
        if isinstance(prior_samples, bool) or not isinstance(prior_samples, (int, float)) \
                or not math.isfinite(prior_samples) or prior_samples < 0:
            raise ValueError(f"{_path}prior_samples: got {prior_samples!r}; valid: a number >= 0")
        self.breakpoints = [float(b) for b in breakpoints]
        self.min_samples = int(min_samples)
        self.prior_samples = float(prior_samples)
        self.global_temperature = 1.0
        self._piece_temperatures = [1.0] * (len(self.breakpoints) + 1)

    @classmethod
    def from_config(cls, cal_cfg: dict[str, Any], path: str = "calibration") -> "PiecewiseTemperatureScaling":
        defaults = DEFAULTS["calibration"]
        breakpoints = cal_cfg.get("breakpoints")
        if isinstance(breakpoints, dict):  # {refine: cv, ...}: the calibrator is chosen per model
            from gce_search.trainables.config import check_refine, refine_options

            problem = check_refine(breakpoints)
            if problem is not None:
                raise ValueError(f"{path}.breakpoints: refinement {problem}")
            options = refine_options(breakpoints)
            return RefinedCalibrator(options["pieces"], options["candidates"], options["folds"], options["seed"],
                                     cal_cfg.get("min_samples", defaults["min_samples"]),
                                     cal_cfg.get("prior_samples", 10.0))
        return cls(cal_cfg.get("breakpoints", defaults["breakpoints"]),
                   cal_cfg.get("min_samples", defaults["min_samples"]),
                   cal_cfg.get("prior_samples", 10.0), _path=f"{path}.")

    def piece_of(self, logits: Any) -> torch.Tensor:
        """Index of the piece each row of `logits` falls in, from its uncalibrated max-softmax confidence."""
        z = _check_logits(logits)
        return self._piece_index(z)

    def _piece_index(self, z: torch.Tensor) -> torch.Tensor:
        edges = torch.tensor(self.breakpoints, dtype=torch.float64, device=z.device)
        # right=False: b_{j-1} < conf <= b_j is piece j, the same left-open convention as the ECE bins.
        return torch.bucketize(_max_softmax(z), edges, right=False)

    def _fit(self, shifted, gap) -> None:
        solver_shifted = _solver_copy(shifted)
        work = torch.empty_like(solver_shifted)
        global_beta, global_curvature = _fit_inverse_temperature(solver_shifted, gap, work)
        self.global_temperature = 1.0 / global_beta
        edges = torch.tensor(self.breakpoints, dtype=torch.float64)
        # Confidences in float64 with the arithmetic of `transform`, so each sample gets the same piece in both.
        piece = torch.bucketize(_confidence_of_shifted(shifted, shifted), edges, right=False)
        n_pieces = len(self.breakpoints) + 1
        counts = torch.bincount(piece, minlength=n_pieces).tolist()
        errors = torch.bincount(piece, weights=(gap > 0).to(torch.float64), minlength=n_pieces).tolist()
        # Rows grouped by piece (a stable sort keeps the order inside a piece), so each piece is a contiguous
        # slice; the old buffer of shifted logits becomes the scratch space.
        order = torch.sort(piece, stable=True).indices
        grouped = torch.index_select(solver_shifted, 0, order, out=work)
        grouped_gap = gap[order]
        work = solver_shifted
        temperatures, fallback = [], []
        start = 0
        for j in range(n_pieces):
            rows = slice(start, start + counts[j])
            start += counts[j]
            if counts[j] < self.min_samples:
                temperatures.append(self.global_temperature)
                fallback.append(True)
                continue
            beta, _ = _fit_inverse_temperature(
                grouped[rows], grouped_gap[rows], work, start=global_beta,
                prior_precision=self.prior_samples * global_curvature, prior_mean=global_beta,
            )
            temperatures.append(1.0 / beta)
            fallback.append(False)
        self._piece_temperatures = temperatures
        self.fit_info = {
            "global_temperature": self.global_temperature,
            "piece_counts": [int(c) for c in counts],
            "fallback": fallback,
            "all_correct": [bool(c > 0 and e == 0) for c, e in zip(counts, errors)],
        }

    def _per_sample(self, logits):
        table = torch.tensor(self._piece_temperatures, dtype=torch.float64, device=logits.device)
        return table[self._piece_index(logits)]

    def _temperatures(self) -> list[float]:
        return list(self._piece_temperatures)

    def _load_temperatures(self, temperatures: list[float]) -> None:
        if len(temperatures) != len(self.breakpoints) + 1:
            raise ValueError(f"state['temperatures']: got {len(temperatures)} values; valid: one per piece "
                             f"({len(self.breakpoints) + 1} for breakpoints {self.breakpoints})")
        self._piece_temperatures = list(temperatures)

    def _config(self) -> dict[str, Any]:
        return {"breakpoints": list(self.breakpoints), "min_samples": self.min_samples,
                "prior_samples": self.prior_samples}

    def _load_config(self, state: dict[str, Any]) -> None:
        fresh = PiecewiseTemperatureScaling(state.get("breakpoints", self.breakpoints),
                                            state.get("min_samples", self.min_samples),
                                            state.get("prior_samples", self.prior_samples), _path="state.")
        self.breakpoints, self.min_samples, self.prior_samples = \
            fresh.breakpoints, fresh.min_samples, fresh.prior_samples
        fit_info = state.get("fit_info") or {}
        self.global_temperature = float(fit_info.get("global_temperature", 1.0))


def refine(logits: Any, labels: Any, pieces=(2, 6), candidates: int = 200, folds: int = 5, min_samples: int = 50,
           prior_samples: float = 10.0, n_bins: int = 15, seed: int = 0) -> tuple[Calibrator, dict]:
    """The calibrator trainables.refine.choose picks for these calib logits by cross-validation inside them, fitted
    on all of them, and what the choice found: {"method", "breakpoints", "cv_ece", "cv_nll", "evaluated",
    "seconds"}."""
    from gce_search.trainables.refine import choose  # numpy work; refine imports nothing of this module

    started = time.perf_counter()
    info = choose(logits, labels, pieces, candidates, folds, min_samples, prior_samples, n_bins, seed)
    if info["method"] == "none":
        winner: Calibrator = IdentityCalibrator()
    elif info["method"] == "ts":
        winner = TemperatureScaling()
    else:
        winner = PiecewiseTemperatureScaling(info["breakpoints"], min_samples, prior_samples)
    winner.fit(logits, labels)
    info["seconds"] = time.perf_counter() - started
    return winner, info


class RefinedCalibrator(Calibrator):
    """`calibration.breakpoints: {refine: cv, ...}`: the calibrator chosen by cross-validation inside the logits it
    is fitted on (`refine`; trainables.refine says how). After `fit` it acts as the winner (a fitted
    IdentityCalibrator, TemperatureScaling or PiecewiseTemperatureScaling), and `refine_info` says which it is and
    how it scored; `n_bins` (the ECE bins the candidates are scored on) follows objective.n_bins in a trial."""

    def __init__(self, pieces=(2, 6), candidates: int = 200, folds: int = 5, seed: int = 0, min_samples: int = 50,
                 prior_samples: float = 10.0, n_bins: int = 15) -> None:
        super().__init__()
        self.options = {"pieces": [int(pieces[0]), int(pieces[1])], "candidates": int(candidates),
                        "folds": int(folds), "seed": int(seed)}
        self.min_samples, self.prior_samples, self.n_bins = int(min_samples), float(prior_samples), int(n_bins)
        self.winner: Calibrator | None = None
        self.refine_info: dict = {}

    @property
    def name(self) -> str:
        return self.winner.name if self.winner is not None else "ats"

    def fit(self, logits: Any, labels: Any) -> "RefinedCalibrator":
        o = self.options
        self.winner, self.refine_info = refine(logits, labels, o["pieces"], o["candidates"], o["folds"],
                                               self.min_samples, self.prior_samples, self.n_bins, o["seed"])
        self.fit_info = dict(self.winner.fit_info)
        return self

    def transform(self, logits: Any) -> torch.Tensor:
        self._require_fitted()
        return self.winner.transform(logits)

    @property
    def fitted(self) -> bool:
        return self.winner is not None and self.winner.fitted

    @property
    def temperatures(self) -> list[float]:
        self._require_fitted()
        return self.winner.temperatures

    def state_dict(self) -> dict[str, Any]:
        """The winner's state (its method, breakpoints and temperatures) plus `refine`: the options and the info."""
        self._require_fitted()
        state = self.winner.state_dict()
        state["refine"] = {**self.options, **self.refine_info}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> "RefinedCalibrator":
        self.winner = calibrator_from_state({k: v for k, v in state.items() if k != "refine"})
        self.refine_info = {k: v for k, v in (state.get("refine") or {}).items() if k not in self.options}
        return self

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError("RefinedCalibrator is not fitted; call fit(calib_logits, calib_labels) or "
                                 "load_state_dict(state) first")

    def __repr__(self) -> str:
        return f"RefinedCalibrator(winner={self.winner!r}, options={self.options!r})"


CALIBRATORS.implements("none")(IdentityCalibrator)
CALIBRATORS.implements("ts")(TemperatureScaling)
CALIBRATORS.implements("ats")(PiecewiseTemperatureScaling)

_CONFIG_KEYS = {"method", "breakpoints", "min_samples", "prior_samples"}


def build_calibrator(cal_cfg: dict[str, Any]) -> Calibrator:
    """An unfitted calibrator from a trial config's `calibration` section (method, breakpoints, min_samples).

    `none` and `ts` ignore the ATS keys, so one searched config can switch methods.
    """
    if not isinstance(cal_cfg, dict):
        raise ValueError(f"calibration: expected a mapping with a 'method' key; got {type(cal_cfg).__name__}")
    unknown = sorted(set(cal_cfg) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"calibration.{unknown[0]}: unknown key; valid: {', '.join(sorted(_CONFIG_KEYS))}")
    method = cal_cfg.get("method", DEFAULTS["calibration"]["method"])
    if method not in CALIBRATORS:
        raise ValueError(f"calibration.method: unknown calibrator {method!r}; valid: {', '.join(CALIBRATORS.names())}")
    return CALIBRATORS[method].impl.from_config(cal_cfg)


def calibrator_from_state(state: dict[str, Any]) -> Calibrator:
    """Rebuild a (fitted) calibrator of the right class from its `state_dict()`."""
    method = state.get("method") if isinstance(state, dict) else None
    if method not in CALIBRATORS:
        raise ValueError(f"state['method']: got {method!r}; valid: {', '.join(CALIBRATORS.names())}")
    return CALIBRATORS[method].impl().load_state_dict(state)
