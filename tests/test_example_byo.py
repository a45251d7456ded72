"""examples/byo end to end, as its README runs it: make the data, search (its own model factory, .npz data and
training loop) on a real local Ray, read the front, export the best trial and retrain the export."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "byo"
# what the retrain must give again (the export test's rule: val/acc equal, the others within 1e-6)
VAL_KEYS = ("val/ece", "val/ece_raw", "val/adaece", "val/cece", "val/nll", "val/brier", "score")


def gce_search(args: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "gce_search", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"gce-search {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def test_the_byo_example_searches_exports_and_retrains(tmp_path):
    work = tmp_path / "byo"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("__pycache__", "*.npz"))
    env = {**os.environ, "PYTHONPATH": str(work)}  # as the README sets it: the example's modules importable
    subprocess.run([sys.executable, "make_data.py"], cwd=work, env=env, check=True, capture_output=True, timeout=120)
    data = work / "byo.npz"
    assert data.is_file()
    storage = tmp_path / "results"
    path_set = ["--set", "search.num_samples=4"]  # 4 of its 6 trials: quicker; data.path: byo.npz, relative
    gce_search(["validate", "space.yaml", *path_set], work, env)
    run = gce_search(["run", "space.yaml", *path_set, "--storage", str(storage), "--name", "byo"], work, env)
    exp = storage / "byo"
    assert "Pareto front" in run.stdout

    # every trial ran the example's loop on its data and model, some early-stopped by ASHA
    from gce_search.search.records import load_experiment

    experiment = load_experiment(exp)
    assert len(experiment.trials) == 4
    for trial in experiment.trials:
        assert trial.config["trainable"] == "byo_loop:train"
        assert trial.config["model"]["factory"] == "byo_net:make_net"
        assert trial.config["data"] == {**trial.config["data"], "name": "arrays", "path": str(data)}
        assert all("lr" in h and "train/acc" in h for h in trial.history)  # the loop's own metrics
    complete = experiment.complete()
    assert complete and all(t.final["final"] and "test/ece" in t.final for t in complete)
    assert {t.status for t in experiment.trials} <= {"complete", "stopped", "degenerate"}
    widths = {t.config["model"]["width"] for t in experiment.trials}
    assert widths <= {16, 32, 64}

    # the front: pareto.csv has rows, every cell filled
    gce_search(["pareto", str(exp)], work, env)
    with open(exp / "pareto.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:
        assert all(value not in ("", None) for value in row.values()), row

    # the best trial exported and retrained by gce-search train: the same val metrics
    gce_search(["export", str(exp), "--select", "best"], work, env)
    exports = sorted((exp / "export").glob("*.yaml"))
    assert len(exports) == 1
    doc = yaml.safe_load(exports[0].read_text())
    assert doc["config"]["trainable"] == "byo_loop:train"
    chosen = next(t for t in experiment.trials if t.trial_id == doc["source"]["trial"])
    out = tmp_path / "retrain"
    gce_search(["train", str(exports[0]), "--out", str(out)], tmp_path, env)
    retrained = json.loads((out / "metrics.json").read_text())
    assert retrained["val/acc"] == chosen.final["val/acc"]
    assert retrained["val/n"] == chosen.final["val/n"]
    for key in VAL_KEYS:
        assert math.isclose(retrained[key], chosen.final[key], rel_tol=0, abs_tol=1e-6), key
    assert retrained["epoch"] == chosen.final["epoch"] == doc["config"]["train"]["epochs"]
