"""TensorBoard for a search: per-trial curves, one HParams table over every trial, experiment-level figures.

Layout under `<exp>/tensorboard/` (served by `gce-search tensorboard EXP`):

- `<trial_id>/`: every numeric metric key per epoch (step = epoch), the HParams session of the trial (all searched
  parameters, conditional ones as "n/a" where they do not apply) and its best-epoch metrics as `best/<key>`
  (`final/test/*` for full-budget trials).
- `experiment/`: the experiment-level HParams config, the Pareto figure, hypervolume against wall-clock seconds,
  and reliability diagrams (raw vs calibrated) of the front's members.

Why not Ray's TBXLoggerCallback or torch's `add_hparams`: both declare the parameter list of one run only, so a
conditional parameter (gce.lam) vanishes from the HParams table depending on load order (DESIGN.md). We write one
experiment-level config declaring every parameter of the space, plus a session record per trial. The writers run on
the driver (a ray.tune.Callback): a SummaryWriter opened at a trial's cwd would write into Ray's temp dir.
The HParams table shows the *last* value of each metric tag, so best-epoch values get their own tags.
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

from search.cli import UsageError

__all__ = [
    "TensorBoardCallback",
    "hparam_infos",
    "hparam_values",
    "write_tensorboard_summary",
    "cmd_tensorboard",
    "NOT_APPLICABLE_VALUE",
    "BEST_KEYS",
    "FINAL_KEYS",
]

TENSORBOARD_DIR = "tensorboard"
EXPERIMENT_RUN = "experiment"
NOT_APPLICABLE_VALUE = "n/a"
STATUS_HPARAM = "trial.status"
SESSION_MARKER = ".hparams-session"  # TensorBoard ignores files that are not event files
# Metrics shown in the HParams table: the best epoch's (highest finite score) validation metrics, and the test
# metrics of a full-budget trial.
BEST_KEYS = ("val/acc", "val/ece", "val/ece_raw", "val/adaece", "val/cece", "val/nll", "val/brier", "score", "epoch")
FINAL_KEYS = ("test/acc", "test/ece", "test/adaece", "test/nll")


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
    """A parameter that may not apply to a trial: another loss's (or model's) parameter, or one with `when:`."""
    from search.results import CONFIG_SECTIONS

    return key.split(".")[0] not in CONFIG_SECTIONS or bool(entry.get("when"))


def _bool_list(values) -> bool:
    return all(isinstance(v, bool) for v in values)


def hparam_infos(space: dict) -> list:
    """api_pb2.HParamInfo for every searched parameter of a space (docs/architecture.md "Search spec"), plus
    `calibration.pieces` next to searched breakpoints and `trial.status` (complete | stopped | diverged)."""
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
        conditional = _is_conditional(key, entry)
        if conditional:
            info.description = f"conditional: '{NOT_APPLICABLE_VALUE}' for trials where it does not apply"
        choices = entry.get("choices")
        if isinstance(choices, (list, tuple)) and choices:
            if all(_is_number(c) for c in choices):
                info.type = api_pb2.DATA_TYPE_FLOAT64
                if conditional:
                    info.domain_interval.min_value = float(min(choices))
                    info.domain_interval.max_value = float(max(choices))
                else:
                    info.domain_discrete.values.extend(_value(float(c)) for c in choices)
            elif _bool_list(choices) and not conditional:
                info.type = api_pb2.DATA_TYPE_BOOL
                info.domain_discrete.values.extend(_value(bool(c)) for c in choices)
            else:
                info.type = api_pb2.DATA_TYPE_STRING
                values = [str(c) for c in choices] + ([NOT_APPLICABLE_VALUE] if conditional else [])
                info.domain_discrete.values.extend(_value(v) for v in values)
        elif _is_number(entry.get("low")) and _is_number(entry.get("high")):
            info.type = api_pb2.DATA_TYPE_FLOAT64
            info.domain_interval.min_value = float(entry["low"])
            info.domain_interval.max_value = float(entry["high"])
        else:
            info.type = api_pb2.DATA_TYPE_STRING
        infos.append(info)
    status = api_pb2.HParamInfo(name=STATUS_HPARAM, display_name=STATUS_HPARAM, type=api_pb2.DATA_TYPE_STRING,
                                description="complete: full budget; stopped: early-stopped; diverged: non-finite")
    status.domain_discrete.values.extend(_value(s) for s in ("complete", "stopped", "diverged"))
    infos.append(status)
    return infos


def metric_infos() -> list:
    from tensorboard.plugins.hparams import api_pb2

    infos = []
    for key in BEST_KEYS:
        infos.append(api_pb2.MetricInfo(name=api_pb2.MetricName(group="", tag=f"best/{key}"),
                                        display_name=f"{key} (best epoch)"))
    for key in FINAL_KEYS:
        infos.append(api_pb2.MetricInfo(name=api_pb2.MetricName(group="", tag=f"final/{key}"),
                                        display_name=f"{key} (full budget)"))
    return infos


def _value(v: Any):
    from google.protobuf import struct_pb2

    if isinstance(v, bool):
        return struct_pb2.Value(bool_value=v)
    if isinstance(v, (int, float)):
        return struct_pb2.Value(number_value=float(v))
    return struct_pb2.Value(string_value=str(v))


def hparam_values(spec: Any, config: dict, status: str, tune_params: dict | None = None) -> dict:
    """Every searched parameter's value for one trial (numbers, bools, strings; "n/a" where it does not apply),
    plus `calibration.pieces` beside breakpoints and `trial.status`. Without a spec, the searcher's flat params."""
    from search.results import searched_values

    raw = searched_values(spec, config) if spec else dict(tune_params or {})
    values: dict[str, Any] = {}
    for key, v in raw.items():
        if key == "calibration.breakpoints":
            values[key] = " ".join(f"{float(b):.4g}" for b in v) if isinstance(v, (list, tuple)) else \
                NOT_APPLICABLE_VALUE
            values["calibration.pieces"] = float(len(v) + 1) if isinstance(v, (list, tuple)) else \
                NOT_APPLICABLE_VALUE
        elif v is None:
            values[key] = NOT_APPLICABLE_VALUE
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


def _status(metrics: dict) -> str:
    if metrics.get("status") == "diverged":
        return "diverged"
    return "complete" if metrics.get("final") is True else "stopped"


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
        from search.results import as_search_spec

        spec_dict = _spec_dict(spec)
        space = (spec_dict or {}).get("space") or {}
        self.space = dict(space) if isinstance(space, dict) else {}
        self.spec_dict = spec_dict
        self.spec = as_search_spec(spec) if spec is not None else None
        self._writers: dict[str, Any] = {}
        self._best: dict[str, dict] = {}
        self._started: dict[str, float] = {}

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment state; open file writers do not pickle.
        state = dict(self.__dict__)
        state["_writers"] = {}
        return state

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
        from search.results import RAY_KEYS

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
        write_session(writer, self.root / trial.trial_id,
                      hparam_values(self.spec or self.spec_dict, config, status or _status(last), tune_params),
                      status or _status(last), start=self._started.get(trial.trial_id, time.time()),
                      end=time.time())
        writer.close()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "diverged" if (trial.last_result or {}).get("status") == "diverged" else "stopped")

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


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def reliability_figure(trial) -> Any | None:
    """Raw vs calibrated reliability diagram of a complete trial's validation split, from the predictions
    rebuilt from its last checkpoint (trainables.metrics.reliability_diagram); None without a usable checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from search.results import val_predictions
    from trainables.metrics import reliability_diagram

    try:
        preds = val_predictions(trial)
    except Exception as err:  # a figure is not worth failing the result files for
        trial.notes.append(f"no reliability diagram: {err}")
        return None
    if preds is None:
        return None
    n_bins = int(trial.config.get("objective", {}).get("n_bins", 15))
    raw = torch.softmax(preds["raw"].double(), dim=1)
    calibrated = torch.softmax(preds["calibrated"].double(), dim=1)
    method = trial.config.get("calibration", {}).get("method", "?")
    return reliability_diagram(raw, preds["labels"], n_bins=n_bins, calibrated_probs=calibrated,
                               names=("raw", f"calibrated ({method})"),
                               title=f"{trial.trial_id} ({trial.loss}), val n = {preds['labels'].shape[0]}")


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
    write_session(writer, run_dir, hparam_values(spec, trial.config, trial.status, trial.tune_params),
                  trial.status, start, end)
    writer.close()


def write_tensorboard_summary(exp_dir: str | os.PathLike, experiment=None, pareto_png: bytes | None = None) -> Path:
    """(Re)write the experiment-level run: HParams config, Pareto figure, hypervolume vs wall-clock seconds,
    reliability diagrams of front members; backfill trial runs no callback wrote. Returns the TensorBoard root.

    The experiment run is rewritten from scratch (its old event files are removed) so repeated calls do not
    stack duplicate images and curves; trial runs are never touched once written.
    """
    from search.results import load_experiment, pareto_figure

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

    run_dir = root / EXPERIMENT_RUN
    if run_dir.is_dir():
        for old in run_dir.glob("events.out.tfevents.*"):
            old.unlink()
    writer = _writer(run_dir)
    writer.file_writer.add_summary(experiment_summary(infos))
    if pareto_png is None and exp.complete():
        pareto_png = _figure_png(pareto_figure(exp))
    if pareto_png is not None:
        writer.add_image("pareto", _png_to_image(pareto_png), 0, dataformats="HWC")
    t0 = exp.start_time()
    for seconds, hv in exp.hypervolume_over_time():
        # step = whole seconds since the search started; the event's wall time is the real finishing time, so the
        # "relative"/"wall" x-axes of the scalars dashboard show the same curve.
        writer.add_scalar("hypervolume", hv, int(round(seconds)), walltime=t0 + seconds)
    for rank, trial in enumerate(exp.front()):
        fig = reliability_figure(trial)
        if fig is not None:
            writer.add_image(f"reliability/{trial.trial_id}", _png_to_image(_figure_png(fig)), 0, dataformats="HWC")
    writer.close()
    return root


# ---------------------------------------------------------------------------------------------------------------
# Serving


def tensorboard_command(logdir: Path, port: int) -> list[str]:
    # Loopback only: TensorBoard has no authentication, and experiment metadata should not be served to the network.
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
            "--port", str(port)]


def cmd_tensorboard(args) -> int:
    """`gce-search tensorboard EXPERIMENT_DIR [--port N]`: serve `<exp>/tensorboard` on 127.0.0.1 until Ctrl-C."""
    from search.results import load_experiment

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
