"""optuna-dashboard after the tiny real search of test_tensorboard: the Optuna trials carry what a person reads
(real breakpoints, temperatures, loss, status), `gce-search dashboard` serves the study on 127.0.0.1 with the front
members' artifacts, and its study page lists the trials in a real browser."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from gce_search.search.cli import main
from tests.search.test_tensorboard import _free_port, _results, tiny_experiment_dir
from tests.waiting import PipeReader, hang_s, run_to_end, stop_server, wait_until

pytestmark = pytest.mark.slow

pytest.importorskip("optuna_dashboard")


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory) -> Path:
    return tiny_experiment_dir(tmp_path_factory)


def _study(exp: Path):
    import optuna

    from gce_search.search.journal import open_journal

    storage = open_journal(str(exp / "optuna.journal"))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=hang_s()) as resp:  # a loaded machine answers late, not never
        return json.loads(resp.read())


@contextlib.contextmanager
def serve_dashboard(exp: Path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gce_search", "dashboard", str(exp), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    output = PipeReader(proc.stdout)  # read as it comes, so a full pipe never blocks it; quoted when a wait fails

    def studies():
        try:
            return _get_json(f"{base}/api/studies")
        except OSError:  # not listening yet
            return None

    try:
        wait_until(studies, what="optuna-dashboard to answer", proc=proc, output=output)
        yield base, proc
    finally:
        stop_server(proc)


def test_every_optuna_trial_carries_real_breakpoints_temperatures_loss_and_status(tiny_experiment):
    from gce_search.search.records import load_experiment

    results = _results(tiny_experiment)
    status_of = {t.trial_id: t.status for t in load_experiment(tiny_experiment).trials}
    study = _study(tiny_experiment)
    told = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert {t.user_attrs["ray_trial_id"] for t in told} == set(results)
    for trial in told:
        attrs = trial.user_attrs
        last = results[attrs["ray_trial_id"]][-1]
        cfg = last["config"]["trial_config"]
        assert attrs["status"] == status_of[attrs["ray_trial_id"]]
        assert attrs["loss.name"] == cfg["loss"]["name"]
        assert attrs["loss"].startswith(cfg["loss"]["name"])
        if cfg["loss"]["name"] == "gce":
            assert f"λ={cfg['loss']['lam']:.3g}" in attrs["loss"]
        # the confidence breakpoints themselves, not the sampler's u-coordinates
        assert attrs["calibration.breakpoints"] == pytest.approx(cfg["calibration"]["breakpoints"], abs=1e-6)
        assert attrs["calibration.pieces"] == len(cfg["calibration"]["breakpoints"]) + 1
        assert any(k.startswith("calibration.breakpoints.u") for k in trial.params)
        assert attrs["calibration.temperatures"] == pytest.approx(last["calibration/temperatures"], abs=1e-6)
        assert attrs["train.loss"] == pytest.approx(last["train/loss"])


def test_status_attribute_reads_the_result_ray_flattens_for_the_searcher(tiny_experiment):
    """Ray hands a searcher its result flattened ("data/info/sizes/val"); the status attribute must still be the
    status of the result files, degenerate included (that rule reads the nested data/info)."""
    from ray.tune.utils import flatten_dict

    from gce_search.search.attributes import result_user_attrs
    from gce_search.search.records import trial_outcome

    rows = next(rows for rows in _results(tiny_experiment).values() if rows[-1].get("final") is True)
    at_chance = dict(rows[-1], **{"val/acc": 0.0})
    for last in (rows[-1], at_chance):
        assert result_user_attrs(flatten_dict(last))["status"] == trial_outcome(last)
    assert trial_outcome(at_chance) == "degenerate"


def test_dashboard_serves_the_study_on_loopback_with_the_front_artifacts(tiny_experiment):
    import yaml
    from optuna.artifacts import download_artifact, get_all_artifact_meta

    from gce_search.search.dashboard import ARTIFACTS_DIR, artifact_store

    summary = json.loads((tiny_experiment / "summary.json").read_text())
    front = [m["trial"] for m in summary["front"]]
    with serve_dashboard(tiny_experiment) as (base, proc):
        listening = {c.laddr.ip for c in psutil.Process(proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}, f"the dashboard must listen on loopback only, got {listening}"
        studies = _get_json(f"{base}/api/studies")["study_summaries"]
        assert len(studies) == 1
        detail = _get_json(f"{base}/api/studies/{studies[0]['study_id']}?after=0")
        assert len(detail["trials"]) == len(_results(tiny_experiment))
        names = {a["filename"] for a in detail.get("artifacts", [])}
        assert names == {f"{t} reliability.png" for t in front} | {f"{t}.yaml" for t in front}
    assert (tiny_experiment / ARTIFACTS_DIR).is_dir()
    study = _study(tiny_experiment)
    metas = {m.filename: m for m in get_all_artifact_meta(study)}
    for rank, trial_id in enumerate(front, 1):
        target = tiny_experiment / f"{trial_id}.yaml.downloaded"
        download_artifact(artifact_store=artifact_store(tiny_experiment), file_path=str(target),
                          artifact_id=metas[f"{trial_id}.yaml"].artifact_id)
        doc = yaml.safe_load(target.read_text())
        target.unlink()
        assert doc["source"]["trial"] == trial_id and doc["source"]["rank"] == rank
    # a second start attaches nothing twice
    with serve_dashboard(tiny_experiment):
        pass
    assert sorted(m.filename for m in get_all_artifact_meta(_study(tiny_experiment))) == sorted(metas)


def test_dashboard_study_page_lists_the_trials(tiny_experiment):
    """In a real browser: the study's trial list shows every trial (by its Optuna number) and the real
    breakpoints among its user attributes."""
    from tests.search.browser import chromium, require_browser, wait_for_js

    require_browser()
    study = _study(tiny_experiment)
    numbers = sorted(t.number for t in study.trials)
    with serve_dashboard(tiny_experiment) as (base, _), chromium() as driver:
        study_id = _get_json(f"{base}/api/studies")["study_summaries"][0]["study_id"]
        driver.get(f"{base}/dashboard/studies/{study_id}/trials")
        text = wait_for_js(driver, f"""
            const text = document.body.innerText;
            return {json.dumps([f"Trial {n}" for n in numbers])}.every(t => text.includes(t)) ? text : null;""",
                           what="every trial in the study's trial list")
        assert "calibration.breakpoints" in text


def test_dashboard_refuses_bad_input_with_one_line(tiny_experiment, tmp_path, capsys):
    assert main(["dashboard", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["dashboard", str(tiny_experiment), "--port", "70000"]) == 2
    assert "--port 70000: not a TCP port" in capsys.readouterr().err
    # without optuna-dashboard: one line saying how to install it, no traceback
    code = ("import sys; sys.modules['optuna_dashboard'] = None; from gce_search.search.cli import main; "
            f"sys.exit(main(['dashboard', {str(tiny_experiment)!r}]))")
    run = run_to_end([sys.executable, "-c", code])
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        'gce-search dashboard: optuna-dashboard is not installed; install it with pip install '
        '"gce-search[dashboard]" (or: pip install optuna-dashboard)')
    assert "Traceback" not in run.stderr


def test_browser_tests_skip_without_chromium_but_fail_under_ci(monkeypatch, tmp_path):
    from tests.search import browser

    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromium"):
        browser.require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run it"):
        browser.require_browser()
