"""`gce-search study`: spec validation, aggregation against hand values, and one tiny real study on Ray."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import yaml

from gce_search.search.cli import main
from gce_search.search.study import STUDIES_DIR, aggregate, load_study, mean_std, paired_difference
from gce_search.trainables.registry import ConfigError

TINY = {
    "name": "tiny",
    "seeds": 2,
    "base": {"data": {"name": "digits"}, "model": {"name": "mlp", "width": 32, "depth": 1},
             "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "device": "cpu"}},
    "methods": {"ce": {"name": "cross_entropy"}, "gce": {"name": "gce", "lam": 1.0}},
    "posthoc": {"none": {"method": "none"}, "ts": {"method": "ts"},
                "ats": {"method": "ats", "breakpoints": [0.5, 0.9]}},
    "diagrams": ["ce"],
    "compare": [["gce", "ce"]],
}


def write(tmp_path, spec, name="study.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


SHIPPED = sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))
CNN_STUDIES = {
    "fashion_mnist_lt100_cnn": {"cross_entropy", "gce", "gce_half", "flsd53", "focal", "dual_focal", "adafocal"},
    "fashion_mnist_lt100_gapcnn": {"cross_entropy", "gce", "gce_half", "flsd53"},
    "fashion_mnist_cnn": {"cross_entropy", "gce", "gce_half", "flsd53"},
}


def test_the_report_studies_are_shipped():
    assert {"digits", "fashion_mnist", "fashion_mnist_lt100", "fashion_mnist_lt10", "fashion_mnist_gpu",
            "cifar10_resnet50", "cifar100_resnet50", "cifar10_fast"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_studies_validate(name):
    spec = load_study(name)
    if name in CNN_STUDIES:  # the overfitting-regime studies: their own method sets, 3 seeds (hours of CPU each)
        assert set(spec.methods) == CNN_STUDIES[name]
        assert len(spec.seeds) >= 3
        assert spec.run_config("cross_entropy", 0)["train"]["schedule"] == "cosine_step"
    else:
        assert {"cross_entropy", "gce", "flsd53", "focal", "dual_focal", "adafocal", "brier", "mmce",
                "label_smoothing"} <= set(spec.methods)
        assert len(spec.seeds) >= 5
    assert {"none", "ts", "ats"} <= set(spec.posthoc)
    cfg = spec.run_config("gce", spec.seeds[-1])
    assert cfg["loss"] == {"name": "gce", "lam": 1.0} and cfg["seed"] == spec.seeds[-1]
    assert cfg["calibration"]["method"] == "none"  # calibrators are fitted post hoc, on calib only


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["methods"].update(bad={"name": "crossentropy"}), r"methods\.bad.*loss\.name.*unknown loss"),
    (lambda s: s["methods"].update(bad={"name": "gce", "lam": -1}), r"loss\.lam.*got -1"),
    (lambda s: s["posthoc"].update(x={"method": "platt"}), r"posthoc\.x.*none, ts, ats"),
    (lambda s: s["posthoc"].update(x={"method": "ats", "breakpoints": [0.9, 0.5]}), r"strictly increasing"),
    (lambda s: s.update(seeds=0), r"seeds: got 0"),
    (lambda s: s.update(diagrams=["nope"]), r"diagrams: 'nope'"),
    (lambda s: s.update(compare=[["gce", "nope"]]), r"compare"),
    (lambda s: s.update(method={}), r"method: unknown key"),
    (lambda s: s["base"]["train"].update(epochs=0), r"train\.epochs"),
])
def test_bad_study_input_is_named(tmp_path, mutate, message):
    spec = json.loads(json.dumps(TINY))
    mutate(spec)
    with pytest.raises(ConfigError, match=message):
        load_study(write(tmp_path, spec))


@pytest.mark.parametrize("override", ["seeds.x=1", "seeds.x.y=1", "compare.x=1"])
def test_override_into_a_value_is_named(tmp_path, capsys, override):
    path = write(tmp_path, TINY)
    with pytest.raises(ConfigError, match=re.escape(f"--set {override!r}: ")):
        load_study(path, [override])
    assert main(["study", path, "--set", override, "--out", str(tmp_path / "out")]) == 2
    assert "not a mapping" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_study_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="fashion_mnist_lt100"):
        load_study("no_such_study")


def test_mean_std_and_paired_difference_by_hand():
    from scipy import stats

    mean, std, n = mean_std([0.25])
    assert (mean, n) == (0.25, 1) and math.isnan(std)  # one value has no sample std
    assert mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                                                          + (4 - 7 / 3) ** 2) / 2), 3))
    rows = [{"method": m, "seed": s, "posthoc": "none", "acc": a}
            for m, s, a in [("a", 0, 0.9), ("a", 1, 0.8), ("a", 2, 0.85), ("b", 0, 0.7), ("b", 1, 0.75),
                            ("b", 2, 0.7), ("b", 3, 0.1)]]  # seed 3 has no pair: ignored
    d = paired_difference(rows, "a", "b", "none", "acc")
    diffs = [0.2, 0.05, 0.15]
    assert d["n"] == 3
    assert d["mean"] == pytest.approx(np.mean(diffs))
    assert d["std"] == pytest.approx(np.std(diffs, ddof=1))
    assert d["p"] == pytest.approx(stats.ttest_rel([0.9, 0.8, 0.85], [0.7, 0.75, 0.7]).pvalue)


def test_aggregate_groups_by_method_and_posthoc():
    rows = [{"method": "a", "seed": s, "posthoc": p, **{m: v + (p == "ts") for m in
                                                          ("acc", "ece", "ece20", "adaece", "cece", "nll", "brier")}}
            for s, v in [(0, 1.0), (1, 3.0)] for p in ("none", "ts")]
    table = {(t["method"], t["posthoc"]): t for t in aggregate(rows)}
    assert table[("a", "none")]["acc"] == 2.0 and table[("a", "ts")]["acc"] == 3.0
    assert table[("a", "none")]["acc_std"] == pytest.approx(math.sqrt(2))
    assert table[("a", "none")]["seeds"] == 2


def test_tiny_study_end_to_end(tmp_path, capsys):
    """A real study on Ray: every run reported, the 'none' rows equal the trial's own test metrics, the calibrated
    rows keep the accuracy, and the report files exist."""
    from gce_search.search.study import load_study
    from gce_search.trainables.trial import run_trial

    path = write(tmp_path, TINY)
    out = tmp_path / "out"
    assert main(["study", path, "--out", str(out)]) == 0
    rows = json.loads((out / "runs.json").read_text())
    assert len(rows) == 2 * 2 * 3
    assert {(r["method"], r["seed"], r["posthoc"]) for r in rows} == {
        (m, s, p) for m in ("ce", "gce") for s in (0, 1) for p in ("none", "ts", "ats")}
    # The study's uncalibrated test metrics equal what the trial itself reports on the test split.
    spec = load_study(path)
    direct = run_trial(spec.run_config("gce", 1))
    row = next(r for r in rows if (r["method"], r["seed"], r["posthoc"]) == ("gce", 1, "none"))
    assert row["acc"] == pytest.approx(direct["test/acc"], abs=1e-12)
    assert row["ece"] == pytest.approx(direct["test/ece"], abs=1e-6)  # float32 logits, other batching
    assert row["nll"] == pytest.approx(direct["test/nll"], abs=1e-6)
    for r in rows:  # positive temperatures never change the argmax
        same = next(x for x in rows if (x["method"], x["seed"], x["posthoc"]) == (r["method"], r["seed"], "none"))
        assert r["acc"] == same["acc"]
    table_md = (out / "table.md").read_text()
    assert "| gce |" in table_md and "gce − ce" in table_md
    assert (out / "reliability_ce_ts.png").stat().st_size > 1000
    assert (out / "reliability_ce_ats.png").exists()
    # Every run has its record, written as it ended; the first seed's diagrams were drawn then.
    records = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json") if p.name != "invocations.json"}
    assert set(records) == {f"{m}__seed{s}.json" for m in ("ce", "gce") for s in (0, 1)}
    assert (out / "runs" / "ce__seed0.npz").exists() and not (out / "runs" / "gce__seed0.npz").exists()
    throughput = json.loads((out / "throughput.json").read_text())
    assert throughput["runs"] == 4 and len(throughput["invocations"]) == 1
    # A finished study is never overwritten.
    capsys.readouterr()
    assert main(["study", path, "--out", str(out)]) == 2
    assert "already holds a finished study" in capsys.readouterr().err
    # Another config into the same directory is refused, naming the run and the setting; nothing there changes.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "ray" not in p.relative_to(out).parts}
    assert main(["study", path, "--out", str(out), "--set", "base.train.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "ce__seed0.json" in err and "train.epochs: 2 in the record, 3 now" in err and "new --out" in err
    assert {p: p.read_bytes() for p in before} == before
    assert not (out / "runs" / "ce__seed2.json").exists()
    # More seeds into a finished study: only the new runs run, the recorded ones are kept as they are.
    assert main(["study", path, "--out", str(out), "--set", "seeds=3"]) == 0
    text = capsys.readouterr().out
    assert "resuming: 4 of 6 runs are recorded" in text and "[5/6]" in text and "[1/6]" not in text
    for name, data in records.items():
        assert (out / "runs" / name).read_bytes() == data
    rows = json.loads((out / "runs.json").read_text())
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in ("ce", "gce") for s in (0, 1, 2)}
    assert all(t["seeds"] == 3 for t in json.loads((out / "table.json").read_text()))
    throughput = json.loads((out / "throughput.json").read_text())
    assert throughput["runs"] == 6 and [i["runs"] for i in throughput["invocations"]] == [4, 2]


@pytest.mark.slow
def test_study_killed_midway_resumes_with_only_the_missing_runs(tmp_path):
    """SIGKILL a study once its first run is recorded: the same command again runs only the runs without a
    record, keeps the recorded ones byte for byte, and writes the whole table."""
    import subprocess
    import sys

    from tests.waiting import kill_tree, run_to_end, wait_until

    spec = json.loads(json.dumps(TINY))
    spec["base"]["train"].update(epochs=6, batch_size=16)  # a few seconds a run: most of the study is ahead
    path = write(tmp_path, spec)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "gce_search", "study", path, "--out", str(out)]
    log = open(tmp_path / "study.log", "w")
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)

    def recorded():
        return sorted(p.name for p in (out / "runs").glob("*__seed*.json")) if (out / "runs").is_dir() else []

    try:
        first = wait_until(recorded, what="a first run record", proc=proc, output=tmp_path / "study.log",
                           watch=[out])
        kill_tree(proc)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
        log.close()
    kept = {name: (out / "runs" / name).read_bytes() for name in recorded()}
    assert first and set(first) <= set(kept)
    assert len(kept) < 4, "every run finished before the kill; nothing left to resume"
    assert not (out / "table.md").exists()
    resumed = run_to_end(argv, cwd=tmp_path, watch=[out])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming: {len(kept)} of 4 runs are recorded" in resumed.stdout
    assert resumed.stdout.count(" seed ") >= 4 - len(kept)
    for name, data in kept.items():
        assert (out / "runs" / name).read_bytes() == data
    rows = json.loads((out / "runs.json").read_text())
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in ("ce", "gce") for s in (0, 1)}
    assert "runs: ok 4" in (out / "table.md").read_text()


def test_a_run_in_a_long_epoch_says_where_it_is(tmp_path):
    """A study's runs report from inside their epochs like a search's trials (trainables.step_progress), and the
    study's console prints them: method, seed, epoch, step, images/s and the epoch's time left. The threshold is
    0.5 ms here, so every epoch counts as long; each run gets at most one such line a minute."""
    import os
    import sys

    from tests.waiting import run_to_end

    spec = json.loads(json.dumps(TINY))
    spec["seeds"] = 1
    spec["base"]["data"]["max_train"] = 600
    spec["base"]["model"].update(width=2048, depth=2)  # epochs of about a second: 150 steps of 4 images
    spec["base"]["train"].update(epochs=3, batch_size=4, lr=0.005)  # GCE at lr 0.05 on batches of 4 can diverge
    out = tmp_path / "out"
    env = {**os.environ, "GCE_SEARCH_STEP_PROGRESS_S": "0.0005"}
    env.pop("RAY_ADDRESS", None)
    proc = run_to_end([sys.executable, "-m", "gce_search", "study", write(tmp_path, spec), "--out", str(out)],
                      cwd=tmp_path, env=env, watch=[out])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    steps = [ln for ln in lines if ": epoch " in ln]
    assert steps, "no progress from inside an epoch:\n" + proc.stdout
    line = (r"^\d\d:\d\d:\d\d \[[01]/2 done\] (ce|gce) seed 0: epoch [1-3]/3: step \d+/150 \(\d+%\), \d+ img/s, "
            r"epoch ends in (about|under) ")
    assert all(re.match(line, ln) for ln in steps), steps
    for method in ("ce", "gce"):  # at most one line a minute per run: runs of a few seconds have one at most
        assert sum(f"] {method} seed 0:" in ln for ln in steps) <= 1, steps
    # the runs' own lines and the table are as without progress
    assert sum(bool(re.match(r"\[\d/2\] (ce|gce) seed 0: \d+ s, test \w+ acc", ln)) for ln in lines) == 2, proc.stdout
    table_md = (out / "table.md").read_text()
    assert "one seed, so no std" in table_md and "runs: ok 2" in table_md
    # one seed has no spread: the table shows the value alone, table.json has null, not a std of 0
    assert re.search(r"^\| ce \| \d+\.\d\d \| \d+\.\d\d \|", table_md, re.M), table_md
    assert not any("±" in ln for ln in table_md.splitlines() if ln.startswith("| ce |"))
    entry = next(t for t in json.loads((out / "table.json").read_text())
                 if t["method"] == "ce" and t["posthoc"] == "none")
    assert entry["seeds"] == 1 and entry["acc_std"] is None and 0 < entry["acc"] <= 1


def test_record_differences_name_the_setting_and_skip_newer_defaults():
    from gce_search.search.study import _differences

    record = {"train": {"epochs": 30, "lr": 0.05}, "loss": {"name": "gce", "lam": 1.0}}
    now = {"train": {"epochs": 30, "lr": 0.1, "added_since": 4}, "loss": {"name": "gce"}}
    assert _differences(record, now) == ["loss.lam: 1.0 in the record, absent now",
                                         "train.lr: 0.05 in the record, 0.1 now"]
    assert _differences(record, json.loads(json.dumps(record))) == []
    # A post-hoc calibrator added since: the record has no rows for it, so it is a difference.
    assert _differences({"ts": {"method": "ts"}}, {"ts": {"method": "ts"}, "ats": {"method": "ats"}},
                        newer_keys_ok=False) == ["ats: absent in the record, {'method': 'ats'} now"]
