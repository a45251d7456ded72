"""optuna-dashboard beside TensorBoard: `gce-search dashboard EXP` serves the experiment's Optuna study.

The study lives in `<exp>/optuna.journal` (search.searcher). What the dashboard can show beyond Optuna's own
parameters comes from two places:

- user attributes of every Optuna trial: the loss with its parameters and the real ATS breakpoints and pieces
  when it is asked (`config_user_attrs`; the sampler's parameters are the internal `u1`/`u2` coordinates), its
  fitted temperatures, training loss and status (search.records.trial_outcome) when it is told
  (`result_user_attrs`);
- artifacts in a FileSystemArtifactStore at `<exp>/optuna-artifacts/`: the front members' reliability diagrams and
  export YAMLs. Optuna refuses to change a finished trial, and the front is known only once trials have finished,
  so they are attached to the study (the dashboard's study page lists them), one pair per front member, named by
  trial id. They are added when the dashboard starts (`publish_front_artifacts`); a file already there is kept.

optuna-dashboard is an optional extra (`pip install "gce-search[dashboard]"`); without it the command says so.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gce_search.errors import UsageError
from gce_search.search.driver import JOURNAL_FILE
from gce_search.search.export import export_document
from gce_search.search.figures import figure_png, reliability_figure
from gce_search.search.records import load_experiment
from gce_search.search.journal import open_journal

__all__ = ["ARTIFACTS_DIR", "artifact_store", "publish_front_artifacts", "dashboard_app", "cmd_dashboard"]

ARTIFACTS_DIR = "optuna-artifacts"
# The user attributes config_user_attrs may set (a retried trial takes them over from its failed attempt).
INSTALL_HINT = 'pip install "gce-search[dashboard]" (or: pip install optuna-dashboard)'


def artifact_store(exp_dir: str | os.PathLike):
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(exp_dir) / ARTIFACTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def _journal(exp) -> Path:
    journal = exp.path / JOURNAL_FILE
    if not journal.is_file():
        raise UsageError(f"{exp.path}: no {JOURNAL_FILE}; optuna-dashboard shows the Optuna study of a search "
                         "run with `gce-search run` (the directory of a `gce-search study` has none)")
    return journal


def _study(exp):
    import optuna

    storage = open_journal(str(_journal(exp)))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if not names:
        raise UsageError(f"{exp.path}: the Optuna journal holds no study yet")
    return optuna.load_study(study_name=names[0], storage=storage), storage


def publish_front_artifacts(exp, study=None) -> list[str]:
    """Attach `<trial id> reliability.png` and `<trial id>.yaml` (its export document) of every front member to
    the study; returns the file names added (those already attached are skipped)."""
    from gce_search.yamlio import dump_yaml
    from optuna.artifacts import get_all_artifact_meta, upload_artifact

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
                files[f"{trial.trial_id} reliability.png"] = figure_png(fig)
            doc = export_document(exp, trial, "pareto", rank)
            files[f"{trial.trial_id}.yaml"] = (
                f"# gce-search export of trial {trial.trial_id} (pareto, member {rank}); retrain with:\n"
                f"#   gce-search train {trial.trial_id}.yaml\n" + dump_yaml(doc, sort_keys=False)
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
    return dashboard.wsgi(open_journal(str(_journal(exp))), artifact_store=artifact_store(exp.path))


def cmd_dashboard(args) -> int:
    """`gce-search dashboard EXPERIMENT_DIR [--port N]`: serve optuna-dashboard on 127.0.0.1 until Ctrl-C."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

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
