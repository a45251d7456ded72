"""`gce-search recalibrate` on a tiny real search: metrics equal an independent refit from the checkpoints, the new
directory is an experiment the other commands read, the original is untouched, and bad input writes nothing."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from gce_search.search.cli import main
from gce_search.search.records import load_experiment
from gce_search.search.recalibrate import recalibrate
from gce_search.search.uncertainty import latest_checkpoint
from gce_search.trainables import metrics
from gce_search.trainables.calibration import TemperatureScaling
from gce_search.trainables.inference import split_logits
from tests.search.test_tensorboard import tiny_experiment  # noqa: F401  (session fixture: one search per session)

pytestmark = pytest.mark.slow


@pytest.fixture
def experiment(tiny_experiment, tmp_path):  # noqa: F811
    """A copy of the session's tiny search, so that what these tests write stays out of the shared one."""
    import shutil

    return Path(shutil.copytree(tiny_experiment, tmp_path / "tiny"))


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))
            if p.is_file() and "recalibrated" not in p.relative_to(folder).parts}


def test_recalibrate_with_ts_equals_a_refit_from_each_checkpoint(experiment, capsys):
    before = _snapshot(experiment)
    out = recalibrate(experiment, "ts", name="ts-check")
    assert out == experiment / "recalibrated" / "ts-check"
    assert _snapshot(experiment) == before  # nothing of the search changed
    original = load_experiment(experiment)
    new = load_experiment(out)
    assert sorted(t.trial_id for t in new.trials) == sorted(t.trial_id for t in original.complete())
    for trial in new.trials:
        source = next(t for t in original.trials if t.trial_id == trial.trial_id)
        state = torch.load(latest_checkpoint(source), map_location="cpu", weights_only=True)
        logits = split_logits(state, ("calib", "val", "test"))
        ts = TemperatureScaling().fit(*logits["calib"])
        for split in ("val", "test"):
            want = metrics.summary(ts.transform(logits[split][0]), logits[split][1])
            assert trial.final[f"{split}/ece"] == pytest.approx(want["ece"], abs=1e-9)
            assert trial.final[f"{split}/nll"] == pytest.approx(want["nll"], rel=1e-6)
        assert trial.final["calibration/temperatures"] == pytest.approx(ts.temperatures)
        assert trial.final["val/acc"] == source.final["val/acc"]  # the model is the same
        assert trial.config["calibration"]["method"] == "ts" and trial.status == "complete"
        assert trial.final["score"] == pytest.approx(trial.final["val/acc"] - trial.final["val/ece"])
    for name in ("pareto.csv", "pareto.png", "summary.json", "spec.yaml"):
        assert (out / name).is_file()
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    assert [r["trial"] for r in rows] == [t.trial_id for t in new.front()]
    assert all(r["calibration.method"] == "ts" for r in rows)


def test_recalibrate_refine_from_the_cli_and_export_its_front(experiment, tmp_path, capsys):
    assert main(["recalibrate", str(experiment), "--name", "refined"]) == 0
    out = experiment / "recalibrated" / "refined"
    text = capsys.readouterr().out
    assert "hypervolume (val)" in text and str(out) in text
    new = load_experiment(out)
    assert all(t.final["calibration/method"] in ("none", "ts", "ats") for t in new.trials)
    summary = json.loads((out / "summary.json").read_text())
    assert [m["trial"] for m in summary["front"]] == [t.trial_id for t in new.front()]
    assert main(["export", str(out), "--select", "best", "--out", str(tmp_path / "e")]) == 0
    (path,) = (tmp_path / "e").glob("*.yaml")
    doc = yaml.safe_load(path.read_text())
    trial = next(t for t in new.trials if t.trial_id == path.stem)
    assert doc["calibrator"]["method"] == trial.final["calibration/method"]
    assert doc["calibrator"]["state"]["temperatures"] == pytest.approx(trial.final["calibration/temperatures"])
    assert doc["config"]["calibration"]["breakpoints"]["refine"] == "cv"
    # the same name again is refused, nothing changed
    before = _snapshot(out)
    assert main(["recalibrate", str(experiment), "--name", "refined"]) == 2
    assert "exists" in capsys.readouterr().err and _snapshot(out) == before


@pytest.mark.parametrize("calibration, message", [
    ("platt", "not a preset, a file or a mapping"),
    ("{method: ats, breakpoints: [0.9, 0.5]}", "strictly increasing"),
    ("{method: isotonic}", "calibration.method"),
])
def test_bad_calibration_is_refused_and_nothing_is_written(experiment, capsys, calibration, message):
    before = sorted(p.name for p in (experiment / "recalibrated").glob("*")) \
        if (experiment / "recalibrated").exists() else []
    assert main(["recalibrate", str(experiment), "--calibration", calibration, "--name", "bad"]) == 2
    assert message in capsys.readouterr().err
    after = sorted(p.name for p in (experiment / "recalibrated").glob("*")) \
        if (experiment / "recalibrated").exists() else []
    assert after == before


def test_recalibrate_refuses_what_is_not_an_experiment(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["recalibrate", str(tmp_path / "x")]) == 2
    assert "not an experiment directory" in capsys.readouterr().err
    assert not (tmp_path / "x" / "recalibrated").exists()
