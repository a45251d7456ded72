"""Calibration refinement (trainables.refine): the vectorised cross-validation against an explicit loop over folds
with the real calibrators, the winner's refit, determinism, the config form, and a real trial that refines."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gce_search.trainables import metrics
from gce_search.trainables.calibration import (IdentityCalibrator, PiecewiseTemperatureScaling, RefinedCalibrator,
                                               TemperatureScaling, build_calibrator, calibrator_from_state, refine)
from gce_search.trainables.config import resolve
from gce_search.trainables.refine import score_candidates
from gce_search.trainables.registry import ConfigError


def _logits(seed: int, n: int, k: int = 10):
    """Logits whose miscalibration differs with confidence: over-confident when sure, under-confident otherwise,
    so piecewise temperatures help."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    z = torch.randn(n, k, generator=g)
    z[torch.arange(n), y] += torch.rand(n, generator=g) * 6
    z = z * torch.where(z.max(1).values > 4, 2.0, 0.6).unsqueeze(1)
    return z, y


def _exact_cv(z, y, method, breakpoints, folds, seed, min_samples=50, prior_samples=10.0):
    """The held-out ECE and NLL of one candidate by fitting the real calibrator on each fold's training part."""
    conf = torch.softmax(z.double(), 1).max(1).values.numpy()
    order = np.argsort(conf, kind="stable")
    fold = np.empty(len(y), dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(len(y))] = np.arange(len(y)) % folds
    eces, nlls = [], []
    for f in range(folds):
        train = torch.from_numpy(order[fold != f])
        held = torch.from_numpy(order[fold == f])
        cal = {"none": IdentityCalibrator, "ts": TemperatureScaling}.get(method)
        cal = cal() if cal else PiecewiseTemperatureScaling(breakpoints, min_samples, prior_samples)
        cal.fit(z[train], y[train])
        out = metrics.summary(cal.transform(z[held]), y[held])
        eces.append(out["ece"])
        nlls.append(out["nll"])
    return float(np.mean(eces)), float(np.mean(nlls))


CANDIDATES = [("none", None), ("ts", None), ("ats", [0.5, 0.8, 0.95]), ("ats", [0.3, 0.6]), ("ats", [0.9]),
              ("ats", [0.2, 0.4, 0.6, 0.8, 0.97]), ("ats", [0.999])]


def test_vectorised_cv_scores_match_real_calibrators_fitted_on_each_fold():
    z, y = _logits(0, 3000)
    eces, nlls = score_candidates(z, y, CANDIDATES, folds=5, seed=3)
    for (method, bps), ece, nll in zip(CANDIDATES, eces, nlls):
        want_ece, want_nll = _exact_cv(z, y, method, bps, folds=5, seed=3)
        # the grid of inverse temperatures (2.4% steps in T) is the only approximation
        assert ece == pytest.approx(want_ece, abs=2e-3), (method, bps)
        assert nll == pytest.approx(want_nll, rel=2e-3), (method, bps)
    exact_none = _exact_cv(z, y, "none", None, 5, 3)
    assert eces[0] == pytest.approx(exact_none[0], abs=1e-6)  # beta = 1 is on the grid: no calibration is exact


def test_refine_refits_the_winner_on_all_of_calib_and_is_deterministic():
    z, y = _logits(1, 4000)
    winner, info = refine(z, y, pieces=(2, 6), candidates=60, folds=5, seed=0)
    again, info2 = refine(z, y, pieces=(2, 6), candidates=60, folds=5, seed=0)
    assert {k: v for k, v in info.items() if k != "seconds"} == {k: v for k, v in info2.items() if k != "seconds"}
    assert info["evaluated"] == 60 and info["method"] in ("none", "ts", "ats")
    direct = {"none": IdentityCalibrator(), "ts": TemperatureScaling()}.get(info["method"]) \
        or PiecewiseTemperatureScaling(info["breakpoints"])
    direct.fit(z, y)
    assert winner.temperatures == pytest.approx(direct.temperatures, rel=1e-12)
    assert again.temperatures == winner.temperatures


def test_refinement_finds_pieces_where_they_help_and_they_help_on_fresh_data():
    z, y = _logits(2, 5000)
    z_val, y_val = _logits(3, 5000)
    winner, info = refine(z, y, candidates=120, seed=0)
    assert info["method"] == "ats"
    ts = TemperatureScaling().fit(z, y)
    refined_ece = metrics.summary(winner.transform(z_val), y_val)["ece"]
    ts_ece = metrics.summary(ts.transform(z_val), y_val)["ece"]
    assert refined_ece < ts_ece
    # and never worse inside calib than the best of the fixed defaults it also tried
    scores, _ = score_candidates(z, y, [("ts", None), ("ats", [0.5, 0.8, 0.95])], seed=0)
    assert info["cv_ece"] <= scores.min() + 1e-12


def test_refined_calibrator_state_round_trip():
    z, y = _logits(4, 2000)
    cal = build_calibrator({"method": "ats", "breakpoints": {"refine": "cv", "candidates": 30, "folds": 4}})
    assert isinstance(cal, RefinedCalibrator)
    cal.fit(z, y)
    state = cal.state_dict()
    assert state["method"] == cal.refine_info["method"] and state["refine"]["candidates"] == 30
    rebuilt = build_calibrator({"method": "ats", "breakpoints": {"refine": "cv", "candidates": 30,
                                                                 "folds": 4}}).load_state_dict(state)
    assert torch.equal(rebuilt.transform(z), cal.transform(z))
    assert torch.equal(calibrator_from_state(state).transform(z), cal.transform(z))


@pytest.mark.parametrize("value, message", [
    ({"refine": "loo"}, "valid: cv"),
    ({"refine": "cv", "pieces": [3, 2]}, "1 <= LO <= HI <= 16"),
    ({"refine": "cv", "candidates": 1}, "2..5000"),
    ({"refine": "cv", "folds": 1}, "2..20"),
    ({"refine": "cv", "fold": 5}, "unknown key 'fold'"),
])
def test_bad_refinement_requests_are_refused_with_what_is_valid(value, message):
    with pytest.raises(ConfigError) as err:
        resolve({"calibration": {"method": "ats", "breakpoints": value}})
    assert "calibration.breakpoints" in str(err.value) and message in str(err.value)


def test_pieces_of_one_tries_only_none_and_ts():
    z, y = _logits(5, 1000)
    _, info = refine(z, y, pieces=(1, 1), candidates=10)
    assert info["method"] in ("none", "ts") and info["evaluated"] == 2


def test_a_trial_refines_at_every_evaluation():
    from gce_search.trainables.trial import run_trial

    cfg = {"data": {"name": "digits", "max_train": 400}, "model": {"name": "mlp"}, "train": {"epochs": 2},
           "calibration": {"method": "ats", "min_samples": 20,
                           "breakpoints": {"refine": "cv", "pieces": [2, 4], "candidates": 40, "folds": 3}}}
    reports = []
    final = run_trial(cfg, reporter=lambda m, checkpoint_dir: reports.append(m))
    assert final["final"] and len(reports) == 2
    for m in reports:
        assert m["calibration/method"] in ("none", "ts", "ats")
        assert len(m["calibration/temperatures"]) == (len(m["calibration/breakpoints"]) + 1
                                                      if m["calibration/method"] == "ats" else 1)
        assert m["calibration/refine_s"] > 0 and m["calibration/cv_ece"] >= 0
    assert "test/ece" in final and final["score"] == pytest.approx(final["val/acc"] - final["val/ece"])


def test_the_refinement_scores_with_the_objectives_bins():
    from gce_search.trainables.loop import score_epoch

    z, y = _logits(6, 1500)
    cfg = resolve({"objective": {"n_bins": 10},
                   "calibration": {"method": "ats", "breakpoints": {"refine": "cv", "candidates": 20, "folds": 3}}})
    _, calibrator = score_epoch(cfg, (z, y), (z[:300], y[:300]), 10)
    assert calibrator.n_bins == 10
    _, info = refine(z, y, candidates=20, folds=3, n_bins=10)
    assert calibrator.refine_info["cv_ece"] == pytest.approx(info["cv_ece"])


def test_the_refinement_uses_the_calibrators_temperature_bounds():
    from gce_search.trainables import calibration
    from gce_search.trainables import refine as refine_module

    assert (refine_module.T_MIN, refine_module.T_MAX) == (calibration.T_MIN, calibration.T_MAX)
    betas = refine_module._beta_grid()
    assert betas.min() >= 1 / calibration.T_MAX - 1e-12 and betas.max() <= 1 / calibration.T_MIN + 1e-12
    assert np.isclose(betas, 1.0, rtol=0, atol=1e-12).sum() == 1


def test_the_inner_tpe_proposes_new_candidates_better_than_random_ones():
    """The TPE phase's proposals, scored like the others, are on average better than the random candidates they
    learned from (the point of a model-based phase)."""
    from gce_search.trainables.refine import _Scorer, _tpe_candidates, refine_candidates

    z, y = _logits(7, 4000)
    scorer = _Scorer(z, y, 5, 50, 10.0, 15, 0)
    rng = np.random.default_rng(0)
    pool = refine_candidates(scorer.conf_sorted, (2, 6), 120, rng)
    eces, _ = scorer.score([m for m, _ in pool], [b for _, b in pool])
    extra, extra_eces, _ = _tpe_candidates(scorer, pool, eces, (2, 6), 40, rng)
    assert len(extra) == 40 and all(m == "ats" for m, _ in extra)
    assert not {tuple(b) for _, b in extra} & {tuple(b) for _, b in pool if b}  # never a repeat
    random_ats = eces[[m == "ats" for m, _ in pool]]
    assert np.median(extra_eces) < np.median(random_ats)
