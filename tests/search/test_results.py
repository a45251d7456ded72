"""search.records, search.uncertainty and search.reports on constructed experiment directories (Ray's on-disk layout, written by hand): status rules, the
front against brute force, hypervolume against hand-computed areas, the result files, ECE uncertainty, bad input."""
from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from gce_search.search.cli import UsageError, main
from gce_search.search.pareto import REFERENCE_POINT
from gce_search.search.records import front_indices, load_experiment
from gce_search.search.reports import write_results
from gce_search.search.uncertainty import ece_std_bootstrap, ece_std_from_n
from gce_search.trainables.config import resolve


def _spec_dict() -> dict:
    from gce_search.spaces.loading import load_spec

    return load_spec("quickstart").to_dict()


def _trial_config(loss: dict, lr: float = 0.1, breakpoints=(0.5, 0.9), method: str = "ats") -> dict:
    return resolve({"loss": loss, "train": {"lr": lr, "epochs": 3, "device": "cpu"},
                    "calibration": {"method": method, "breakpoints": list(breakpoints)}})


def _epoch(epoch: int, acc: float, ece: float, final: bool, status: str = "ok", n: int = 1000) -> dict:
    row = {"epoch": epoch, "train/loss": 1.0 / epoch, "val/acc": acc, "val/ece": ece, "val/ece_raw": ece * 2,
           "val/adaece": ece * 1.1, "val/cece": ece / 3, "val/nll": 0.5, "val/brier": 0.3,
           "score": acc - ece, "status": status, "final": final, "val/n": n, "calib/n": n,
           "calibration/temperatures": [1.5, 1.2, 0.9]}
    if status == "diverged":
        row.update({"val/acc": math.nan, "val/ece": math.nan, "score": math.nan, "diverged_epoch": epoch})
    if final:
        row.update({"test/acc": acc - 0.01, "test/ece": ece + 0.01, "test/adaece": ece, "test/nll": 0.6,
                    "test/n": 2000})
    return row


def write_trial(exp: Path, trial_id: str, config: dict, rows: list[dict], t0: float = 1_000_000.0,
                node: str = "10.0.0.1") -> Path:
    """A trial folder as Ray Tune writes it: result.json with one JSON line per reported epoch."""
    folder = exp / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    with open(folder / "result.json", "w") as fh:
        for i, row in enumerate(rows, 1):
            line = dict(row, trial_id=trial_id, timestamp=t0 + 10 * i, time_this_iter_s=10.0,
                        time_total_s=10.0 * i, training_iteration=i, node_ip=node, hostname="h",
                        config={"trial_config": config, "loss.name": config["loss"]["name"]})
            fh.write(json.dumps(line) + "\n")  # NaN is written as NaN, as Ray's json logger does
    return folder


def make_experiment(root: Path, trials: dict[str, tuple[dict, list[dict]]], spec: dict | None = None) -> Path:
    exp = root / "exp"
    exp.mkdir()
    (exp / "spec.yaml").write_text(yaml.safe_dump(spec if spec is not None else _spec_dict()))
    for k, (trial_id, (config, rows)) in enumerate(trials.items()):
        write_trial(exp, trial_id, config, rows, t0=1_000_000.0 + 100 * k)
    return exp


GCE = {"name": "gce", "lam": 0.7}
CE = {"name": "cross_entropy"}


def test_statuses_history_and_conditional_params(tmp_path):
    exp_dir = make_experiment(tmp_path, {
        "a": (_trial_config(GCE), [_epoch(1, 0.5, 0.2, False), _epoch(2, 0.7, 0.1, False), _epoch(3, 0.8, 0.05, True)]),
        "b": (_trial_config(CE, method="ts"), [_epoch(1, 0.6, 0.1, False)]),
        "c": (_trial_config(GCE), [_epoch(1, 0.6, 0.1, False), _epoch(2, 0.0, 0.0, False, status="diverged")]),
        # a restored trial re-reports epoch 2: the later line of an epoch is the one that counts
        "d": (_trial_config(CE), [_epoch(1, 0.5, 0.1, False), _epoch(2, 0.55, 0.1, False),
                                  _epoch(2, 0.65, 0.09, False), _epoch(3, 0.7, 0.08, True)]),
    })
    exp = load_experiment(exp_dir)
    by_id = {t.trial_id: t for t in exp.trials}
    assert {k: t.status for k, t in by_id.items()} == {"a": "complete", "b": "stopped", "c": "diverged",
                                                       "d": "complete"}
    assert exp.counts() == {"complete": 2, "degenerate": 0, "stopped": 1, "diverged": 1, "error": 0, "total": 4}
    assert [r["epoch"] for r in by_id["d"].history] == [1, 2, 3]
    assert by_id["d"].history[1]["val/acc"] == 0.65
    assert "config" not in by_id["a"].history[0] and "timestamp" not in by_id["a"].history[0]
    # every searched parameter of the space, conditional ones None where they do not apply
    assert set(by_id["a"].params) == set(_spec_dict()["space"])
    assert by_id["a"].params["gce.lam"] == 0.7 and by_id["a"].params["focal.gamma"] is None
    assert by_id["b"].params["gce.lam"] is None
    assert by_id["a"].params["calibration.breakpoints"] == [0.5, 0.9]
    assert by_id["b"].params["calibration.breakpoints"] is None  # breakpoints apply under ATS only
    assert by_id["a"].temperatures == [1.5, 1.2, 0.9]
    assert by_id["a"].node == "10.0.0.1"
    assert by_id["a"].best_epoch()["epoch"] == 3


def _brute_force_front(points: list[tuple[float, float]]) -> set[int]:
    front = set()
    for i, (a, e) in enumerate(points):
        dominated = any((a2 >= a and e2 <= e) and (a2 > a or e2 < e) for a2, e2 in points)
        if not dominated:
            front.add(i)
    return front


@pytest.mark.parametrize("seed", range(5))
def test_front_matches_brute_force_and_ignores_stopped_and_diverged(tmp_path, seed):
    rng = np.random.default_rng(seed)
    trials = {}
    complete_points = {}
    for k in range(12):
        acc = float(np.round(rng.uniform(0.5, 0.95), 2))  # rounding makes ties and duplicates likely
        ece = float(np.round(rng.uniform(0.01, 0.2), 2))
        kind = rng.choice(["complete", "complete", "stopped", "diverged"])
        tid = f"t{k:02d}"
        if kind == "complete":
            rows = [_epoch(1, acc - 0.1, ece, False), _epoch(2, acc, ece, True)]
            complete_points[tid] = (acc, ece)
        elif kind == "stopped":  # better than everything, but never ran its full budget
            rows = [_epoch(1, 0.99, 0.001, False)]
        else:
            rows = [_epoch(1, 0.99, 0.001, False), _epoch(2, 0, 0, False, status="diverged")]
        trials[tid] = (_trial_config(GCE), rows)
    if not complete_points:
        trials["zz"] = (_trial_config(GCE), [_epoch(1, 0.6, 0.1, True)])
        complete_points["zz"] = (0.6, 0.1)
    exp = load_experiment(make_experiment(tmp_path, trials))
    ids = sorted(complete_points)
    expected = {ids[i] for i in _brute_force_front([complete_points[t] for t in ids])}
    assert {t.trial_id for t in exp.front()} == expected
    front_ece = [t.metric("val/ece") for t in exp.front()]
    assert front_ece == sorted(front_ece)


def test_front_indices_matches_brute_force_on_grid():
    points = [(a, e) for a, e in itertools.product([0.6, 0.7, 0.8], [0.05, 0.1])] + [(0.8, 0.05), (0.75, 0.02)]
    assert set(front_indices(points)) == _brute_force_front(points)
    assert front_indices([]) == []


def test_hypervolume_hand_computed(tmp_path):
    # (acc, ece) = (0.9, 0.1) and (0.8, 0.05) against the reference (acc 0, ece 1): the union of the rectangles
    # [0, 0.9] x [0.1, 1] and [0, 0.8] x [0.05, 1] has area 0.9 * 0.9 + 0.8 * 0.05 = 0.85.
    assert REFERENCE_POINT == (0.0, 1.0)
    exp = load_experiment(make_experiment(tmp_path, {
        "a": (_trial_config(GCE), [_epoch(1, 0.9, 0.1, True)]),
        "b": (_trial_config(CE), [_epoch(1, 0.8, 0.05, True)]),
        "c": (_trial_config(CE), [_epoch(1, 0.7, 0.2, True)]),  # dominated: adds nothing
        "d": (_trial_config(CE), [_epoch(1, 0.99, 0.0, False)]),  # stopped: never counts
    }))
    assert exp.hypervolume() == pytest.approx(0.85, abs=1e-12)
    # finishing order a (t0 + 10), b (t0 + 110), c (t0 + 210); a alone: 0.9 * 0.9
    over_time = exp.hypervolume_over_time()
    assert [round(s) for s, _ in over_time] == [10, 110, 210]
    assert [hv for _, hv in over_time] == pytest.approx([0.81, 0.85, 0.85])


def test_write_results_files(tmp_path, capsys):
    exp_dir = make_experiment(tmp_path, {
        "a": (_trial_config(GCE), [_epoch(1, 0.9, 0.1, True)]),
        "b": (_trial_config(CE), [_epoch(1, 0.8, 0.05, True)]),
        "c": (_trial_config(CE), [_epoch(1, 0.7, 0.2, True)]),
        "d": (_trial_config(GCE), [_epoch(1, 0.6, 0.1, False)]),
        "e": (_trial_config(GCE), [_epoch(1, 0, 0, False, status="diverged")]),
    })
    assert main(["pareto", str(exp_dir)]) == 0
    out = capsys.readouterr().out
    assert "hypervolume 0.8500" in out and "a " in out and "b " in out
    rows = list(csv.DictReader(open(exp_dir / "pareto.csv")))
    assert [r["trial"] for r in rows] == ["b", "a"]  # ordered by val/ece
    for col in ("loss", "loss.lam", "calibration.breakpoints", "calibration/temperatures", "val/acc", "val/ece",
                "val/adaece", "val/nll", "test/acc", "test/ece", "test/adaece", "test/nll", "val/n"):
        assert col in rows[0]
    assert rows[1]["loss"] == "gce" and float(rows[1]["loss.lam"]) == 0.7 and rows[0]["loss.lam"] == ""
    assert float(rows[1]["val/acc"]) == 0.9 and float(rows[1]["test/ece"]) == pytest.approx(0.11)
    assert rows[1]["calibration.breakpoints"] == "0.5 0.9"
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert summary["hypervolume"] == pytest.approx(0.85)
    assert summary["reference_point"] == {"val/acc": 0.0, "val/ece": 1.0}
    assert summary["counts"] == {"complete": 3, "degenerate": 0, "stopped": 1, "diverged": 1, "error": 0, "total": 5}
    assert summary["val_n"] == 1000
    assert [m["trial"] for m in summary["front"]] == ["b", "a"]
    unc = summary["front"][0]["val_ece_uncertainty"]
    assert unc["n"] == 1000 and unc["std"] == pytest.approx(0.13 / math.sqrt(1000))
    png = (exp_dir / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # the experiment-level TensorBoard run was written too
    assert list((exp_dir / "tensorboard" / "experiment").glob("events.out.tfevents.*"))


def test_bad_input_is_a_usage_error_and_overwrites_nothing(tmp_path, capsys):
    with pytest.raises(UsageError, match="not a directory"):
        write_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not an experiment directory"):
        write_results(tmp_path / "empty")
    exp_dir = make_experiment(tmp_path, {
        "s": (_trial_config(GCE), [_epoch(1, 0.6, 0.1, False)]),
        "x": (_trial_config(GCE), [_epoch(1, 0, 0, False, status="diverged")]),
    })
    (exp_dir / "pareto.csv").write_text("previous\n")
    with pytest.raises(UsageError, match=r"no complete trial \(1 stopped early, 1 diverged\)"):
        write_results(exp_dir)
    assert (exp_dir / "pareto.csv").read_text() == "previous\n"
    assert not (exp_dir / "summary.json").exists() and not (exp_dir / "pareto.png").exists()
    assert main(["pareto", str(exp_dir)]) == 2
    assert "no complete trial (1 stopped early, 1 diverged)" in capsys.readouterr().err
    (tmp_path / "exp" / "spec.yaml").write_text("[unclosed")
    with pytest.raises(UsageError, match="spec.yaml: not valid YAML"):
        write_results(exp_dir)


def test_ece_std_from_n_matches_design_simulation():
    # docs/design.md: 15-bin ECE of a calibrated model reads 0.014 +- 0.004 at n = 1k, +- 0.002 at 5k, +- 0.0013 at 10k.
    assert ece_std_from_n(1000) == pytest.approx(0.004, rel=0.05)
    assert ece_std_from_n(5000) == pytest.approx(0.002, rel=0.1)
    assert ece_std_from_n(10_000) == pytest.approx(0.0013, rel=0.05)
    assert math.isnan(ece_std_from_n(0))


def _ece_loop(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Independent ECE: bins ((m-1)/M, m/M] by explicit comparisons."""
    total = 0.0
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        in_bin = (conf > lo) & (conf <= hi) if m else (conf <= hi)
        if in_bin.any():
            total += in_bin.sum() / len(conf) * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


def test_ece_bootstrap_std_matches_sampling_std():
    # A calibrated model: correct ~ Bernoulli(confidence). The spread of its ECE over independent validation sets
    # of n = 1000 is the quantity a bootstrap of one set estimates.
    rng = np.random.default_rng(0)
    n = 1000

    def draw():
        conf = rng.beta(5, 1.2, n).clip(0.1, 1.0)
        return conf, (rng.random(n) < conf).astype(float)

    sampling_std = np.std([_ece_loop(*draw()) for _ in range(300)], ddof=1)
    conf, correct = draw()
    boot = ece_std_bootstrap(conf, correct, n_bins=15, resamples=300, seed=1)
    assert boot == pytest.approx(sampling_std, rel=0.4)


def test_the_ece_bootstrap_bins_exact_bin_edges_as_trainables_metrics_ece_does():
    """A confidence sitting exactly on an edge m/M belongs to bin m-1 ((m-1)/M, m/M]: c = 0.28 with M = 25 (where
    ceil(c * M) - 1 picks the bin above, 0.28 * 25 being 7.000000000000001 in floats) and c = k/M for many k. The
    uncertainty code's binning must agree with trainables.metrics.ece and with explicit comparisons."""
    import torch

    from gce_search.search.uncertainty import ece_std_bootstrap
    from gce_search.trainables.metrics import ece, equal_width_bins

    for n_bins in (10, 15, 20, 25):
        edges = [k / n_bins for k in range(1, n_bins + 1)]
        conf = np.array(edges + [0.28, 0.0, 1.0])
        bins = equal_width_bins(conf, n_bins)
        for c, b in zip(conf, bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            assert (lo < c <= hi) or (b == 0 and c == 0.0), (n_bins, c, b)  # explicit comparisons
        assert list(bins[:n_bins]) == list(range(n_bins))
    assert int(equal_width_bins(np.array([0.28]), 25)[0]) == 6  # ceil(0.28 * 25) - 1 would say 7
    # The ECE of samples on exact edges, as the uncertainty code bins them, equals trainables.metrics.ece and the
    # explicit-comparison loop; its bootstrap of identical samples has no spread.
    rng = np.random.default_rng(3)
    for n_bins in (15, 25):
        conf = np.array([k / n_bins for k in rng.integers(1, n_bins + 1, 400)] + [0.28] * 50)
        conf = np.where(conf > 0.26, conf, 0.26)  # a four-class top-1 confidence is above 1/4
        correct = (rng.random(conf.shape[0]) < conf).astype(float)
        probs = np.stack([conf] + [(1 - conf) / 3] * 3, axis=1)
        labels = np.where(correct == 1, 0, 1)
        bins = equal_width_bins(conf, n_bins)
        ours = sum(abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in range(n_bins)) / conf.shape[0]
        assert ours == pytest.approx(ece(torch.from_numpy(probs), torch.from_numpy(labels), n_bins), abs=1e-12)
        assert ours == pytest.approx(_ece_loop(conf, correct, n_bins), abs=1e-12)
    assert ece_std_bootstrap(np.full(20, 0.28), np.ones(20), n_bins=25, resamples=20) == pytest.approx(0.0, abs=1e-12)


def test_latest_checkpoint_is_the_complete_one_with_the_latest_epoch(tmp_path):
    """After a restart a trial folder can hold more than one checkpoint, and a copy cut short by a dying node: the
    predictions are rebuilt from the complete checkpoint with the latest epoch (old folders without a manifest:
    the highest-numbered)."""
    from gce_search.search.records import TrialRecord
    from gce_search.search.uncertainty import latest_checkpoint
    from gce_search.trainables.checkpoints import CHECKPOINT_FILE, write_manifest

    record = TrialRecord(trial_id="t", path=tmp_path, config={}, params={}, history=[], status="TERMINATED")
    assert latest_checkpoint(record) is None
    for index in (3, 7):  # no manifest
        (tmp_path / f"checkpoint_{index:06d}").mkdir()
        (tmp_path / f"checkpoint_{index:06d}" / CHECKPOINT_FILE).write_bytes(b"x" * 10)
    assert latest_checkpoint(record) == tmp_path / "checkpoint_000007" / CHECKPOINT_FILE
    write_manifest(str(tmp_path / "checkpoint_000003"), epoch=9)
    assert latest_checkpoint(record) == tmp_path / "checkpoint_000003" / CHECKPOINT_FILE
    (tmp_path / "checkpoint_000008").mkdir()  # a newer epoch, but its copy was cut short
    (tmp_path / "checkpoint_000008" / CHECKPOINT_FILE).write_bytes(b"x" * 10)
    write_manifest(str(tmp_path / "checkpoint_000008"), epoch=10)
    (tmp_path / "checkpoint_000008" / CHECKPOINT_FILE).write_bytes(b"x" * 4)
    assert latest_checkpoint(record) == tmp_path / "checkpoint_000003" / CHECKPOINT_FILE


# ---------------------------------------------------------------------------------------------- how a trial ended


def _info(num_classes: int, val_counts: list[int] | None = None) -> dict:
    info = {"num_classes": num_classes}
    if val_counts is not None:
        info.update({"sizes": {"val": sum(val_counts)}, "class_counts": {"val": val_counts}})
    return info


def test_trial_outcome_is_one_rule_with_a_chance_level_bound():
    from gce_search.search.records import STATUSES, chance_accuracy_bound, trial_outcome

    bound = 0.1 + 2 * math.sqrt(0.1 * 0.9 / 1000)  # 10 balanced classes, 1000 val samples: 0.1190
    final = {"final": True, "status": "ok", "val/n": 1000, "data/info": _info(10, [100] * 10)}
    assert chance_accuracy_bound(final) == pytest.approx(bound)
    cases = [
        ({**final, "val/acc": 0.0972}, False, "degenerate"),  # a collapsed model: finite, and at chance
        ({**final, "val/acc": bound}, False, "degenerate"),
        ({**final, "val/acc": bound + 0.002}, False, "complete"),
        # an imbalanced val split: always predicting the majority class scores 0.5
        ({**final, "val/acc": 0.52, "data/info": _info(3, [500, 250, 250])}, False, "degenerate"),
        ({**final, "val/acc": 0.6, "data/info": _info(3, [500, 250, 250])}, False, "complete"),
        ({**final, "val/acc": 0.11, "data/info": {"num_classes": 10}}, False, "degenerate"),  # only K known: 1/K
        ({"final": True, "val/acc": 0.05}, False, "complete"),  # no class count reported: nothing to judge by
        ({**final, "val/acc": 0.9, "final": False}, False, "stopped"),
        ({**final, "val/acc": math.nan, "status": "diverged", "final": False}, False, "diverged"),
        ({**final, "val/acc": 0.5, "final": False}, True, "error"),
        (None, True, "error"),
        (None, False, "stopped"),
        ({**final, "val/acc": 0.9}, True, "complete"),  # errored once, restarted, ran its full budget
    ]
    for last, errored, wanted in cases:
        # the one rule: the console, TensorBoard, optuna-dashboard and the result files all call it
        assert trial_outcome(last, errored=errored) == wanted, (last, errored)
        if not errored:
            assert trial_outcome(last or {}) == wanted  # TensorBoard asks with the last result only
    assert set(STATUSES) == {"complete", "degenerate", "stopped", "diverged", "error"}


def test_a_degenerate_trial_is_named_and_kept_off_the_front_and_the_exports(tmp_path, capsys):
    from gce_search.search.export import write_exports

    chance = dict(_epoch(1, 0.0972, 0.0048, True), **{"data/info": _info(10, [100] * 10)})
    good = dict(_epoch(1, 0.9, 0.05, True), **{"data/info": _info(10, [100] * 10)})
    exp_dir = make_experiment(tmp_path, {"chance": (_trial_config(CE), [chance]), "good": (_trial_config(GCE), [good])})
    exp = load_experiment(exp_dir)
    assert {t.trial_id: t.status for t in exp.trials} == {"chance": "degenerate", "good": "complete"}
    # with ECE 0.0048 the collapsed trial would dominate on val/ece; as degenerate it is on no front
    assert [t.trial_id for t in exp.front()] == ["good"]
    assert main(["pareto", str(exp_dir)]) == 0
    out = capsys.readouterr().out
    assert "1 at chance level (degenerate)" in out
    assert [r["trial"] for r in csv.DictReader(open(exp_dir / "pareto.csv"))] == ["good"]
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert summary["counts"]["degenerate"] == 1 and summary["counts"]["complete"] == 1
    assert summary["degenerate"] == [{"trial": "chance", "val/acc": 0.0972,
                                      "chance_bound": pytest.approx(0.1 + 2 * math.sqrt(0.09 / 1000))}]
    for selector in ("pareto", "best", "top:2"):
        assert [p.stem for p in write_exports(exp_dir, selector, tmp_path / selector)] == ["good"]
    # only degenerate trials: nothing to export, and the message says why
    only = tmp_path / "only"
    only.mkdir()
    make_experiment(only, {"chance": (_trial_config(CE), [chance])})
    assert main(["export", str(only / "exp")]) == 2
    assert "no complete trial (1 at chance level (degenerate))" in capsys.readouterr().err


# --------------------------------------------------------------------- unreadable records, on a real tiny search


from tests.search.test_tensorboard import tiny_experiment  # noqa: E402,F401  (session fixture: one search)


def _copy(experiment: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("tensorboard"))
    return copy


def _cut_last_line(path: Path) -> None:
    text = path.read_text()
    last_start = text.rstrip("\n").rfind("\n") + 1
    path.write_text(text[: last_start + (len(text) - last_start) // 2])  # half of the last line, no newline


@pytest.mark.slow
def test_a_cut_last_result_line_never_changes_a_trials_status(tiny_experiment, tmp_path, capsys):  # noqa: F811
    before = load_experiment(tiny_experiment)
    statuses = {t.trial_id: t.status for t in before.trials}
    front = [t.trial_id for t in before.front()]
    assert front, "the tiny search has a front"
    capsys.readouterr()
    exp_dir = _copy(tiny_experiment, tmp_path)
    cut = [exp_dir / f"trial_{trial_id}" / "result.json" for trial_id in statuses]
    for path in cut:  # every trial's last line, the front members' final ones among them
        _cut_last_line(path)
    after = load_experiment(exp_dir)
    err = capsys.readouterr().err
    assert {t.trial_id: t.status for t in after.trials} == statuses
    assert [t.trial_id for t in after.front()] == front
    for path in cut:
        assert f"{path}: last line cut" in err and "taken from Ray's experiment state" in err
    assert main(["pareto", str(exp_dir)]) == 0
    assert [r["trial"] for r in csv.DictReader(open(exp_dir / "pareto.csv"))] == front
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert summary["counts"] == before.counts()
    assert any("last line cut" in w for w in summary["warnings"])

    # Without Ray's experiment state there is nothing to recover the line from: the trial is read up to its last
    # complete line, and the console says that its status may be out of date, naming the file.
    for state in exp_dir.glob("experiment_state-*.json"):
        state.unlink()
    load_experiment(exp_dir)
    err = capsys.readouterr().err
    for path in cut:
        assert f"{path}: last line cut" in err and "its status may be out of date" in err


@pytest.mark.slow
def test_a_truncated_checkpoint_is_warned_about_naming_the_file(tiny_experiment, tmp_path, capsys):  # noqa: F811
    from gce_search.search.export import write_exports
    from gce_search.search.uncertainty import latest_checkpoint

    exp_dir = _copy(tiny_experiment, tmp_path)
    exp = load_experiment(exp_dir)
    member = exp.front()[0]
    ckpt = latest_checkpoint(member)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    capsys.readouterr()
    assert main(["pareto", str(exp_dir)]) == 0
    err = capsys.readouterr().err
    assert f"{ckpt}: checkpoint unreadable" in err and f"val/ece ± of trial {member.trial_id}" in err
    summary = json.loads((exp_dir / "summary.json").read_text())
    entry = next(m for m in summary["front"] if m["trial"] == member.trial_id)
    assert entry["val_ece_uncertainty"]["method"] != "bootstrap over val samples (predictions rebuilt from the " \
                                                    "last checkpoint)"
    paths = write_exports(exp_dir, "pareto", tmp_path / "export")
    err = capsys.readouterr().err
    assert f"{ckpt}: checkpoint unreadable" in err and "not the calibrator's state" in err
    doc = yaml.safe_load(next(p for p in paths if p.stem == member.trial_id).read_text())
    assert "state" not in doc["calibrator"] and doc["calibrator"]["temperatures"]


# ------------------------------------------------------------------------------------ exit status of a search


DIVERGING_SPACE = """\
name: diverging
description: every trial diverges (a learning rate of 1e6)
data: {name: digits, max_train: 200}
model: {name: mlp}
train: {epochs: 2, batch_size: 64, lr: 1.0e+6}
calibration: {method: ts}
search: {sampler: random, num_samples: 2, seed: 0}
scheduler: {name: fifo}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
space:
  loss.name: {choices: [cross_entropy, gce]}
"""


@pytest.mark.slow
def test_a_search_where_every_trial_diverges_exits_1_with_the_reason(tmp_path, capsys):
    import ray

    space = tmp_path / "diverging.yaml"
    space.write_text(DIVERGING_SPACE)
    storage = tmp_path / "results"
    assert not ray.is_initialized()
    code = main(["run", str(space), "--storage", str(storage), "--name", "div"])
    captured = capsys.readouterr()
    assert not ray.is_initialized()
    assert code == 1
    reason = [line for line in captured.err.splitlines() if "no trial produced a usable result" in line]
    assert len(reason) == 1 and "(2 diverged)" in reason[0] and "train.lr" in reason[0]
    assert "gce-search export" not in captured.out and "gce-search tensorboard" not in captured.out
    assert "2 trial(s) (2 diverged)" in captured.out
    assert main(["pareto", str(storage / "div")]) == 2
    assert "no complete trial (2 diverged)" in capsys.readouterr().err


@pytest.mark.slow
def test_the_closing_summary_counts_the_records_the_front_is_built_from(tiny_experiment, tmp_path,  # noqa: F811
                                                                        capsys):
    """What `run` and `resume` print ("N complete", the front) comes from the same trial records as pareto.csv,
    also when result lines are cut."""
    import time

    from gce_search.search.driver import summarize

    intact = load_experiment(tiny_experiment)
    exp_dir = _copy(tiny_experiment, tmp_path)
    for path in exp_dir.glob("trial_*/result.json"):
        _cut_last_line(path)
    capsys.readouterr()
    assert summarize(str(exp_dir), [], time.time()) == 0
    out = capsys.readouterr().out
    counts = intact.counts()
    assert f"{counts['total']} trial(s) (" in out and f"{counts['complete']} complete" in out
    printed = [line.split()[0] for line in out.split("Pareto front", 1)[1].splitlines()[1:] if line.startswith("  ")
               and "val/acc" in line]
    assert printed == [t.trial_id for t in intact.front()]
    assert [r["trial"] for r in csv.DictReader(open(exp_dir / "pareto.csv"))] == printed


def test_param_value_of_a_raw_space_applies_each_entry_rule():
    """The fallback for a spec.yaml that does not validate reads the same activity rule from the raw entries."""
    from gce_search.search.records import param_value, searched_values

    cfg = resolve({"model": {"name": "mlp", "width": 64}, "loss": {"name": "gce", "lam": 0.5},
                   "calibration": {"method": "ts"}, "train": {"lr": 0.1}})
    assert param_value(cfg, "mlp.width") == 64
    assert param_value(cfg, "small_cnn.width") is None  # another model's parameter
    assert param_value(cfg, "gce.lam") == 0.5
    assert param_value(cfg, "focal.gamma") is None  # another loss's parameter
    assert param_value(cfg, "train.lr") == 0.1
    assert param_value(cfg, "train.lr", {"low": 0.01, "high": 1, "when": {"loss.name": ["focal"]}}) is None
    assert param_value(cfg, "calibration.breakpoints", {"breakpoints": {"pieces": 3}}) is None  # TS: no pieces
    raw = {"space": {"mlp.width": {"low": 16, "high": 128}, "gce.lam": {"low": 0, "high": 2}}}
    assert searched_values(raw, cfg) == {"mlp.width": 64, "gce.lam": 0.5}
