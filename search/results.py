"""Experiment results: typed trial records, the accuracy-vs-ECE Pareto front, hypervolume, and the result files.

An experiment directory (docs/architecture.md, "Experiment directory") holds Ray Tune's trial folders, each with
`result.json` (one JSON line per reported epoch; `config.trial_config` is the resolved trial config), and
`spec.yaml`. `load_experiment` turns it into `TrialRecord`s; `write_results` writes `pareto.csv`, `pareto.png`,
`summary.json` and the experiment-level TensorBoard summary. File formats: docs/results-format.md.

The front is built from full-budget trials only: Ray reports an early-stopped trial's partial metrics as if they
were final, and a diverged trial's NaN ECE must never read as a perfect one (docs/design.md, "Ray and Optuna facts").
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from gce_search.errors import UsageError
from gce_search.search.pareto import MODES, OBJECTIVES, REFERENCE_POINT, hypervolume_acc_ece, pareto_front, to_minimization

__all__ = [
    "STATUSES",
    "trial_outcome",
    "chance_accuracy_bound",
    "warn",
    "TrialRecord",
    "Experiment",
    "load_experiment",
    "require_complete",
    "searched_values",
    "front_indices",
    "latest_checkpoint",
    "val_predictions",
    "ece_uncertainty",
    "ece_std_from_n",
    "ece_std_bootstrap",
    "ece_std_from_bins",
    "chosen_metrics",
    "pareto_rows",
    "summary_dict",
    "pareto_figure",
    "write_results",
    "cmd_pareto",
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
# Top-level sections of a trial config: a space key starting with one of them is a plain dotted config path; any
# other first part names a loss (`gce.lam`), active only when loss.name equals it (docs/architecture.md).
CONFIG_SECTIONS = frozenset({"seed", "data", "model", "loss", "train", "calibration", "objective"})
NOT_APPLICABLE = None

# 15-bin ECE of a perfectly calibrated model, simulated on realistic confidences (docs/design.md, "ECE is noisy at small
# n"): std 0.004 at n = 1k, 0.002 at 5k, 0.0013 at 10k, i.e. std * sqrt(n) = 0.126, 0.141, 0.130. We use
# ECE_STD_TIMES_SQRT_N / sqrt(n) only when neither the validation predictions nor reliability bins can be
# bootstrapped (ece_uncertainty).
ECE_STD_TIMES_SQRT_N = 0.13
BOOTSTRAP_RESAMPLES = 400


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
        bps = self.config.get("calibration", {}).get("breakpoints")
        return [float(b) for b in bps] if isinstance(bps, (list, tuple)) else []

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
    search_spec: Any = None  # spaces.schema.SearchSpec of spec.yaml, when it validates

    def by_status(self, status: str) -> list[TrialRecord]:
        return [t for t in self.trials if t.status == status]

    def complete(self) -> list[TrialRecord]:
        """Full-budget trials with a finite (val/acc, val/ece): the only ones a front or a ranking may use."""
        return [t for t in self.trials
                if t.status == "complete" and all(_finite(t.final.get(k)) for k in OBJECTIVES)]

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in STATUSES}
        for t in self.trials:
            counts[t.status] += 1
        counts["total"] = len(self.trials)
        return counts

    def front(self) -> list[TrialRecord]:
        """Pareto-optimal complete trials over (val/acc max, val/ece min), ordered by val/ece ascending."""
        complete = self.complete()
        members = [complete[i] for i in front_indices([(t.metric("val/acc"), t.metric("val/ece")) for t in complete])]
        return sorted(members, key=lambda t: (t.metric("val/ece"), -t.metric("val/acc"), t.trial_id))

    def hypervolume(self) -> float:
        return hypervolume_acc_ece([(t.metric("val/acc"), t.metric("val/ece")) for t in self.complete()])

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
            hv = hypervolume_acc_ece([(t.metric("val/acc"), t.metric("val/ece")) for t in done[:k]])
            rows.append((float(done[k - 1].finished_at - t0), hv))
        return rows


def front_indices(acc_ece: Iterable[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (val/acc max, val/ece min) pairs (search.pareto, in minimisation space)."""
    points = np.asarray(list(acc_ece), dtype=float).reshape(-1, 2)
    if points.shape[0] == 0:
        return []
    return pareto_front(to_minimization(points, MODES))


def _space_keys(spec: dict | None) -> list[str]:
    space = (spec or {}).get("space") or {}
    return list(space) if isinstance(space, dict) else []


def as_search_spec(spec: Any):
    """A spaces.schema.SearchSpec from a SearchSpec, a spec dict (spec.yaml) or None; None when it does not
    validate (then parameter applicability falls back to `param_value`'s rule)."""
    if spec is None or hasattr(spec, "is_active"):
        return spec
    try:
        from gce_search.spaces.schema import spec_from_dict

        return spec_from_dict(spec, source="spec.yaml")
    except Exception:  # an experiment written by another version: still readable, with the simpler rule
        return None


def param_value(config: dict, key: str) -> Any:
    """The value of searched parameter `key` in a resolved trial config; None where it does not apply.

    The rule without a SearchSpec: `<loss>.<param>` keys apply only when loss.name is that loss.
    """
    parts = key.split(".")
    node: Any = config
    if parts[0] not in CONFIG_SECTIONS:
        # `<loss>.<param>`: a conditional loss parameter (docs/architecture.md, "Search spec").
        loss = config.get("loss", {})
        if not isinstance(loss, dict) or loss.get("name") != parts[0]:
            return NOT_APPLICABLE
        node, parts = loss, parts[1:]
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return NOT_APPLICABLE
        node = node[part]
    return node


def searched_values(spec: Any, config: dict, keys: list[str] | None = None) -> dict:
    """Every searched parameter of the space -> its value in `config`, or None where it is inactive (another
    loss's parameter, breakpoints without ATS, a failed `when:` condition), per SpaceParam.conditions."""
    search_spec = as_search_spec(spec)
    if search_spec is None:
        return {k: param_value(config, k) for k in (keys if keys is not None else _space_keys(spec))}
    from gce_search.trainables.config import get_path

    def at(path: str) -> Any:
        try:
            return get_path(config, path)
        except (KeyError, TypeError):
            return None

    out: dict[str, Any] = {}
    for p in search_spec.params:
        # The conditions are checked against the trial's own resolved config: a fixed setting of the space
        # (calibration.method: ts) deactivates a parameter as surely as a searched one.
        active = all(at(path) in allowed for path, allowed in p.conditions().items())
        value = at(p.path)
        out[p.key] = value if active and value is not None else NOT_APPLICABLE
    return out


def _read_result_lines(path: Path) -> tuple[list[dict], str | None]:
    """The JSON lines of a trial's result.json, and the text of its last line when that one is cut (a process
    killed mid-write, a full disk, NFS); a cut line is never taken for the trial's last result."""
    lines: list[dict] = []
    torn = None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            torn = line
            continue
        torn = None  # an unreadable line followed by readable ones was not the last one written
        if isinstance(row, dict):
            lines.append(row)
    return lines, torn


RAY_STATE_GLOB = "experiment_state-*.json"


def ray_trial_states(exp_dir: Path) -> tuple[dict[str, dict], Path | None]:
    """({trial id: {"status", "last_result", "errored"}}, the file) from Ray's newest readable experiment state.

    Read as plain JSON: the pickled parts Ray embeds stay hex strings, nothing is unpickled, so this is safe on an
    experiment from elsewhere. ({}, None) when there is none."""
    for path in sorted(exp_dir.glob(RAY_STATE_GLOB), reverse=True):  # the names carry the start time
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            trials = {}
            for trial_json, metadata_json in state["trial_data"]:
                trial, metadata = json.loads(trial_json), json.loads(metadata_json)
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


def _load_trial(folder: Path, spec: Any, ray_states: dict[str, dict], ray_state_path: Path | None
                ) -> TrialRecord | None:
    result_path = folder / "result.json"
    lines, torn = _read_result_lines(result_path)
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
    import yaml

    path = Path(exp_dir)
    if not path.is_dir():
        raise UsageError(f"{exp_dir}: not a directory; expected an experiment directory written by `gce-search run`")
    spec = None
    spec_path = path / "spec.yaml"
    if spec_path.is_file():
        try:
            spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise UsageError(f"{spec_path}: not valid YAML ({err})") from None
        if not isinstance(spec, dict):
            raise UsageError(f"{spec_path}: expected a mapping (the resolved search spec)")
    # A trial that errored before its first report has error.txt but no result line.
    folders = sorted(p for p in path.iterdir()
                     if p.is_dir() and ((p / "result.json").is_file() or (p / "error.txt").is_file()))
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


# ---------------------------------------------------------------------------------------------------------------
# ECE uncertainty


def ece_std_from_n(n: float) -> float:
    """Approximate standard deviation of a 15-bin ECE measured on n samples (docs/design.md simulation, ~0.13/sqrt(n))."""
    return ECE_STD_TIMES_SQRT_N / math.sqrt(n) if _finite(n) and n > 0 else float("nan")


def _bins_arrays(bins: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(counts, accuracy, confidence) per bin from a reported reliability record, or None when unusable.

    Accepts a mapping of per-bin lists (`count(s)`, `acc(uracy)`, `conf(idence)`) or a list of per-bin mappings.
    """
    def pick(d: dict, *names):
        for n in names:
            if n in d:
                return d[n]
        return None

    if isinstance(bins, list) and bins and all(isinstance(b, dict) for b in bins):
        bins = {k: [b.get(k) for b in bins] for k in bins[0]}
    if not isinstance(bins, dict):
        return None
    counts = pick(bins, "counts", "count", "n")
    acc = pick(bins, "acc", "accuracy", "accuracies")
    conf = pick(bins, "conf", "confidence", "confidences")
    if counts is None or acc is None or conf is None:
        return None
    try:
        c = np.asarray(counts, dtype=float)
        a = np.nan_to_num(np.asarray(acc, dtype=float))
        f = np.nan_to_num(np.asarray(conf, dtype=float))
    except (TypeError, ValueError):
        return None
    if not (c.shape == a.shape == f.shape) or c.ndim != 1 or c.sum() <= 0:
        return None
    return c, a, f


def ece_std_from_bins(counts, acc, conf, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """Bootstrap standard deviation of the ECE from reliability bins alone.

    Resamples the bin occupancy (multinomial over the observed counts) and each bin's number of correct
    predictions (binomial at the bin's observed accuracy), keeping each bin's mean confidence: a per-sample
    bootstrap with confidences frozen at their bin means.
    """
    counts = np.asarray(counts, dtype=float)
    acc = np.clip(np.asarray(acc, dtype=float), 0.0, 1.0)
    conf = np.asarray(conf, dtype=float)
    n = int(round(counts.sum()))
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n, counts / counts.sum(), size=resamples)
    correct = rng.binomial(sizes, acc)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(sizes > 0, np.abs(correct / np.maximum(sizes, 1) - conf), 0.0)
    eces = (sizes * gap).sum(axis=1) / n
    return float(eces.std(ddof=1))


def latest_checkpoint(trial: TrialRecord) -> Path | None:
    """The trial's checkpoint.pt of its last epoch: the complete checkpoint folder (its manifest matches) with the
    latest epoch; for folders without a manifest, the highest-numbered one holding a checkpoint.pt."""
    import pyarrow.fs

    from gce_search.trainables.checkpoints import CHECKPOINT_FILE, newest_checkpoint

    found = newest_checkpoint(pyarrow.fs.LocalFileSystem(), str(trial.path))
    if found is not None:
        return Path(found[0]) / CHECKPOINT_FILE
    folders = sorted(trial.path.glob(f"checkpoint_*/{CHECKPOINT_FILE}"), key=lambda p: p.parent.name)
    return folders[-1] if folders else None


def val_predictions(trial: TrialRecord) -> dict | None:
    """Raw and calibrated validation logits of a trial, recomputed from its last checkpoint on the CPU:
    {"raw": [N, K], "calibrated": [N, K], "labels": [N]} (torch tensors), or None without a usable checkpoint.

    The trial reports only scalar metrics per epoch; the checkpoint holds the model and the fitted calibrator,
    and the splits are a pure function of data.split_seed, so the validation predictions can be rebuilt exactly.
    Cached on the record.
    """
    cached = getattr(trial, "_val_predictions", False)
    if cached is not False:
        return cached
    result = None
    ckpt = latest_checkpoint(trial)
    if ckpt is not None and trial.status == "complete":
        import torch

        from gce_search.trainables.calibration import build_calibrator
        from gce_search.trainables.inference import split_logits

        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state.setdefault("config", trial.config)
        raw, labels = split_logits(state, ("val",))["val"]
        calibrated = raw
        if state.get("calibrator") is not None:
            calibrator = build_calibrator(state["config"]["calibration"])
            calibrator.load_state_dict(state["calibrator"])
            calibrated = calibrator.transform(raw)
        result = {"raw": raw, "calibrated": calibrated, "labels": labels}
    trial._val_predictions = result
    return result


def _equal_width_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # Bin m-1 holds ((m-1)/M, m/M] (Guo et al. 2017; trainables.metrics uses the same convention).
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def ece_std_bootstrap(confidence, correct, n_bins: int = 15, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> float:
    """Standard deviation of the equal-width ECE over bootstrap resamples of the (confidence, correct) pairs."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    n = confidence.shape[0]
    bins = _equal_width_bins(confidence, n_bins)
    rng = np.random.default_rng(seed)
    eces = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, n, n)
        b = bins[idx]
        gap = np.abs(np.bincount(b, weights=correct[idx], minlength=n_bins)
                     - np.bincount(b, weights=confidence[idx], minlength=n_bins))
        eces[r] = gap.sum() / n  # sum over bins of |B_m| * |acc_m - conf_m| / n
    return float(eces.std(ddof=1))


def ece_uncertainty(trial: TrialRecord, split: str = "val", predictions: bool = True) -> dict:
    cache = trial.__dict__.setdefault("_ece_uncertainty", {})
    if (split, predictions) not in cache:
        cache[(split, predictions)] = _ece_uncertainty(trial, split, predictions)
    return cache[(split, predictions)]


def _ece_uncertainty(trial: TrialRecord, split: str, predictions: bool) -> dict:
    """{"n", "std", "method"} of a trial's final `<split>/ece`.

    In order of preference: a bootstrap over the validation samples recomputed from the trial's checkpoint
    (`predictions=True`, val only), a bootstrap over reported `<split>/reliability` bins, else the docs/design.md
    approximation 0.13/sqrt(n).
    """
    n = trial.final.get(f"{split}/n")
    unreadable = None
    if predictions and split == "val":
        try:
            preds = val_predictions(trial)
        except Exception as err:  # an unreadable checkpoint must not block the result files
            preds = None
            trial._val_predictions = None
            unreadable = f"{latest_checkpoint(trial)}: checkpoint unreadable ({type(err).__name__}: {err})"
        if preds is not None:
            import torch

            probs = torch.softmax(preds["calibrated"].double(), dim=1)
            conf, pred = probs.max(dim=1)
            correct = (pred == preds["labels"]).double()
            n_bins = int(trial.config.get("objective", {}).get("n_bins", 15))
            return {"n": int(conf.shape[0]), "std": ece_std_bootstrap(conf.numpy(), correct.numpy(), n_bins),
                    "method": "bootstrap over val samples (predictions rebuilt from the last checkpoint)"}
    arrays = _bins_arrays(trial.final.get(f"{split}/reliability"))
    if arrays is not None:
        result = {"n": int(arrays[0].sum()) if not _finite(n) else int(n), "std": ece_std_from_bins(*arrays),
                  "method": "bootstrap over reliability bins"}
    else:
        result = {"n": int(n) if _finite(n) else None, "std": ece_std_from_n(_num(n)),
                  "method": f"{ECE_STD_TIMES_SQRT_N}/sqrt(n)"}
    if unreadable is not None:
        message = (f"{unreadable}; the val/ece ± of trial {trial.trial_id} is the {result['method']} estimate, not "
                   f"the bootstrap over its val predictions")
        trial.notes.append(message)
        warn(message)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Result files

CSV_COLUMNS = (
    "trial", "status", "loss", "loss.lam", "loss.params", "calibration.method", "calibration.breakpoints",
    "calibration/temperatures", "epoch", "score",
    "val/acc", "val/ece", "val/ece_std", "val/ece_raw", "val/adaece", "val/nll", "val/n",
    "test/acc", "test/ece", "test/adaece", "test/nll", "test/n", "node",
)


def _fmt_list(values: list[float]) -> str:
    return " ".join(f"{v:.6g}" for v in values)


def pareto_row(trial: TrialRecord) -> dict:
    """One row of pareto.csv for a trial (metric columns use the contract metric keys)."""
    loss_cfg = {k: v for k, v in trial.config.get("loss", {}).items() if k != "name"}
    lam = loss_cfg.get("lam")
    unc = ece_uncertainty(trial)
    row = {
        "trial": trial.trial_id,
        "status": trial.status,
        "loss": trial.loss,
        "loss.lam": "" if lam is None else float(lam),
        "loss.params": " ".join(f"{k}={v}" for k, v in sorted(loss_cfg.items())),
        "calibration.method": trial.config.get("calibration", {}).get("method", ""),
        "calibration.breakpoints": _fmt_list(trial.breakpoints),
        "calibration/temperatures": _fmt_list(trial.temperatures),
        "epoch": trial.final.get("epoch", ""),
        "val/ece_std": unc["std"],
        "node": trial.node or "",
    }
    for key in ("score", "val/acc", "val/ece", "val/ece_raw", "val/adaece", "val/nll", "test/acc", "test/ece",
                "test/adaece", "test/nll"):
        row[key] = trial.metric(key)
    for key in ("val/n", "test/n"):
        v = trial.final.get(key)
        row[key] = int(v) if _finite(v) else ""
    return row


def pareto_rows(exp: Experiment) -> list[dict]:
    return [pareto_row(t) for t in exp.front()]


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buf.getvalue()


def _json_safe(value: Any) -> Any:
    """NaN/inf become null: summary.json stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def chosen_metrics(trial: TrialRecord) -> dict:
    """The trial's final scalar metrics (contract keys, split sizes, status): what it had when chosen."""
    out = {}
    for k, v in trial.final.items():
        if k.startswith(("val/", "test/", "calib/")) or k in ("epoch", "score", "train/loss", "status", "final"):
            if isinstance(v, (bool, int, float, str)) or v is None:
                out[k] = v
    return out


def summary_dict(exp: Experiment) -> dict:
    front = exp.front()
    complete = exp.complete()
    val_n = sorted({int(t.final["val/n"]) for t in complete if _finite(t.final.get("val/n"))})
    members = []
    for t in front:
        row = pareto_row(t)
        members.append({
            "trial": t.trial_id,
            "loss": t.loss,
            "params": t.params,
            "breakpoints": t.breakpoints,
            "temperatures": t.temperatures,
            "metrics": chosen_metrics(t),
            "val_ece_uncertainty": ece_uncertainty(t),
            "notes": list(t.notes),
            "node": row["node"],
            "path": str(t.path),
        })
    return _json_safe({
        "experiment": str(exp.path.resolve()),
        "objectives": {k: m for k, m in zip(OBJECTIVES, MODES)},
        "reference_point": dict(zip(OBJECTIVES, REFERENCE_POINT)),
        "hypervolume": exp.hypervolume(),
        "hypervolume_over_time": [{"seconds": s, "hypervolume": hv} for s, hv in exp.hypervolume_over_time()],
        "counts": exp.counts(),
        # full-budget trials kept off the front because their val/acc is within noise of chance
        "degenerate": [{"trial": t.trial_id, "val/acc": t.metric("val/acc"),
                        "chance_bound": chance_accuracy_bound(t.final)} for t in exp.by_status("degenerate")],
        "val_n": val_n[0] if len(val_n) == 1 else val_n,
        "ece_uncertainty_note": (
            "val/ece of a front member carries the std in val_ece_uncertainty; two trials scored on the same split "
            "differ meaningfully only when their ECE gap exceeds about 2.5 std (docs/design.md: ECE is noisy at small n)"),
        "front": members,
        # every problem met reading any trial (cut result lines, unreadable checkpoints), also warned on the console
        "warnings": [f"trial {t.trial_id}: {note}" for t in exp.trials for note in t.notes],
    })


def _loss_colours(losses: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(sorted(set(losses)))}


def pareto_figure(exp: Experiment, losses: Iterable[str] | None = None):
    """Every trial with finite (val/ece, val/acc), coloured by loss; the front highlighted; a matplotlib Figure.

    `losses` fixes the loss -> colour map (default: the losses of exp.trials), so that figures of parts of one
    experiment keep its colours."""
    import matplotlib

    matplotlib.use("Agg")  # headless: results are written on cluster heads without a display
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 5.0), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    plotted = [t for t in exp.trials if _finite(t.final.get("val/acc")) and _finite(t.final.get("val/ece"))]
    colours = _loss_colours(list(losses) if losses is not None else [t.loss for t in exp.trials])
    for loss, colour in colours.items():
        for status, marker, alpha in (("complete", "o", 0.9), ("stopped", "x", 0.45), ("degenerate", "v", 0.45)):
            pts = [t for t in plotted if t.loss == loss and t.status == status]
            if pts:
                ax.scatter([t.metric("val/ece") for t in pts], [t.metric("val/acc") for t in pts], c=[colour],
                           marker=marker, alpha=alpha, s=30, label=f"{loss} ({status})")
    front = exp.front()
    if front:
        xs = [t.metric("val/ece") for t in front]
        ys = [t.metric("val/acc") for t in front]
        errs = [ece_uncertainty(t)["std"] for t in front]
        ax.step(xs, ys, where="post", color="black", linewidth=1.2, label="Pareto front (complete trials)")
        ax.errorbar(xs, ys, xerr=[e if math.isfinite(e) else 0.0 for e in errs], fmt="none", ecolor="black",
                    elinewidth=0.8, capsize=2)
        ax.scatter(xs, ys, s=110, facecolors="none", edgecolors="black", linewidths=1.5)
    n_div = exp.counts()["diverged"]
    ax.set_xlabel("val/ece (after calibration, lower is better)")
    ax.set_ylabel("val/acc (higher is better)")
    ax.set_title(f"{exp.path.name}: hypervolume {exp.hypervolume():.4f} vs reference "
                 f"(acc {REFERENCE_POINT[0]:g}, ece {REFERENCE_POINT[1]:g})"
                 + (f"; {n_div} diverged not shown" if n_div else ""), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_results(exp_dir: str | os.PathLike, tensorboard: bool = True, experiment: Experiment | None = None) -> dict:
    """Write pareto.csv, pareto.png, summary.json (and the TensorBoard experiment summary) into `exp_dir`.

    Everything is computed before the first file is written, so bad input (not an experiment directory, no
    complete trial: UsageError) leaves existing files untouched. Returns the summary dict.
    """
    exp = experiment if experiment is not None else load_experiment(exp_dir)
    require_complete(exp)
    summary = summary_dict(exp)
    csv_text = _csv_text(pareto_rows(exp))
    fig = pareto_figure(exp)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    _atomic_write(exp.path / "pareto.csv", csv_text.encode("utf-8"))
    _atomic_write(exp.path / "pareto.png", png.getvalue())
    _atomic_write(exp.path / "summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    if tensorboard:
        from gce_search.search.tensorboard import write_tensorboard_summary

        write_tensorboard_summary(exp.path, experiment=exp, pareto_png=png.getvalue())
    return summary


def format_table(rows: list[dict]) -> str:
    cols = [("trial", "trial", "{}"), ("loss", "loss", "{}"), ("λ", "loss.lam", "{:.3g}"),
            ("breakpoints", "calibration.breakpoints", "{}"), ("temperatures", "calibration/temperatures", "{}"),
            ("val acc", "val/acc", "{:.4f}"), ("val ECE", "val/ece", "{:.4f}"), ("±", "val/ece_std", "{:.4f}"),
            ("val AdaECE", "val/adaece", "{:.4f}"), ("val NLL", "val/nll", "{:.4f}"),
            ("test acc", "test/acc", "{:.4f}"), ("test ECE", "test/ece", "{:.4f}"),
            ("test AdaECE", "test/adaece", "{:.4f}"), ("test NLL", "test/nll", "{:.4f}")]
    table = [[h for h, _, _ in cols]]
    for row in rows:
        cells = []
        for _, key, fmt in cols:
            v = row.get(key, "")
            if isinstance(v, float) and math.isnan(v) or v == "":
                cells.append("-")
            else:
                cells.append(fmt.format(v) if isinstance(v, (int, float)) else str(v))
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def cmd_pareto(args) -> int:
    """`gce-search pareto EXPERIMENT_DIR`: print the front and write the result files."""
    exp = load_experiment(args.experiment_dir)
    summary = write_results(exp.path, experiment=exp)
    rows = pareto_rows(exp)
    print(format_table(rows))
    counts = summary["counts"]
    ref = summary["reference_point"]
    others = describe_counts({k: v for k, v in counts.items() if k not in ("complete", "total")})
    print(f"\nfront: {len(rows)} of {counts['complete']} complete trials"
          + (f" ({others})" if any(counts.get(s) for s in STATUSES if s != "complete") else "")
          + f"; hypervolume {summary['hypervolume']:.4f} against reference "
          f"(val/acc {ref['val/acc']:g}, val/ece {ref['val/ece']:g}); val n = {summary['val_n']}")
    print(f"wrote {exp.path / 'pareto.csv'}, {exp.path / 'pareto.png'}, {exp.path / 'summary.json'}, "
          f"{exp.path / 'tensorboard'}")
    return 0
