"""The Python API (gce_search.run_search, load_experiment, train) on one tiny real search: the Experiment it
returns, its front, best trial, hypervolume and exports, a retrain reproducing a trial, and bad input refused before
Ray starts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

import gce_search
from gce_search.errors import ConfigError, UsageError
from gce_search.search.pareto import hypervolume_acc_ece
from gce_search.search.records import front_indices

# The tiny search: quickstart with --set-style overrides, 3 trials of 2 epochs.
OVERRIDES = ["search.num_samples=3", "train.epochs=2", "search.sampler=random", "scheduler.grace_period=1",
             "data.max_train=300"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    storage = tmp_path_factory.mktemp("storage")
    exp = gce_search.run_search("quickstart", storage=storage, name="api", overrides=OVERRIDES)
    import ray

    assert not ray.is_initialized()  # run_search shut down the Ray it started
    return exp


def test_run_search_returns_the_loaded_experiment(experiment):
    assert isinstance(experiment, gce_search.Experiment)
    assert experiment.path.name == "api" and (experiment.path / "spec.yaml").is_file()
    assert experiment.spec["name"] == "quickstart" and experiment.spec["train"]["epochs"] == 2
    assert experiment.spec["search"]["num_samples"] == 3
    assert len(experiment.trials) == 3
    assert experiment.complete(), "the first trial of each ASHA rung is promoted, so one trial completes"
    again = gce_search.load_experiment(experiment.path)
    assert isinstance(again, gce_search.Experiment)
    assert sorted(t.trial_id for t in again.trials) == sorted(t.trial_id for t in experiment.trials)


def test_front_best_and_hypervolume(experiment):
    complete = experiment.complete()
    points = [(t.metric("val/acc"), t.metric("val/ece")) for t in complete]
    front = experiment.front()
    assert {t.trial_id for t in front} == {complete[i].trial_id for i in front_indices(points)}
    assert [t.metric("val/ece") for t in front] == sorted(t.metric("val/ece") for t in front)

    best = experiment.best()
    top = max(complete, key=lambda t: (t.metric("score"), -t.metric("val/ece")))
    assert best.trial_id == top.trial_id and best.status == "complete"

    assert experiment.hypervolume() == hypervolume_acc_ece(points) > 0
    summary = json.loads((experiment.path / "summary.json").read_text())
    assert math.isclose(summary["hypervolume"], experiment.hypervolume(), rel_tol=1e-12)


def test_export_writes_the_chosen_trials(experiment, tmp_path):
    best = experiment.export("best", out=tmp_path / "best")
    assert [p.stem for p in best] == [experiment.best().trial_id] and best[0].parent == tmp_path / "best"
    pareto = experiment.export()
    assert all(p.parent == experiment.path / "export" for p in pareto)
    assert sorted(p.stem for p in pareto) == sorted(t.trial_id for t in experiment.front())
    with pytest.raises(UsageError, match="would overwrite"):
        experiment.export()
    with pytest.raises(UsageError, match=r"valid: pareto \| pareto-robust \| best \| top:K"):
        experiment.export("worst")


def test_train_reproduces_a_trial_from_its_export_and_from_a_dict(experiment, tmp_path):
    trial = experiment.best()
    (path,) = experiment.export("best", out=tmp_path / "export")
    metrics = gce_search.train(path, out=tmp_path / "retrain")
    assert metrics["status"] == "ok" and metrics["epoch"] == 2 and len(metrics["history"]) == 2
    assert metrics["val/acc"] == trial.final["val/acc"]
    assert math.isclose(metrics["val/ece"], trial.final["val/ece"], rel_tol=0, abs_tol=1e-6)
    written = json.loads((tmp_path / "retrain" / "metrics.json").read_text())
    assert written["val/acc"] == metrics["val/acc"] and written["config_source"] == str(path.resolve())

    config = yaml.safe_load(path.read_text())["config"]
    from_dict = gce_search.train(config, out=tmp_path / "from-dict", overrides=["train.epochs=1"])
    assert from_dict["epoch"] == 1 and from_dict["config_source"] == "config"
    # a cosine schedule stepped per epoch runs the first epoch at train.lr whatever the budget: the same epoch
    assert from_dict["val/acc"] == trial.history[0]["val/acc"]


def test_bad_input_is_refused_before_ray_starts(tmp_path):
    import ray

    with pytest.raises(ConfigError, match="no-such-space: no such file, and not a shipped space"):
        gce_search.run_search("no-such-space", storage=tmp_path)
    with pytest.raises(ConfigError, match=r"search\.num_samples: .*valid: "):
        gce_search.run_search(gce_search.load_spec("quickstart"), storage=tmp_path,
                              overrides=["search.num_samples=0"])
    with pytest.raises(ConfigError, match="loss.name: unknown loss 'nope'"):
        gce_search.run_search({"loss": {"name": "nope"}}, storage=tmp_path)
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        gce_search.run_search({}, storage=tmp_path, overrides=["train.epochs"])
    with pytest.raises(UsageError, match="space: got int; valid: a space YAML path"):
        gce_search.run_search(42, storage=tmp_path)
    with pytest.raises(UsageError, match="--address 'not-an-address': not a Ray address"):
        gce_search.run_search("quickstart", storage=tmp_path, address="not-an-address")
    assert not ray.is_initialized() and list(Path(tmp_path).iterdir()) == []

    with pytest.raises(ConfigError, match="loss.name: unknown loss 'nope'"):
        gce_search.train({"loss": {"name": "nope"}}, out=tmp_path / "t")
    with pytest.raises(UsageError, match="config: got list"):
        gce_search.train([], out=tmp_path / "t")
    with pytest.raises(UsageError, match="not a directory"):
        gce_search.load_experiment(tmp_path / "missing")
    assert not (tmp_path / "t").exists()
