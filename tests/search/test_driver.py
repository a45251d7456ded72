"""`gce-search run` end to end on a tiny real search, and the CLI/driver bad inputs (nothing started or overwritten)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import optuna
import pytest
import ray
from optuna.trial import TrialState

from gce_search.search.cli import main
from gce_search.search.searcher import optuna_records

TINY_SPACE = """\
name: tiny
description: a few seconds per trial on digits, for tests
data: {name: digits, max_train: 400}
model: {name: mlp}
train: {epochs: 3, batch_size: BATCH_SIZE}
calibration: {method: ats}
search: {sampler: random, num_samples: NUM_SAMPLES, seed: 0}
scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
space:
  loss.name: {choices: [cross_entropy, gce]}
  gce.lam: {low: 0.0, high: 2.0}
  train.lr: {low: 0.001, high: 0.5, log: true}
  calibration.breakpoints: {breakpoints: {pieces: [2, 4]}}
"""


def write_tiny_space(folder: Path, num_samples: int = 6, batch_size: int = 64) -> str:
    path = folder / "tiny.yaml"
    path.write_text(TINY_SPACE.replace("NUM_SAMPLES", str(num_samples)).replace("BATCH_SIZE", str(batch_size)))
    return str(path)


def trial_folders(exp_dir: Path) -> list[Path]:
    return sorted(p.parent for p in exp_dir.glob("*/result.json"))


def last_result(folder: Path) -> dict:
    from gce_search.trainables.checkpoints import read_result_lines

    lines, torn = read_result_lines(folder / "result.json")
    assert torn is None, torn
    return lines[-1] if lines else {}


def ray_outcome(last: dict) -> str:
    from gce_search.search.records import trial_outcome

    return trial_outcome(last)


# a degenerate trial (full budget at chance level) is on no front, the study's included
EXPECTED_STATE = {"complete": TrialState.COMPLETE, "degenerate": TrialState.PRUNED, "stopped": TrialState.PRUNED,
                  "diverged": TrialState.FAIL}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- assembly, no Ray


def test_max_epochs_is_the_longest_budget_a_trial_can_get(tmp_path):
    import yaml

    from gce_search.search.driver import max_epochs
    from gce_search.spaces.validation import spec_from_dict

    raw = yaml.safe_load(TINY_SPACE.replace("NUM_SAMPLES", "4").replace("BATCH_SIZE", "64"))
    assert max_epochs(spec_from_dict(raw)) == 3
    del raw["train"]["epochs"]  # searched: the base value (the default, 10) is never run
    raw["space"]["train.epochs"] = {"low": 2, "high": 4}
    assert max_epochs(spec_from_dict(raw)) == 4
    raw["space"]["train.epochs"] = {"choices": [5, 20]}
    assert max_epochs(spec_from_dict(raw)) == 20
    # a condition can leave it inactive: such a trial runs the base value
    raw["space"]["train.epochs"] = {"low": 2, "high": 4, "when": {"loss.name": "gce"}}
    spec = spec_from_dict(raw)
    assert max_epochs(spec) == spec.base_config["train"]["epochs"] == 10


def test_scheduler_state_reports_the_restored_rungs_of_either_asha(capsys):
    from ray.tune.schedulers import ASHAScheduler

    from gce_search.search.driver import SchedulerState
    from gce_search.search.moasha import MultiObjectiveASHA

    class FakeTrial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    for make in (lambda: ASHAScheduler(time_attr="epoch", metric="score", mode="max", max_t=9, grace_period=1),
                 lambda: MultiObjectiveASHA(max_t=9, grace_period=1)):
        scheduler = make()
        for i, trial_id in enumerate(("a", "b")):
            trial = FakeTrial(trial_id)
            scheduler.on_trial_add(None, trial)
            scheduler.on_trial_result(None, trial, {"epoch": 1, "score": 0.5 + i, "val/acc": 0.5 + 0.1 * i,
                                                    "val/ece": 0.1, "status": "ok"})
        state = SchedulerState(scheduler).get_state()
        fresh = make()
        SchedulerState(fresh).set_state(state)
        assert "scheduler state restored (2 result(s) recorded at rungs)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- bad input, no Ray


@pytest.mark.parametrize("argv, message", [
    (["run", "no_such_space"], "not a shipped space"),
    (["run", "/nonexistent/dir/space.yaml"], "no such file"),
    (["run", "SPACE", "--set", "train.epochs"], "expected KEY=VALUE"),
    (["run", "SPACE", "--set", "=3"], "the key before '=' is empty"),
    (["run", "SPACE", "--set", "train.epochs=0"], "train.epochs"),
    (["run", "SPACE", "--address", "not an address"], "not a Ray address"),
    (["run", "SPACE", "--address", "10.0.0.1:99999"], "port 99999 out of range"),
    (["run", "SPACE", "--address", "127.0.0.1:1"], "nothing answers at 127.0.0.1:1"),
    (["run", "SPACE", "--name", "../escape"], "not a usable experiment name"),
    (["resume", "STORAGE/missing"], "not a gce-search experiment directory (not a directory"),
    (["resume", "STORAGE"], "no spec.yaml"),
])
def test_bad_input_refused_before_anything_starts(tmp_path, capsys, argv, message):
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "keep.txt").write_text("untouched")
    space = write_tiny_space(tmp_path)
    argv = [a.replace("SPACE", space).replace("STORAGE", str(storage)) for a in argv]
    if argv[0] == "run":
        argv += ["--storage", str(storage), "--name", "x"] if "--name" not in argv else ["--storage", str(storage)]
    before = snapshot(storage)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not ray.is_initialized(), "Ray was started for a bad input"
    assert snapshot(storage) == before


def test_existing_experiment_name_refused_and_untouched(tmp_path, capsys):
    storage = tmp_path / "storage"
    (storage / "taken").mkdir(parents=True)
    (storage / "taken" / "result.json").write_text('{"epoch": 1}\n')
    before = snapshot(storage)
    code = main(["run", write_tiny_space(tmp_path), "--storage", str(storage), "--name", "taken"])
    assert code == 2
    err = capsys.readouterr().err
    assert "already exists" in err and f"gce-search resume {storage / 'taken'}" in err
    assert snapshot(storage) == before
    assert not ray.is_initialized()


def test_resume_refuses_a_directory_without_ray_state(tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "spec.yaml").write_text("name: x\n")
    (exp / "optuna.journal").write_text("")
    before = snapshot(exp)
    assert main(["resume", str(exp)]) == 2
    assert "no Ray Tune experiment state" in capsys.readouterr().err
    assert snapshot(exp) == before


# ------------------------------------------------------------------------------------------------ with local Ray


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("overrides, wanted", [
    # a trial pinned to CUDA keeps its GPU request (with train.device: auto it would run on the CPUs instead)
    (["resources.gpus_per_trial=1", "train.device=cuda"], "1 CPU, 1 GPU"),
    (["resources.cpus_per_trial=64"], "64 CPU"),
])
def test_unsatisfiable_resources_refused_at_start(local_ray, tmp_path, capsys, overrides, wanted):
    storage = tmp_path / "storage"
    sets = [arg for override in overrides for arg in ("--set", override)]
    code = main(["run", write_tiny_space(tmp_path), "--storage", str(storage), "--name", "big", *sets])
    assert code == 2
    err = capsys.readouterr().err
    assert f"no node can run a trial that needs {wanted}" in err
    assert "2 CPU, 0 GPU" in err  # what the cluster has
    assert not (storage / "big").exists()


def test_tiny_search_end_to_end(local_ray, tmp_path, capsys):
    import os

    from gce_search.search.driver import TUNE_ENVIRONMENT

    before = {key: os.environ.get(key) for key in TUNE_ENVIRONMENT}
    storage = tmp_path / "results"
    code = main(["run", write_tiny_space(tmp_path, num_samples=6), "--storage", str(storage), "--name", "e2e"])
    out = capsys.readouterr().out
    assert code == 0
    # The run's Tune settings do not outlive it (a later Tuner in the same process keeps Ray's default loggers).
    assert {key: os.environ.get(key) for key in TUNE_ENVIRONMENT} == before
    exp = storage / "e2e"
    assert (exp / "spec.yaml").is_file() and (exp / "optuna.journal").is_file()
    from gce_search.spaces.loading import load_spec

    assert load_spec(str(exp / "spec.yaml")).name == "tiny"  # the saved spec loads back

    folders = trial_folders(exp)
    assert len(folders) == 6
    outcomes = {}
    for folder in folders:
        last = last_result(folder)
        outcomes[last["trial_id"]] = ray_outcome(last)
        assert last["config"]["trial_config"]["train"]["epochs"] == 3
    assert "stopped" in outcomes.values(), "ASHA stopped no trial"
    assert "complete" in outcomes.values()

    study = optuna.load_study(study_name="e2e", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))))
    assert study.metric_names == ["val/acc", "val/ece"]
    records = optuna_records(study)
    assert sorted(records) == sorted(outcomes) and len(study.trials) == 6
    for trial_id, outcome in outcomes.items():
        assert records[trial_id].state == EXPECTED_STATE[outcome], trial_id
        if outcome == "complete":
            last = last_result(next(f for f in folders if last_result(f)["trial_id"] == trial_id))
            assert records[trial_id].values == pytest.approx([last["val/acc"], last["val/ece"]])

    # progress: one line per trial event (tests/search/test_progress.py has the rest), the end lines with the
    # loss, epoch and metrics, and the closing pointers
    lines = out.splitlines()
    assert sum(" started " in ln for ln in lines) == 6
    ended = r"\[\d/6 done\]  trial \w+  (completed|degenerate|stopped|failed|error)"
    end_lines = [ln for ln in lines if re.search(ended, ln)]
    assert len(end_lines) == 6 and all("val/acc" in ln and "val/ece" in ln and "score" in ln for ln in end_lines)
    assert any("epoch 3/3" in ln for ln in end_lines)
    assert any(" stopped " in ln for ln in lines) and any(" completed " in ln for ln in lines)
    assert any("gce λ=" in ln for ln in lines) or all("cross_entropy" in ln for ln in end_lines)
    assert f"gce-search tensorboard {exp}" in out and f"gce-search export {exp}" in out
    assert "Pareto front" in out

    # the same name again is refused, and the experiment is left as it was
    before = snapshot(exp)
    assert main(["run", write_tiny_space(tmp_path), "--storage", str(storage), "--name", "e2e"]) == 2
    assert snapshot(exp) == before




def test_ece_metric_smece_is_what_the_search_minimises(local_ray, tmp_path, capsys):
    """objective.ece_metric: smece under MO-ASHA: the score, Optuna's objective values, MO-ASHA's objectives, the
    front in summary.json and pareto.csv all use val/smece; val/ece is still reported, with its interval."""
    import csv
    import json

    from gce_search.search.records import load_experiment
    from gce_search.spaces.loading import load_spec

    space = Path(write_tiny_space(tmp_path, num_samples=5))
    space.write_text(space.read_text().replace("{name: asha, grace_period: 1, reduction_factor: 2}",
                                               "{name: moasha, grace_period: 1, reduction_factor: 2}")
                     + "objective: {ece_metric: smece, w_ece: 2.0}\n")
    storage = tmp_path / "results"
    assert main(["run", str(space), "--storage", str(storage), "--name", "sm"]) == 0
    out = capsys.readouterr().out
    exp_dir = storage / "sm"
    assert load_spec(str(exp_dir / "spec.yaml")).base_config["objective"]["ece_metric"] == "smece"
    study = optuna.load_study(study_name="sm", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp_dir / "optuna.journal"))))
    assert study.metric_names == ["val/acc", "val/smece"]
    records = optuna_records(study)
    exp = load_experiment(exp_dir)
    assert exp.objectives == ("val/acc", "val/smece")
    assert exp.complete()
    for trial in exp.trials:
        last = trial.final
        if not math.isfinite(last.get("score", math.nan)):
            continue
        assert last["score"] == pytest.approx(last["val/acc"] - 2.0 * last["val/smece"])
        # an interval for the true error: it can sit below the plug-in value, which is biased upwards
        assert 0 <= last["val/ece_lo"] <= last["val/ece_hi"] and last["val/ece_lo"] <= last["val/ece"]
        if trial.status == "complete":
            assert records[trial.trial_id].values == pytest.approx([last["val/acc"], last["val/smece"]])
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert summary["objectives"] == {"val/acc": "max", "val/smece": "min"}
    front_ids = [m["trial"] for m in summary["front"]]
    assert front_ids == [t.trial_id for t in exp.front()]
    from gce_search.search.records import front_indices

    complete = exp.complete()
    by_smece = {complete[i].trial_id for i in front_indices([(t.metric("val/acc"), t.metric("val/smece"))
                                                             for t in complete])}
    assert set(front_ids) == by_smece
    rows = list(csv.DictReader((exp_dir / "pareto.csv").open()))
    assert [r["trial"] for r in rows] == front_ids and all(r["val/smece"] and r["val/ece_lo"] for r in rows)
    assert "val/smece min" in out


def test_resume_of_a_search_its_time_budget_ended(local_ray, tmp_path, capsys):
    """The trials a time budget cut off are told when the search ends, after Ray's last save of the searcher: a
    later resume finds nothing unfinished (not an interruption to resume again and again)."""
    storage = tmp_path / "results"
    space = write_tiny_space(tmp_path, num_samples=40)
    code = main(["run", space, "--storage", str(storage), "--name", "budget", "--set", "search.timeout_s=4"])
    exp = storage / "budget"
    # The budget is wall-clock time: on a loaded machine it can end before any trial reaches its full budget, and a
    # search without a usable trial exits 1 with that reason; either way it is finished, not interrupted.
    from gce_search.search.records import load_experiment

    usable = 0 if load_experiment(exp).complete() else 1
    out = capsys.readouterr()
    assert code == usable and "Search interrupted" not in out.out, out.out[-3000:] + out.err[-3000:]
    if usable:
        assert "no trial produced a usable result" in out.err
    code = main(["resume", str(exp)])
    out = capsys.readouterr().out
    assert code == usable and "Search interrupted" not in out, out[-3000:]
    study = optuna.load_study(study_name="budget", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))))
    assert study.trials and all(t.state.is_finished() for t in study.trials), [t.state for t in study.trials]


def test_resumed_search_ends_with_the_rest_of_its_time_budget(local_ray, tmp_path, capsys):
    """Ctrl+C, then resume: Ray carries the remaining time budget through the restore. When it ends the resumed
    search with trials running, the search is finished (cut-off trials told as stopped, exit 0), not reported as
    interrupted again (which would leave Optuna trials RUNNING and ask for yet another resume)."""
    import os
    import signal
    import threading

    from tests.waiting import wait_until

    storage = tmp_path / "results"
    exp = storage / "budget"
    space = write_tiny_space(tmp_path, num_samples=200)

    returned = threading.Event()
    failures: list[AssertionError] = []

    def interrupt_after_first_result():
        try:
            wait_until(lambda: list(exp.glob("*/result.json")) or returned.is_set(), what="a first trial result",
                       watch=[storage])
        except AssertionError as hang:
            failures.append(hang)
            return
        if not returned.is_set():
            os.kill(os.getpid(), signal.SIGINT)  # inside fit(): Tune's handler stops the run and saves its state

    sender = threading.Thread(target=interrupt_after_first_result, daemon=True)
    sender.start()
    try:
        code = main(["run", space, "--storage", str(storage), "--name", "budget", "--set", "search.timeout_s=15"])
    finally:
        returned.set()
    sender.join()
    assert not failures, failures
    assert code == 130 and "Search interrupted" in capsys.readouterr().out

    code = main(["resume", str(exp)])
    out = capsys.readouterr().out
    from gce_search.search.records import load_experiment

    usable = 0 if load_experiment(exp).complete() else 1  # wall-clock budget: see the test above
    assert code == usable and "Search interrupted" not in out, out[-3000:]
    study = optuna.load_study(study_name="budget", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))))
    assert len(study.trials) < 200  # the budget, not the sample count, ended it
    assert all(t.state.is_finished() for t in study.trials), [t.state for t in study.trials]
