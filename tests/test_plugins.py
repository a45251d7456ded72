"""Plug-ins: losses, models, datasets and calibrators of an installed distribution, found through its entry points.

Each test writes a real distribution (a `*.dist-info` with METADATA and entry_points.txt, and the plug-in's
modules) into a directory put on sys.path, where importlib.metadata finds it; the registries then load it the
first time they are read by name. The plug-in entries pass the same contract checks as the shipped ones.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gce_search.trainables.catalog import CALIBRATORS, DATASETS, LOSSES, MODELS

REGISTRIES = (LOSSES, MODELS, DATASETS, CALIBRATORS)
REPO = Path(__file__).resolve().parents[1]

# The plug-in's torch-free module: metadata only, each implementation named by reference (imported on first use).
DEMO_META = '''
"""A demo plug-in for gce-search."""
from gce_search.trainables.catalog import CALIBRATORS, DATASETS, LOSSES, MODELS
from gce_search.trainables.registry import Param

LOSSES.add("poly1", "PolyLoss (Leng et al. 2022): cross-entropy + eps * (1 - p_t)",
           {"eps": Param(1.0, low=-1.0, doc="weight of the first polynomial term")},
           impl="gce_demo_plugin.impl:poly1")
MODELS.add("linear_probe", "a linear classifier on the flattened pixels",
           {"bias": Param(True, kind="bool", doc="learn a bias per class")},
           impl="gce_demo_plugin.impl:linear_probe")
DATASETS.add("halves", "the top (class 0) or the left (class 1) half of the image bright, plus noise",
             {"size": Param(8, low=2, kind="int", doc="image height and width"),
              "train": Param(400, low=10, kind="int", doc="images in the train/calib/val pool"),
              "test": Param(100, low=10, kind="int", doc="images in the test split")},
             impl="gce_demo_plugin.impl:load_halves")
CALIBRATORS.add("ts_clipped", "temperature scaling with T clipped to [0.5, 2]",
                impl="gce_demo_plugin.impl:ClippedTemperatureScaling")
'''

DEMO_IMPL = '''
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gce_search.trainables.calibration import TemperatureScaling
from gce_search.trainables.catalog import LOSSES
from gce_search.trainables.data import RawData


def poly1(logits, targets, eps=1.0, *, validate=True):
    eps = LOSSES["poly1"].params["eps"].check("eps", eps)
    log_p = F.log_softmax(logits, dim=1)
    log_pt = log_p.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    return -log_pt + eps * (1.0 - log_pt.exp())


def linear_probe(in_channels, num_classes, image_size, bias=True):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes, bias=bias))


def load_halves(root, subset, download, options):
    size, n_train, n_test = options.get("size", 8), options.get("train", 400), options.get("test", 100)
    rng = np.random.default_rng(0)

    def sample(n):
        y = np.arange(n) % 2
        half = (np.arange(size) < size // 2).astype(np.float32)
        x = np.where(y[:, None, None] == 0, half[None, :, None], half[None, None, :]).astype(np.float32)
        x = x + 0.8 * rng.standard_normal((n, size, size)).astype(np.float32)
        return x[:, None], y.astype(np.int64)

    train_x, train_y = sample(n_train)
    test_x, test_y = sample(n_test)
    return RawData(train_x, train_y, test_x, test_y, 2, ("top", "left"))


class ClippedTemperatureScaling(TemperatureScaling):  # its name is the key it is registered under
    def _fit(self, shifted, gap):
        super()._fit(shifted, gap)
        self.temperature = float(min(2.0, max(0.5, self.temperature)))
'''

DEMO_ENTRY_POINTS = {
    "gce_search.losses": {"poly1": "gce_demo_plugin"},
    "gce_search.models": {"linear_probe": "gce_demo_plugin"},
    "gce_search.datasets": {"halves": "gce_demo_plugin"},
    "gce_search.calibrators": {"ts_clipped": "gce_demo_plugin"},
}


def write_distribution(site: Path, name: str, entry_points: dict[str, dict[str, str]],
                       modules: dict[str, str]) -> Path:
    """A distribution as an installer leaves it in site-packages: its modules and `<name>-0.1.dist-info`."""
    for relative, text in modules.items():
        path = site / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for group, eps in entry_points.items()))
    return site


def _forget(prefixes: tuple[str, ...]) -> None:
    for module in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        del sys.modules[module]


@pytest.fixture
def install(tmp_path, monkeypatch):
    """install(name, entry_points, modules): put a distribution on sys.path; the registries load it on their next
    read. Everything is undone afterwards (path, imported plug-in modules, plug-in entries)."""
    packages: list[str] = []

    def _install(name: str, entry_points: dict, modules: dict) -> Path:
        site = write_distribution(tmp_path / f"site-{name}", name, entry_points, modules)
        packages.extend({m.split("/")[0].removesuffix(".py") for m in modules})
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()
        for registry in REGISTRIES:
            registry.reload_plugins()
        return site

    yield _install
    monkeypatch.undo()
    importlib.invalidate_caches()
    _forget(tuple(packages))
    for registry in REGISTRIES:
        registry.reload_plugins()
    assert not any(registry.plugins() for registry in REGISTRIES)


@pytest.fixture
def demo(install):
    return install("gce-demo-plugin", DEMO_ENTRY_POINTS,
                   {"gce_demo_plugin/__init__.py": DEMO_META, "gce_demo_plugin/impl.py": DEMO_IMPL})


def test_plugin_entries_are_found_with_their_metadata_and_without_importing_the_implementation(demo):
    assert "poly1" in LOSSES and "linear_probe" in MODELS and "halves" in DATASETS and "ts_clipped" in CALIBRATORS
    assert LOSSES.plugins() == ["poly1"] and MODELS.plugins() == ["linear_probe"]
    assert "poly1" in LOSSES.names() and LOSSES.names()[:2] == ["cross_entropy", "gce"]  # shipped entries first
    entry = LOSSES["poly1"]
    assert entry.description.startswith("PolyLoss") and set(entry.params) == {"eps"}
    assert entry.stateful is False and entry.batch_coupled is False  # the traits every loss has
    assert MODELS["linear_probe"].min_image_size == 1
    assert "gce_demo_plugin.impl" not in sys.modules  # metadata read, implementation not imported
    assert entry.implemented and callable(entry.impl)
    assert "gce_demo_plugin.impl" in sys.modules


def test_a_plugin_loss_model_and_calibrator_pass_the_contract_tests_of_the_shipped_ones(demo):
    from tests.trainables import test_calibration, test_losses, test_models

    test_losses.test_contract_every_registered_loss("poly1")
    for in_channels, image_size in [(1, 8), (3, 12)]:
        test_models.test_every_model_forward_backward("linear_probe", in_channels, image_size)
    test_models.test_declared_params_are_builder_keywords_and_defaults_build("linear_probe")

    from gce_search.trainables.calibration import build_calibrator

    logits, labels, _ = test_calibration.synthetic(2000, [1.0, 1.6, 0.7, 2.2], seed=8)
    val, _, _ = test_calibration.synthetic(500, [1.0, 1.6, 0.7, 2.2], seed=9)
    data = (logits.float(), labels, val.float())
    for check in (test_calibration.test_contract_unfitted_use_is_an_error, test_calibration.test_contract_fit_transform,
                  test_calibration.test_contract_state_dict_round_trips_through_json,
                  test_calibration.test_contract_transform_rejects_non_finite_logits):
        check(build_calibrator({"method": "ts_clipped", **test_calibration.CAL_CONFIG}), data)
    fitted = build_calibrator({"method": "ts_clipped"}).fit(logits.float() * 10, labels)
    assert fitted.temperatures == [2.0]  # overconfident logits: TS wants T > 2, the clip holds it at 2


def test_a_plugin_contract_failure_is_caught(install):
    """The contract checks are not vacuous on a plug-in: a loss that returns one value per batch fails them."""
    meta = DEMO_META.replace("gce_demo_plugin", "gce_bad_shape").replace('"poly1"', '"batch_mean_ce"')
    impl = DEMO_IMPL.replace('LOSSES["poly1"]', 'LOSSES["batch_mean_ce"]').replace(
        "return -log_pt + eps * (1.0 - log_pt.exp())", "return (-log_pt + eps * (1.0 - log_pt.exp())).mean()")
    install("gce-bad-shape", {"gce_search.losses": {"batch_mean_ce": "gce_bad_shape"}},
            {"gce_bad_shape/__init__.py": meta, "gce_bad_shape/impl.py": impl})
    from tests.trainables import test_losses

    with pytest.raises(AssertionError):
        test_losses.test_contract_every_registered_loss("batch_mean_ce")


def test_plugins_in_a_real_training_run_and_in_config_validation(demo):
    from gce_search.errors import ConfigError
    from gce_search.trainables.config import resolve
    from gce_search.trainables.trial import run_trial

    config = {"seed": 0, "data": {"name": "halves", "subset": "size=6,train=300,test=60"},
              "model": {"name": "linear_probe"}, "loss": {"name": "poly1", "eps": 2.0},
              "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu", "threads": 1},
              "calibration": {"method": "ts_clipped"}}
    reports = []
    last = run_trial(config, lambda metrics, checkpoint_dir: reports.append(metrics))
    assert len(reports) == 1 and last["status"] == "ok" and last["final"] is True
    assert last["val/acc"] > 0.8  # halves are easy for a linear probe
    assert 0.5 <= last["calibration/temperatures"][0] <= 2.0

    synthetic = {**config, "data": {"name": "synthetic", "subset": "classes=3,size=4,train=240,test=60"},
                 "model": {"name": "mlp", "width": 16, "depth": 1}, "calibration": {"method": "ts"}}
    last = run_trial(synthetic)
    assert last["status"] == "ok" and last["val/acc"] == last["val/acc"]

    with pytest.raises(ConfigError) as err:
        resolve({**config, "loss": {"name": "poly1", "eps": -2.0}, "model": {"name": "linear_probe", "depth": 2}})
    text = str(err.value)
    assert "loss.eps: got -2.0; valid: a float in [-1, inf]" in text
    assert "model.depth" in text and "bias" in text


def _cli(args: list[str], site: Path | None) -> subprocess.CompletedProcess:
    """`gce-search ARGS` in a fresh interpreter that has the plug-in's directory on its path; prints whether torch
    got imported."""
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    code = ("import sys\nfrom gce_search.search.cli import main\nrc = main(sys.argv[1:])\n"
            "print('torch imported:', 'torch' in sys.modules)\nsys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_validate_of_a_space_using_plugins_imports_no_torch(demo, tmp_path):
    space = tmp_path / "plug.yaml"
    space.write_text(textwrap.dedent("""
        name: plug
        data: {name: halves, subset: "size=6,train=300,test=60"}
        model: {name: linear_probe}
        train: {epochs: 2, device: cpu}
        calibration: {method: ts_clipped}
        search: {num_samples: 2}
        scheduler: {name: fifo}
        space:
          loss.name: {choices: [cross_entropy, poly1]}
          poly1.eps: {low: 0.0, high: 3.0}
          linear_probe.bias: {choices: [true, false]}
        """))
    out = _cli(["validate", str(space), "--skip-data"], demo)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK: ") and "torch imported: False" in out.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(space.read_text().replace("poly1.eps: {low: 0.0, high: 3.0}", "poly1.eps: {low: -5.0, high: 3.0}")
                   .replace("[cross_entropy, poly1]", "[cross_entropy, poly1, poly2]"))
    out = _cli(["validate", str(bad), "--skip-data"], demo)
    assert out.returncode == 2
    assert "poly1.eps" in out.stderr and "[-1, inf]" in out.stderr
    assert "poly2" in out.stderr and "poly1" in out.stderr.split("poly2", 1)[1]  # the valid names include poly1

    # without the distribution on the path, the plug-in's names are unknown
    out = _cli(["validate", str(space), "--skip-data"], None)
    assert out.returncode == 2 and "unknown loss 'poly1'" in out.stderr


BROKEN = {"gce_broken_plugin/__init__.py": "import gce_no_such_dependency  # what a missing dependency looks like\n",
          "gce_lazy_plugin.py": "# registers nothing\n"}


def test_a_broken_plugin_is_reported_and_does_not_break_anything_else(install, capsys):
    site = install("gce-broken-plugin", {"gce_search.losses": {"brokenloss": "gce_broken_plugin",
                                                               "forgetful": "gce_lazy_plugin",
                                                               "gce": "gce_lazy_plugin"}}, BROKEN)
    names = LOSSES.names()
    assert "brokenloss" not in names and "forgetful" not in names and {"cross_entropy", "gce"} <= set(names)
    warnings = capsys.readouterr().err
    assert ("plug-in 'brokenloss' (entry point brokenloss = gce_broken_plugin in group gce_search.losses, "
            "distribution gce-broken-plugin 0.1) failed to load: ModuleNotFoundError: No module named "
            "'gce_no_such_dependency'") in warnings
    assert "plug-in 'forgetful'" in warnings and "registered no loss named 'forgetful'" in warnings
    assert "plug-in 'gce'" in warnings and "is a shipped loss" in warnings
    assert LOSSES["gce"].implemented and LOSSES["gce"].params["lam"].default == 1.0  # the shipped one is kept
    with pytest.raises(ValueError, match=r"unknown loss 'brokenloss'; valid: .*; plug-in 'brokenloss' .* failed"):
        LOSSES.get("brokenloss")
    LOSSES.names()
    assert capsys.readouterr().err == ""  # loaded once: reported once

    out = _cli(["validate", "quickstart", "--skip-data"], site)  # an unrelated command still works
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK: ") and "plug-in 'brokenloss'" in out.stderr
