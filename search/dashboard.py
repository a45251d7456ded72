"""optuna-dashboard beside TensorBoard: `gce-search dashboard EXP` serves the experiment's Optuna study.

The study lives in `<exp>/optuna.journal` (search.searcher). What the dashboard can show beyond Optuna's own
parameters comes from two places:

- user attributes of every Optuna trial: the loss with its parameters and the real ATS breakpoints and pieces
  when it is asked (`config_user_attrs`; the sampler's parameters are the internal `u1`/`u2` coordinates), its
  fitted temperatures, training loss and status (search.progress.trial_outcome) when it is told
  (`result_user_attrs`);
- artifacts in a FileSystemArtifactStore at `<exp>/optuna-artifacts/`: the front members' reliability diagrams and
  export YAMLs. Optuna refuses to change a finished trial, and the front is known only once trials have finished,
  so they are attached to the study (the dashboard's study page lists them), one pair per front member, named by
  trial id. They are added when the dashboard starts (`publish_front_artifacts`); a file already there is kept.

optuna-dashboard is an optional extra (`pip install "gce-search[dashboard]"`); without it the command says so.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from gce_search.errors import UsageError

__all__ = ["ARTIFACTS_DIR", "config_user_attrs", "result_user_attrs", "artifact_store", "publish_front_artifacts", "dashboard_app",
           "cmd_dashboard"]

ARTIFACTS_DIR = "optuna-artifacts"
# The user attributes config_user_attrs may set (a retried trial takes them over from its failed attempt).
CONFIG_ATTR_KEYS = ("loss", "loss.name", "calibration.method", "calibration.breakpoints", "calibration.pieces")
INSTALL_HINT = 'pip install "gce-search[dashboard]" (or: pip install optuna-dashboard)'


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def config_user_attrs(trial_config: dict | None) -> dict:
    """User attributes of an Optuna trial from its resolved trial config, set when the trial is asked: `loss`
    ("gce λ=0.8"), `loss.name`, `calibration.method`, and with ATS `calibration.breakpoints` (the confidence
    breakpoints, not the sampler's u-coordinates) and `calibration.pieces`."""
    from gce_search.search.progress import describe_loss

    config = trial_config or {}
    attrs: dict[str, Any] = {}
    loss = config.get("loss") or {}
    if loss:
        attrs["loss"] = describe_loss(config)
        attrs["loss.name"] = str(loss.get("name"))
    calibration = config.get("calibration") or {}
    if calibration.get("method"):
        attrs["calibration.method"] = str(calibration["method"])
    breakpoints = calibration.get("breakpoints")
    if calibration.get("method") == "ats" and isinstance(breakpoints, (list, tuple)):
        attrs["calibration.breakpoints"] = [round(float(b), 6) for b in breakpoints]
        attrs["calibration.pieces"] = len(breakpoints) + 1
    return attrs


def _nest(result: dict, key: str) -> dict:
    """`result` with the mapping `key` rebuilt from its flattened `key/...` entries: a searcher gets Ray's result
    flattened ("data/info/sizes/val"), while the status rule reads the nested "data/info" the trial reported."""
    prefix = key + "/"
    if key in result or not any(k.startswith(prefix) for k in result):
        return result
    nested: dict = {}
    for k, v in result.items():
        if k.startswith(prefix):
            node = nested
            *parents, leaf = k[len(prefix):].split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = v
    return {**result, key: nested}


def result_user_attrs(result: dict | None, errored: bool = False) -> dict:
    """User attributes of an Optuna trial from its last Ray result, set when it is told: `status`
    (search.progress.trial_outcome), `calibration.temperatures` (fitted at the last epoch) and `train.loss`.
    Only JSON values; missing ones are left out."""
    from gce_search.search.progress import trial_outcome

    result = _nest(result or {}, "data/info")
    attrs: dict[str, Any] = {"status": trial_outcome(result, errored=errored)}
    temperatures = result.get("calibration/temperatures")
    if isinstance(temperatures, (list, tuple)) and all(_number(t) for t in temperatures):
        attrs["calibration.temperatures"] = [round(float(t), 6) for t in temperatures]
    if _number(result.get("train/loss")):
        attrs["train.loss"] = float(result["train/loss"])
    return attrs


def artifact_store(exp_dir: str | os.PathLike):
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(exp_dir) / ARTIFACTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def _journal(exp) -> Path:
    from gce_search.search.driver import JOURNAL_FILE

    journal = exp.path / JOURNAL_FILE
    if not journal.is_file():
        raise UsageError(f"{exp.path}: no {JOURNAL_FILE}; optuna-dashboard shows the Optuna study of a search "
                         "run with `gce-search run` (the directory of a `gce-search study` has none)")
    return journal


def _study(exp):
    import optuna

    from gce_search.search.searcher import open_journal

    storage = open_journal(str(_journal(exp)))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if not names:
        raise UsageError(f"{exp.path}: the Optuna journal holds no study yet")
    return optuna.load_study(study_name=names[0], storage=storage), storage


def publish_front_artifacts(exp, study=None) -> list[str]:
    """Attach `<trial id> reliability.png` and `<trial id>.yaml` (its export document) of every front member to
    the study; returns the file names added (those already attached are skipped)."""
    import yaml
    from optuna.artifacts import get_all_artifact_meta, upload_artifact

    from gce_search.search.export import export_document
    from gce_search.search.tensorboard import _figure_png, reliability_figure

    if study is None:
        study, _ = _study(exp)
    front = exp.front()
    if not front:
        return []
    store = artifact_store(exp.path)
    present = {m.filename for m in get_all_artifact_meta(study)}
    added = []
    with tempfile.TemporaryDirectory() as tmp:
        for rank, trial in enumerate(front, 1):
            files: dict[str, bytes] = {}
            fig = reliability_figure(trial, rank - 1)
            if fig is not None:
                files[f"{trial.trial_id} reliability.png"] = _figure_png(fig)
            doc = export_document(exp, trial, "pareto", rank)
            files[f"{trial.trial_id}.yaml"] = (
                f"# gce-search export of trial {trial.trial_id} (pareto, member {rank}); retrain with:\n"
                f"#   gce-search train {trial.trial_id}.yaml\n" + yaml.safe_dump(doc, sort_keys=False)
            ).encode("utf-8")
            for name, data in files.items():
                if name in present:
                    continue
                path = Path(tmp) / name
                path.write_bytes(data)
                upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
                added.append(name)
    return added


def _dashboard_module():
    try:
        import optuna_dashboard
    except ImportError:
        raise UsageError(f"optuna-dashboard is not installed; install it with {INSTALL_HINT}") from None
    return optuna_dashboard


def dashboard_app(exp):
    """The optuna-dashboard WSGI app for an experiment (its journal and artifact store)."""
    dashboard = _dashboard_module()
    _study(exp)  # a journal without a study: say so before serving an empty page
    from gce_search.search.searcher import open_journal

    return dashboard.wsgi(open_journal(str(_journal(exp))), artifact_store=artifact_store(exp.path))


def cmd_dashboard(args) -> int:
    """`gce-search dashboard EXPERIMENT_DIR [--port N]`: serve optuna-dashboard on 127.0.0.1 until Ctrl-C."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from gce_search.search.results import load_experiment

    port = int(args.port)
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: not a TCP port; valid: 1-65535")
    exp = load_experiment(args.experiment_dir)
    _dashboard_module()
    study, _ = _study(exp)
    added = publish_front_artifacts(exp, study)
    app = dashboard_app(exp)

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):  # one line per request would drown the address line
            pass

    try:
        server = make_server("127.0.0.1", port, app, handler_class=QuietHandler)
    except OSError as err:
        raise UsageError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({err.strerror}); "
                         "valid: a free port") from None
    # Loopback only, as TensorBoard: the dashboard has no authentication and can edit the study (notes, deletion).
    note = f" ({len(added)} front artifact(s) attached)" if added else ""
    print(f"optuna-dashboard for {exp.path} at http://127.0.0.1:{port}/dashboard/ (Ctrl-C to stop){note}",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
