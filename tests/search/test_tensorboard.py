"""TensorBoard after a tiny real search (`gce-search run` on a local Ray instance): a real TensorBoard server on
127.0.0.1 must list every trial with every parameter that applies to it in its HParams plugin, with the numbers of
pareto.csv and summary.json, and serve the Pareto image series and the reliability diagrams."""
from __future__ import annotations

import contextlib
import csv
import json
import math
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from gce_search.trainables.checkpoints import RESULT_FILE, read_result_lines
from gce_search.search.cli import main
from gce_search.search.tensorboard import tensorboard_command
from tests.waiting import PipeReader, hang_s, stop_server, wait_until

pytestmark = pytest.mark.slow

# The quickstart space (loss, gce.lam, focal.gamma, lr, ATS breakpoints) cut down to a few seconds: random
# sampling with seed 0 gives GCE and non-GCE trials among the first four; ASHA stops some of them.
TINY_SEARCH = ["--set", "search.num_samples=4", "--set", "search.sampler=random", "--set", "search.seed=0",
               "--set", "train.epochs=2", "--set", "scheduler.grace_period=1", "--set", "data.max_train=300"]


_TINY: dict[str, Path] = {}


def tiny_experiment_dir(tmp_path_factory) -> Path:
    """Run one tiny search through the driver, once per session (test_export imports this module's fixture; a
    fixture imported into another module is a separate fixture, so the memo is what shares the run)."""
    if "path" not in _TINY:
        import ray

        storage = tmp_path_factory.mktemp("storage")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            assert main(["run", "quickstart", "--storage", str(storage), "--name", "tiny", *TINY_SEARCH]) == 0
        finally:
            ray.shutdown()
        _TINY["path"] = storage / "tiny"
    return _TINY["path"]


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory) -> Path:
    return tiny_experiment_dir(tmp_path_factory)


def _results(exp: Path) -> dict[str, list[dict]]:
    out = {}
    for f in exp.glob(f"*/{RESULT_FILE}"):
        rows, _ = read_result_lines(f)
        if rows:
            out[rows[-1]["trial_id"]] = rows
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: dict | None = None):
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=hang_s()) as resp:  # a loaded machine answers late, not never
        raw = resp.read()
        return json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw


def _answer(url: str):
    try:
        return _get(url)
    except OSError:  # not listening yet
        return None


def _wait_for(url: str, proc: subprocess.Popen, output: PipeReader | None = None):
    """TensorBoard's answer at `url` once it serves it (a failure at once if it exits first)."""
    return wait_until(lambda: _answer(url), what=f"tensorboard to answer {url}", proc=proc, output=output)


def _wait_for_runs(base: str, runs: set[str], proc: subprocess.Popen, output: PipeReader) -> None:
    """TensorBoard loads event files in the background: wait until it lists every run of `runs` (the hang guard
    starts again with each run it adds)."""
    wait_until(lambda: runs <= set(_get(f"{base}/data/runs")), what="tensorboard to list every trial run",
               proc=proc, output=output, watch=[lambda: len(_get(f"{base}/data/runs"))])


ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def session_groups(base: str) -> list[dict]:
    return _get(f"{base}/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 1000, "allowedStatuses": ALL_STATUSES,
        "colParams": []})["sessionGroups"]


def numeric_column_problems(experiment: dict, groups: list[dict]) -> list[str]:
    """Every cell of a numeric column (a FLOAT64 hparam, every metric) that holds something other than a finite
    number; a missing cell is fine (the parallel-coordinates view skips it)."""
    numeric = {h["name"] for h in experiment["hparamInfos"] if h.get("type") == "DATA_TYPE_FLOAT64"}
    problems = []
    for g in groups:
        for name in numeric & set(g["hparams"]):
            v = g["hparams"][name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                problems.append(f"{g['name']}: hparam {name} = {v!r}")
        for m in g["metricValues"]:
            v = m.get("value")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                problems.append(f"{g['name']}: metric {m['name']['tag']} = {v!r}")
    return problems


def test_tensorboard_serves_every_trial_parameter_and_the_pareto_figure(tiny_experiment):
    exp = tiny_experiment
    results = _results(exp)
    space = __import__("yaml").safe_load((exp / "spec.yaml").read_text())["space"]
    losses = {rows[-1]["config"]["trial_config"]["loss"]["name"] for rows in results.values()}
    assert "gce" in losses and losses - {"gce"}, f"the tiny search should mix GCE and other losses: {losses}"
    assert (exp / "pareto.png").is_file() and (exp / "summary.json").is_file()  # written when the search ended

    port = _free_port()
    cmd = tensorboard_command(exp / "tensorboard", port)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    # what a user runs: `gce-search tensorboard EXP --port P`
    proc = subprocess.Popen([sys.executable, "-m", "gce_search", "tensorboard", str(exp), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = PipeReader(proc.stdout)  # quoted when a wait fails
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/data/plugins_listing", proc, output)
        listening = {c.laddr.ip for c in psutil.Process(proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}, f"TensorBoard must listen on loopback only, got {listening}"
        _wait_for_runs(base, set(results), proc, output)
        experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        declared = {h["name"] for h in experiment["hparamInfos"]}
        assert set(space) | {"calibration.pieces", "trial.status"} <= declared
        metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
        # the first five metrics are the ones TensorBoard shows by default
        assert metrics[:5] == ["result/val/acc", "result/val/ece", "result/test/acc", "result/test/ece",
                               "pareto/rank"]
        assert "pareto/on_front" in metrics
        # the five parameter columns shown by default: those flagged `differs`, status, loss, λ and lr among them
        differs = {h["name"] for h in experiment["hparamInfos"] if h.get("differs")}
        assert {"trial.status", "loss.name", "gce.lam", "train.lr"} <= differs

        groups = session_groups(base)
        by_trial = {g["name"]: g for g in groups}
        assert set(by_trial) == set(results)  # every trial, nothing else
        assert numeric_column_problems(experiment, groups) == []
        with open(exp / "pareto.csv", newline="") as fh:
            front_rows = {r["trial"]: r for r in csv.DictReader(fh)}
        summary = json.loads((exp / "summary.json").read_text())
        assert set(front_rows) == {m["trial"] for m in summary["front"]} and front_rows
        from gce_search.search.records import load_experiment

        records = load_experiment(exp)  # the statuses of pareto.csv and summary.json
        status_of = {t.trial_id: t.status for t in records.trials}
        complete = {t.trial_id for t in records.complete()}
        for trial_id, rows in results.items():
            hparams = by_trial[trial_id]["hparams"]
            cfg = rows[-1]["config"]["trial_config"]
            applies = {k for k in space if k.split(".")[0] not in ("gce", "focal") or k.startswith(
                cfg["loss"]["name"] + ".")}
            assert applies <= set(hparams), f"{trial_id} lacks {applies - set(hparams)}"
            assert hparams["loss.name"] == cfg["loss"]["name"]
            assert hparams["train.lr"] == pytest.approx(cfg["train"]["lr"])
            if cfg["loss"]["name"] == "gce":
                assert hparams["gce.lam"] == pytest.approx(cfg["loss"]["lam"])
            else:
                assert "gce.lam" not in hparams  # left out, never a placeholder string in a numeric column
            assert hparams["trial.status"] == status_of[trial_id]
            # the HParams metrics are the last reported values (full budget for a complete trial), as in
            # pareto.csv, not the best epoch's
            values = {m["name"]["tag"]: m["value"] for m in by_trial[trial_id]["metricValues"]}
            for key in ("val/acc", "val/ece", "test/acc", "test/ece", "score"):
                reported = rows[-1].get(key)
                if isinstance(reported, float) and math.isfinite(reported):
                    assert values[f"result/{key}"] == pytest.approx(reported, abs=1e-6), (trial_id, key)
                else:  # a stopped trial has no test metrics: the cell stays empty
                    assert f"result/{key}" not in values, (trial_id, key)
            assert values["result/epoch"] == rows[-1]["epoch"]
            on_front = trial_id in front_rows
            assert values["pareto/on_front"] == (1.0 if on_front else 0.0)
            if on_front:
                assert values["pareto/rank"] == 0.0
                for key in ("val/acc", "val/ece", "test/acc", "test/ece"):
                    assert values[f"result/{key}"] == pytest.approx(float(front_rows[trial_id][key]), abs=1e-6)  # float32
            elif trial_id in complete:
                assert values["pareto/rank"] >= 1.0
            else:
                assert "pareto/rank" not in values  # only complete trials are ranked

        # per trial, every numeric metric key per epoch
        tags = _get(f"{base}/data/plugin/scalars/tags")
        for trial_id, rows in results.items():
            reported = {k for k, v in rows[-1].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                        and "/" in k and math.isfinite(v)}
            assert reported <= set(tags[trial_id]), f"{trial_id} lacks {reported - set(tags[trial_id])}"
            series = _get(f"{base}/data/plugin/scalars/scalars?run={trial_id}&tag=val/acc")
            assert [s[1] for s in series] == [r["epoch"] for r in rows]
            assert [s[2] for s in series] == pytest.approx([r["val/acc"] for r in rows], abs=1e-6)
        assert "hypervolume" in tags["experiment"]

        images = _get(f"{base}/data/plugin/images/tags")
        assert "pareto" in images["experiment"]
        # reliability diagrams of every complete trial, the front's members first (TensorBoard sorts by tag)
        reliability = sorted(t for t in images["experiment"] if t.startswith("reliability/"))
        assert {t.rsplit("/", 1)[-1].split(" ")[-1] for t in reliability} == complete
        front_tags = [t for t in reliability if t.startswith("reliability/front/")]
        assert [t.split(" ")[-1] for t in front_tags] == [m["trial"] for m in summary["front"]]
        assert reliability[:len(front_tags)] == front_tags
        # the Pareto figure as an image series: step = trials finished, from the first complete trial to all
        listing = _get(f"{base}/data/plugin/images/images?run=experiment&tag=pareto&sample=0")
        finished = sorted(results, key=lambda tid: (results[tid][-1]["timestamp"], tid))
        first_complete = min(i for i, tid in enumerate(finished, 1) if tid in complete)
        assert [x["step"] for x in listing] == list(range(first_complete, len(results) + 1))
        png = _get(f"{base}/data/plugin/images/individualImage?{listing[-1]['query']}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        from PIL import Image

        assert Image.open(__import__("io").BytesIO(png)).size == (1000, 700)  # readable at TensorBoard's card width
    finally:
        stop_server(proc)


@contextlib.contextmanager
def serve_tensorboard(exp: Path):
    """`gce-search tensorboard EXP` on a free port, once TensorBoard has loaded every trial run; its base URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gce_search", "tensorboard", str(exp), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = PipeReader(proc.stdout)  # quoted when a wait fails
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/data/plugins_listing", proc, output)
        _wait_for_runs(base, set(_results(exp)), proc, output)
        yield base
    finally:
        stop_server(proc)


def displayed_columns(experiment: dict) -> tuple[list[str], list[str]]:
    """The columns TensorBoard's HParams dashboard shows before anyone changes them: the first five parameters
    (the server lists those flagged `differs` first) and the first five metrics of the config."""
    return ([h["name"] for h in experiment["hparamInfos"]][:5],
            [m["name"]["tag"] for m in experiment["metricInfos"]][:5])


def test_parallel_coordinates_draw_no_nan_line(tiny_experiment):
    """In a real browser: the HParams parallel-coordinates view draws one line per session group that has every
    shown column, and no line has a NaN coordinate (a string in a numeric column made every line NaN)."""
    from tests.search.browser import chromium, require_browser, wait_for_js

    require_browser()
    with serve_tensorboard(tiny_experiment) as base, chromium() as driver:
        experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        groups = session_groups(base)
        hparams, metrics = displayed_columns(experiment)
        complete_rows = [g["name"] for g in groups
                         if set(hparams) <= set(g["hparams"])
                         and set(metrics) <= {m["name"]["tag"] for m in g["metricValues"]}]
        assert complete_rows, "the tiny search should have a trial with every shown column (a complete GCE trial)"
        driver.get(f"{base}/#hparams")
        wait_for_js(driver, """
            const tab = find(document, el => el.tagName === 'PAPER-TAB'
                                             && el.textContent.trim().toUpperCase().startsWith('PARALLEL'));
            if (tab) tab.click();
            return !!tab;""", what="the parallel-coordinates tab")
        lines = wait_for_js(driver, """
            const plot = find(document, el => el.tagName === 'TF-HPARAMS-PARALLEL-COORDS-PLOT');
            if (!plot) return null;
            const root = plot.shadowRoot || plot;
            const fg = [...root.querySelectorAll('g.foreground path')].map(p => p.getAttribute('d') || '');
            const axes = root.querySelectorAll('g.axis').length;
            return fg.length && axes ? {lines: fg, axes: axes} : null;""", what="the parallel-coordinates lines")
        assert lines["axes"] == len(hparams) + len(metrics)
        nan_lines = [d for d in lines["lines"] if "NaN" in d or not d.startswith("M")]
        assert nan_lines == [], f"lines with a NaN coordinate: {nan_lines[:3]}"
        assert len(lines["lines"]) == len(complete_rows)
        console = [e["message"] for e in driver.get_log("browser") if "NaN" in e["message"]]
        assert console == [], console


def test_summary_backfills_trials_a_callback_did_not_write(tiny_experiment, tmp_path):
    """An experiment without TensorBoard event files (a search run without the callback) gets every trial's
    session and curves from its result.json when the results are written."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gce_search.search.reports import write_results

    copy = tmp_path / "copy"
    shutil.copytree(tiny_experiment, copy, ignore=shutil.ignore_patterns("tensorboard", "checkpoint_*"))
    write_results(copy)
    for trial_id, rows in _results(copy).items():
        acc = EventAccumulator(str(copy / "tensorboard" / trial_id), size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("val/acc")] == [r["epoch"] for r in rows]
        assert "_hparams_/session_start_info" in acc.Tags()["tensors"]


def test_best_epoch_survives_a_resumed_driver(tmp_path):
    """The callback's state goes through Ray's experiment checkpoint: a trial resumed after the driver restarted
    keeps its best epoch from before (best/* is the best over every epoch, not over the resumed ones)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gce_search.search.tensorboard import TensorBoardCallback

    class FakeTrial:
        trial_id, config, last_result = "t1", {}, {}

    trial = FakeTrial()
    first = TensorBoardCallback(tmp_path, None)
    first.on_trial_result(0, [], trial, {"epoch": 1, "score": 0.9, "val/acc": 0.95, "time_this_iter_s": 1.0})
    state = first.get_state()
    first.on_experiment_end([])
    second = TensorBoardCallback(tmp_path, None)  # the resumed driver's copy, as pickled when the run began
    second.set_state(state)
    second.on_trial_result(0, [], trial, {"epoch": 2, "score": 0.5, "val/acc": 0.6, "time_this_iter_s": 1.0})
    second.on_experiment_end([])
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "t1"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("best/score")] == [(1, pytest.approx(0.9))]
    # Both drivers' epochs, each with its value. (TensorBoard reads a run's event files in name order; two writers
    # of one process within one second are named by a process-wide counter, so 9 -> 10 sorts them the other way.)
    scores = sorted((e.step, e.value) for e in acc.Scalars("score"))
    assert scores == [(1, pytest.approx(0.9)), (2, pytest.approx(0.5))]
    assert second._started == first._started


def test_hparam_declarations_and_values_for_conditional_parameters():
    from tensorboard.plugins.hparams import api_pb2

    from gce_search.search.tensorboard import hparam_infos, hparam_values
    from gce_search.spaces.loading import load_spec

    spec = load_spec("quickstart")
    infos = {i.name: i for i in hparam_infos(spec.to_dict()["space"])}
    assert set(infos) == set(spec.to_dict()["space"]) | {"calibration.pieces", "trial.status"}
    assert infos["loss.name"].type == api_pb2.DATA_TYPE_STRING
    assert [v.string_value for v in infos["loss.name"].domain_discrete.values] == \
        ["cross_entropy", "gce", "focal", "label_smoothing"]
    lam = infos["gce.lam"]
    assert lam.type == api_pb2.DATA_TYPE_FLOAT64
    assert (lam.domain_interval.min_value, lam.domain_interval.max_value) == \
        (spec.param("gce.lam").low, spec.param("gce.lam").high)
    bp = spec.param("calibration.breakpoints").breakpoints
    assert (infos["calibration.pieces"].domain_interval.min_value,
            infos["calibration.pieces"].domain_interval.max_value) == (bp.pieces_min, bp.pieces_max)

    gce = spec.apply({"loss.name": "gce", "gce.lam": 0.25, "train.lr": 0.05,
                      "calibration.breakpoints": [0.5, 0.9]})
    focal = spec.apply({"loss.name": "focal", "focal.gamma": 3.0, "train.lr": 0.05,
                        "calibration.breakpoints": [0.7]})
    v_gce = hparam_values(spec, gce, "complete")
    v_focal = hparam_values(spec, focal, "stopped")
    # a parameter that does not apply is left out of the session
    assert v_gce["gce.lam"] == 0.25 and "focal.gamma" not in v_gce
    assert "gce.lam" not in v_focal and v_focal["focal.gamma"] == 3.0
    assert v_gce["calibration.breakpoints"] == "0.5 0.9" and v_gce["calibration.pieces"] == 3.0
    assert v_focal["calibration.pieces"] == 2.0 and v_focal["trial.status"] == "stopped"
    # without ATS the breakpoints do not apply, even though the config still holds a list
    ts = dict(gce, calibration=dict(gce["calibration"], method="ts"))
    v_ts = hparam_values(spec, ts, "complete")
    assert "calibration.breakpoints" not in v_ts and "calibration.pieces" not in v_ts
    for values in (v_gce, v_focal, v_ts):  # a numeric column holds numbers only
        for key, value in values.items():
            if infos[key].type == api_pb2.DATA_TYPE_FLOAT64:
                assert isinstance(value, float), (key, value)


def test_tensorboard_command_refuses_what_is_not_an_experiment(tmp_path, capsys):
    assert main(["tensorboard", str(tmp_path)]) == 2
    assert "not an experiment directory" in capsys.readouterr().err
    assert main(["tensorboard", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert not (tmp_path / "tensorboard").exists()
