"""`gce-search resume` after the driver is killed with SIGKILL mid-search: no completed trial lost, none run twice,
and the Optuna study agrees with Ray's record."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from search.searcher import optuna_records
from tests.search.test_driver import EXPECTED_STATE, ray_outcome, write_tiny_space

NUM_SAMPLES = 8
EPOCHS = 3


def cli(*args: str) -> list[str]:
    exe = shutil.which("gce-search")
    return [exe, *args] if exe else [sys.executable, "-m", "search.cli", *args]


def result_lines(folder: Path) -> list[dict]:
    path = folder / "result.json"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written as we read
            pass
    return rows


def completed_trials(exp: Path) -> dict[str, int]:
    """trial id -> number of `final: true` lines in its result.json."""
    done = {}
    for folder in exp.glob("trial_*"):
        rows = result_lines(folder)
        finals = sum(1 for r in rows if r.get("final") is True)
        if finals:
            done[rows[-1]["trial_id"]] = finals
    return done


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver first (what is being tested), then what it started (a real kill leaves Ray to its fate-
    sharing; here nothing of the killed search may keep writing while the resume runs)."""
    children = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=30)


@pytest.mark.slow
def test_resume_after_sigkill_finishes_consistently(tmp_path):
    # batch 8: ~1 s per epoch, so that most of the search is still ahead when the driver is killed
    space = write_tiny_space(tmp_path, num_samples=NUM_SAMPLES, batch_size=8)
    storage = tmp_path / "results"
    exp = storage / "killed"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(cli("run", space, "--storage", str(storage), "--name", "killed"), cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not completed_trials(exp):
            time.sleep(0.2)
        assert proc.poll() is None, "the search ended before it could be killed:\n" + (tmp_path / "run.log").read_text()
        assert completed_trials(exp), "no trial completed in time:\n" + (tmp_path / "run.log").read_text()
        # Longer than the driver's experiment-state period (1 s) so that the first completion is in Ray's record.
        time.sleep(2.0)
        done_before = completed_trials(exp)
        kill_tree(proc)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
        log.close()
    assert len(done_before) < NUM_SAMPLES, "every trial finished before the kill; nothing left to resume"

    resumed = subprocess.run(cli("resume", str(exp)), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Search finished" in resumed.stdout and f"gce-search export {exp}" in resumed.stdout
    # ASHA's rungs came back with the experiment (Ray itself does not save the scheduler)
    restored = re.search(r"scheduler state restored \((\d+) result", resumed.stdout)
    assert restored and int(restored.group(1)) >= 1, resumed.stdout[-3000:]

    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(exp)).trials
    assert len(trials) >= NUM_SAMPLES
    assert all(t.status == "TERMINATED" for t in trials), [(t.trial_id, t.status) for t in trials]
    outcomes = {t.trial_id: ray_outcome(t.last_result) for t in trials}

    # no completed trial lost, none run twice
    done_after = completed_trials(exp)
    for trial_id, finals in done_before.items():
        assert outcomes[trial_id] == "complete"
        assert done_after[trial_id] == finals == 1, f"trial {trial_id} reached its full budget twice"
    assert all(n == 1 for n in done_after.values())
    assert {tid for tid, o in outcomes.items() if o == "complete"} == set(done_after)
    for folder in exp.glob("trial_*"):  # a resumed trial continues from its checkpoint: epochs never go back
        epochs = [r["epoch"] for r in result_lines(folder)]
        assert epochs == sorted(epochs) and len(set(epochs)) == max(epochs, default=0), (folder.name, epochs)

    # Optuna agrees with Ray: one final Optuna trial per Ray trial; COMPLETE exactly for the full-budget ones
    study = optuna.load_study(study_name="killed", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))))
    assert all(t.state.is_finished() for t in study.trials), [t.state for t in study.trials]
    records = optuna_records(study)
    assert set(records) == set(outcomes)
    for trial_id, outcome in outcomes.items():
        assert records[trial_id].state == EXPECTED_STATE[outcome], (trial_id, outcome, records[trial_id].state)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == sum(o == "complete" for o in outcomes.values())
    # Optuna trials without a Ray trial may only be ones asked just before the kill and never run (told FAIL)
    strays = [t for t in study.trials if t.user_attrs.get("ray_trial_id") not in outcomes]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("outcome") == "interrupted" for t in strays)


STALE_EPOCHS = 80  # ~0.1 s each at batch size 8: most of each trial is still ahead when the driver is killed
STALE_SPACE = """\
name: stale
data: {name: digits, max_train: 400}
model: {name: mlp}
train: {epochs: STALE_EPOCHS, batch_size: 8, device: cpu, grad_clip: 2.0}
search: {sampler: random, num_samples: 2, seed: 0}
scheduler: {name: fifo}
resources: {cpus_per_trial: 1}
space:
  train.lr: {low: 0.01, high: 0.1, log: true}
"""


@pytest.mark.slow
def test_resume_when_the_saved_state_names_a_deleted_checkpoint(tmp_path):
    """Ray deletes a trial's previous checkpoint as soon as it registers a new one, and writes the experiment state
    a little later: a driver killed in between leaves a state naming a checkpoint that is gone. Here that window is
    made certain: the named checkpoint is deleted where a newer one exists, and otherwise moved to the next index
    (as if a newer one had replaced it). Every trial still resumes, from the newest complete checkpoint in its
    folder; none restarts, none ends in ERROR, and every epoch is logged exactly once."""
    from ray.tune import ExperimentAnalysis

    space = tmp_path / "stale.yaml"
    space.write_text(STALE_SPACE.replace("STALE_EPOCHS", str(STALE_EPOCHS)))
    storage = tmp_path / "results"
    exp = storage / "stale"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(cli("run", str(space), "--storage", str(storage), "--name", "stale"), cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not (
                len(lines := [result_lines(f) for f in exp.glob("trial_*")]) == 2
                and all(2 <= len(rows) and not rows[-1].get("final") for rows in lines)):
            time.sleep(0.1)

        def state_names_a_checkpoint() -> bool:
            # Ray saves its state every second, and later on a loaded machine (a save still being copied is not
            # started again): wait for one that lists both trials and names a checkpoint of an unfinished one
            try:
                trials = ExperimentAnalysis(str(exp)).trials
            except Exception:  # no state file yet, or one being replaced
                return False
            return len(trials) == 2 and any(t.status != "TERMINATED" and t.checkpoint is not None for t in trials)

        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and not state_names_a_checkpoint():
            time.sleep(0.2)
        kill_tree(proc)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
        log.close()
    broken = []
    for trial in ExperimentAnalysis(str(exp)).trials:
        if trial.status != "TERMINATED" and trial.checkpoint is not None:
            named = Path(trial.checkpoint.path)
            index = int(named.name.split("_")[1])
            if not named.exists():
                pass  # the race happened by itself: Ray had deleted it before its state was saved
            elif any(int(p.name.split("_")[1]) > index for p in named.parent.glob("checkpoint_*")):
                shutil.rmtree(named)
            else:
                named.rename(named.with_name(f"checkpoint_{index + 1:06d}"))
            broken.append(trial.trial_id)
    assert broken, "no unfinished trial with a checkpoint when the driver was killed:\n" + \
        (tmp_path / "run.log").read_text()

    resumed = subprocess.run(cli("resume", str(exp)), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = ExperimentAnalysis(str(exp)).trials
    assert all(t.status == "TERMINATED" for t in trials), [(t.trial_id, t.status) for t in trials]
    for folder in exp.glob("trial_*"):
        rows = result_lines(folder)
        epochs = [r["epoch"] for r in rows]
        assert epochs == list(range(1, STALE_EPOCHS + 1)), (folder.name, epochs)
        assert all(r["training_iteration"] == r["epoch"] for r in rows), folder.name
        assert rows[-1]["final"] is True
