"""Calibrators: recovery of known temperatures, agreement with an independent SciPy fit, the all-correct piece,
the min_samples fallback, determinism, serialisation, and a contract every registered calibrator must meet."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from gce_search.trainables import metrics
from gce_search.trainables.calibration import (
    CALIBRATORS,
    T_MAX,
    T_MIN,
    NotFittedError,
    PiecewiseTemperatureScaling,
    TemperatureScaling,
    build_calibrator,
    calibrator_from_state,
)

BREAKPOINTS = [0.5, 0.8, 0.95]


def sample_labels(logits, temperature, generator):
    """Labels drawn from softmax(logits / T): T is the exact calibrating temperature of these logits."""
    return torch.multinomial(torch.softmax(logits / temperature.unsqueeze(1), dim=1), 1, generator=generator)[:, 0]


def synthetic(n, piece_temperatures, k=10, seed=0, breakpoints=BREAKPOINTS):
    """Logits whose confidences span every piece, and labels calibrated by a known temperature per piece."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.5 + 3.5 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    confidence = torch.softmax(logits, dim=1).max(dim=1).values
    piece = torch.bucketize(confidence, torch.tensor(breakpoints, dtype=torch.float64))
    temperature = torch.tensor(piece_temperatures, dtype=torch.float64)[piece]
    return logits, sample_labels(logits, temperature, g), piece


def scipy_inverse_temperature(nll_of_beta):
    """Independent bounded fit: SciPy's Brent search on log(beta), NLL from torch's cross_entropy."""
    res = minimize_scalar(lambda u: nll_of_beta(math.exp(u)), bounds=(math.log(1 / T_MAX), math.log(1 / T_MIN)),
                          method="bounded", options={"xatol": 1e-10})
    return math.exp(res.x)


# ---------------------------------------------------------------------------------------------------------------
# Temperature scaling

@pytest.mark.parametrize("true_t", [0.6, 1.7])
def test_ts_recovers_a_known_global_temperature(true_t):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(20000, 10, generator=g, dtype=torch.float64) * 3
    labels = sample_labels(logits, torch.full((20000,), true_t, dtype=torch.float64), g)
    ts = TemperatureScaling().fit(logits, labels)
    assert ts.temperatures[0] == pytest.approx(true_t, rel=0.05)
    assert not ts.fit_info["at_bound"]


def test_ts_matches_an_independent_scipy_fit():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3000, 7, generator=g, dtype=torch.float64) * 2.5
    labels = sample_labels(logits, torch.full((3000,), 1.4, dtype=torch.float64), g)
    beta = scipy_inverse_temperature(lambda b: F.cross_entropy(logits * b, labels).item())
    assert TemperatureScaling().fit(logits.float(), labels).temperatures[0] == pytest.approx(1 / beta, rel=1e-5)


def test_ts_without_finite_minimum_returns_the_bounds():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(500, 5, generator=g) * 2
    all_correct = TemperatureScaling().fit(logits, logits.argmax(1))
    assert all_correct.temperatures[0] == pytest.approx(T_MIN, rel=1e-9) and all_correct.fit_info["at_bound"]
    # Labels on the smallest logit: the NLL falls as T grows.
    all_last = TemperatureScaling().fit(logits, logits.argmin(1))
    assert all_last.temperatures[0] == pytest.approx(T_MAX, rel=1e-9) and all_last.fit_info["at_bound"]


# ---------------------------------------------------------------------------------------------------------------
# Piecewise temperature scaling (ATS)

def test_ats_recovers_per_piece_temperatures_and_beats_ts_on_ece():
    truth = [1.0, 1.6, 0.7, 2.2]
    logits, labels, piece = synthetic(40000, truth, seed=0)
    assert torch.bincount(piece).min().item() > 2000
    ats = PiecewiseTemperatureScaling(BREAKPOINTS).fit(logits, labels)
    for fitted, true_t in zip(ats.temperatures, truth):
        assert fitted == pytest.approx(true_t, rel=0.05)
    assert ats.fit_info["fallback"] == [False] * 4
    ts = TemperatureScaling().fit(logits, labels)
    val_logits, val_labels, _ = synthetic(40000, truth, seed=1)
    ats_ece = metrics.summary(ats.transform(val_logits), val_labels)["ece"]
    ts_ece = metrics.summary(ts.transform(val_logits), val_labels)["ece"]
    # n = 40k resolves ECE gaps of ~0.003 (docs/design.md); single TS cannot fit four temperatures at once.
    assert ats_ece < 0.02 < 0.05 < ts_ece


def test_ats_piece_fit_matches_an_independent_map_fit():
    """Each piece minimises n_p * NLL_p(beta) + prior_samples * H_g / 2 * (beta - beta_g)^2 (module docstring)."""
    logits, labels, piece = synthetic(6000, [1.0, 1.6, 0.7, 2.2], seed=4)
    prior_samples = 25.0
    ats = PiecewiseTemperatureScaling(BREAKPOINTS, min_samples=50, prior_samples=prior_samples).fit(logits, labels)

    def mean_nll(b, rows=slice(None)):
        return F.cross_entropy(logits[rows] * b, labels[rows]).item()

    beta_g = scipy_inverse_temperature(mean_nll)
    h = 1e-4
    curvature = (mean_nll(beta_g + h) - 2 * mean_nll(beta_g) + mean_nll(beta_g - h)) / h**2
    assert ats.global_temperature == pytest.approx(1 / beta_g, rel=1e-6)
    for j, fitted in enumerate(ats.temperatures):
        rows = piece == j
        n_p = int(rows.sum())

        def objective(b, rows=rows, n_p=n_p):
            return n_p * mean_nll(b, rows) + prior_samples * curvature / 2 * (b - beta_g) ** 2

        assert fitted == pytest.approx(1 / scipy_inverse_temperature(objective), rel=1e-5)


def test_all_correct_piece_gets_a_finite_temperature_that_generalises():
    # An underconfident model (every piece needs T < 1): its top piece (confidence > 0.95) has ~1 error in 350,
    # so a calibration split with ~350 samples there often has none; we make sure of it.
    truth = [0.8, 0.7, 0.6, 0.7]
    logits, labels, piece = synthetic(6000, truth, seed=0)
    top = piece == 3
    labels = torch.where(top, logits.argmax(1), labels)
    plain = PiecewiseTemperatureScaling(BREAKPOINTS, prior_samples=0).fit(logits, labels)
    shrunk = PiecewiseTemperatureScaling(BREAKPOINTS).fit(logits, labels)
    assert shrunk.fit_info["all_correct"] == [False, False, False, True]
    # Without the prior the bounded NLL search runs into its lower bound ...
    assert plain.temperatures[3] == pytest.approx(T_MIN, rel=1e-9)
    # ... with it the piece is sharpened, but by a finite amount.
    assert 4 * T_MIN < shrunk.temperatures[3] < shrunk.global_temperature
    # On fresh data from the same model, the bound's T costs ~10x the NLL of the true T on the top piece.
    val_logits, val_labels, val_piece = synthetic(40000, truth, seed=1)
    val_top = val_piece == 3
    assert (val_logits[val_top].argmax(1) != val_labels[val_top]).sum() >= 3
    nll_plain = F.cross_entropy(plain.transform(val_logits)[val_top], val_labels[val_top]).item()
    nll_shrunk = F.cross_entropy(shrunk.transform(val_logits)[val_top], val_labels[val_top]).item()
    nll_true = F.cross_entropy(val_logits[val_top] / 0.7, val_labels[val_top]).item()
    assert nll_shrunk < 0.5 * nll_plain
    assert nll_shrunk < 1.5 * nll_true


def test_small_pieces_fall_back_to_the_global_temperature():
    logits, labels, _ = synthetic(3000, [1.0, 1.6, 0.7, 2.2], seed=5)
    pieces = PiecewiseTemperatureScaling([0.5, 0.8, 0.95], min_samples=1).piece_of(logits)
    counts = torch.bincount(pieces, minlength=4).tolist()
    threshold = sorted(counts)[1] + 1  # the two smallest pieces fall below it
    ats = PiecewiseTemperatureScaling([0.5, 0.8, 0.95], min_samples=threshold).fit(logits, labels)
    assert ats.fit_info["piece_counts"] == counts
    for j, count in enumerate(counts):
        if count < threshold:
            assert ats.fit_info["fallback"][j]
            assert ats.temperatures[j] == ats.global_temperature
        else:
            assert not ats.fit_info["fallback"][j]
            assert ats.temperatures[j] != ats.global_temperature
    # A piece with no calibration sample at all falls back too.
    empty = PiecewiseTemperatureScaling([0.5, 0.9999999], min_samples=5).fit(logits[:200] * 0.01, labels[:200])
    assert empty.fit_info["piece_counts"][1:] == [0, 0]
    assert empty.temperatures[1] == empty.temperatures[2] == empty.global_temperature


def test_transform_assigns_pieces_by_uncalibrated_confidence():
    logits, labels, _ = synthetic(5000, [1.0, 1.6, 0.7, 2.2], seed=6)
    ats = PiecewiseTemperatureScaling(BREAKPOINTS).fit(logits, labels)
    probe = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [8.0, 0.0, 0.0]], dtype=torch.float64)
    # confidences 1/3, e^2/(e^2+2) = 0.787, e^8/(e^8+2) = 0.9993: pieces 0, 1, 3
    expected_t = torch.tensor([ats.temperatures[0], ats.temperatures[1], ats.temperatures[3]], dtype=torch.float64)
    assert torch.allclose(ats.transform(probe), probe / expected_t.unsqueeze(1), rtol=0, atol=1e-15)


def test_fits_are_deterministic():
    logits, labels, _ = synthetic(8000, [1.0, 1.6, 0.7, 2.2], seed=7)
    for make in (TemperatureScaling, lambda: PiecewiseTemperatureScaling(BREAKPOINTS)):
        first, second = make().fit(logits, labels), make().fit(logits.clone(), labels.clone())
        assert first.temperatures == second.temperatures
        assert torch.equal(first.transform(logits), second.transform(logits))


@pytest.mark.parametrize("breakpoints, match", [
    ([0.8, 0.5], "strictly increasing"),
    ([0.5, 0.5], "strictly increasing"),
    ([0.0, 0.5], r"inside \(0, 1\)"),
    ([0.5, 1.0], r"inside \(0, 1\)"),
    ("0.5", "got '0.5'"),
])
def test_bad_breakpoints_name_the_argument(breakpoints, match):
    with pytest.raises(ValueError, match=r"^breakpoints: .*" + match):
        PiecewiseTemperatureScaling(breakpoints)
    with pytest.raises(ValueError, match=r"^calibration\.breakpoints: .*valid: a strictly increasing list"):
        build_calibrator({"method": "ats", "breakpoints": breakpoints, "min_samples": 50})


def test_bad_config_names_the_yaml_path():
    with pytest.raises(ValueError, match=r"calibration\.method: unknown calibrator 'platt'; valid: none, ts, ats"):
        build_calibrator({"method": "platt"})
    with pytest.raises(ValueError, match=r"calibration\.min_samples: got 0; valid: an integer >= 1"):
        build_calibrator({"method": "ats", "breakpoints": [0.5], "min_samples": 0})
    with pytest.raises(ValueError, match=r"calibration\.breakpionts: unknown key"):
        build_calibrator({"method": "ats", "breakpionts": [0.5]})


def test_build_calibrator_reads_the_trial_config_section():
    ats = build_calibrator({"method": "ats", "breakpoints": [0.3, 0.9], "min_samples": 7})
    assert isinstance(ats, PiecewiseTemperatureScaling)
    assert (ats.breakpoints, ats.min_samples) == ([0.3, 0.9], 7)
    from gce_search.trainables.config import resolve

    default = build_calibrator(resolve({})["calibration"])
    assert default.breakpoints == [0.5, 0.8, 0.95] and default.min_samples == 50
    assert isinstance(build_calibrator({"method": "ts", "breakpoints": [0.5], "min_samples": 50}), TemperatureScaling)


# ---------------------------------------------------------------------------------------------------------------
# Contract: every registered calibrator

CAL_CONFIG = {"breakpoints": [0.5, 0.8, 0.95], "min_samples": 20}


@pytest.fixture(params=CALIBRATORS.names())
def calibrator(request):
    return build_calibrator({"method": request.param, **CAL_CONFIG})


@pytest.fixture(scope="module")
def data():
    logits, labels, _ = synthetic(2000, [1.0, 1.6, 0.7, 2.2], seed=8)
    val, _, _ = synthetic(500, [1.0, 1.6, 0.7, 2.2], seed=9)
    return logits.float(), labels, val.float()


def test_contract_unfitted_use_is_an_error(calibrator, data):
    logits, _, val = data
    assert not calibrator.fitted
    with pytest.raises(NotFittedError, match="not fitted"):
        calibrator.transform(val)
    with pytest.raises(NotFittedError):
        _ = calibrator.temperatures
    assert isinstance(NotFittedError("x"), ValueError)


def test_contract_fit_transform(calibrator, data):
    logits, labels, val = data
    before = logits.clone()
    assert calibrator.fit(logits, labels) is calibrator
    assert torch.equal(logits, before)
    temps = calibrator.temperatures
    assert isinstance(temps, list) and temps and all(isinstance(t, float) and T_MIN <= t <= T_MAX for t in temps)
    for dtype in (torch.float32, torch.float64):
        out = calibrator.transform(val.to(dtype))
        assert out.shape == val.shape and out.dtype == dtype and out.device == val.device
        assert torch.isfinite(out).all()
        # Positive temperatures: argmax (and accuracy) never change.
        assert torch.equal(out.argmax(1), val.to(dtype).argmax(1))
    # Each row is its own logits divided by one positive number.
    ratio = val.double() / calibrator.transform(val.double())
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-12, atol=0)
    assert (ratio > 0).all()


def test_contract_state_dict_round_trips_through_json(calibrator, data):
    logits, labels, val = data
    fresh = json.loads(json.dumps(calibrator.state_dict()))
    assert fresh["fitted"] is False
    calibrator.fit(logits, labels)
    state = json.loads(json.dumps(calibrator.state_dict()))
    assert state["method"] in CALIBRATORS and state["temperatures"] == calibrator.temperatures
    for restored in (calibrator_from_state(state), type(calibrator)().load_state_dict(state)):
        assert restored.temperatures == calibrator.temperatures
        assert torch.equal(restored.transform(val), calibrator.transform(val))
    with pytest.raises(ValueError, match=r"state\['temperatures'\]"):
        type(calibrator)().load_state_dict({**state, "temperatures": [-1.0] * len(state["temperatures"])})
    other = "ts" if state["method"] != "ts" else "none"
    with pytest.raises(ValueError, match=r"state\['method'\]"):
        CALIBRATORS[other].impl().load_state_dict(state)


@pytest.mark.parametrize("bad_logits, bad_labels, match", [
    (torch.empty(0, 4), torch.empty(0, dtype=torch.long), "logits: empty split"),
    (torch.zeros(5), torch.zeros(5, dtype=torch.long), r"logits: expected shape \[N, K\]"),
    (torch.zeros(5, 4), torch.zeros(4, dtype=torch.long), r"labels: expected shape \[5\]"),
    (torch.zeros(5, 4), torch.tensor([0, 1, 2, 3, 4]), r"labels: .*valid: integers in \[0, 3\]"),
    (torch.tensor([[0.0, math.nan], [1.0, 0.0]]), torch.tensor([0, 1]), "logits: contains NaN or infinite"),
    (torch.tensor([[0.0, math.inf], [1.0, 0.0]]), torch.tensor([0, 1]), "logits: contains NaN or infinite"),
    (torch.zeros(5, 4, dtype=torch.long), torch.zeros(5, dtype=torch.long), "logits: expected floating-point"),
])
def test_contract_bad_input_names_the_argument(calibrator, bad_logits, bad_labels, match):
    with pytest.raises(ValueError, match=match):
        calibrator.fit(bad_logits, bad_labels)


def test_contract_transform_rejects_non_finite_logits(calibrator, data):
    logits, labels, _ = data
    calibrator.fit(logits, labels)
    with pytest.raises(ValueError, match="logits: contains NaN"):
        calibrator.transform(torch.tensor([[1.0, math.nan]]))


def test_identity_changes_nothing(data):
    logits, labels, val = data
    none = build_calibrator({"method": "none"}).fit(logits, labels)
    assert none.temperatures == [1.0]
    assert torch.equal(none.transform(val), val)


def test_fit_accepts_numpy_and_low_precision_logits(data):
    logits, labels, _ = data
    from_numpy = TemperatureScaling().fit(logits.numpy(), labels.numpy()).temperatures[0]
    assert from_numpy == TemperatureScaling().fit(logits, labels).temperatures[0]
    half = PiecewiseTemperatureScaling(BREAKPOINTS, min_samples=20).fit(logits.half(), labels)
    out = half.transform(logits.half())
    assert out.dtype == torch.float16 and np.isfinite(out.float().numpy()).all()


@pytest.mark.parametrize("method", ["none", "ts", "ats"])
def test_a_calibrators_state_names_its_registry_key(method):
    """The name is given once, where the class is registered; the state and calibrator_from_state use it."""
    from gce_search.trainables.calibration import CALIBRATORS, calibrator_from_state
    from gce_search.trainables.config import resolve

    cal = build_calibrator(resolve({"calibration": {"method": method}})["calibration"])
    assert type(cal) is CALIBRATORS.get(method).impl and cal.name == method
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(300, 4, generator=gen) * 3, torch.randint(0, 4, (300,), generator=gen)
    state = json.loads(json.dumps(cal.fit(logits, labels).state_dict()))
    assert state["method"] == method
    again = calibrator_from_state(state)
    assert type(again) is type(cal) and torch.equal(again.transform(logits), cal.transform(logits))
