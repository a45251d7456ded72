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
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from gce_search.trainables.checkpoints import RESULT_FILE, read_result_lines
from gce_search.search.searcher import optuna_records
from tests.search.test_driver import EXPECTED_STATE, ray_outcome, snapshot, write_tiny_space
from tests.waiting import run_to_end, wait_until

NUM_SAMPLES = 8
EPOCHS = 3


def cli(*args: str) -> list[str]:
    exe = shutil.which("gce-search")
    return [exe, *args] if exe else [sys.executable, "-m", "gce_search", *args]


def result_lines(folder: Path) -> list[dict]:
    """A trial folder's result lines (a line being written as we read is skipped)."""
    return read_result_lines(folder / RESULT_FILE)[0]


def completed_trials(exp: Path) -> dict[str, int]:
    """trial id -> number of `final: true` lines in its result.json."""
    done = {}
    for folder in exp.glob("trial_*"):
        rows = result_lines(folder)
        finals = sum(1 for r in rows if r.get("final") is True)
        if finals:
            done[rows[-1]["trial_id"]] = finals
    return done


def outcomes_and_ray_records(exp: Path, trials) -> dict[str, str]:
    """How each trial ended by the tool's own records (search.records: result.json, or Ray's saved result where a
    cut last line made that newer; what pareto, export and the console use), after checking that Ray's record of
    each trial agrees with them where it can: Ray's saved last result is never past the records' last epoch, and a
    full budget in Ray's record is one there too.

    Ray's record may lag by one epoch: a driver killed after a trial's final result was logged but before Ray saved
    its experiment state restores the trial one epoch back, the trial goes on from its final checkpoint with nothing
    left to report (the epoch is logged already), and Ray keeps the older result as the trial's last."""
    from gce_search.search.records import load_experiment

    records = {t.trial_id: t for t in load_experiment(exp).trials}
    outcomes = {tid: t.status for tid, t in records.items()}
    for t in trials:
        last_epoch = records[t.trial_id].final.get("epoch", 0) if t.trial_id in records else 0
        assert (t.last_result or {}).get("epoch", 0) <= last_epoch, (t.trial_id, t.last_result, last_epoch)
        if ray_outcome(t.last_result) in ("complete", "degenerate"):
            assert outcomes[t.trial_id] == ray_outcome(t.last_result), (t.trial_id, outcomes[t.trial_id])
    assert set(outcomes) == {t.trial_id for t in trials}
    return outcomes


def completions_in_ray_state(exp: Path) -> dict[str, int] | None:
    """The completed trials (as completed_trials), once Ray's saved experiment state lists every one of them as
    TERMINATED, so a resume will not run them again; None before that."""
    done = completed_trials(exp)
    if not done:
        return None
    try:
        statuses = ray_trials(exp)
    except Exception:  # no state file yet, or one being replaced
        return None
    return done if all(statuses.get(tid) == "TERMINATED" for tid in done) else None


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver first (what is being tested), then what it started (a real kill leaves Ray to its fate-
    sharing; here nothing of the killed search may keep writing while the resume runs)."""
    children = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()  # SIGKILL cannot be ignored: no guard needed
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
        wait_until(lambda: completed_trials(exp), what="a first completed trial", proc=proc,
                   output=tmp_path / "run.log", watch=[exp])
        assert proc.poll() is None, "the search ended before it could be killed:\n" + (tmp_path / "run.log").read_text()
        assert completed_trials(exp), "no trial completed in time:\n" + (tmp_path / "run.log").read_text()
        # The completions must be in Ray's record (saved every second, later on a loaded machine) before the kill.
        done_before = wait_until(lambda: completions_in_ray_state(exp), what="Ray's saved state to list the "
                                 "completed trials", proc=proc, output=tmp_path / "run.log", watch=[exp])
        kill_tree(proc)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
        log.close()
    assert len(done_before) < NUM_SAMPLES, "every trial finished before the kill; nothing left to resume"

    resumed = run_to_end(cli("resume", str(exp)), cwd=tmp_path, watch=[exp])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Search finished" in resumed.stdout and f"gce-search export {exp}" in resumed.stdout
    # ASHA's rungs came back with the experiment (Ray itself does not save the scheduler)
    restored = re.search(r"scheduler state restored \((\d+) result", resumed.stdout)
    assert restored and int(restored.group(1)) >= 1, resumed.stdout[-3000:]

    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(exp)).trials
    assert len(trials) >= NUM_SAMPLES
    assert all(t.status == "TERMINATED" for t in trials), [(t.trial_id, t.status) for t in trials]
    outcomes = outcomes_and_ray_records(exp, trials)

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

    # Optuna agrees with the records: one final Optuna trial per Ray trial; COMPLETE exactly for the full-budget ones
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
        wait_until(lambda: len(lines := [result_lines(f) for f in exp.glob("trial_*")]) == 2
                   and all(2 <= len(rows) and not rows[-1].get("final") for rows in lines),
                   what="both trials past their second epoch", proc=proc, output=tmp_path / "run.log", watch=[exp],
                   max_poll_s=0.1)

        def state_names_a_checkpoint() -> bool:
            # Ray saves its state every second, and later on a loaded machine (a save still being copied is not
            # started again): wait for one that lists both trials and names a checkpoint of an unfinished one
            try:
                trials = ExperimentAnalysis(str(exp)).trials
            except Exception:  # no state file yet, or one being replaced
                return False
            return len(trials) == 2 and any(t.status != "TERMINATED" and t.checkpoint is not None for t in trials)

        wait_until(state_names_a_checkpoint, what="Ray's saved state to name a checkpoint of an unfinished trial",
                   proc=proc, output=tmp_path / "run.log", watch=[exp])
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

    resumed = run_to_end(cli("resume", str(exp)), cwd=tmp_path, watch=[exp])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = ExperimentAnalysis(str(exp)).trials
    assert all(t.status == "TERMINATED" for t in trials), [(t.trial_id, t.status) for t in trials]
    for folder in exp.glob("trial_*"):
        rows = result_lines(folder)
        epochs = [r["epoch"] for r in rows]
        assert epochs == list(range(1, STALE_EPOCHS + 1)), (folder.name, epochs)
        assert all(r["training_iteration"] == r["epoch"] for r in rows), folder.name
        assert rows[-1]["final"] is True


# ------------------------------------------------------------------------------ unreadable state, relocation, torn journal


def kill_after_first_completion(tmp_path: Path, num_samples: int = 4, batch_size: int = 64) -> Path:
    """A tiny search killed with SIGKILL once a trial has completed and Ray has backed up its state since; trials
    are left for the resume."""
    space = write_tiny_space(tmp_path, num_samples=num_samples, batch_size=batch_size)
    storage = tmp_path / "results"
    exp = storage / "cut"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(cli("run", space, "--storage", str(storage), "--name", "cut"), cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        done = wait_until(lambda: completed_trials(exp), what="a first completed trial", proc=proc,
                          output=tmp_path / "run.log", watch=[exp], max_poll_s=0.1)
        # a backup made after the completion: Ray's state then lists it
        wait_until(lambda: backup_lists(exp, set(done)), what="a state backup listing the completed trial",
                   proc=proc, output=tmp_path / "run.log", watch=[exp], max_poll_s=0.1)
        kill_tree(proc)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
        log.close()
    assert done and len(done) < num_samples, (done, (tmp_path / "run.log").read_text()[-3000:])
    return exp


def backup_lists(exp: Path, trial_ids: set[str]) -> bool:
    from gce_search.search.state import expected_trials, generations

    gens = generations(str(exp))
    if not gens:
        return False
    try:
        return trial_ids <= expected_trials(gens[0])
    except Exception:  # a generation being replaced
        return False


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    return kill_after_first_completion(tmp_path_factory.mktemp("interrupted"))


def copy_of(exp: Path, dest: Path) -> Path:
    shutil.copytree(exp, dest, symlinks=True)
    return dest


def ray_trials(exp: Path) -> dict[str, str]:
    from ray.tune import ExperimentAnalysis

    return {t.trial_id: t.status for t in ExperimentAnalysis(str(exp)).trials}


def assert_finished_consistently(exp: Path, resumed: subprocess.CompletedProcess, num_samples: int = 4) -> None:
    """Every trial ended in Ray, each full-budget trial completed once, and Optuna's record of each Ray trial
    is Ray's outcome."""
    from ray.tune import ExperimentAnalysis

    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-4000:]
    assert "Search finished" in resumed.stdout and "Failed to restore" not in out, out[-4000:]
    trials = ExperimentAnalysis(str(exp)).trials
    assert len(trials) == num_samples and all(t.status == "TERMINATED" for t in trials), \
        [(t.trial_id, t.status) for t in trials]
    assert all(n == 1 for n in completed_trials(exp).values()), completed_trials(exp)
    outcomes = outcomes_and_ray_records(exp, trials)
    study = optuna.load_study(study_name="cut", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))))
    records = optuna_records(study)
    assert set(records) == set(outcomes)
    for trial_id, outcome in outcomes.items():
        assert records[trial_id].state == EXPECTED_STATE[outcome], (trial_id, outcome, records[trial_id].state)
    assert all(t.state.is_finished() for t in study.trials), [t.state for t in study.trials]


STATE_FILES = ["experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl",
               "callback-states-*.pkl", "tuner.pkl"]


def newest_file(exp: Path, pattern: str) -> Path:
    return max(exp.glob(pattern))


def cut(path: Path, how: str) -> bytes:
    data = path.read_bytes()
    path.write_bytes(b"" if how == "empty" else data[:len(data) // 2])
    return data


# Each state file both ways is recovered before Ray starts; a full resume then runs for one way of each file
# (the cluster fault test's case, an empty callback-state pickle, among them).
RESUMED = {("experiment_state-*.json", "half"), ("search_gen_state-*.json", "empty"),
           ("searcher-state-*.pkl", "half"), ("callback-states-*.pkl", "empty"), ("tuner.pkl", "half")}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["empty", "half"])
@pytest.mark.parametrize("pattern", STATE_FILES)
def test_an_unreadable_state_file_is_recovered_and_resume_finishes(interrupted, tmp_path, pattern, how):
    from gce_search.search.driver import recover_for_resume

    exp = copy_of(interrupted, tmp_path / "cut")
    broken = newest_file(exp, pattern)
    original = cut(broken, how)
    notes, expected = recover_for_resume(str(exp), str(exp / "optuna.journal"))
    assert any(str(broken) in note for note in notes), notes
    # the unreadable file is kept, not deleted
    kept = [p for p in (exp / "state-backup").glob(f"set-aside-*/{broken.name}")]
    assert kept and kept[0].read_bytes() == original[:len(kept[0].read_bytes())], kept
    from gce_search.search.state import set_problems

    assert not set_problems(str(exp)), set_problems(str(exp))
    assert expected == set(ray_trials(exp))  # Ray reads the state put back
    if (pattern, how) not in RESUMED:
        return
    # the real resume starts from the original damage (recovery once more, inside `resume`)
    shutil.rmtree(exp)
    exp = copy_of(interrupted, tmp_path / "cut")
    cut(newest_file(exp, pattern), how)
    resumed = run_to_end(cli("resume", str(exp)), cwd=tmp_path, watch=[exp])
    assert str(newest_file(interrupted, pattern).name) in resumed.stdout, resumed.stdout[-3000:]
    assert_finished_consistently(exp, resumed)


def test_unrecoverable_state_is_refused_naming_the_file_with_nothing_changed(interrupted, tmp_path):
    exp = copy_of(interrupted, tmp_path / "cut")
    shutil.rmtree(exp / "state-backup")
    broken = newest_file(exp, "experiment_state-*.json")
    cut(broken, "half")
    before = snapshot(exp)
    resumed = run_to_end(cli("resume", str(exp)), cwd=tmp_path, watch=[exp])
    assert resumed.returncode == 2, resumed.stdout + resumed.stderr
    assert str(broken) in resumed.stderr and "no complete copy" in resumed.stderr, resumed.stderr
    assert "Traceback" not in resumed.stderr and "starting Ray" not in resumed.stdout
    assert snapshot(exp) == before


def test_a_crafted_searcher_state_is_not_executed(interrupted, tmp_path):
    import pickle

    from gce_search.search.driver import recover_for_resume
    from gce_search.search.searcher import CalibratedSearcher

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    exp = copy_of(interrupted, tmp_path / "cut")
    crafted = newest_file(exp, "searcher-state-*.pkl")
    crafted.write_bytes(pickle.dumps({"format": 1, "x": Payload()}))
    with pytest.raises(ValueError, match="not the JSON searcher state"):
        searcher = CalibratedSearcher.__new__(CalibratedSearcher)
        CalibratedSearcher.restore(searcher, str(crafted))
    notes, _ = recover_for_resume(str(exp), str(exp / "optuna.journal"))
    assert not marker.exists()
    assert any("rebuilt from" in n for n in notes), notes
    rebuilt = json.loads(crafted.read_text())  # plain JSON now, every Ray trial of the journal in it
    assert set(rebuilt["trials"]) >= set(completed_trials(exp))
    assert not marker.exists()


@pytest.mark.slow
def test_a_moved_and_a_copied_experiment_resume_in_themselves(interrupted, tmp_path):
    original = copy_of(interrupted, tmp_path / "first" / "cut")
    untouched = snapshot(original)
    # a copy under another parent (and name) resumes and writes only into itself
    copy = copy_of(original, tmp_path / "elsewhere" / "cut-copy")
    resumed = run_to_end(cli("resume", str(copy)), cwd=tmp_path, watch=[copy])
    assert_finished_consistently(copy, resumed)
    assert snapshot(original) == untouched  # journal and everything else byte for byte
    saved = newest_file(copy, "searcher-state-*.pkl").read_text()
    assert str(tmp_path) not in saved, saved  # the searcher state names no path
    # the original, moved before its resume: the old path is not re-created
    moved = tmp_path / "moved" / "cut"
    moved.parent.mkdir()
    original.rename(moved)
    resumed = run_to_end(cli("resume", str(moved)), cwd=tmp_path, watch=[moved])
    assert_finished_consistently(moved, resumed)
    assert not original.exists()


@pytest.mark.slow
def test_a_torn_journal_tail_is_set_aside_and_the_trial_told_again(interrupted, tmp_path):
    exp = copy_of(interrupted, tmp_path / "cut")
    journal = exp / "optuna.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    ray_id = {r["trial_id"]: r["user_attr"]["ray_trial_id"] for r in records
              if r["op_code"] == 8 and "ray_trial_id" in r.get("user_attr", {})}
    ended = {tid for tid, status in ray_trials(exp).items() if status == "TERMINATED"}
    # the record that tells a trial Ray has ended, written last and torn in the middle (a power loss during that
    # write; Ray's state, saved later, says the trial ended). Records of other trials commute with it.
    tell = max(i for i, r in enumerate(records) if r["op_code"] == 6 and r.get("state") in (1, 2, 3)
               and ray_id.get(r["trial_id"]) in ended)
    torn = lines[tell][: len(lines[tell]) // 2]
    journal.write_bytes(b"".join(lines[:tell] + lines[tell + 1:]) + torn)
    resumed = run_to_end(cli("resume", str(exp)), cwd=tmp_path, watch=[exp])
    assert "torn record" in resumed.stdout, resumed.stdout[-3000:]
    assert (exp / "optuna.journal.torn-1").read_bytes() == torn
    assert "told Optuna again from Ray's record" in resumed.stdout, resumed.stdout[-3000:]
    assert_finished_consistently(exp, resumed)


def test_scheduler_state_is_plain_json_and_refills_the_rungs():
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler

    from gce_search.search.driver import SchedulerState
    from gce_search.search.moasha import MultiObjectiveASHA

    for make, result in ((lambda: ASHAScheduler(time_attr="epoch", max_t=9, grace_period=1, metric="score",
                                                mode="max"), {"epoch": 1, "score": 0.5}),
                         (lambda: MultiObjectiveASHA(time_attr="epoch", max_t=9, grace_period=1),
                          {"epoch": 1, "val/acc": 0.5, "val/ece": 0.1})):
        scheduler = make()
        for i in range(3):
            trial = SimpleNamespace(trial_id=f"t{i}")
            scheduler.on_trial_add(None, trial)
            scheduler.on_trial_result(None, trial, {**result, "epoch": 1})
        state = SchedulerState(scheduler).get_state()
        assert set(state) == {"scheduler_json"} and isinstance(state["scheduler_json"], str)
        fresh = make()
        SchedulerState(fresh).set_state(json.loads(json.dumps(state)))
        def rungs(s):
            return [{k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in rec.items()}
                    for b in s._brackets for _, rec in getattr(b, "_rungs", getattr(b, "rungs", []))]

        assert rungs(fresh) == rungs(scheduler) and sum(map(len, rungs(fresh))) == 3
        assert set(fresh._trial_info) == {"t0", "t1", "t2"}
