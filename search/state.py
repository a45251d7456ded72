"""The experiment's saved state: a consistent copy kept through every experiment checkpoint, and its recovery
before `gce-search resume` hands the directory to Ray.

What Ray 2.60 writes at the top of an experiment directory (one set per driver session, named by its start time):

- `experiment_state-<session>.json`: every trial (JSON with cloudpickled fields);
- `search_gen_state-<session>.json`: a cloudpickle (despite the name) of Ray's search generator and its
  ConcurrencyLimiter;
- `searcher-state-<session>.pkl`: what `CalibratedSearcher.save` writes (plain JSON, despite the name);
- `callback-states-<session>.pkl`: a cloudpickle of the callbacks' `get_state()` (ASHA's rungs, the time budget);
- `tuner.pkl`: a pickle of the Tuner as built by `gce-search run`, written once.

Ray writes the set into a staging folder on the driver and copies it into the experiment directory in a
background thread, file by file and in place: a driver killed during a copy leaves a file empty or cut short, and
Ray's restore then fails (`EOFError: Ran out of input`, or "Failed to restore the run state" and a fresh start).
`StateBackup` therefore copies each complete staged set into `state-backup/<n>/` (a new folder renamed into place,
the last two kept), and `recover_state` puts the newest complete copy back when a top-level file is unreadable.
The searcher's state can also be rebuilt from the Optuna journal, which carries every trial's Ray id.

Checking a file never executes it: JSON is parsed as data, and a pickle's opcodes are walked by `pickletools`
without building any object.
"""
from __future__ import annotations

import glob
import json
import os
import pickletools
import shutil
import time
import uuid

from ray.tune import Callback

from gce_search.search.compat import experiment_state_folders, experiment_state_problem, experiment_state_trials
from gce_search.search.journal import rebuild_searcher_state, searcher_state_problem

BACKUP_DIR = "state-backup"
TUNER_FILE = "tuner.pkl"
KEEP_GENERATIONS = 2
# file pattern -> how it is checked; the order is the order Ray writes them in one checkpoint.
STATE_PATTERNS = {
    "experiment_state-*.json": "experiment",
    "search_gen_state-*.json": "pickle",
    "searcher-state-*.pkl": "searcher",
    "callback-states-*.pkl": "pickle",
}


class StateError(Exception):
    """An experiment's saved state that can be neither read nor recovered (the message names the file)."""


# ------------------------------------------------------------------------------------------------- checking


def pickle_problem(data: bytes) -> str | None:
    """Why `data` is not one complete pickle (None when it is); nothing in it is executed."""
    if not data:
        return "empty"
    try:
        end = None
        for opcode, _arg, pos in pickletools.genops(data):
            if opcode.name == "STOP":
                end = pos + 1
                break
    except Exception as err:  # ValueError for a cut stream; others for garbage
        return f"cut short or not a pickle ({err})"
    if end is None:
        return "cut short (no end mark)"
    if data[end:].strip(b"\0"):
        return "extra bytes after the pickle"
    return None


CHECKS = {"experiment": experiment_state_problem, "pickle": pickle_problem, "searcher": searcher_state_problem}


def file_problem(path: str, kind: str) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    return CHECKS[kind](data)


def newest(folder: str, pattern: str) -> str | None:
    """The file Ray restores from: the greatest name (Ray's session names sort by time)."""
    paths = glob.glob(os.path.join(glob.escape(folder), pattern))
    return max(paths) if paths else None


def state_set(folder: str) -> dict[str, str]:
    """pattern -> newest file of that pattern in `folder`."""
    found = {}
    for pattern in STATE_PATTERNS:
        path = newest(folder, pattern)
        if path is not None:
            found[pattern] = path
    return found


def set_problems(folder: str) -> dict[str, str]:
    """file -> why it is unreadable, for the newest state files in `folder` (an experiment state is required)."""
    found = state_set(folder)
    problems = {path: problem for pattern, path in found.items()
                if (problem := file_problem(path, STATE_PATTERNS[pattern])) is not None}
    if "experiment_state-*.json" not in found:
        problems[os.path.join(folder, "experiment_state-*.json")] = "missing"
    return problems


# ------------------------------------------------------------------------------------------------- backing up


def generations(exp_dir: str) -> list[str]:
    """Backup folders, newest first."""
    root = os.path.join(exp_dir, BACKUP_DIR)
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if n.isdigit() and os.path.isdir(os.path.join(root, n))]
    return [os.path.join(root, n) for n in sorted(names, key=int, reverse=True)]


def _copy_into_place(paths: list[str], dest: str) -> None:
    """Copy `paths` into the new folder `dest`, which appears complete or not at all."""
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex}")
    os.mkdir(tmp)
    try:
        for path in paths:
            shutil.copy2(path, os.path.join(tmp, os.path.basename(path)))
            with open(os.path.join(tmp, os.path.basename(path)), "rb") as f:
                os.fsync(f.fileno())
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def back_up(staging: str, exp_dir: str, last: tuple | None) -> tuple | None:
    """Copy the staged state set into a new backup generation when it changed since `last` (its signature);
    returns the new signature. Only complete files are copied: the staging folder is written by the thread that
    calls this, between steps."""
    found = state_set(staging)
    if "experiment_state-*.json" not in found:
        return last
    signature = tuple((os.path.basename(p), os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in found.values())
    if signature == last:
        return last
    if any(file_problem(p, STATE_PATTERNS[pat]) for pat, p in found.items()):
        return last
    existing = generations(exp_dir)
    number = int(os.path.basename(existing[0])) + 1 if existing else 1
    _copy_into_place(list(found.values()), os.path.join(exp_dir, BACKUP_DIR, f"{number:06d}"))
    for old in existing[KEEP_GENERATIONS - 1:]:
        shutil.rmtree(old, ignore_errors=True)
    tuner_copy = os.path.join(exp_dir, BACKUP_DIR, TUNER_FILE)
    tuner = os.path.join(exp_dir, TUNER_FILE)
    if not os.path.exists(tuner_copy) and os.path.isfile(tuner) and file_problem(tuner, "pickle") is None:
        tmp = f"{tuner_copy}.tmp-{uuid.uuid4().hex}"
        shutil.copy2(tuner, tmp)
        os.replace(tmp, tuner_copy)
    return signature


class StateBackup(Callback):
    """After each of Ray's experiment checkpoints, a complete copy of the saved state inside the experiment
    directory (`state-backup/`). Paths come from the trials' storage at run time, never from what was pickled, so
    a moved or copied experiment backs up into itself."""

    def __init__(self):
        self._last: tuple | None = None

    def __getstate__(self) -> dict:
        return {}  # nothing carries over: the signature of the last copy is re-taken from the files

    def __setstate__(self, state: dict) -> None:
        self._last = None

    def _back_up(self, trials) -> None:
        if not trials:
            return
        folders = experiment_state_folders(trials[0])
        if folders is None:
            return  # a bucket: the copy would need the bucket's own atomic writes (see docs/cluster.md)
        try:
            self._last = back_up(*folders, self._last)
        except OSError as err:  # a full disk must not stop the search; the previous copy stays
            print(f"gce-search: could not back up the experiment state ({err})", flush=True)

    def on_step_begin(self, iteration, trials, **info):
        self._back_up(trials)

    def on_experiment_end(self, trials, **info):
        self._back_up(trials)


# ------------------------------------------------------------------------------------------------- recovering


def set_aside(paths: list[str], exp_dir: str) -> str:
    """Move unreadable or replaced files into `state-backup/set-aside-<time>/` (kept, never deleted)."""
    dest = os.path.join(exp_dir, BACKUP_DIR, f"set-aside-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    os.makedirs(dest)
    for path in paths:
        os.replace(path, os.path.join(dest, os.path.basename(path)))
    return dest


def recover_state(exp_dir: str, journal_path: str, study_name: str | None = None) -> list[str]:
    """Make the experiment's saved state readable before Ray restores it; returns what was done (one line each).

    An unreadable Ray file: the whole set is replaced by the newest complete backup (a consistent set from one
    checkpoint; the Optuna journal and the trial folders carry anything later). An unreadable searcher state alone:
    rebuilt from the journal. Raises StateError naming the file when neither is possible."""
    done: list[str] = []
    tuner = os.path.join(exp_dir, TUNER_FILE)
    tuner_problem = file_problem(tuner, "pickle") if os.path.exists(tuner) else "missing"
    if tuner_problem is not None:
        copy = os.path.join(exp_dir, BACKUP_DIR, TUNER_FILE)
        if not (os.path.isfile(copy) and file_problem(copy, "pickle") is None):
            raise StateError(
                f"{tuner}: {tuner_problem}, and there is no complete copy in {os.path.join(exp_dir, BACKUP_DIR)}; "
                f"Ray writes it once when the search starts, so a search killed then has nothing to resume: start "
                f"it again with `gce-search run` (another --name), or put a copy of tuner.pkl from the original "
                f"experiment in place")
        replaced = [tuner] if os.path.exists(tuner) else []
        where = set_aside(replaced, exp_dir) if replaced else None
        shutil.copy2(copy, tuner)
        done.append(f"{tuner}: {tuner_problem}; restored from {copy}" + (f" (the unreadable file is kept in {where})"
                                                                           if where else ""))

    problems = set_problems(exp_dir)
    searcher_only = problems and all(os.path.basename(p).startswith("searcher-state-") for p in problems)
    if searcher_only:
        [(path, problem)] = problems.items()
        try:
            state = rebuild_searcher_state(journal_path, study_name)
        except Exception as err:
            raise StateError(f"{path}: {problem}, and the Optuna journal {journal_path} cannot rebuild it "
                             f"({type(err).__name__}: {err}); valid: a searcher state from a backup in "
                             f"{os.path.join(exp_dir, BACKUP_DIR)}") from None
        where = set_aside([path], exp_dir)
        write_json_atomic(path, state)
        done.append(f"{path}: {problem}; rebuilt from {journal_path} ({len(state['trials'])} trial(s); the "
                    f"unreadable file is kept in {where})")
        return done
    if not problems:
        return done
    for generation in generations(exp_dir):
        if not set_problems(generation):
            break
    else:
        lines = [f"{path}: {problem}" for path, problem in sorted(problems.items())]
        raise StateError(
            "; ".join(lines) + f"; and no complete copy of the experiment state in "
            f"{os.path.join(exp_dir, BACKUP_DIR)}; valid: put a readable copy of "
            f"{'these files' if len(lines) > 1 else 'this file'} in place (from the original or a sync of the "
            f"experiment), or start the search again with `gce-search run`")
    current = [p for pattern in STATE_PATTERNS for p in glob.glob(os.path.join(glob.escape(exp_dir), pattern))]
    where = set_aside(current, exp_dir)
    for path in state_set(generation).values():
        shutil.copy2(path, os.path.join(exp_dir, os.path.basename(path)))
    for path, problem in sorted(problems.items()):
        done.append(f"{path}: {problem}")
    done.append(f"restored Ray's experiment state from its copy {generation} (the files it replaced are kept in "
                f"{where})")
    return done


def write_json_atomic(path: str, state: dict) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def expected_trials(exp_dir: str) -> set[str]:
    """The trial ids Ray's (readable, newest) experiment state lists."""
    path = newest(exp_dir, "experiment_state-*.json")
    with open(path, "rb") as f:
        return {trial.get("trial_id") for trial, _metadata in experiment_state_trials(f.read())}


# ------------------------------------------------------------------------------------------------- the journal


def repair_journal(path: str) -> str | None:
    """Set aside a torn tail of the Optuna journal (a last line without its newline, or trailing lines that are
    not JSON, as a full disk or a power loss leaves) into `<journal>.torn-<n>`, before anything is appended after
    it. Returns a one-line account, or None when the journal ends cleanly."""
    with open(path, "rb") as f:
        data = f.read()
    keep = len(data) if data.endswith(b"\n") else data.rfind(b"\n") + 1
    while keep > 0:
        start = data.rfind(b"\n", 0, keep - 1) + 1
        try:
            json.loads(data[start:keep])
            break
        except ValueError:
            keep = start
    if keep == len(data):
        return None
    n = 1
    while os.path.exists(f"{path}.torn-{n}"):
        n += 1
    torn_path = f"{path}.torn-{n}"
    with open(torn_path, "xb") as f:
        f.write(data[keep:])
        f.flush()
        os.fsync(f.fileno())
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return (f"{path}: its last {len(data) - keep} byte(s) were a torn record (not complete JSON lines); kept in "
            f"{torn_path}, and the trial they belonged to is told again from Ray's record")
