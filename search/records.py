"""Experiment records: what Ray Tune wrote for each trial, read into typed records, and how each trial ended.

An experiment directory (docs/architecture.md, "Experiment directory") holds Ray Tune's trial folders, each with
`result.json` (one JSON line per reported epoch; `config.trial_config` is the resolved trial config), and
`spec.yaml`. `load_experiment` turns it into `TrialRecord`s (each result.json read by
trainables.checkpoints.read_result_lines, the one reader of that file); `trial_outcome` is the one rule of how a trial ended (complete | degenerate | stopped | diverged |
error), used by the result files, the console, TensorBoard and optuna-dashboard. Whether a searched parameter
applies to a trial is spaces' one rule, SpaceParam.is_active. File formats: docs/results-format.md.

The front is built from full-budget trials only: Ray reports an early-stopped trial's partial metrics as if they
were final, and a diverged trial's NaN ECE must never read as a perfect one (docs/design.md, "Ray and Optuna facts").
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from gce_search.errors import ConfigError, UsageError
from gce_search.search.compat import experiment_state_trials
from gce_search.search.pareto import OBJECTIVES, as_minimization, hypervolume_acc_ece, objectives_for, pareto_front
from gce_search.spaces.records import SpaceParam
from gce_search.spaces.validation import spec_from_dict
from gce_search.trainables.checkpoints import RESULT_FILE, read_result_lines
from gce_search.trainables.config import get_path
from gce_search.yamlio import read_yaml

__all__ = [
    "STATUSES",
    "trial_outcome",
    "counts_toward_front",
    "chance_accuracy_bound",
    "warn",
    "TrialRecord",
    "Experiment",
    "load_experiment",
    "ray_trial_states",
    "require_complete",
    "describe_counts",
    "searched_values",
    "param_value",
    "front_indices",
    "rank_by_score",
    "chosen_metrics",
]

# How a trial ended (trial_outcome). Only "complete" trials reach a front, a ranking or an export.
STATUSES = ("complete", "degenerate", "stopped", "diverged", "error")
STATUS_WORDS = {"complete": "complete", "degenerate": "at chance level (degenerate)", "stopped": "stopped early",
                "diverged": "diverged", "error": "errored"}
# A full-budget trial is degenerate when its val/acc is within CHANCE_MARGIN_STD binomial standard deviations of
# what always predicting the most frequent val class scores (docs/results-format.md, "Which trials count").
CHANCE_MARGIN_STD = 2.0
# Ray's bookkeeping keys in every result line; not metrics.
RAY_KEYS = frozenset({
    "config", "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration", "trial_id",
    "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "time_since_restore",
    "iterations_since_restore", "experiment_tag",
})
NOT_APPLICABLE = None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any) -> float:
    return float(x) if _finite(x) else float("nan")


@dataclass
class TrialRecord:
    """One trial of an experiment, as Ray recorded it.

    `params` maps every searched parameter of the space (dotted keys, e.g. `gce.lam`) to the trial's value, or to
    None where it does not apply (a conditional loss parameter of another loss). `history` holds one metrics dict
    per epoch (Ray's bookkeeping keys removed), ordered by epoch; a re-run epoch after a restore keeps its last line.
    """

    trial_id: str
    path: Path
    config: dict
    params: dict
    history: list[dict]
    status: str
    node: str | None = None  # readable: "<node ip> (<start of the Ray node id>)"
    node_id: str | None = None  # Ray's node id, as the Ray trainable (search.trainable) reports it
    started_at: float = float("nan")  # unix seconds, start of the first epoch
    finished_at: float = float("nan")  # unix seconds, last result
    tune_params: dict = field(default_factory=dict)  # what the searcher proposed (Ray's config minus trial_config)
    notes: list = field(default_factory=list)  # problems met while reading the trial (reported in summary.json)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    @property
    def loss(self) -> str:
        return str(self.config.get("loss", {}).get("name", "?"))

    @property
    def temperatures(self) -> list[float]:
        temps = self.final.get("calibration/temperatures")
        return [float(t) for t in temps] if isinstance(temps, (list, tuple)) else []

    @property
    def breakpoints(self) -> list[float]:
        """The ATS breakpoints the trial's final calibrator used: the configured ones, or with
        `breakpoints: {refine: cv}` those of the calibrator the refinement chose ([] for none or TS)."""
        bps = self.config.get("calibration", {}).get("breakpoints")
        if isinstance(bps, dict):
            bps = self.final.get("calibration/breakpoints")
        return [float(b) for b in bps] if isinstance(bps, (list, tuple)) else []

    @property
    def calibration_method(self) -> str:
        """none | ts | ats: what the final calibrator was (with refinement, the winner)."""
        chosen = self.final.get("calibration/method")
        return str(chosen) if isinstance(chosen, str) else str(self.config.get("calibration", {}).get("method", ""))

    def metric(self, key: str) -> float:
        """The final value of a metric key; NaN when absent or not a finite number."""
        return _num(self.final.get(key))

    def best_epoch(self) -> dict:
        """The epoch's metrics with the highest finite score (the last one wins ties); {} when none is finite."""
        best: dict = {}
        for row in self.history:
            score = row.get("score")
            if _finite(score) and (not best or score >= best["score"]):
                best = row
        return best


@dataclass
class Experiment:
    path: Path
    spec: dict | None  # spec.yaml as read
    trials: list[TrialRecord]
    search_spec: Any = None  # spaces.records.SearchSpec of spec.yaml, when it validates

    def by_status(self, status: str) -> list[TrialRecord]:
        return [t for t in self.trials if t.status == status]

    @property
    def objectives(self) -> tuple[str, str]:
        """(val/acc, the key of the search's objective.ece_metric): the axes of its front (OBJECTIVES unless the
        space sets objective.ece_metric)."""
        base = getattr(self.search_spec, "base_config", None)
        if base is None:  # spec.yaml did not validate: read its `objective` section as written
            base = self.spec if isinstance(self.spec, dict) else None
        objective = (base or {}).get("objective") if isinstance(base, dict) else None
        try:
            return objectives_for(objective if isinstance(objective, dict) else None)
        except KeyError:  # an unknown ece_metric in a hand-edited spec.yaml: the contract front
            return OBJECTIVES

    @property
    def ece_key(self) -> str:
        return self.objectives[1]

    def complete(self) -> list[TrialRecord]:
        """Full-budget trials with finite objectives: the only ones a front or a ranking may use."""
        return [t for t in self.trials if counts_toward_front(t.status, t.final, self.objectives)]

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in STATUSES}
        for t in self.trials:
            counts[t.status] += 1
        counts["total"] = len(self.trials)
        return counts

    def front(self) -> list[TrialRecord]:
        """Pareto-optimal complete trials over (val/acc max, val/ece min), ordered by val/ece ascending (the
        ECE axis is `ece_key`: val/ece unless the space sets objective.ece_metric)."""
        complete, key = self.complete(), self.ece_key
        members = [complete[i] for i in front_indices([(t.metric("val/acc"), t.metric(key)) for t in complete])]
        return sorted(members, key=lambda t: (t.metric(key), -t.metric("val/acc"), t.trial_id))

    def best(self) -> TrialRecord | None:
        """The complete trial with the highest score: the top of `gce-search export --select best`'s ranking
        (rank_by_score); None when no complete trial has a finite score."""
        ranked = rank_by_score(self.complete())
        return ranked[0] if ranked else None

    def hypervolume(self) -> float:
        """The hypervolume of the complete trials' (val/acc, val/ece) front (search.pareto.hypervolume_acc_ece)."""
        return hypervolume_acc_ece([(t.metric("val/acc"), t.metric(self.ece_key)) for t in self.complete()])

    def start_time(self) -> float:
        starts = [t.started_at for t in self.trials if math.isfinite(t.started_at)]
        return min(starts) if starts else float("nan")

    def hypervolume_over_time(self) -> list[tuple[float, float]]:
        """(seconds since the experiment started, hypervolume of the complete trials finished by then), one row per
        complete trial in order of finishing."""
        t0 = self.start_time()
        done = sorted(self.complete(), key=lambda t: (t.finished_at, t.trial_id))
        rows = []
        for k in range(1, len(done) + 1):
            hv = hypervolume_acc_ece([(t.metric("val/acc"), t.metric(self.ece_key)) for t in done[:k]])
            rows.append((float(done[k - 1].finished_at - t0), hv))
        return rows


def rank_by_score(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Trials with a finite score, highest first; ties broken by lower val/ece, then trial id, so the ranking is
    reproducible (`export --select best|top:K`, Experiment.best)."""
    finite = [t for t in trials if math.isfinite(t.metric("score"))]
    return sorted(finite, key=lambda t: (-t.metric("score"), t.metric("val/ece"), t.trial_id))


def front_indices(acc_ece: Iterable[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (val/acc max, val/ece min) pairs (search.pareto, in minimisation space)."""
    points = np.asarray(list(acc_ece), dtype=float).reshape(-1, 2)
    if points.shape[0] == 0:
        return []
    return pareto_front(as_minimization(points))


def _space_keys(spec: dict | None) -> list[str]:
    space = (spec or {}).get("space") or {}
    return list(space) if isinstance(space, dict) else []



def as_search_spec(spec: Any):
    """A spaces.records.SearchSpec from a SearchSpec, a spec dict (spec.yaml) or None; None when it does not
    validate (then each parameter's conditions come from its raw space entry, SpaceParam.from_raw)."""
    if spec is None or hasattr(spec, "is_active"):
        return spec
    try:
        return spec_from_dict(spec, source="spec.yaml")
    except Exception:  # an experiment written by another version: still readable, with the raw entries' conditions
        return None


def _at(config: dict, path: str) -> Any:
    try:
        return get_path(config, path)
    except (KeyError, TypeError):
        return NOT_APPLICABLE


def _value_if_active(param: SpaceParam, config: dict) -> Any:
    value = _at(config, param.path)
    return value if value is not None and param.is_active(config) else NOT_APPLICABLE


def param_value(config: dict, key: str, entry: Any = None) -> Any:
    """The value of searched parameter `key` in a resolved trial config; None where it does not apply
    (SpaceParam.is_active of the parameter's raw space entry, SpaceParam.from_raw)."""
    return _value_if_active(SpaceParam.from_raw(key, entry), config)


def searched_values(spec: Any, config: dict, keys: list[str] | None = None) -> dict:
    """Every searched parameter of the space -> its value in `config`, or None where it is inactive (another
    loss's parameter, breakpoints without ATS, a failed `when:` condition), per SpaceParam.conditions."""
    search_spec = as_search_spec(spec)
    if search_spec is None:
        space = ((spec or {}).get("space") or {}) if isinstance(spec, dict) else {}
        space = space if isinstance(space, dict) else {}
        return {k: param_value(config, k, space.get(k)) for k in (keys if keys is not None else _space_keys(spec))}
    return {p.key: _value_if_active(p, config) for p in search_spec.params}


RAY_STATE_GLOB = "experiment_state-*.json"


def ray_trial_states(exp_dir: Path) -> tuple[dict[str, dict], Path | None]:
    """({trial id: {"status", "last_result", "errored"}}, the file) from Ray's newest readable experiment state.

    Read as plain JSON: the pickled parts Ray embeds stay hex strings, nothing is unpickled, so this is safe on an
    experiment from elsewhere. ({}, None) when there is none."""
    for path in sorted(exp_dir.glob(RAY_STATE_GLOB), reverse=True):  # the names carry the start time
        try:
            trials = {}
            for trial, metadata in experiment_state_trials(path.read_bytes()):
                last = metadata.get("last_result")
                trials[str(trial["trial_id"])] = {
                    "status": trial.get("status"), "last_result": last if isinstance(last, dict) else {},
                    "errored": trial.get("status") == "ERROR"}
            return trials, path
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # a state cut mid-write: the one before it
    return {}, None


def _iteration(row: dict | None) -> float:
    row = row or {}
    for key in ("training_iteration", "epoch"):
        if _finite(row.get(key)):
            return float(row[key])
    return float("-inf")


def _trial_id_of(folder: Path, lines: list[dict]) -> str:
    if lines and lines[-1].get("trial_id"):
        return str(lines[-1]["trial_id"])
    return folder.name[len("trial_"):] if folder.name.startswith("trial_") else folder.name


def _params_config(folder: Path) -> dict:
    """Ray's config of a trial from its params.json (for a trial that errored before reporting)."""
    try:
        config = json.loads((folder / "params.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def warn(message: str) -> None:
    """A problem met while reading an experiment that changes what the user sees: on the console, not only in
    summary.json's notes."""
    print(f"gce-search: warning: {message}", file=sys.stderr, flush=True)


def chance_accuracy_bound(last_result: dict) -> float | None:
    """The val/acc at or below which a full-budget trial is degenerate, or None when its last result does not say
    how many classes and val samples there are (then no trial is called degenerate).

    Chance is the share p of the most frequent val class (1/K when the split is balanced, or when only K is
    known): a model that always predicts it scores p. A real model's val/acc on n samples is p or below with
    probability ~2.3% at p + 2 sqrt(p (1 - p) / n), so a trial at or below that bound is not told apart from chance.
    """
    def mapping(value: Any) -> dict:
        return value if isinstance(value, dict) else {}

    info = mapping(last_result.get("data/info"))
    n = last_result.get("val/n")
    n = n if _finite(n) else mapping(info.get("sizes")).get("val")
    counts = mapping(info.get("class_counts")).get("val")
    if isinstance(counts, list) and counts and all(_finite(c) and c >= 0 for c in counts) and sum(counts) > 0:
        p = max(counts) / sum(counts)
        n = n if _finite(n) else sum(counts)
    elif _finite(info.get("num_classes")) and info["num_classes"] >= 2:
        p = 1.0 / info["num_classes"]
    else:
        return None
    if not _finite(n) or n <= 0:
        return None
    return p + CHANCE_MARGIN_STD * math.sqrt(p * (1.0 - p) / n)


def trial_outcome(last_result: dict | None, errored: bool = False) -> str:
    """How a trial ended, from its last result: one of STATUSES. The one rule: the result files, the console and
    TensorBoard all call it (docs/results-format.md, "Which trials count").

    error: the trial raised (Ray marked it errored) before a full-budget result; diverged: non-finite loss or
    logits; complete: the full `train.epochs` budget, above chance level; degenerate: the full budget at chance
    level (chance_accuracy_bound); stopped: anything else (stopped early by the scheduler, interrupted)."""
    last = last_result or {}
    if errored and last.get("final") is not True:
        return "error"
    if last.get("status") == "diverged":
        return "diverged"
    if last.get("final") is True:
        bound = chance_accuracy_bound(last)
        acc = last.get("val/acc")
        return "degenerate" if bound is not None and _finite(acc) and acc <= bound else "complete"
    return "stopped"


def counts_toward_front(status: str, last_result: dict | None, objectives: tuple[str, ...] = OBJECTIVES) -> bool:
    """A complete trial (trial_outcome) whose last result has finite objectives (search.pareto.OBJECTIVES, or the
    search's own): the only kind of trial a front, a ranking or an export may use."""
    last = last_result or {}
    return status == "complete" and all(_finite(last.get(k)) for k in objectives)


def _load_trial(folder: Path, spec: Any, ray_states: dict[str, dict], ray_state_path: Path | None
                ) -> TrialRecord | None:
    result_path = folder / RESULT_FILE
    lines, torn = read_result_lines(result_path)
    trial_id = _trial_id_of(folder, lines)
    ray_state = ray_states.get(trial_id)
    notes = []
    if torn is not None:
        # The status must not change because a record is unreadable: Ray's experiment state keeps the last result
        # it received, which is the cut line when that one was the newest.
        recorded = (ray_state or {}).get("last_result") or {}
        where = f"Ray's experiment state {ray_state_path.name}" if ray_state_path is not None else ""
        if recorded and _iteration(recorded) > _iteration(lines[-1] if lines else None):
            lines.append(recorded)
            message = (f"{result_path}: last line cut ({len(torn)} characters); the trial's last result was taken "
                       f"from {where} (epoch {recorded.get('epoch', '?')})")
        else:
            message = (f"{result_path}: last line cut ({len(torn)} characters) and "
                       + (f"{where} holds nothing newer" if where else "no Ray experiment state to recover it from")
                       + f"; the trial is read up to its last complete line (epoch "
                       f"{lines[-1].get('epoch', '?') if lines else 'none'}), so its status may be out of date")
        notes.append(message)
        warn(message)
    errored = ray_state["errored"] if ray_state is not None else (folder / "error.txt").is_file()
    if not lines and not errored:
        return None
    ray_config = (lines[-1].get("config") if lines else None) or _params_config(folder)
    config = ray_config.get("trial_config") or {}
    by_epoch: dict[Any, dict] = {}
    for row in lines:
        key = row.get("epoch", row.get("training_iteration"))
        by_epoch[key] = row  # a restored trial re-reports epochs: the last line of an epoch is the one that counts
    ordered = [by_epoch[k] for k in sorted(by_epoch, key=lambda k: (k is None, k if _finite(k) else 0))]
    history = [{k: v for k, v in row.items() if k not in RAY_KEYS} for row in ordered]
    first, last = (lines[0], lines[-1]) if lines else ({}, {})
    tune_params = {k: v for k, v in ray_config.items() if k != "trial_config"}
    params = searched_values(spec, config) if spec else dict(tune_params)
    # the Ray trainable (search.trainable) reports Ray's node id; the node's address makes it readable.
    node = last.get("node_id") or last.get("node_ip")
    if last.get("node_ip") and last.get("node_id"):
        node = f"{last['node_ip']} ({str(last['node_id'])[:12]})"
    started = _num(first.get("timestamp")) - _num(first.get("time_this_iter_s", 0.0))
    return TrialRecord(
        trial_id=trial_id,
        path=folder,
        config=config,
        params=params,
        history=history,
        status=trial_outcome(history[-1] if history else None, errored=errored),
        node=node,
        node_id=last.get("node_id"),
        started_at=started,
        finished_at=_num(last.get("timestamp")),
        tune_params=tune_params,
        notes=notes,
    )


def load_experiment(exp_dir: str | os.PathLike) -> Experiment:
    """Read an experiment directory into trial records; UsageError if it is not one.

    A trial folder that never reported (no result line yet) is skipped, unless the trial errored. A cut last line
    of a result.json is taken from Ray's experiment state where that holds it, and warned about on the console
    naming the file either way (`_load_trial`).
    """
    path = Path(exp_dir)
    if not path.is_dir():
        raise UsageError(f"{exp_dir}: not a directory; expected an experiment directory written by `gce-search run`")
    spec = None
    spec_path = path / "spec.yaml"
    if spec_path.is_file():
        try:
            spec = read_yaml(spec_path)
        except ConfigError as err:
            raise UsageError(f"{spec_path}: not valid YAML ({'; '.join(err.problems)})") from None
        if not isinstance(spec, dict):
            raise UsageError(f"{spec_path}: expected a mapping (the resolved search spec)")
    # A trial that errored before its first report has error.txt but no result line.
    folders = sorted(p for p in path.iterdir()
                     if p.is_dir() and ((p / RESULT_FILE).is_file() or (p / "error.txt").is_file()))
    if spec is None and not folders:
        raise UsageError(f"{exp_dir}: not an experiment directory; expected spec.yaml and trial folders with "
                         "result.json (the directory `gce-search run` writes under --storage/--name)")
    search_spec = as_search_spec(spec) if spec is not None else None
    ray_states, ray_state_path = ray_trial_states(path)
    trials = [t for t in (_load_trial(f, search_spec or spec, ray_states, ray_state_path) for f in folders)
              if t is not None]
    return Experiment(path=path, spec=spec, trials=trials, search_spec=search_spec)


def describe_counts(counts: dict[str, int]) -> str:
    """'4 errored', '2 diverged, 1 stopped early': the non-zero statuses of Experiment.counts() in words."""
    words = [f"{counts[s]} {STATUS_WORDS[s]}" for s in STATUSES if counts.get(s)]
    return ", ".join(words) if words else "no trial reported a result"


def require_complete(exp: Experiment) -> list[TrialRecord]:
    complete = exp.complete()
    if not complete:
        raise UsageError(f"{exp.path}: no complete trial ({describe_counts(exp.counts())}); a front, a ranking and "
                         f"an export need at least one trial that ran its full budget above chance level")
    return complete


def chosen_metrics(trial: TrialRecord) -> dict:
    """The trial's final scalar metrics (contract keys, split sizes, status): what it had when chosen."""
    out = {}
    for k, v in trial.final.items():
        if k.startswith(("val/", "test/", "calib/")) or k in ("epoch", "score", "train/loss", "status", "final"):
            if isinstance(v, (bool, int, float, str)) or v is None:
                out[k] = v
    return out
