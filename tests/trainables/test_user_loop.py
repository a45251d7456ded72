"""Your own training loop (`trainable: "module:function"`, trainables.user_loop): scored, reported, checkpointed and
resumed as the shipped loop's trials are, with real torch, real checkpoints and a real Ray Tune search."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from gce_search.errors import ConfigError
from gce_search.trainables.checkpoints import CHECKPOINT_FILE
from gce_search.trainables.config import resolve
from gce_search.trainables.trial import run_trial

# A loop on the configured data, model and loss: SGD on shuffled batches (the global torch RNG), then the logits.
LOOP = '''
from pathlib import Path

import torch


class Note:
    """Not a tensor, dict or number: a checkpoint stores it as the bytes of its own torch.save."""

    def __init__(self, epoch):
        self.epoch = epoch


def train(config, session):
    _train(config, session, lambda epoch: None)


def crash_once(config, session):
    """As train, but the first run raises after reporting epoch 2 (Ray restarts the trial from its checkpoint)."""
    marker = Path(__file__).with_name("crashed-once")

    def after(epoch):
        if epoch == 2 and not marker.exists():
            marker.write_text("crashed after epoch 2")
            raise RuntimeError("a crash after epoch 2, once")

    _train(config, session, after)


def _train(config, session, after):
    d = session.data
    model = session.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=config["train"]["lr"], momentum=0.9)
    restored = session.restored_state
    if restored is not None:
        model.load_state_dict(restored["model"])
        opt.load_state_dict(restored["optimizer"])
    n, bs = d.train_y.shape[0], config["train"]["batch_size"]
    for epoch in range(session.start_epoch + 1, session.epochs + 1):
        model.train()
        perm = torch.randperm(n)
        total, steps = 0.0, 0
        for i in range(0, n - bs + 1, bs):
            idx = perm[i:i + bs]
            loss = session.loss(model(d.train_x[idx]), d.train_y[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        model.eval()
        with torch.no_grad():
            logits = {s: (model(getattr(d, f"{s}_x")), getattr(d, f"{s}_y")) for s in ("calib", "val", "test")}
        extra = {"my/start_epoch": session.start_epoch,
                 "my/restored_note": restored["note"].epoch if restored is not None else -1}
        session.report(epoch=epoch, logits=logits, train_loss=total / steps, metrics=extra,
                       state={"model": model.state_dict(), "optimizer": opt.state_dict(), "note": Note(epoch)})
        after(epoch)
'''

# Loops that report made-up logits (no training): what report refuses, and a diverging run.
REPORTS = '''
import math

import torch

AFTER_REPORT = []


def _logits(n=40, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 3, torch.randint(0, k, (n,), generator=g)


def diverge(config, session):
    for epoch in range(1, session.epochs + 1):
        calib = _logits()
        val = _logits(seed=1)
        if epoch == 2:
            val = (torch.full_like(val[0], math.nan), val[1])
        session.report(epoch=epoch, logits={"calib": calib, "val": val}, train_loss=1.0)
        AFTER_REPORT.append(epoch)


def skips_an_epoch(config, session):
    session.report(epoch=2, logits={"calib": _logits(), "val": _logits()}, train_loss=1.0)


def no_val(config, session):
    session.report(epoch=1, logits={"calib": _logits()}, train_loss=1.0)


def bad_labels(config, session):
    x, y = _logits()
    session.report(epoch=1, logits={"calib": (x, y + 5), "val": _logits()}, train_loss=1.0)


def no_test_at_the_end(config, session):
    for epoch in range(1, session.epochs + 1):
        session.report(epoch=epoch, logits={"calib": _logits(), "val": _logits()}, train_loss=1.0)


def reserved_metric(config, session):
    session.report(epoch=1, logits={"calib": _logits(), "val": _logits()}, train_loss=1.0, metrics={"val/acc": 1.0})


def returns_early(config, session):
    session.report(epoch=1, logits={"calib": _logits(), "val": _logits()}, train_loss=1.0)


def one_argument(config):
    pass


not_a_function = 3
'''

TIMING = {"time/train_s", "time/eval_s"}


def tiny(trainable: str | None, epochs: int = 2, **extra) -> dict:
    cfg = {"data": {"name": "digits", "max_train": 300}, "model": {"name": "mlp", "width": 32},
           "loss": {"name": "gce", "lam": 0.5},
           "train": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "device": "cpu", "threads": 1},
           "calibration": {"method": "ats", "breakpoints": [0.5, 0.8, 0.95]}, **extra}
    if trainable is not None:
        cfg["trainable"] = trainable
    return cfg


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """The test's loop modules, importable as `loop_<test>` and `reports_<test>` (unique names: no module cached by
    another test is reused)."""
    import sys

    folder = tmp_path / "code"
    folder.mkdir()
    tag = f"{abs(hash(str(tmp_path))):x}"
    names = {"loop": f"userloop_{tag}", "reports": f"userreports_{tag}"}
    (folder / f"{names['loop']}.py").write_text(LOOP)
    (folder / f"{names['reports']}.py").write_text(REPORTS)
    monkeypatch.syspath_prepend(str(folder))
    yield names
    for name in names.values():
        sys.modules.pop(name, None)


class Keeper:
    """A reporter that keeps every result and a copy of every checkpoint folder (as Ray or gce-search train would
    persist it)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.results: list[dict] = []
        self.checkpoints: list[Path | None] = []

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.results.append(metrics)
        if checkpoint_dir is None:
            self.checkpoints.append(None)
            return
        kept = self.folder / f"checkpoint_{metrics['epoch']}"
        shutil.copytree(checkpoint_dir, kept)
        shutil.rmtree(checkpoint_dir)
        self.checkpoints.append(kept)


def test_a_user_loop_is_scored_calibrated_and_checkpointed_as_the_shipped_loop(user_modules, tmp_path):
    from gce_search.trainables.calibration import build_calibrator
    from gce_search.trainables.inference import split_logits
    from gce_search.trainables.metrics import summary

    shipped = run_trial(tiny(None))
    keeper = Keeper(tmp_path)
    last = run_trial(tiny(f"{user_modules['loop']}:train"), keeper)
    # every key of the shipped loop's final result, but those only the shipped loop can know (its LR schedule, its
    # precision probe, its images/s)
    only_shipped = {"lr", "train/bf16", "train/channels_last", "train/images_per_s", "device/info"}
    assert set(shipped) - only_shipped <= set(last), set(shipped) - only_shipped - set(last)
    assert [r["epoch"] for r in keeper.results] == [1, 2]
    first, final = keeper.results
    assert first["final"] is False and not any(k.startswith("test/") for k in first) and "data/info" not in first
    assert final["final"] is True and final["status"] == "ok" and final["test/n"] == shipped["test/n"]
    assert final["data/info"] == shipped["data/info"] and final["val/n"] == shipped["val/n"]
    assert final["my/start_epoch"] == 0 and final["my/restored_note"] == -1
    assert last == final

    # the configured calibrator (ATS, 4 pieces) fitted on the reported calib logits, the metrics through it on val
    state = torch.load(keeper.checkpoints[-1] / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    logits = split_logits(state, ("calib", "val", "test"))
    calibrator = build_calibrator(resolve(tiny(None))["calibration"]).fit(*logits["calib"])
    assert final["calibration/temperatures"] == pytest.approx(list(calibrator.temperatures), abs=0)
    assert len(final["calibration/temperatures"]) == 4
    val_raw, val_y = logits["val"]
    cal = summary(calibrator.transform(val_raw), val_y, n_bins=15, num_classes=10)
    raw = summary(val_raw, val_y, n_bins=15, num_classes=10)
    assert final["val/ece"] == cal["ece"] and final["val/acc"] == cal["acc"] and final["val/nll"] == cal["nll"]
    assert final["val/ece_raw"] == raw["ece"] and final["val/ece"] != final["val/ece_raw"]
    assert final["score"] == pytest.approx(final["val/acc"] - final["val/ece"], abs=1e-12)
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]
    assert state["state"] is None and state["state_pickle"].dtype == torch.uint8  # Note is not weights_only data
    assert split_logits(str(keeper.checkpoints[0]), ("val",))["val"][0].shape == (val_raw.shape[0], 10)
    with pytest.raises(ValueError, match=r"holds the logits of calib, val, not 'test'"):
        split_logits(str(keeper.checkpoints[0]), ("test",))


def test_a_resumed_user_loop_gets_its_state_back_and_goes_on_exactly(user_modules, tmp_path):
    cfg = tiny(f"{user_modules['loop']}:train", epochs=3)
    whole = Keeper(tmp_path / "whole")
    run_trial(cfg, whole)
    resumed = Keeper(tmp_path / "resumed")
    last = run_trial(cfg, resumed, restore_from=str(whole.checkpoints[0]))
    assert [r["epoch"] for r in resumed.results] == [2, 3]
    assert all(r["my/start_epoch"] == 1 and r["my/restored_note"] == 1 for r in resumed.results)

    def scores(r):
        return {k: v for k, v in r.items() if k not in TIMING and not k.startswith("my/")}

    assert [scores(r) for r in resumed.results] == [scores(r) for r in whole.results[1:]]  # bit for bit (CPU)
    assert scores(last) == scores(whole.results[-1])
    # a checkpoint of the shipped loop, or of another config, is refused by name
    shipped = Keeper(tmp_path / "shipped")
    run_trial(tiny(None, epochs=3), shipped)
    with pytest.raises(ValueError, match="written by the shipped training loop"):
        run_trial(cfg, None, restore_from=str(shipped.checkpoints[0]))
    with pytest.raises(ValueError, match="different model section"):
        run_trial({**cfg, "model": {"name": "mlp", "width": 16}}, None, restore_from=str(whole.checkpoints[0]))


def test_session_loss_is_the_configured_loss(user_modules):
    from gce_search.trainables.losses import build_loss
    from gce_search.trainables.user_loop import Session

    cfg = resolve(tiny(f"{user_modules['loop']}:train", loss={"name": "focal", "gamma": 2.0}))
    logits, targets = torch.randn(16, 5, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 5
    got = Session(cfg, None, None).loss(logits, targets)
    assert got.shape == (16,)
    assert torch.equal(got, build_loss({"name": "focal", "gamma": 2.0}, 5)(logits, targets))
    assert not torch.equal(got, build_loss({"name": "focal", "gamma": 3.0}, 5)(logits, targets))


def test_a_diverged_report_stops_the_loop(user_modules, tmp_path):
    import importlib

    keeper = Keeper(tmp_path)
    last = run_trial(tiny(f"{user_modules['reports']}:diverge", epochs=4), keeper)
    assert [r["status"] for r in keeper.results] == ["ok", "diverged"]
    assert last["status"] == "diverged" and last["diverged_epoch"] == 2 and last["final"] is False
    assert math.isnan(last["val/acc"]) and math.isnan(last["score"]) and keeper.checkpoints[1] is None
    assert importlib.import_module(user_modules["reports"]).AFTER_REPORT == [1]  # report did not return at epoch 2


@pytest.mark.parametrize("function, error, message", [
    ("skips_an_epoch", ValueError, r"session.report\(epoch=2\): valid: 1 \(each epoch once"),
    ("no_val", ValueError, r"session.report\(logits=...\): no 'val' at epoch 1"),
    ("bad_labels", ValueError, r"logits=\{'calib': ...\}\): labels range over \[5, 7\]; valid: class indices in "
                               r"\[0, 2\]"),
    ("no_test_at_the_end", ValueError, r"no 'test' at epoch 2; valid: keys 'calib' and 'val', and test on the final"),
    ("reserved_metric", ValueError, r"metrics=\{'val/acc': ...\}\): a name gce-search reports itself"),
    ("returns_early", RuntimeError, r"returned after reporting epoch 1 of train.epochs 2"),
])
def test_bad_reports_are_refused_by_name(user_modules, function, error, message):
    with pytest.raises(error, match=message):
        run_trial(tiny(f"{user_modules['reports']}:{function}", epochs=2))


def test_a_trainable_that_does_not_load_is_refused_before_anything_runs(user_modules, tmp_path, capsys):
    import yaml

    from gce_search.search.cli import main
    from gce_search.spaces.validation import spec_from_dict

    space = {"data": {"name": "digits"}, "space": {"train.lr": {"low": 0.01, "high": 0.1}}}
    mod = user_modules["reports"]
    cases = {
        "not a reference": r"trainable: got 'not a reference'; valid: \"module:function\"",
        "no_such_module_here:train": r"trainable: cannot import module 'no_such_module_here' \(ModuleNotFoundError",
        f"{mod}:nothing": rf"trainable: '{mod}' has no attribute 'nothing'; valid: one of its callables: .*diverge",
        f"{mod}:not_a_function": r"trainable: .* is a int, not callable",
        f"{mod}:one_argument": r"trainable: .* cannot be called with two arguments \(its signature is \(config\)\)",
    }
    for value, message in cases.items():
        with pytest.raises(ConfigError) as err:
            spec_from_dict({**space, "trainable": value})
        assert any(__import__("re").match(message, p) for p in err.value.problems), (value, err.value.problems)
    with pytest.raises(ConfigError) as err:
        spec_from_dict({**space, "trainable": f"{mod}:diverge", "train": {"workers": 2, "batch_size": 64}})
    assert any(p.startswith("train.workers: got 2 with trainable") for p in err.value.problems)
    with pytest.raises(ConfigError) as err:
        spec_from_dict({**space, "space": {"trainable": {"choices": [f"{mod}:diverge"]}}})
    assert any(p.startswith("space.trainable: the training loop cannot be searched") for p in err.value.problems)
    spec = spec_from_dict({**space, "trainable": f"{mod}:diverge"})
    assert spec.base_config["trainable"] == f"{mod}:diverge"  # the trial config carries it (exports retrain it)

    # gce-search train: the same check, before the output folder is made
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(tiny(f"{mod}:one_argument")))
    out = tmp_path / "out"
    assert main(["train", str(config), "--out", str(out)]) == 2
    assert "trainable: " in capsys.readouterr().err and not out.exists()


SEARCH_SPACE = """\
name: user-loop
data: {name: digits, max_train: 600}
model: {name: mlp, width: 32}
loss: {name: cross_entropy}
train: {epochs: 3, batch_size: 32, device: cpu}
calibration: {method: ats}
trainable: "MODULE:train"
search: {sampler: random, num_samples: 6, seed: 0}
scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
space:
  train.lr: {low: 0.001, high: 0.3, log: true}
  calibration.breakpoints: {breakpoints: {pieces: [2, 4]}}
"""


@pytest.fixture
def ray_with_user_code(user_modules, tmp_path, monkeypatch):
    """A local Ray whose workers import the test's modules (PYTHONPATH, as a user would set it)."""
    import ray

    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "code"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield user_modules
    ray.shutdown()


def test_a_search_of_a_user_loop_is_early_stopped_and_recorded(ray_with_user_code, tmp_path, capsys):
    from gce_search.search.cli import main
    from gce_search.search.records import load_experiment

    space = tmp_path / "space.yaml"
    space.write_text(SEARCH_SPACE.replace("MODULE", ray_with_user_code["loop"]))
    storage = tmp_path / "results"
    assert main(["run", str(space), "--storage", str(storage), "--name", "ul"]) == 0
    exp = load_experiment(storage / "ul")
    assert len(exp.trials) == 6
    statuses = {t.trial_id: t.status for t in exp.trials}
    assert "stopped" in statuses.values(), f"ASHA stopped no trial: {statuses}"  # through the same reporter
    assert "complete" in statuses.values()
    for trial in exp.trials:
        assert trial.config["trainable"] == f"{ray_with_user_code['loop']}:train"
        epochs = [h["epoch"] for h in trial.history]
        assert epochs == list(range(1, len(epochs) + 1))
        if trial.status == "stopped":
            assert len(epochs) < 3 and not trial.history[-1]["final"]
        if trial.status == "complete":
            assert trial.final["final"] is True and "test/ece" in trial.final and "val/ece_raw" in trial.final
            n_pieces = len(trial.config["calibration"]["breakpoints"]) + 1
            assert len(trial.final["calibration/temperatures"]) == n_pieces
    summary = json.loads((storage / "ul" / "summary.json").read_text())
    front = summary["front"]
    assert front
    # the front's ECE error bars are bootstrapped over the val logits the loop reported (its checkpoint has no model)
    methods = [m["val_ece_uncertainty"]["method"] for m in front if "val_ece_uncertainty" in m]
    assert methods and all(m.startswith("bootstrap over val samples") for m in methods), methods
    assert not any("checkpoint unreadable" in n for t in exp.trials for n in t.notes)


def test_a_user_loop_trial_restarted_by_ray_goes_on_from_its_checkpoint(ray_with_user_code, tmp_path):
    """A trial that raises after epoch 2 is restarted by Ray (FailureConfig(max_failures=1)) from its checkpoint:
    its loop gets start_epoch 2 and the state of that report, and ends as an uninterrupted run of its config."""
    from gce_search.search.cli import main
    from gce_search.search.records import load_experiment

    module = ray_with_user_code["loop"]
    space = tmp_path / "space.yaml"
    text = SEARCH_SPACE.replace("MODULE:train", f"{module}:crash_once").replace("num_samples: 6", "num_samples: 1")
    space.write_text(text.replace("{name: asha, grace_period: 1, reduction_factor: 2}", "{name: fifo}"))
    storage = tmp_path / "results"
    assert main(["run", str(space), "--storage", str(storage), "--name", "crash"]) == 0
    assert (tmp_path / "code" / "crashed-once").is_file()  # the first run did crash
    (trial,) = load_experiment(storage / "crash").trials
    assert trial.status == "complete"
    assert [h["epoch"] for h in trial.history] == [1, 2, 3]  # each epoch logged once
    assert [h["my/start_epoch"] for h in trial.history] == [0, 0, 2]
    assert [h["my/restored_note"] for h in trial.history] == [-1, -1, 2]

    whole = Keeper(tmp_path / "whole")
    run_trial({**trial.config, "trainable": f"{module}:train"}, whole)

    def scores(r):
        return {k: v for k, v in r.items() if k.startswith(("val/", "test/", "calibration/")) or k == "score"}

    assert scores(trial.final) == scores(whole.results[-1])
