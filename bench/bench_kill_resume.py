"""Kill the driver with SIGKILL at random moments, `gce-search resume` each time, and account for every trial.

    python bench/bench_kill_resume.py --kills 20 [--seed 0] [--num-samples 10] [--work DIR]

One tiny search (digits, an MLP, ASHA) is started with `gce-search run`; after a random delay (uniform over
`--min-s`..`--max-s`, so kills land during Ray's start-up, a restore, trials running and state being written) the
driver and what it started are killed with SIGKILL, and the search is resumed; this repeats `--kills` times, and a
last `resume` runs to the end. Printed at the end, and checked (exit 1 when one fails):

- lost: trials whose full budget was reached (a `final: true` line in result.json) before a kill and that Ray's
  final record does not hold as complete;
- run twice: trials with more than one `final: true` line, or whose epochs do not run 1..n once each;
- Optuna != Ray: Ray trials whose Optuna record (found by its Ray id) is missing or in another state than Ray's
  outcome; Optuna trials left running;
- resumes that exited other than 0 (finished), 130 (interrupted) or by the kill.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from gce_search.trainables.checkpoints import RESULT_FILE, read_result_lines

SPACE = """\
name: killbench
data: {name: digits, max_train: 300}
model: {name: mlp}
train: {epochs: 4, batch_size: 32}
search: {sampler: tpe, num_samples: NUM_SAMPLES, seed: 0}
scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
resources: {cpus_per_trial: 1}
space:
  loss.name: {choices: [cross_entropy, gce]}
  gce.lam: {low: 0.0, high: 1.0}
  train.lr: {low: 0.01, high: 0.3, log: true}
"""


def cli(*args: str) -> list[str]:
    exe = shutil.which("gce-search")
    return [exe, *args] if exe else [sys.executable, "-m", "gce_search", *args]


def rows(folder: Path) -> list[dict]:
    return read_result_lines(folder / RESULT_FILE)[0]


def finals(exp: Path) -> dict[str, int]:
    done = {}
    for folder in exp.glob("trial_*"):
        r = rows(folder)
        n = sum(1 for x in r if x.get("final") is True)
        if n:
            done[r[-1]["trial_id"]] = n
    return done


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-samples", type=int, default=10)
    ap.add_argument("--min-s", type=float, default=3.0)
    ap.add_argument("--max-s", type=float, default=25.0)
    ap.add_argument("--work", default=None, help="folder for the experiment (default: a new temporary one)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    space = work / "killbench.yaml"
    space.write_text(SPACE.replace("NUM_SAMPLES", str(args.num_samples)))
    exp = work / "results" / "kb"
    seen_final: set[str] = set()
    bad_exits = []
    kills = 0
    started = time.time()
    run = cli("run", str(space), "--storage", str(work / "results"), "--name", "kb")
    for attempt in range(args.kills + 100):
        if any(exp.glob("experiment_state-*.json")):
            command = cli("resume", str(exp))
        else:  # killed before Ray's first save: nothing to resume, nothing run yet; start again
            shutil.rmtree(exp, ignore_errors=True)
            command = run
        log = open(work / f"driver-{attempt:03d}.log", "w")
        proc = subprocess.Popen(command, cwd=work, stdout=log, stderr=subprocess.STDOUT)
        delay = rng.uniform(args.min_s, args.max_s) if kills < args.kills else None
        try:
            proc.wait(timeout=delay if delay is not None else 1800)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            seen_final |= set(finals(exp))
            kill_tree(proc)
            kills += 1
            code = "killed"
        log.close()
        seen_final |= set(finals(exp))
        print(f"[{time.time() - started:7.1f} s] driver {attempt}: {code}"
              + (f" after {delay:.1f} s" if code == "killed" else "") + f"; {len(seen_final)} trial(s) complete",
              flush=True)
        if code not in ("killed", 0, 130):
            bad_exits.append((attempt, code))
            print((work / f"driver-{attempt:03d}.log").read_text()[-3000:])
            break
        if code == 0:
            if kills >= args.kills:
                break
            # finished before enough kills: the remaining kills would have nothing to interrupt
            print("the search finished before every kill landed; rerun with a larger --num-samples")
            break

    # ---- account for every trial
    from ray.tune import ExperimentAnalysis
    import optuna

    trials = ExperimentAnalysis(str(exp)).trials
    from gce_search.search.records import trial_outcome
    from gce_search.search.searcher import classify

    outcome = {t.trial_id: trial_outcome(t.last_result, errored=t.status == "ERROR") for t in trials}
    # what the study should hold for each trial: the searcher's rule on Ray's record of it
    expected = {t.trial_id: classify(t.last_result or None, t.status == "ERROR")[0].name for t in trials}
    lost = sorted(tid for tid in seen_final if outcome.get(tid) not in ("complete", "degenerate"))
    twice = sorted(tid for tid, n in finals(exp).items() if n > 1)
    for folder in exp.glob("trial_*"):
        epochs = [r["epoch"] for r in rows(folder)]
        if epochs != list(range(1, len(epochs) + 1)):
            twice.append(folder.name)
    study = optuna.load_study(study_name="kb", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))))
    records = {}
    for t in study.get_trials(deepcopy=False):
        if "ray_trial_id" in t.user_attrs:
            records[t.user_attrs["ray_trial_id"]] = t
    mismatched = sorted(tid for tid in outcome
                        if tid not in records or records[tid].state.name != expected[tid])
    running = [t.number for t in study.trials if not t.state.is_finished()]
    not_ended = [t.trial_id for t in trials if t.status != "TERMINATED"]
    print(f"\nkills: {kills}; Ray trials: {len(trials)} ({sum(o == 'complete' for o in outcome.values())} complete); "
          f"Optuna trials: {len(study.trials)}")
    print(f"lost completed trials: {len(lost)} {lost}")
    print(f"trials run twice: {len(twice)} {twice}")
    print(f"Optuna != Ray: {len(mismatched)} {mismatched}; Optuna trials left running: {len(running)}")
    print(f"Ray trials not ended: {len(not_ended)}; bad exits: {bad_exits}")
    print(f"experiment: {exp}")
    ok = not (lost or twice or mismatched or running or not_ended or bad_exits) and kills >= args.kills
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
