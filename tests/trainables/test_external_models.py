"""Models from outside the catalog: torchvision builders and timm models by name, and a factory of your own; their
names and keywords checked before anything starts, and a real search over a factory's searched keyword."""
from __future__ import annotations

import json
import textwrap

import pytest
import ray
import torch
import torch.nn as nn

from gce_search.errors import ConfigError
from gce_search.spaces.validation import spec_from_dict
from gce_search.trainables.config import resolve
from gce_search.trainables.models import build_model

FACTORY_MODULE = textwrap.dedent('''\
    import torch.nn as nn

    CALLS = []


    def make_net(in_channels, num_classes, image_size, width=16, depth=1):
        CALLS.append({"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size,
                      "width": width, "depth": depth})
        layers = [nn.Flatten()]
        features = in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        return nn.Sequential(*layers, nn.Linear(features, num_classes))


    NOT_CALLABLE = 3


    def returns_a_number(in_channels, num_classes, image_size):
        return 7
''')


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tests/conftest.py


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A module `gce_test_nets` (with make_net) written to tmp_path and put on sys.path; the module name is fresh
    per test (tmp_path differs), so it is imported from this test's file."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "gce_test_nets.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(__import__("sys").modules, "gce_test_nets", raising=False)
    return folder


def train_a_few_steps(model: nn.Module, in_channels: int, image_size: int, num_classes: int = 4,
                      steps: int = 3) -> list[float]:
    """SGD steps on a fixed tiny batch; the losses, each finite, and every parameter got a gradient."""
    torch.manual_seed(0)
    x = torch.randn(8, in_channels, image_size, image_size)
    y = torch.arange(8) % num_classes
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        logits = model(x)
        assert logits.shape == (8, num_classes)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x[:1])).all()
    return losses


# ------------------------------------------------------------------------------------------- building and training


@pytest.mark.parametrize("in_channels, image_size", [(3, 32), (1, 28), (1, 8)])
def test_a_torchvision_builder_trains_on_small_images(in_channels, image_size):
    model = build_model({"name": "torchvision.resnet18"}, in_channels, 4, image_size)
    stem = model.conv1
    assert isinstance(stem, nn.Conv2d) and stem.in_channels == in_channels and stem.out_channels == 64
    assert stem.kernel_size == (7, 7) and stem.stride == (2, 2)  # torchvision's own stem, only its input changed
    assert model.fc.out_features == 4
    losses = train_a_few_steps(model, in_channels, image_size)
    assert losses[-1] < losses[0]


def test_a_torchvision_builder_gets_its_keywords_and_untrained_weights():
    torch.manual_seed(0)
    a = build_model({"name": "torchvision.resnet18", "zero_init_residual": True}, 3, 4, 32)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0.0 for b in (*a.layer1, *a.layer4))  # the keyword reached ResNet
    torch.manual_seed(0)
    b = build_model({"name": "torchvision.resnet18"}, 3, 4, 32)
    assert float(b.layer1[0].bn2.weight.detach().sum()) == 64.0  # default init: not ImageNet weights
    # the same seed builds the same network
    torch.manual_seed(0)
    c = build_model({"name": "torchvision.resnet18"}, 3, 4, 32)
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), c.parameters()))


@pytest.mark.parametrize("in_channels", [1, 3])
def test_a_timm_model_trains_with_its_input_channels(in_channels):
    pytest.importorskip("timm")
    model = build_model({"name": "timm.resnet18", "drop_rate": 0.1}, in_channels, 4, 16)
    assert model.conv1.in_channels == in_channels and model.num_classes == 4 and model.drop_rate == 0.1
    train_a_few_steps(model, in_channels, 16)


def test_a_factory_gets_the_data_shape_and_its_keywords(factory_module):
    model = build_model({"factory": "gce_test_nets:make_net", "width": 12, "depth": 2}, 1, 4, 8)
    import gce_test_nets

    assert gce_test_nets.CALLS == [{"in_channels": 1, "num_classes": 4, "image_size": 8, "width": 12, "depth": 2}]
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [12, 12, 4]
    train_a_few_steps(model, 1, 8)
    # the resolved config keeps the factory and no catalogued name
    cfg = resolve({"model": {"factory": "gce_test_nets:make_net", "width": 12}})
    assert cfg["model"] == {"factory": "gce_test_nets:make_net", "width": 12}


def test_a_factory_that_returns_no_module_is_refused(factory_module):
    with pytest.raises(ValueError, match=r"model.factory: 'gce_test_nets:returns_a_number' returned a int; valid: a "
                                         r"function returning a torch.nn.Module"):
        build_model({"factory": "gce_test_nets:returns_a_number"}, 1, 4, 8)


# -------------------------------------------------------------------------------------------------------- checking

SPACE = {"data": {"name": "digits"}, "train": {"epochs": 1}, "space": {"train.lr": {"low": 0.01, "high": 0.1}}}


def problems_of_space(model: dict, space: dict | None = None) -> list[str]:
    raw = {**SPACE, "model": model}
    if space is not None:
        raw["space"] = space
    with pytest.raises(ConfigError) as info:
        spec_from_dict(raw)
    return info.value.problems


def test_unknown_torchvision_and_timm_names_are_named_with_close_matches():
    (p,) = problems_of_space({"name": "torchvision.resnet81"})
    assert p.startswith("model.name: 'torchvision.resnet81' is not a torchvision classification model (did you mean "
                        "'resnet18'")
    assert "valid: torchvision.<one of torchvision.models.list_models(module=torchvision.models)>" in p
    pytest.importorskip("timm")
    (p,) = problems_of_space({"name": "timm.resnet81"})
    assert p.startswith("model.name: 'timm.resnet81' is not a timm model (did you mean 'resnet18'")
    assert "valid: timm.<one of timm.list_models()>" in p
    # a searched name is checked the same way
    (p,) = problems_of_space({}, {"model.name": {"choices": ["torchvision.resnet18", "torchvision.resnt18"]}})
    assert p.startswith("space.model.name.choices[1]: 'torchvision.resnt18' is not a torchvision classification "
                        "model (did you mean 'resnet18'")


def test_validate_and_build_refuse_an_unknown_name_or_keyword(tmp_path, capsys):
    from gce_search.search.cli import main

    space = tmp_path / "typo.yaml"
    space.write_text("data: {name: digits}\nmodel: {name: torchvision.resnet81}\ntrain: {epochs: 1}\n"
                     "space:\n  train.lr: {low: 0.01, high: 0.1}\n")
    assert main(["validate", str(space), "--skip-data"]) == 2
    err = capsys.readouterr().err
    assert "model.name: 'torchvision.resnet81' is not a torchvision classification model (did you mean" in err
    # a trial config that reaches the build without the space checker gets the same line
    with pytest.raises(ValueError, match=r"model.depth: not a keyword of model 'torchvision.resnet18'"):
        build_model({"name": "torchvision.resnet18", "depth": 3}, 3, 4, 32)


def test_gce_search_train_refuses_a_missing_factory_before_writing(factory_module, tmp_path, capsys):
    from gce_search.search.cli import main

    config = tmp_path / "config.yaml"
    config.write_text("data: {name: digits}\nmodel: {factory: \"gce_test_nets:make_nte\"}\ntrain: {epochs: 1}\n")
    out = tmp_path / "out"
    assert main(["train", str(config), "--out", str(out)]) == 2
    assert "model.factory: 'gce_test_nets' has no attribute 'make_nte' (did you mean 'make_net'?)" in \
        capsys.readouterr().err
    assert not out.exists()


def test_a_missing_timm_names_the_extra(monkeypatch):
    from gce_search.trainables import external

    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # `import timm` raises ImportError
    external._library_keywords.cache_clear()  # what an earlier test read with timm present
    try:
        (p,) = problems_of_space({"name": "timm.resnet18"})
    finally:
        external._library_keywords.cache_clear()
    assert p == ("model.name: 'timm.resnet18' needs timm, which is not installed; valid: pip install "
                 "\"gce-search[timm]\", or a catalogued or torchvision model")


def test_unknown_keywords_and_wrong_types_of_a_library_model():
    problems = problems_of_space({"name": "torchvision.resnet18", "zero_init_residul": True, "groups": "two"})
    assert problems[0].startswith("model.zero_init_residul: not a keyword of model 'torchvision.resnet18' (did you "
                                  "mean 'zero_init_residual'?); valid: zero_init_residual, groups, width_per_group")
    assert problems[1] == "model.groups: got 'two'; valid: a int (the type of its default)"
    # keywords the builder sets itself (a ResNet's block and layers, the weights) are not the user's
    (p,) = problems_of_space({"name": "torchvision.resnet18", "weights": "DEFAULT"})
    assert p.startswith("model.weights: not a keyword of model 'torchvision.resnet18'")
    # a searched keyword of a fixed library model is checked against the type of its default
    (p,) = problems_of_space({"name": "torchvision.resnet18"},
                             {"model.zero_init_residual": {"choices": [True, "yes"]}})
    assert p == "space.model.zero_init_residual.choices[1]: got 'yes'; valid: true or false"
    (p,) = problems_of_space({"name": "torchvision.resnet18"}, {"model.zero_init_residul": {"choices": [True]}})
    assert p.startswith("space.model.zero_init_residul: not a keyword of model 'torchvision.resnet18'; valid: "
                        "model.zero_init_residual, model.groups")


def test_factory_problems_name_model_factory(factory_module):
    (p,) = problems_of_space({"factory": "gce_test_nets:make_nte"})
    assert p == ("model.factory: 'gce_test_nets' has no attribute 'make_nte' (did you mean 'make_net'?); valid: one "
                 "of its callables: make_net, returns_a_number")
    (p,) = problems_of_space({"factory": "gce_test_netz:make_net"})
    assert p.startswith("model.factory: cannot import module 'gce_test_netz' (ModuleNotFoundError: No module named "
                        "'gce_test_netz'); valid: \"module:function\"")
    (p,) = problems_of_space({"factory": "gce_test_nets.make_net"})
    assert p.startswith("model.factory: got 'gce_test_nets.make_net'; valid: \"module:function\"")
    (p,) = problems_of_space({"factory": "gce_test_nets:NOT_CALLABLE"})
    assert p.startswith("model.factory: 'gce_test_nets:NOT_CALLABLE' is a int, not callable")
    (p,) = problems_of_space({"factory": "gce_test_nets:make_net", "name": "mlp"})
    assert p.startswith("model.factory: given together with model.name 'mlp'; valid: one of them")
    (p,) = problems_of_space({"factory": "gce_test_nets:make_net", "widht": 3})
    assert p.startswith("model.widht: not a keyword of factory 'gce_test_nets:make_net' (did you mean 'width'?); "
                        "valid: width, depth")
    (p,) = problems_of_space({"factory": "gce_test_nets:make_net"}, {"model.height": {"low": 8, "high": 32}})
    assert p == "space.model.height: not a keyword of model 'gce_test_nets:make_net'; valid: model.width, model.depth"
    # searched and fixed at once
    (p,) = problems_of_space({"factory": "gce_test_nets:make_net", "width": 8}, {"model.width": {"low": 8, "high": 32}})
    assert p.startswith("space.model.width: model.width is also set as a fixed setting")
    # the config check alone (a trial config, an export) reads the form and imports nothing
    with pytest.raises(ConfigError, match=r"model.factory: got 'nets'; valid: \"module:function\""):
        resolve({"model": {"factory": "nets"}})


def test_a_factory_keyword_is_searched_over_the_range_given(factory_module):
    spec = spec_from_dict({**SPACE, "model": {"factory": "gce_test_nets:make_net", "depth": 1},
                           "space": {"model.width": {"low": 3, "high": 300}}})
    (param,) = spec.params
    assert (param.key, param.path, param.kind, param.low, param.high, param.entry) == \
        ("model.width", "model.width", "int", 3, 300, None)
    assert spec.base_config["model"] == {"factory": "gce_test_nets:make_net", "depth": 1}
    assert spec.apply({"model.width": 77})["model"] == {"factory": "gce_test_nets:make_net", "depth": 1, "width": 77}
    assert spec_from_dict(spec.to_dict()) == spec  # what an experiment's spec.yaml holds loads back


def test_validate_of_a_shipped_space_still_imports_no_torchvision(tmp_path):
    import subprocess
    import sys

    code = ("from gce_search.search.cli import main\nassert main(['validate', 'quickstart', '--skip-data']) == 0\n"
            "import sys\nprint(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------------------------ a real search

SEARCH_SPACE = """\
name: factory_width
data: {name: synthetic, subset: "classes=3,size=6,channels=1,train=240,test=60,noise=0.5,seed=0"}
model: {factory: "gce_test_nets:make_net", depth: 1}
loss: {name: cross_entropy}
train: {epochs: 2, batch_size: 32, lr: 0.1, bf16: false, channels_last: false}
calibration: {method: ts}
search: {sampler: random, num_samples: 2, seed: 0}
scheduler: {name: fifo}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
space:
  model.width: {low: 4, high: 64}
"""


@pytest.fixture
def ray_seeing_the_factory(factory_module, monkeypatch):
    """A local Ray whose workers import the factory's module: PYTHONPATH is what trial processes inherit (sys.path
    of this process reaches only the driver)."""
    import os

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(factory_module),
                                                                   os.environ.get("PYTHONPATH")])))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield factory_module
    ray.shutdown()


def test_a_search_over_a_factory_keyword(ray_seeing_the_factory, tmp_path):
    from gce_search.search.cli import main

    space = tmp_path / "factory_width.yaml"
    space.write_text(SEARCH_SPACE)
    storage = tmp_path / "results"
    assert main(["run", str(space), "--storage", str(storage), "--name", "fw"]) == 0
    widths = {}
    for result in sorted((storage / "fw").glob("*/result.json")):
        lines = [json.loads(ln) for ln in result.read_text().splitlines() if ln.strip()]
        last = lines[-1]
        assert last["final"] is True and last["epoch"] == 2
        model_cfg = last["config"]["trial_config"]["model"]
        assert model_cfg["factory"] == "gce_test_nets:make_net" and "name" not in model_cfg
        widths[last["trial_id"]] = model_cfg["width"]
        # the checkpoint holds a network of the searched width
        ckpts = sorted(result.parent.glob("checkpoint_*/checkpoint.pt"))
        state = torch.load(ckpts[-1], weights_only=True)["model"]
        assert state["1.weight"].shape == (model_cfg["width"], 36)
    assert len(widths) == 2
    assert all(4 <= w <= 64 and isinstance(w, int) for w in widths.values())
    assert len(set(widths.values())) > 1  # searched, not one fixed value


IMAGE_FOLDER_SPACE = """\
name: library_models
data: {name: image_folder, root: ROOT, calib: 0.2, val: 0.2}
loss: {name: cross_entropy}
train: {epochs: 2, batch_size: 32, lr: 0.05, bf16: false, channels_last: false}
calibration: {method: ts}
search: {sampler: random, num_samples: 2, seed: 0}
scheduler: {name: fifo}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
space:
  model.name: {choices: [torchvision.resnet18, timm.resnet18]}
"""


def write_image_folder(root, classes: int = 3, per_class: int = 70, size: int = 16) -> None:
    """<root>/train/<class>/*.png: RGB images of a class colour plus noise, PIL-written."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "train" / f"class_{c}"
        folder.mkdir(parents=True)
        colour = np.zeros(3)
        colour[c % 3] = 200.0
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{i:03d}.png")


@pytest.fixture
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_search_over_a_torchvision_and_a_timm_model_on_an_image_folder(local_ray, tmp_path):
    pytest.importorskip("timm")
    from gce_search.search.cli import main

    write_image_folder(tmp_path / "images")  # 210 images 3×16×16 in 3 classes
    space = tmp_path / "library_models.yaml"
    space.write_text(IMAGE_FOLDER_SPACE.replace("ROOT", str(tmp_path / "images")))
    storage = tmp_path / "results"
    assert main(["run", str(space), "--storage", str(storage), "--name", "lib"]) == 0
    completed = {}
    for result in sorted((storage / "lib").glob("*/result.json")):
        last = json.loads([ln for ln in result.read_text().splitlines() if ln.strip()][-1])
        assert last["final"] is True and last["epoch"] == 2 and last["status"] == "ok"
        name = last["config"]["trial_config"]["model"]["name"]
        completed[name] = completed.get(name, 0) + 1
        assert last["data/info"]["num_classes"] == 3
    assert set(completed) == {"torchvision.resnet18", "timm.resnet18"}, completed
    assert sum(completed.values()) == 2
