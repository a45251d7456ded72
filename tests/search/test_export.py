"""gce-search export on a tiny real search: selectors, file contents, refusals, and a CPU retrain from an export that
reproduces the search's validation metrics."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from gce_search.search.cli import UsageError, main
from gce_search.search.export import parse_selector, write_exports
from gce_search.search.records import load_experiment
from gce_search.trainables.config import resolve
from gce_search.yamlio import read_yaml
from tests.search.test_tensorboard import tiny_experiment  # noqa: F401  (session fixture: one search per session)
from gce_search.trainables.precision import pin_precision
from gce_search.trainables.registry import ConfigError

pytestmark = pytest.mark.slow


def test_parse_selector():
    assert parse_selector("pareto") == ("pareto", None)
    assert parse_selector("best") == ("best", 1)
    assert parse_selector("top:3") == ("top", 3)
    for bad in ("top:0", "top:", "top:x", "worst", "Pareto", ""):
        with pytest.raises(UsageError, match="valid: pareto \\| pareto-robust \\| best \\| top:K"):
            parse_selector(bad)


def test_export_selectors_and_contents(tiny_experiment, tmp_path):  # noqa: F811
    exp = load_experiment(tiny_experiment)
    complete = exp.complete()
    assert complete, "the first trial of each ASHA rung is always promoted, so one trial completes"
    assert all(t.node_id and t.node for t in exp.trials)  # where each trial ran (the Ray trainable (search.trainable) reports node_id)
    by_score = sorted(complete, key=lambda t: -t.metric("score"))

    pareto = write_exports(tiny_experiment, "pareto", tmp_path / "pareto")
    assert sorted(p.stem for p in pareto) == sorted(t.trial_id for t in exp.front())
    best = write_exports(tiny_experiment, "best", tmp_path / "best")
    assert [p.stem for p in best] == [by_score[0].trial_id]
    top = write_exports(tiny_experiment, "top:2", tmp_path / "top")
    assert [p.stem for p in top] == [t.trial_id for t in by_score[:2]]

    spec = yaml.safe_load((tiny_experiment / "spec.yaml").read_text())
    for path in pareto + best + top:
        doc = yaml.safe_load(path.read_text())
        assert set(doc) == {"config", "calibrator", "source", "metrics"}
        trial = next(t for t in exp.trials if t.trial_id == path.stem)
        # the resolved trial config, as the search ran it: `auto` precision pinned to what the trial used
        ran = {**trial.config, "train": {**trial.config["train"], "bf16": trial.final["train/bf16"],
                                         "channels_last": trial.final["train/channels_last"]}}
        assert trial.config["train"]["bf16"] == "auto" and isinstance(trial.final["train/bf16"], bool)
        assert doc["config"] == ran
        assert doc["config"]["train"]["epochs"] == spec["train"]["epochs"] == 2  # the full budget
        assert doc["config"]["data"]["split_seed"] == 0 and doc["config"]["seed"] == 0
        assert doc["calibrator"]["temperatures"] == trial.final["calibration/temperatures"]
        assert doc["calibrator"]["breakpoints"] == doc["config"]["calibration"]["breakpoints"]
        assert doc["calibrator"]["state"]["temperatures"] == pytest.approx(doc["calibrator"]["temperatures"])
        assert doc["source"]["experiment"] == str(tiny_experiment.resolve())
        assert doc["source"]["trial"] == trial.trial_id and doc["source"]["status"] == "complete"
        assert doc["metrics"]["val/acc"] == trial.final["val/acc"]
        assert doc["metrics"]["test/ece"] == trial.final["test/ece"] and doc["metrics"]["val/n"] > 0
        assert resolve(read_yaml(path)["config"]) == ran


def test_export_refuses_overwrite_and_bad_input(tiny_experiment, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    assert main(["export", str(tiny_experiment), "--select", "best", "--out", str(out)]) == 0
    (written,) = list(out.glob("*.yaml"))
    before = written.read_text()
    written.write_text("edited by hand\n")
    assert main(["export", str(tiny_experiment), "--select", "pareto", "--out", str(out)]) == 2
    assert "would overwrite" in capsys.readouterr().err
    assert written.read_text() == "edited by hand\n"
    assert before.startswith("# gce-search export")

    assert main(["export", str(tiny_experiment), "--select", "top:zero", "--out", str(tmp_path / "x")]) == 2
    assert "unknown selector" in capsys.readouterr().err and not (tmp_path / "x").exists()
    (tmp_path / "not-an-exp").mkdir()
    assert main(["export", str(tmp_path / "not-an-exp")]) == 2
    assert "not an experiment directory" in capsys.readouterr().err
    assert not (tmp_path / "not-an-exp" / "export").exists()


def test_edited_invalid_export_is_a_clear_error(tiny_experiment, tmp_path, capsys):  # noqa: F811
    (path,) = write_exports(tiny_experiment, "best", tmp_path / "e")
    doc = yaml.safe_load(path.read_text())
    doc["config"]["train"]["lr"] = -1.0
    doc["config"]["train"]["epoch"] = 5  # typo of epochs
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        resolve(read_yaml(bad)["config"], source=str(bad))
    text = str(err.value)
    assert "train.lr" in text and "train.epoch" in text and str(bad) in text
    assert main(["train", str(bad), "--out", str(tmp_path / "never")]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert not (tmp_path / "never" / "metrics.json").exists()
    bad.write_text("config: [1, 2\n")
    with pytest.raises(ConfigError, match=str(bad)):
        read_yaml(bad)
    assert main(["train", str(bad), "--out", str(tmp_path / "never")]) == 2


# Metrics the retrain must reproduce. Trials are deterministic on CPU for a given number of torch threads, which the
# trial config records (train.threads, from resources.cpus_per_trial).
VAL_KEYS = ("val/acc", "val/n", "val/ece", "val/ece_raw", "val/adaece", "val/cece", "val/nll", "val/brier", "score")


def test_retrain_from_export_reproduces_the_search(tiny_experiment, tmp_path, capsys):  # noqa: F811
    exp = load_experiment(tiny_experiment)
    (path,) = write_exports(tiny_experiment, "best", tmp_path / "e")
    doc = read_yaml(path)
    trial = next(t for t in exp.trials if t.trial_id == doc["source"]["trial"])
    # the search's checkpoints load with weights_only=True
    ckpt = sorted(trial.path.glob("checkpoint_*/checkpoint.pt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert pin_precision(state["config"], trial.final) == doc["config"]

    # The export carries the trial's torch thread count (Ray ran it with 1 CPU), so the retrain uses it too.
    assert doc["config"]["train"]["threads"] == 1
    threads = torch.get_num_threads()
    assert main(["train", str(path), "--out", str(tmp_path / "retrain")]) == 0
    assert torch.get_num_threads() == threads  # restored after the run
    capsys.readouterr()
    retrained = json.loads((tmp_path / "retrain" / "metrics.json").read_text())
    assert retrained["epoch"] == doc["config"]["train"]["epochs"]
    assert retrained["val/acc"] == trial.final["val/acc"]
    assert retrained["val/n"] == trial.final["val/n"]
    for key in ("train/bf16", "train/channels_last"):  # the precision the export pinned, not a new decision
        assert retrained[key] == trial.final[key] == doc["config"]["train"][key.split("/")[1]]
    for key in VAL_KEYS:
        # Bit-equal in most runs; Ray workers have been seen to differ from a fresh process in the last float32
        # bits of the weights (~3e-8), which moves ECE/NLL by ~1e-8. 1e-6 is far below any ECE worth reading.
        assert math.isclose(retrained[key], trial.final[key], rel_tol=0, abs_tol=1e-6), key
    assert retrained["calibration/temperatures"] == pytest.approx(trial.final["calibration/temperatures"], abs=1e-5)
    assert torch.load(tmp_path / "retrain" / "checkpoint.pt", weights_only=True)["epoch"] == 2


def test_a_search_where_every_trial_errors_exits_1_and_export_says_why(tmp_path, capsys):
    """Every trial fails at run time: the data passed every check before Ray started, and the training images
    are then cut short (what a full disk or an unmounted share does to a file in use)."""
    import threading
    import time

    import ray

    from tests.trainables import formats

    root = tmp_path / "fashion"
    formats.write_fashion_mnist(root, n_train=200, n_test=40, compress=False)
    space = tmp_path / "erroring.yaml"
    space.write_text(f"""\
name: erroring
data: {{name: fashion_mnist, root: {root}, calib: 30, val: 30}}
model: {{name: mlp}}
train: {{epochs: 1, batch_size: 32}}
calibration: {{method: ts}}
search: {{sampler: random, num_samples: 2, seed: 0}}
scheduler: {{name: fifo}}
resources: {{cpus_per_trial: 1, gpus_per_trial: 0}}
space:
  loss.name: {{choices: [cross_entropy, gce]}}
""")
    exp_dir = tmp_path / "results" / "err"
    images = root / "train-images-idx3-ubyte"
    stop = threading.Event()

    def cut_the_images_once_the_checks_passed():
        # spec.yaml is written after every check and before the first trial starts
        while not stop.is_set() and not (exp_dir / "spec.yaml").exists():
            time.sleep(0.02)
        if not stop.is_set():
            images.write_bytes(images.read_bytes()[:100])

    watcher = threading.Thread(target=cut_the_images_once_the_checks_passed)
    watcher.start()
    try:
        code = main(["run", str(space), "--storage", str(tmp_path / "results"), "--name", "err"])
    finally:
        stop.set()
        watcher.join()
    captured = capsys.readouterr()
    assert not ray.is_initialized()
    assert images.stat().st_size == 100, "the data was cut after the checks"
    assert code == 1
    reason = [line for line in captured.err.splitlines() if "no trial produced a usable result" in line]
    assert len(reason) == 1 and "(2 errored)" in reason[0] and "error.txt" in reason[0]
    assert "gce-search export" not in captured.out and "gce-search tensorboard" not in captured.out
    assert all((folder / "error.txt").is_file() for folder in exp_dir.glob("trial_*"))
    assert [t.status for t in load_experiment(exp_dir).trials] == ["error", "error"]
    assert main(["export", str(exp_dir)]) == 2
    err = capsys.readouterr().err
    assert "no complete trial (2 errored)" in err and "Traceback" not in err
