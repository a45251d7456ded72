"""The robust (statistically non-dominated) set on a tiny real search: its dominance shares against a loop over the
same paired resamples with trainables.metrics.ece, its relation to the front, `pareto`'s report and
`export --select pareto-robust`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gce_search.search.cli import main
from gce_search.search.records import load_experiment
from gce_search.search.robust import robust_front
from gce_search.search.uncertainty import val_predictions
from gce_search.trainables import metrics
from tests.search.test_tensorboard import tiny_experiment  # noqa: F401  (session fixture: one search per session)

pytestmark = pytest.mark.slow


def test_robust_set_matches_a_loop_over_the_same_paired_resamples(tiny_experiment):  # noqa: F811
    exp = load_experiment(tiny_experiment)
    robust = robust_front(exp, resamples=200, seed=0)
    complete = exp.complete()
    probs = [torch.softmax(val_predictions(t)["calibrated"].double(), 1).numpy() for t in complete]
    labels = val_predictions(complete[0])["labels"].numpy()
    n = len(labels)
    idx = np.random.default_rng(0).integers(0, n, size=(200, n))  # the draws robust_front makes (one chunk here)
    scores = [[(float((p[row].argmax(1) == labels[row]).mean()), metrics.ece(p[row], labels[row])) for row in idx]
              for p in probs]
    ids = [t.trial_id for t in complete]
    for a in range(len(ids)):
        for b in range(len(ids)):
            if a == b:
                continue
            wins = sum(sa[0] >= sb[0] and sa[1] <= sb[1] and (sa[0] > sb[0] or sa[1] < sb[1])
                       for sa, sb in zip(scores[a], scores[b]))
            assert robust["dominance"][ids[a]].get(ids[b], 0.0) == pytest.approx(wins / 200, abs=1e-12)
    # members: not robustly dominated by anyone; everyone else: robustly dominated by someone
    for b in ids:
        dominated = any(robust["dominance"][a].get(b, 0.0) >= 0.95 for a in ids if a != b)
        assert (b in robust["members"]) == (not dominated)
    front = [t.trial_id for t in exp.front()]
    assert robust["front"] == front
    assert set(robust["tied"]) == set(robust["members"]) - set(front)


def test_pareto_reports_the_robust_set_and_export_selects_it(tiny_experiment, tmp_path, capsys):  # noqa: F811
    exp_dir = Path(shutil.copytree(tiny_experiment, tmp_path / "tiny"))
    assert main(["pareto", str(exp_dir)]) == 0
    out = capsys.readouterr().out
    robust = json.loads((exp_dir / "robust.json").read_text())
    assert f"robust set: {len(robust['members'])} trial(s)" in out
    front = [t.trial_id for t in load_experiment(exp_dir).front()]
    assert sorted(p.stem for p in (exp_dir / "reliability_smooth").glob("*.png")) == sorted(front)
    assert "smooth reliability diagram" in out
    assert main(["export", str(exp_dir), "--select", "pareto-robust", "--out", str(tmp_path / "e")]) == 0
    assert sorted(p.stem for p in (tmp_path / "e").glob("*.yaml")) == sorted(robust["members"])
