"""The trial loop: contract keys, schedules, exact resume, divergence, `gce-search train`, the Ray Tune adapter."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gce_search.search.cli import main as cli_main
from gce_search.trainables.config import resolve
from gce_search.trainables.trial import CHECKPOINT_FILE, learning_rate, load_checkpoint, run_trial

CONTRACT_KEYS = {"epoch", "train/loss", "val/acc", "val/ece", "val/ece_raw", "val/adaece", "val/cece", "val/nll",
                 "val/brier", "score", "status", "val/n", "calib/n", "calibration/temperatures", "final"}
TEST_KEYS = {"test/acc", "test/ece", "test/ece_raw", "test/adaece", "test/cece", "test/nll", "test/brier", "test/n"}
TIMING_KEYS = {"time/train_s", "time/eval_s", "train/images_per_s"}


_REPORTERS: list["Collect"] = []


@pytest.fixture(autouse=True)
def _remove_checkpoint_dirs():
    """The reporter owns each checkpoint directory: every test's reporters give theirs back at teardown."""
    yield
    import shutil

    for rep in _REPORTERS:
        for d in rep.dirs:
            if d:
                shutil.rmtree(d, ignore_errors=True)
    _REPORTERS.clear()


class Collect:
    """A reporter that keeps every (metrics, checkpoint state) and optionally stops the trial after an epoch."""

    def __init__(self, stop_after: int | None = None):
        _REPORTERS.append(self)
        self.metrics: list[dict] = []
        self.dirs: list[str | None] = []
        self.stop_after = stop_after

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.metrics.append(metrics)
        self.dirs.append(checkpoint_dir)
        if self.stop_after is not None and metrics["epoch"] >= self.stop_after:
            raise StopTrial


class StopTrial(Exception):
    pass


def _untimed(m: dict) -> dict:
    # device/info says how the run was set up (its precision from a probe, the probe cache or the checkpoint; in
    # the first result each process reports), not what it computed: like the timings, it may differ on a resume.
    return {k: v for k, v in m.items() if k not in TIMING_KEYS and k != "device/info"}


def _ece_15(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    # Guo et al. 2017 with bins ((m-1)/M, m/M], written independently of trainables.metrics.
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == labels).astype(float)
    total = 0.0
    for m in range(1, n_bins + 1):
        in_bin = (conf > (m - 1) / n_bins) & (conf <= m / n_bins)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


# ------------------------------------------------------------------------------------------------------ schedules


@pytest.mark.parametrize("schedule", ["constant", "cosine", "multistep"])
def test_per_epoch_schedules_match_torch(schedule):
    epochs, steps = 7, 3
    cfg = {"lr": 0.2, "epochs": epochs, "schedule": schedule, "milestones": [2, 5], "gamma": 0.3}
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    torch_sched = {
        "constant": torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0),
        "cosine": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
        "multistep": torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 5], gamma=0.3),
    }[schedule]
    for epoch in range(epochs):
        expected = opt.param_groups[0]["lr"]
        for s in range(steps):
            assert learning_rate(cfg, epoch * steps + s, steps) == pytest.approx(expected, rel=1e-12)
        opt.step()
        torch_sched.step()


def test_cosine_and_multistep_hand_values():
    cfg = {"lr": 0.1, "epochs": 4, "schedule": "cosine", "milestones": [], "gamma": 0.1}
    # lr * (1 + cos(pi * e / 4)) / 2 at e = 2 is lr / 2.
    assert learning_rate(cfg, 2 * 10, 10) == pytest.approx(0.05)
    cfg.update(schedule="multistep", milestones=[1, 3])
    assert [learning_rate(cfg, e, 1) for e in range(4)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_cosine_step_matches_torch_per_step():
    epochs, steps = 4, 6
    cfg = {"lr": 0.05, "epochs": epochs, "schedule": "cosine_step", "milestones": [], "gamma": 0.1}
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    for step in range(epochs * steps):
        assert learning_rate(cfg, step, steps) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    # by hand: half-way through the run the rate is lr / 2; at the last step lr (1 + cos(pi 23/24)) / 2
    assert learning_rate(cfg, 12, steps) == pytest.approx(0.025)
    assert learning_rate(cfg, 23, steps) == pytest.approx(0.05 * (1 + math.cos(math.pi * 23 / 24)) / 2)


def test_onecycle_matches_torch_per_step():
    epochs, steps = 5, 8
    cfg = {"lr": 0.4, "epochs": epochs, "schedule": "onecycle", "milestones": [], "gamma": 0.1}
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=epochs * steps, cycle_momentum=False)
    for step in range(epochs * steps):
        assert learning_rate(cfg, step, steps) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()
    assert learning_rate(cfg, 0, steps) == pytest.approx(0.4 / 25)
    assert learning_rate(cfg, epochs * steps - 1, steps) == pytest.approx(0.4 / 25 / 1e4)


# ------------------------------------------------------------------------------------------------- end to end


SYNTHETIC = {
    "seed": 3,
    "data": {"name": "synthetic", "subset": "classes=4,size=8,train=600,test=200,noise=1.5", "calib": 0.2,
             "val": 0.2},
    "model": {"name": "small_cnn", "width": 8, "hidden": 32},
    "loss": {"name": "gce", "lam": 1.0},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.05, "device": "cpu"},
    "calibration": {"method": "ats", "breakpoints": [0.5, 0.9], "min_samples": 10},
    "objective": {"w_acc": 1.0, "w_ece": 2.0, "n_bins": 15},
}


def test_synthetic_run_reports_contract_keys_and_consistent_metrics():
    rep = Collect()
    last = run_trial(SYNTHETIC, rep)
    try:
        assert [m["epoch"] for m in rep.metrics] == [1, 2, 3]
        for m in rep.metrics:
            assert CONTRACT_KEYS <= set(m), CONTRACT_KEYS - set(m)
            assert m["status"] == "ok"
            assert 0.0 <= m["val/acc"] <= 1.0 and 0.0 <= m["val/ece"] <= 1.0
            assert m["score"] == pytest.approx(1.0 * m["val/acc"] - 2.0 * m["val/ece"])
            assert len(m["calibration/temperatures"]) == 3  # two breakpoints: three pieces
            assert m["val/n"] == 120 and m["calib/n"] == 120
        assert [m["final"] for m in rep.metrics] == [False, False, True]
        assert not TEST_KEYS & set(rep.metrics[0])
        assert TEST_KEYS <= set(last) and last["test/n"] == 200
        assert last == rep.metrics[-1]
        assert last["data/info"]["sizes"]["val"] == 120
        json.dumps(last)  # plain numbers and containers only

        # Rebuild the model from the last checkpoint and recompute the raw val metrics independently.
        state = torch.load(os.path.join(rep.dirs[-1], CHECKPOINT_FILE), weights_only=True)
        assert state["epoch"] == 3
        from gce_search.trainables.data import load_splits
        from gce_search.trainables.models import build_model

        cfg = resolve(SYNTHETIC)
        data = load_splits(cfg["data"])
        model = build_model(cfg["model"], data.in_channels, data.num_classes, data.image_size)
        model.load_state_dict(state["model"])
        model.eval()
        # in the memory layout the trial's evaluation used (train.channels_last: auto lets a probe choose; a conv in
        # another layout sums in another order, ~1e-9 apart)
        layout = torch.channels_last if last["train/channels_last"] else torch.contiguous_format
        model = model.to(memory_format=layout)
        with torch.no_grad():
            probs = torch.softmax(model(data.val_x.contiguous(memory_format=layout)).double(), 1).numpy()
        labels = data.val_y.numpy()
        assert last["val/acc"] == pytest.approx((probs.argmax(1) == labels).mean(), abs=1e-12)
        assert last["val/ece_raw"] == pytest.approx(_ece_15(probs, labels), abs=1e-9)
        # ATS refits on calib each epoch and never changes the argmax.
        assert last["val/ece"] != last["val/ece_raw"]

        # The calibrator is fitted on the calib split alone: refitting it on the rebuilt calib logits gives the
        # reported temperatures and calibrated val metrics; a fit on val (or test) would not.
        from gce_search.trainables.calibration import build_calibrator
        from gce_search.trainables.metrics import summary

        def fitted_on(split):
            with torch.no_grad():
                split_logits = model(getattr(data, f"{split}_x").contiguous(memory_format=layout)).float()
            return build_calibrator(cfg["calibration"]).fit(split_logits, getattr(data, f"{split}_y"))

        on_calib = fitted_on("calib")
        assert last["calibration/temperatures"] == pytest.approx(on_calib.temperatures, rel=1e-6)
        assert state["calibrator"]["temperatures"] == pytest.approx(on_calib.temperatures, rel=1e-6)
        for other in ("val", "test"):
            assert fitted_on(other).temperatures != pytest.approx(on_calib.temperatures, rel=1e-3), other
        with torch.no_grad():
            val_logits = model(data.val_x.contiguous(memory_format=layout)).float()
        refit = summary(on_calib.transform(val_logits), data.val_y, n_bins=15)
        assert last["val/ece"] == pytest.approx(refit["ece"], abs=1e-9)
        assert last["val/nll"] == pytest.approx(refit["nll"], rel=1e-6)
    finally:
        for d in rep.dirs:
            if d:
                import shutil

                shutil.rmtree(d, ignore_errors=True)


RESUME_CASES = {
    # dropout draws from torch's global RNG, crop/flip from the trial's generator, AdaFocal carries state.
    "mlp-adafocal-sgd": {
        "model": {"name": "mlp", "width": 48, "depth": 2, "dropout": 0.2},
        "loss": {"name": "adafocal"},
        "train": {"optimizer": "sgd", "nesterov": True, "schedule": "multistep", "milestones": [2, 3],
                  "lr": 0.05, "batch_size": 64},
        "data": {"augment": {"crop": True, "pad": 1, "flip": True}},
    },
    # BatchNorm buffers, AdamW moments, per-step one-cycle, bf16 autocast, channels_last, sum + clipping.
    "cnn-gce-adamw-bf16": {
        "model": {"name": "small_cnn", "width": 4, "hidden": 16},
        "loss": {"name": "gce", "lam": 0.7},
        "train": {"optimizer": "adamw", "schedule": "onecycle", "lr": 0.01, "reduction": "sum",
                  "grad_clip": 2.0, "bf16": True, "channels_last": True, "batch_size": 128},
        "data": {"augment": {"flip": True}},
    },
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_after_interrupt_is_bitwise_identical(case):
    cfg = resolve({"seed": 1, "data": {"name": "digits", "max_train": 512, **RESUME_CASES[case]["data"]},
                   "model": RESUME_CASES[case]["model"], "loss": RESUME_CASES[case]["loss"],
                   "train": {"epochs": 4, "device": "cpu", **RESUME_CASES[case]["train"]},
                   "calibration": {"method": "ats", "min_samples": 20}})
    full = Collect()
    run_trial(cfg, full)

    first = Collect(stop_after=2)
    with pytest.raises(StopTrial):
        run_trial(cfg, first)
    assert len(first.metrics) == 2
    second = Collect()
    last = run_trial(cfg, second, restore_from=first.dirs[-1])
    try:
        assert [m["epoch"] for m in second.metrics] == [3, 4]
        resumed = [_untimed(m) for m in first.metrics + second.metrics]
        uninterrupted = [_untimed(m) for m in full.metrics]
        assert resumed == uninterrupted  # bitwise: float equality of every metric, every epoch
        assert _untimed(last) == uninterrupted[-1]
        a = load_checkpoint(full.dirs[-1])["model"]
        b = load_checkpoint(second.dirs[-1])["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    finally:
        import shutil

        for d in full.dirs + first.dirs + second.dirs:
            if d:
                shutil.rmtree(d, ignore_errors=True)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    cfg = {"data": {"name": "digits", "max_train": 128}, "model": {"name": "mlp", "width": 8},
           "train": {"epochs": 2, "device": "cpu"}}
    rep = Collect(stop_after=1)
    with pytest.raises(StopTrial):
        run_trial(cfg, rep)
    other = {**cfg, "model": {"name": "mlp", "width": 16}}
    with pytest.raises(ValueError, match="different model section"):
        run_trial(other, Collect(), restore_from=rep.dirs[0])
    with pytest.raises(ValueError, match="holds no checkpoint.pt"):
        run_trial(cfg, Collect(), restore_from=str(tmp_path))


def test_divergence_stops_with_nan_score_and_no_checkpoint():
    cfg = {"data": {"name": "digits", "max_train": 256}, "model": {"name": "mlp", "width": 32},
           "loss": {"name": "cross_entropy"},
           "train": {"epochs": 5, "lr": 1.0e30, "schedule": "constant", "weight_decay": 0.0, "device": "cpu",
                     "batch_size": 32}}
    rep = Collect()
    last = run_trial(cfg, rep)
    assert last["status"] == "diverged"
    assert last["diverged_epoch"] == last["epoch"] == len(rep.metrics) < 5
    assert math.isnan(last["score"]) and math.isnan(last["val/acc"]) and math.isnan(last["val/ece"])
    assert rep.dirs[-1] is None
    assert last["final"] is False and not TEST_KEYS & set(last)
    assert all(m["status"] == "ok" for m in rep.metrics[:-1])


# ------------------------------------------------------------------------------------------- gce-search train


def test_cmd_train_writes_metrics_checkpoint_and_refuses_to_overwrite(tmp_path, capsys):
    exported = {"trial_id": "abc", "config": {"data": {"name": "digits", "max_train": 300},
                                              "model": {"name": "mlp", "width": 32},
                                              "loss": {"name": "gce", "lam": 0.5},
                                              "train": {"epochs": 5, "device": "cpu", "batch_size": 50}}}
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(exported))
    out = tmp_path / "out"
    assert cli_main(["train", str(path), "--out", str(out), "--set", "train.epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert sum(line.startswith("epoch ") for line in printed.splitlines()) == 2

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epoch"] == 2 and metrics["final"] is True and metrics["status"] == "ok"
    assert TEST_KEYS <= set(metrics) and len(metrics["history"]) == 2
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved == resolve({**exported["config"], "train": {**exported["config"]["train"], "epochs": 2}})
    state = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 2

    # A bare trial config works too; an --out that holds a finished run is refused.
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(exported["config"]))
    assert cli_main(["train", str(bare), "--out", str(out), "--set", "train.epochs=1"]) == 2
    assert "metrics.json" in capsys.readouterr().err

    # Without metrics.json (an interrupted run), the same config resumes from the checkpoint; another is refused.
    (out / "metrics.json").unlink()
    assert cli_main(["train", str(bare), "--out", str(out), "--set", "train.epochs=1"]) == 2
    assert "different config" in capsys.readouterr().err
    assert cli_main(["train", str(path), "--out", str(out), "--set", "train.epochs=2"]) == 0
    assert "resuming" in capsys.readouterr().out
    again = json.loads((out / "metrics.json").read_text())
    assert again["test/acc"] == metrics["test/acc"] and again["history"] == metrics["history"]


def test_cmd_train_lists_every_config_problem_before_running(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": -1.0, "optimizer": "rmsprop"}, "loss": {"name": "gce"}}))
    out = tmp_path / "out"
    assert cli_main(["train", str(path), "--out", str(out), "--set", "calibration.breakpoints=[0.9, 0.5]"]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "train.optimizer" in err and "calibration.breakpoints" in err
    assert not out.exists()
    assert cli_main(["train", str(path), "--out", str(out), "--set", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert cli_main(["train", str(path), "--out", str(out), "--set", "train.lr.x=1"]) == 2  # into a value
    assert "--set 'train.lr.x=1': train.lr is -1.0, not a mapping; valid: a dotted path to a setting" in capsys.readouterr().err
    # Settings valid one by one but not together are caught before anything runs, too.
    path.write_text(yaml.safe_dump({"train": {"workers": 3, "batch_size": 64, "nesterov": True, "momentum": 0.0}}))
    assert cli_main(["train", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and "multiple of train.workers" in err and "train.nesterov" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="multiple of train.workers"):
        run_trial({"train": {"workers": 2, "batch_size": 63}})


# ------------------------------------------------------------------------------------------------ Ray Tune adapter


def test_tune_adapter_reports_every_epoch_with_a_checkpoint(tmp_path):
    import ray
    from ray import tune

    from gce_search.search.trainable import Trainable

    cfg = resolve({"data": {"name": "digits", "max_train": 256}, "model": {"name": "mlp", "width": 32},
                   "loss": {"name": "gce"}, "train": {"epochs": 2, "device": "cpu", "batch_size": 64}})
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        tuner = tune.Tuner(Trainable, param_space={"trial_config": cfg},
                           tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=1),
                           run_config=tune.RunConfig(storage_path=str(tmp_path), name="adapter"))
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert not results.errors
    result = results[0]
    assert result.metrics["epoch"] == 2 and result.metrics["final"] is True
    assert TEST_KEYS <= set(result.metrics)
    assert result.metrics["node_id"] and "cuda_visible_devices" in result.metrics
    history = result.metrics_dataframe
    assert list(history["epoch"]) == [1, 2]
    assert result.config["trial_config"] == cfg
    assert result.checkpoint is not None
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, CHECKPOINT_FILE), weights_only=True)
    assert state["epoch"] == 2 and state["metrics"]["val/acc"] == result.metrics["val/acc"]
    with result.checkpoint.as_directory() as d:  # what a restarted trial checks a copy against
        assert json.loads(open(os.path.join(d, "manifest.json")).read()) == {
            "epoch": 2, "sizes": {CHECKPOINT_FILE: os.path.getsize(os.path.join(d, CHECKPOINT_FILE))}}


def test_newest_complete_checkpoint_in_a_trial_folder(tmp_path):
    import pyarrow.fs

    from gce_search.trainables.checkpoints import MANIFEST_FILE, newest_checkpoint, write_manifest

    fs = pyarrow.fs.LocalFileSystem()

    def checkpoint(index: int, epoch: int, payload: bytes = b"x" * 100) -> Path:
        folder = tmp_path / f"checkpoint_{index:06d}"
        folder.mkdir()
        (folder / CHECKPOINT_FILE).write_bytes(payload)
        write_manifest(str(folder), epoch)
        return folder

    assert newest_checkpoint(fs, str(tmp_path / "missing")) is None
    assert newest_checkpoint(fs, str(tmp_path)) is None
    checkpoint(2, epoch=3)
    assert newest_checkpoint(fs, str(tmp_path)) == (str(tmp_path / "checkpoint_000002"), 3, 2)
    checkpoint(1, epoch=4)  # a later epoch in a lower-numbered folder (numbering restarted): the epoch decides
    assert newest_checkpoint(fs, str(tmp_path))[1:] == (4, 1)
    truncated = checkpoint(4, epoch=6)  # an interrupted copy: checkpoint.pt shorter than the manifest says
    (truncated / CHECKPOINT_FILE).write_bytes(b"x" * 50)
    no_manifest = checkpoint(5, epoch=7)
    (no_manifest / MANIFEST_FILE).unlink()
    garbled = checkpoint(6, epoch=8)
    (garbled / MANIFEST_FILE).write_text('{"epoch": 8, "si')
    missing_file = checkpoint(8, epoch=9)
    (missing_file / CHECKPOINT_FILE).unlink()
    (tmp_path / "checkpoint_000009").write_text("a file, not a folder")
    (tmp_path / "not_a_checkpoint").mkdir()
    assert newest_checkpoint(fs, str(tmp_path))[1:] == (4, 1)
    checkpoint(3, epoch=4)  # the same epoch twice: the higher index
    assert newest_checkpoint(fs, str(tmp_path))[1:] == (4, 3)
    assert json.loads((tmp_path / "checkpoint_000003" / MANIFEST_FILE).read_text()) == {
        "epoch": 4, "sizes": {CHECKPOINT_FILE: 100}}


def test_tune_trainable_goes_on_from_a_checkpoint_on_disk_and_reports_the_epochs_it_holds(tmp_path):
    """A trial restarted while Ray's saved state knows no checkpoint of it, but its folder holds one (ending epoch
    3 of 5): it starts from that checkpoint, first reports epochs 1-3 again from the checkpoint's history (Ray had
    not logged them), then trains 4 and 5; Ray's iteration count equals the epoch throughout."""
    import shutil

    import ray
    from ray import tune

    from gce_search.trainables.checkpoints import write_manifest
    from gce_search.search.trainable import Trainable

    cfg = resolve({"data": {"name": "digits", "max_train": 256}, "model": {"name": "mlp", "width": 32},
                   "train": {"epochs": 5, "device": "cpu", "batch_size": 64, "threads": 1}})
    uninterrupted: list[dict] = []
    trial_dir = tmp_path / "prefilled" / "trial_prefilled"

    def keep(metrics, checkpoint_dir):
        uninterrupted.append(metrics)
        if metrics["epoch"] == 3:
            target = trial_dir / "checkpoint_000002"
            shutil.copytree(checkpoint_dir, target)
            write_manifest(str(target), 3)
        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir)

    run_trial(cfg, keep)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        tuner = tune.Tuner(Trainable, param_space={"trial_config": cfg},
                           tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=1,
                                                       trial_dirname_creator=lambda trial: "trial_prefilled"),
                           run_config=tune.RunConfig(storage_path=str(tmp_path), name="prefilled"))
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert not results.errors
    history = results[0].metrics_dataframe
    assert list(history["epoch"]) == [1, 2, 3, 4, 5]
    assert list(history["training_iteration"]) == [1, 2, 3, 4, 5]
    # epochs 1-3 come from the checkpoint's history, 4-5 from training on from it: all as in one uninterrupted run
    assert list(history["val/acc"]) == [m["val/acc"] for m in uninterrupted]
    assert list(history["train/loss"]) == [m["train/loss"] for m in uninterrupted]
    # the next checkpoints went into new folders, past the one found, which is left as it was
    assert sorted(p.name for p in trial_dir.glob("checkpoint_*")) == [
        "checkpoint_000002", "checkpoint_000003", "checkpoint_000004"]
    assert json.loads((trial_dir / "checkpoint_000002" / "manifest.json").read_text())["epoch"] == 3
