"""TensorBoard for a search: per-trial curves, one HParams table over every trial, experiment-level figures.

Layout under `<exp>/tensorboard/` (served by `gce-search tensorboard EXP`):

- `<trial_id>/`: every numeric metric key per epoch (step = epoch), its best epoch as `best/<key>`, and the HParams
  session of the trial: every searched parameter that applies to it (a conditional one that does not is left out),
  `trial.status`, and as metrics the trial's result (`result/<key>`: the last reported values, i.e. the full-budget
  ones of a complete trial, the same numbers as pareto.csv and summary.json) and its `pareto/rank` and
  `pareto/on_front` (rewritten with the results, in an event file of their own).
- `experiment/`: the experiment-level HParams config, the Pareto figure as an image series (step = trials finished),
  hypervolume against wall-clock seconds, and reliability diagrams of every complete trial, front members first.

Why not Ray's TBXLoggerCallback or torch's `add_hparams`: both declare the parameter list of one run only, so a
conditional parameter (gce.lam) vanishes from the HParams table depending on load order (docs/design.md). We write one
experiment-level config declaring every parameter of the space, plus a session record per trial. The writers run on
the driver (a ray.tune.Callback): a SummaryWriter opened at a trial's cwd would write into Ray's temp dir.
The HParams table shows the *last* value of each metric tag, so the result values get tags of their own.

Why an image series and not a native scatter plot of the front: docs/results-format.md, "TensorBoard".
"""
from __future__ import annotations

import io
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from gce_search.errors import UsageError
from gce_search.search.figures import figure_png, pareto_figure, reliability_figure
from gce_search.search.pareto import as_minimization, non_dominated_sort
from gce_search.search.records import (RAY_KEYS, STATUSES, Experiment, as_search_spec, load_experiment, searched_values,
                                       trial_outcome)
from gce_search.spaces.records import SpaceParam

__all__ = [
    "TensorBoardCallback",
    "hparam_infos",
    "hparam_values",
    "write_tensorboard_summary",
    "cmd_tensorboard",
    "BEST_KEYS",
    "FINAL_KEYS",
    "RESULT_KEYS",
    "pareto_ranks",
]

TENSORBOARD_DIR = "tensorboard"
EXPERIMENT_RUN = "experiment"
STATUS_HPARAM = "trial.status"
SESSION_MARKER = ".hparams-session"  # TensorBoard ignores files that are not event files
PARETO_EVENTS_SUFFIX = ".pareto"  # the event file holding a trial's pareto/* metrics, rewritten with the results
# Curves of the best epoch (highest finite score) and of a full-budget trial's test metrics.
BEST_KEYS = ("val/acc", "val/ece", "val/ece_raw", "val/adaece", "val/cece", "val/nll", "val/brier", "score", "epoch")
FINAL_KEYS = ("test/acc", "test/ece", "test/adaece", "test/nll")
# The HParams metrics, as `result/<key>`: the trial's last reported values, pareto.csv's columns. TensorBoard shows
# the first five metrics of the config by default, so the order matters (pareto/rank comes fifth).
RESULT_KEYS = ("val/acc", "val/ece", "test/acc", "test/ece")
MORE_RESULT_KEYS = ("score", "val/ece_raw", "val/adaece", "val/nll", "test/adaece", "test/nll", "train/loss", "epoch")
RANK_TAG = "pareto/rank"
ON_FRONT_TAG = "pareto/on_front"
# TensorBoard's HParams dashboard shows five parameter columns by default: those flagged `differs`, by name.
VISIBLE_HPARAMS = ("trial.status", "loss.name", "gce.lam", "train.lr")
MAX_PARETO_FRAMES = 60  # steps of the Pareto image series; more trials than that share frames


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _spec_dict(spec: Any) -> dict | None:
    if spec is None:
        return None
    if isinstance(spec, dict):
        return spec
    if hasattr(spec, "to_dict"):
        return spec.to_dict()
    raise TypeError(f"spec: expected a SearchSpec, a dict or None; got {type(spec).__name__}")


def _is_conditional(key: str, entry: dict) -> bool:
    """A parameter that may not apply to a trial: one with conditions (SpaceParam.from_raw: another loss's
    parameter, one with `when:`)."""
    return bool(SpaceParam.from_raw(key, entry).conditions())


def _bool_list(values) -> bool:
    return all(isinstance(v, bool) for v in values)


def hparam_infos(space: dict) -> list:
    """api_pb2.HParamInfo for every searched parameter of a space (docs/architecture.md "Search spec"), plus
    `calibration.pieces` next to searched breakpoints and `trial.status` (search.records.STATUSES)."""
    from tensorboard.plugins.hparams import api_pb2

    infos = []
    for key, entry in space.items():
        entry = entry if isinstance(entry, dict) else {}
        info = api_pb2.HParamInfo(name=key, display_name=key)
        if "breakpoints" in entry:
            info.type = api_pb2.DATA_TYPE_STRING
            info.description = "ATS confidence breakpoints, space-separated"
            infos.append(info)
            pieces = entry["breakpoints"].get("pieces") if isinstance(entry["breakpoints"], dict) else None
            pieces = [pieces, pieces] if _is_number(pieces) else pieces
            pieces_info = api_pb2.HParamInfo(name="calibration.pieces", display_name="calibration.pieces",
                                             type=api_pb2.DATA_TYPE_FLOAT64,
                                             description="ATS pieces (breakpoints + 1)")
            if isinstance(pieces, (list, tuple)) and len(pieces) == 2:
                pieces_info.domain_interval.min_value = float(pieces[0])
                pieces_info.domain_interval.max_value = float(pieces[1])
            infos.append(pieces_info)
            continue
        if _is_conditional(key, entry):
            # Left out of the sessions of trials it does not apply to: a placeholder string in a numeric column
            # turns the parallel-coordinates lines into NaN and breaks interval filters.
            info.description = "conditional: empty for trials where it does not apply"
        info.differs = key in VISIBLE_HPARAMS
        choices = entry.get("choices")
        if isinstance(choices, (list, tuple)) and choices:
            if all(_is_number(c) for c in choices):
                info.type = api_pb2.DATA_TYPE_FLOAT64
                info.domain_discrete.values.extend(_value(float(c)) for c in choices)
            elif _bool_list(choices):
                info.type = api_pb2.DATA_TYPE_BOOL
                info.domain_discrete.values.extend(_value(bool(c)) for c in choices)
            else:
                info.type = api_pb2.DATA_TYPE_STRING
                info.domain_discrete.values.extend(_value(str(c)) for c in choices)
        elif _is_number(entry.get("low")) and _is_number(entry.get("high")):
            info.type = api_pb2.DATA_TYPE_FLOAT64
            info.domain_interval.min_value = float(entry["low"])
            info.domain_interval.max_value = float(entry["high"])
        else:
            info.type = api_pb2.DATA_TYPE_STRING
        infos.append(info)
    status = api_pb2.HParamInfo(name=STATUS_HPARAM, display_name=STATUS_HPARAM, type=api_pb2.DATA_TYPE_STRING,
                                description="how the trial ended (docs/results-format.md)", differs=True)
    status.domain_discrete.values.extend(_value(s) for s in STATUSES)
    infos.append(status)
    return infos


def metric_infos() -> list:
    """The HParams metrics: the result values (pareto.csv's), then the front rank, then the rest."""
    from tensorboard.plugins.hparams import api_pb2

    def info(tag: str, display: str, description: str):
        return api_pb2.MetricInfo(name=api_pb2.MetricName(group="", tag=tag), display_name=display,
                                  description=description)

    last = "the last reported value: full budget for a complete trial, the last epoch for a stopped one"
    infos = [info(f"result/{key}", key, last) for key in RESULT_KEYS]
    infos.append(info(RANK_TAG, RANK_TAG, "non-dominated sorting rank among complete trials (0 = on the front)"))
    infos.append(info(ON_FRONT_TAG, ON_FRONT_TAG, "1 for a member of the accuracy-vs-ECE front, else 0"))
    infos.extend(info(f"result/{key}", key, last) for key in MORE_RESULT_KEYS)
    return infos


def _value(v: Any):
    from google.protobuf import struct_pb2

    if isinstance(v, bool):
        return struct_pb2.Value(bool_value=v)
    if isinstance(v, (int, float)):
        return struct_pb2.Value(number_value=float(v))
    return struct_pb2.Value(string_value=str(v))


def hparam_values(spec: Any, config: dict, status: str, tune_params: dict | None = None) -> dict:
    """The value of every searched parameter that applies to one trial (numbers, bools, strings; one that does not
    apply is left out), plus `calibration.pieces` beside breakpoints and `trial.status`. Without a spec, the
    searcher's flat params."""
    raw = searched_values(spec, config) if spec else dict(tune_params or {})
    values: dict[str, Any] = {}
    for key, v in raw.items():
        if v is None:
            continue
        if key == "calibration.breakpoints":
            if isinstance(v, (list, tuple)):
                values[key] = " ".join(f"{float(b):.4g}" for b in v)
                values["calibration.pieces"] = float(len(v) + 1)
        elif isinstance(v, bool):
            values[key] = v
        elif isinstance(v, (int, float)):
            values[key] = float(v)
        elif isinstance(v, (list, tuple)):
            values[key] = " ".join(str(x) for x in v)
        else:
            values[key] = str(v)
    values[STATUS_HPARAM] = status
    return values


def _hparams_summary(tag: str, plugin_data):
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(plugin_data), tensor=metadata.NULL_TENSOR)
    return summary


def experiment_summary(infos: list, time_created: float | None = None):
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos(),
                                    time_created_secs=time_created if time_created is not None else time.time())
    return _hparams_summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def session_start_summary(values: dict, start_time: float):
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(start_time_secs=start_time)
    for k, v in values.items():
        info.hparams[k].CopyFrom(_value(v))
    return _hparams_summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=info))


def session_end_summary(status: str, end_time: float):
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    # HParams knows no "early-stopped": a scheduler stop is a normal end; the trial.status column tells them apart.
    code = {"complete": api_pb2.STATUS_SUCCESS, "stopped": api_pb2.STATUS_SUCCESS,
            "diverged": api_pb2.STATUS_FAILURE}.get(status, api_pb2.STATUS_UNKNOWN)
    info = plugin_data_pb2.SessionEndInfo(status=code, end_time_secs=end_time)
    return _hparams_summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=info))


def _writer(log_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    log_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(log_dir), flush_secs=10)


def write_epoch_scalars(writer, metrics: dict, walltime: float | None = None) -> None:
    """Every numeric metric key at step = epoch; a list metric (calibration/temperatures) as `<key>/<i>`."""
    step = metrics.get("epoch")
    step = int(step) if _is_number(step) else int(metrics.get("training_iteration", 0))
    for key, value in metrics.items():
        if key in ("epoch", "final") or key.startswith("best/"):
            continue
        if _is_number(value):
            writer.add_scalar(key, float(value), step, walltime=walltime)
        elif isinstance(value, (list, tuple)) and value and all(_is_number(v) for v in value):
            for i, v in enumerate(value):
                writer.add_scalar(f"{key}/{i}", float(v), step, walltime=walltime)


def write_best(writer, best: dict, walltime: float | None = None) -> None:
    step = int(best["epoch"]) if _is_number(best.get("epoch")) else 0
    for key in BEST_KEYS:
        if _is_number(best.get(key)):
            writer.add_scalar(f"best/{key}", float(best[key]), step, walltime=walltime)


def write_final(writer, metrics: dict, walltime: float | None = None) -> None:
    step = int(metrics["epoch"]) if _is_number(metrics.get("epoch")) else 0
    for key in FINAL_KEYS:
        if _is_number(metrics.get(key)):
            writer.add_scalar(f"final/{key}", float(metrics[key]), step, walltime=walltime)


def write_result(writer, last: dict, walltime: float | None = None) -> None:
    """The HParams metrics of a trial that ended: `result/<key>` from its last result (pareto.csv's values); a key
    that is missing or not finite is left out, so its cell stays empty rather than holding NaN."""
    step = int(last["epoch"]) if _is_number(last.get("epoch")) else 0
    for key in (*RESULT_KEYS, *MORE_RESULT_KEYS):
        if _is_number(last.get(key)):
            writer.add_scalar(f"result/{key}", float(last[key]), step, walltime=walltime)


def write_session(writer, run_dir: Path, values: dict, status: str, start: float, end: float) -> bool:
    """Write a trial's HParams session (start record with every parameter, end record) once per run.

    Written when the trial ends, not when it starts: TensorBoard keeps the first record of a tag in a run, so a
    start record written early could never learn the final trial.status. Returns False if the run already had one.
    """
    marker = run_dir / SESSION_MARKER
    if marker.exists():
        return False
    writer.file_writer.add_summary(session_start_summary(values, start))
    writer.file_writer.add_summary(session_end_summary(status, end))
    writer.flush()
    marker.write_text(status + "\n", encoding="utf-8")
    return True


def _better(candidate: dict, best: dict | None) -> bool:
    score = candidate.get("score")
    return _is_number(score) and (best is None or score >= best["score"])


class TensorBoardCallback(Callback):
    """Driver-side TensorBoard writer for a search: register in RunConfig(callbacks=[...]).

    `spec` is the SearchSpec (or its dict): its `space` declares every parameter in the HParams config, so
    conditional parameters keep their column whatever the order trials are read in.
    """

    def __init__(self, exp_dir: str | os.PathLike, spec: Any = None):
        self.exp_dir = Path(exp_dir)
        self.root = self.exp_dir / TENSORBOARD_DIR
        spec_dict = _spec_dict(spec)
        space = (spec_dict or {}).get("space") or {}
        self.space = dict(space) if isinstance(space, dict) else {}
        self.spec_dict = spec_dict
        self.spec = as_search_spec(spec) if spec is not None else None
        self._writers: dict[str, Any] = {}
        self._best: dict[str, dict] = {}
        self._started: dict[str, float] = {}

    def __getstate__(self) -> dict:
        # Pickled into Ray's tuner.pkl: where to write and the spec, as plain data (open file writers stay out), plus
        # what get_state carries.
        return {"exp_dir": str(self.exp_dir), "spec": self.spec_dict, **self.get_state()}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["exp_dir"], state["spec"])
        self.set_state(state)

    def get_state(self) -> dict:
        # Saved with Ray's experiment checkpoint: after `gce-search resume` a resumed trial's epochs are compared
        # with its best epoch from before the restart (best/* would otherwise restart from its first new epoch) and
        # its HParams session keeps its real start time. Only the best score is needed for the comparison.
        return {"best": {tid: {"score": m["score"]} for tid, m in self._best.items()},
                "started": dict(self._started)}

    def set_state(self, state: dict) -> None:
        self._best.update(state.get("best") or {})
        self._started.update(state.get("started") or {})

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        run_dir = self.root / EXPERIMENT_RUN
        if run_dir.is_dir() and any(run_dir.glob("events.out.tfevents.*")):
            return  # a resumed search: the config was written by the first run
        writer = _writer(run_dir)
        writer.file_writer.add_summary(experiment_summary(hparam_infos(self.space)))
        writer.close()

    def _writer_for(self, trial):
        w = self._writers.get(trial.trial_id)
        if w is None:
            w = self._writers[trial.trial_id] = _writer(self.root / trial.trial_id)
        return w

    def on_trial_result(self, iteration, trials, trial, result, **info):
        writer = self._writer_for(trial)
        metrics = {k: v for k, v in result.items() if k not in RAY_KEYS}
        if trial.trial_id not in self._started:
            self._started[trial.trial_id] = time.time() - float(result.get("time_this_iter_s") or 0.0)
        write_epoch_scalars(writer, metrics)
        if _better(metrics, self._best.get(trial.trial_id)):
            self._best[trial.trial_id] = metrics
            write_best(writer, metrics)
        if metrics.get("final") is True:
            write_final(writer, metrics)

    def _end(self, trial, status: str | None = None):
        writer = self._writers.pop(trial.trial_id, None) or _writer(self.root / trial.trial_id)
        last = trial.last_result or {}
        config = (trial.config or {}).get("trial_config") or {}
        tune_params = {k: v for k, v in (trial.config or {}).items() if k != "trial_config"}
        if not (self.root / trial.trial_id / SESSION_MARKER).exists():
            write_result(writer, {k: v for k, v in last.items() if k not in RAY_KEYS})
        write_session(writer, self.root / trial.trial_id,
                      hparam_values(self.spec or self.spec_dict, config, status or trial_outcome(last), tune_params),
                      status or trial_outcome(last), start=self._started.get(trial.trial_id, time.time()),
                      end=time.time())
        writer.close()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, trial_outcome(trial.last_result, errored=True))

    def on_experiment_end(self, trials, **info):
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


# ---------------------------------------------------------------------------------------------------------------
# Experiment level (after the search)


def _png_to_image(png: bytes):
    """PNG bytes -> HWC uint8 array for SummaryWriter.add_image."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _backfill_trial(root: Path, trial, spec: Any) -> None:
    """Write what a callback did not: a trial's curves when its run has no events (a search run without
    TensorBoardCallback), and its HParams session when missing (a driver that died before the trial ended), so the
    HParams table always has every trial."""
    run_dir = root / trial.trial_id
    has_events = run_dir.is_dir() and any(run_dir.glob("events.out.tfevents.*"))
    if has_events and (run_dir / SESSION_MARKER).exists():
        return
    writer = _writer(run_dir)
    if not has_events:
        best = None
        for row in trial.history:
            write_epoch_scalars(writer, row)
            if _better(row, best):
                best = row
        if best is not None:
            write_best(writer, best)
        if trial.status == "complete":
            write_final(writer, trial.final)
    start = trial.started_at if math.isfinite(trial.started_at) else time.time()
    end = trial.finished_at if math.isfinite(trial.finished_at) else time.time()
    if not (run_dir / SESSION_MARKER).exists():
        write_result(writer, trial.final)
    write_session(writer, run_dir, hparam_values(spec, trial.config, trial.status, trial.tune_params),
                  trial.status, start, end)
    writer.close()


def pareto_ranks(exp) -> dict[str, int]:
    """Trial id -> non-dominated sorting rank over (val/acc max, val/ece min) of the complete trials (0 = the
    front, the members of Experiment.front()); trials that are not complete have no rank."""
    complete = exp.complete()
    if not complete:
        return {}
    points = as_minimization([(t.metric("val/acc"), t.metric(exp.ece_key)) for t in complete])
    return {complete[i].trial_id: rank for rank, front in enumerate(non_dominated_sort(points)) for i in front}


def _finished_order(exp) -> list:
    return sorted(exp.trials, key=lambda t: (t.finished_at if math.isfinite(t.finished_at) else math.inf,
                                             t.trial_id))


def pareto_frames(exp) -> list[tuple[int, Any]]:
    """(trials finished, Experiment of those trials) for the steps of the Pareto image series: the front as it
    grew, at most MAX_PARETO_FRAMES steps, always ending at the whole experiment."""
    order = _finished_order(exp)
    n = len(order)
    steps = sorted({max(1, round(n * (i + 1) / MAX_PARETO_FRAMES)) for i in range(MAX_PARETO_FRAMES)}) \
        if n > MAX_PARETO_FRAMES else list(range(1, n + 1))
    return [(k, Experiment(path=exp.path, spec=exp.spec, trials=order[:k], search_spec=exp.search_spec))
            for k in steps]


def _pareto_frame_png(sub, exp, finished: int) -> bytes:
    """One step of the series: the figure of pareto.png for the first `finished` trials, on the whole
    experiment's colours and axis limits so that the slider moves the points, not the axes."""
    fig = pareto_figure(sub, losses=[t.loss for t in exp.trials])
    fig.set_size_inches(10.0, 7.0)
    ax = fig.axes[0]
    points = [(t.metric(exp.ece_key), t.metric("val/acc")) for t in exp.trials
              if math.isfinite(t.metric(exp.ece_key)) and math.isfinite(t.metric("val/acc"))]
    if points:
        xs, ys = zip(*points)
        pad_x, pad_y = max(1e-3, (max(xs) - min(xs)) * 0.08), max(1e-3, (max(ys) - min(ys)) * 0.08)
        ax.set_xlim(min(xs) - pad_x, max(xs) + pad_x)
        ax.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
    ax.set_title(f"{ax.get_title()}\n{finished} of {len(exp.trials)} trials finished", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_pareto_metrics(root: Path, exp) -> None:
    """`pareto/rank` and `pareto/on_front` of every trial, in an event file of their own in the trial's run that
    is replaced on every call (a trial's rank changes as later trials complete)."""
    from torch.utils.tensorboard import SummaryWriter

    ranks = pareto_ranks(exp)
    for trial in exp.trials:
        run_dir = root / trial.trial_id
        for old in run_dir.glob(f"events.out.tfevents.*{PARETO_EVENTS_SUFFIX}"):
            old.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(log_dir=str(run_dir), filename_suffix=PARETO_EVENTS_SUFFIX)
        step = int(trial.final["epoch"]) if _is_number(trial.final.get("epoch")) else 0
        rank = ranks.get(trial.trial_id)
        if rank is not None:
            writer.add_scalar(RANK_TAG, float(rank), step)
        writer.add_scalar(ON_FRONT_TAG, 1.0 if rank == 0 else 0.0, step)
        writer.close()


def reliability_tag(trial_id: str, front_rank: int | None) -> str:
    # TensorBoard orders image cards by tag: "front/..." sorts before "other/...", and front members by rank.
    return f"reliability/front/{front_rank + 1:02d} {trial_id}" if front_rank is not None else \
        f"reliability/other/{trial_id}"


def write_tensorboard_summary(exp_dir: str | os.PathLike, experiment=None, pareto_png: bytes | None = None) -> Path:
    """(Re)write the experiment-level run: HParams config, the Pareto figure as an image series over the search
    (step = trials finished), hypervolume vs wall-clock seconds, reliability diagrams of every complete trial
    (front members first); every trial's `pareto/*` metrics; backfill trial runs no callback wrote. Returns the
    TensorBoard root.

    The experiment run and the pareto/* event files are rewritten from scratch (old event files removed) so
    repeated calls do not stack duplicate images and curves; trial runs are otherwise never touched once written.
    `pareto_png` (pareto.png's bytes) is not needed: the series draws its frames larger, on fixed axes.
    """
    exp = experiment if experiment is not None else load_experiment(exp_dir)
    root = Path(exp_dir) / TENSORBOARD_DIR
    space = (exp.spec or {}).get("space") or {}
    if not isinstance(space, dict):
        space = {}
    if space:
        infos = hparam_infos(space)
    else:
        keys = sorted({k for t in exp.trials for k in t.tune_params})
        infos = hparam_infos({k: {} for k in keys})
    for trial in exp.trials:
        _backfill_trial(root, trial, exp.search_spec or exp.spec)
    write_pareto_metrics(root, exp)

    run_dir = root / EXPERIMENT_RUN
    if run_dir.is_dir():
        for old in run_dir.glob("events.out.tfevents.*"):
            old.unlink()
    writer = _writer(run_dir)
    writer.file_writer.add_summary(experiment_summary(infos))
    frames = pareto_frames(exp)
    for finished, sub in frames:
        if not sub.complete():
            continue
        writer.add_image("pareto", _png_to_image(_pareto_frame_png(sub, exp, finished)), finished,
                         dataformats="HWC")
    t0 = exp.start_time()
    for seconds, hv in exp.hypervolume_over_time():
        # step = whole seconds since the search started; the event's wall time is the real finishing time, so the
        # "relative"/"wall" x-axes of the scalars dashboard show the same curve.
        writer.add_scalar("hypervolume", hv, int(round(seconds)), walltime=t0 + seconds)
    front_rank = {t.trial_id: i for i, t in enumerate(exp.front())}
    for trial in sorted(exp.complete(), key=lambda t: (front_rank.get(t.trial_id, len(front_rank)), t.trial_id)):
        fig = reliability_figure(trial, front_rank.get(trial.trial_id))
        if fig is not None:
            writer.add_image(reliability_tag(trial.trial_id, front_rank.get(trial.trial_id)),
                             _png_to_image(figure_png(fig)), 0, dataformats="HWC")
    writer.close()
    return root


# ---------------------------------------------------------------------------------------------------------------
# Serving


def tensorboard_command(logdir: Path, port: int) -> list[str]:
    # Loopback only: TensorBoard has no authentication, and experiment metadata should not be served to the network.
    # Every step of the Pareto series is kept (TensorBoard keeps 10 images per tag by default; "images=0" would
    # keep none at all through its data provider).
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
            "--port", str(port), "--samples_per_plugin", f"images={MAX_PARETO_FRAMES}"]


def cmd_tensorboard(args) -> int:
    """`gce-search tensorboard EXPERIMENT_DIR [--port N]`: serve `<exp>/tensorboard` on 127.0.0.1 until Ctrl-C."""
    exp = load_experiment(args.experiment_dir)
    port = int(args.port)
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: not a TCP port; valid: 1-65535")
    root = exp.path / TENSORBOARD_DIR
    if not root.is_dir() or not any(root.rglob("events.out.tfevents.*")):
        if not exp.trials:
            raise UsageError(f"{exp.path}: no trial has reported yet; nothing to show in TensorBoard")
        write_tensorboard_summary(exp.path, experiment=exp)
    from tensorboard import program

    # In-process (no child to orphan when this process is killed). argv[0] is ignored by configure().
    board = program.TensorBoard()
    board.configure(argv=[None, *tensorboard_command(root, port)[3:]])
    print(f"TensorBoard for {exp.path} at http://127.0.0.1:{port}/ (Ctrl-C to stop)", flush=True)
    return int(board.main() or 0)
