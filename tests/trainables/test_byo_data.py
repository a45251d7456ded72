"""Your own data (docs/byo.md, "Data"): image_folder, arrays (.npz), a factory; the checks before anything starts; and
the streaming path for data above data.memory_limit, which must train and report exactly as the in-memory path."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gce_search.search.cli import main
from gce_search.trainables.config import resolve
from gce_search.trainables.data import (ArrayImages, StreamedImages, data_problems, load_splits, long_tail_counts,
                                        memory_limit, own_data)
from gce_search.trainables.trial import run_trial


def write_folder(root: Path, classes: int = 3, per_class: int = 40, size: int = 8, splits=("train",),
                 mode: str = "RGB", seed: int = 0) -> Path:
    """An ImageFolder of PNGs whose mean brightness tells the class (learnable in a few epochs)."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else max(4, per_class // 4)):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                pixels = (rng.random(shape) * 60 + c * 80).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode=mode).save(folder / f"{i:04d}.png")
    return root


def trial_cfg(data: dict, epochs: int = 2, **model) -> dict:
    return {"data": data, "model": {"name": "mlp", "width": 16, "depth": 1, **model},
            "train": {"epochs": epochs, "batch_size": 32, "device": "cpu", "lr": 0.05, "threads": 1},
            "calibration": {"method": "ts"}}


# ------------------------------------------------------------------------------------------------------ image_folder


def test_image_folder_without_test_carves_a_seeded_fifth(tmp_path):
    root = write_folder(tmp_path / "imgs")
    data = resolve({"data": {"name": "image_folder", "root": str(root)}})["data"]
    s = load_splits(data)
    assert s.num_classes == 3 and s.in_channels == 3 and s.image_size == 8
    assert s.info["sizes"]["test"] == 24 and sum(s.info["sizes"].values()) == 120  # 0.2 of 120
    assert s.info["class_names"] == ["class_0", "class_1", "class_2"] and s.info["streamed"] is False
    again = load_splits(data)
    assert torch.equal(again.test_x, s.test_x) and torch.equal(again.train_y, s.train_y)
    other = load_splits({**data, "split_seed": 1})
    assert not torch.equal(other.test_y, s.test_y) or not torch.equal(other.test_x, s.test_x)


def test_image_folder_val_joins_the_pool_and_test_is_the_test_split(tmp_path):
    root = write_folder(tmp_path / "imgs", splits=("train", "val", "test"), mode="L")
    s = load_splits(resolve({"data": {"name": "image_folder", "root": str(root)}})["data"])
    assert s.in_channels == 1  # grayscale PNGs stay one channel
    assert s.info["sizes"]["test"] == 30  # 3 classes × 10 files in test/
    assert s.info["sizes"]["train"] + s.info["sizes"]["calib"] + s.info["sizes"]["val"] == 120 + 30


def test_image_folder_problems_name_data_root(tmp_path):
    def problems(root):
        return data_problems(resolve({"data": {"name": "image_folder", "root": str(root)}})["data"])

    assert problems(tmp_path / "missing")[0].startswith("data.root: ")
    assert "is not a directory; valid: a folder holding train/<class>/" in problems(tmp_path / "missing")[0]
    (tmp_path / "notrain").mkdir()
    assert "has no train/ folder" in problems(tmp_path / "notrain")[0]
    root = write_folder(tmp_path / "empty_class")
    (root / "train" / "class_9").mkdir()
    [line] = problems(root)
    assert line.startswith("data.root: ") and "class_9 holds no .png/.jpg/.jpeg image" in line and "valid: " in line
    root = write_folder(tmp_path / "foreign", splits=("train", "test"))
    (root / "test" / "class_0").rename(root / "test" / "dog")
    [line] = problems(root)
    assert "class folder(s) dog that train/ does not" in line and "valid: class folders among train/'s" in line
    no_root = data_problems(resolve({"data": {"name": "image_folder"}})["data"])
    assert no_root == [no_root[0]] and no_root[0].startswith("data.root: image_folder needs it; valid: ")


# ------------------------------------------------------------------------------------------------------------ arrays


@pytest.mark.parametrize("layout", ["nchw_uint8", "nhwc_float", "features"])
def test_arrays_layouts_and_memory_map(tmp_path, layout):
    rng = np.random.default_rng(0)
    y = np.arange(200) % 4
    if layout == "nchw_uint8":
        x = rng.integers(0, 255, (200, 3, 8, 8), dtype=np.uint8)
    elif layout == "nhwc_float":
        x = rng.random((200, 8, 8, 3), dtype=np.float64)
    else:
        x = rng.standard_normal((200, 12)).astype(np.float32) + 3 * y[:, None]
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:40], y_test=y[:40])
    data = resolve({"data": {"name": "arrays", "path": str(path)}})["data"]
    raw = own_data(data)
    assert isinstance(raw.train_x, ArrayImages) and raw.train_x._mmap is not None  # savez: memory-mapped
    s = load_splits(data)
    expected = (12, 1) if layout == "features" else (3, 8)
    assert (s.in_channels, s.image_size) == expected and s.num_classes == 4 and s.info["sizes"]["test"] == 40
    assert s.info["features"] is (layout == "features")
    if layout == "nhwc_float":  # the layout is detected: channel last becomes channel first, values kept
        first_test = torch.from_numpy(x[0].transpose(2, 0, 1).astype(np.float32))
        mean = torch.tensor(s.info["mean"]).view(-1, 1, 1).float()
        std = torch.tensor(s.info["std"]).view(-1, 1, 1).float()
        assert torch.allclose(s.test_x[0] * std + mean, first_test, atol=1e-5)
    if layout == "features":
        cfg = trial_cfg(data, epochs=4)
        cfg["train"]["lr"] = 0.2
        metrics = run_trial(cfg)
        assert metrics["final"] and metrics["val/acc"] > 0.5  # chance: 0.25
        [line] = data_problems(data, {"name": "small_cnn"})
        assert line == "model.name: 'small_cnn' is a conv net and the data are feature vectors (N×12); valid: 'mlp'"
        with pytest.raises(ValueError, match=r"model.name: 'resnet18' is a conv net and the data are feature vectors"):
            run_trial({**cfg, "model": {"name": "resnet18"}})
        [line] = data_problems({**data, "augment": {"crop": True, "pad": 4, "flip": False}})
        assert line.startswith("data.augment.crop: ") and line.endswith("valid: false")


def test_arrays_compressed_npz_is_read_whole(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, x_train=np.zeros((50, 1, 4, 4), np.uint8), y_train=np.arange(50) % 2)
    raw = own_data(resolve({"data": {"name": "arrays", "path": str(path)}})["data"])
    assert raw.train_x._mmap is None and raw.test_x is None and raw.train_x.shape == (50, 1, 4, 4)


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((20, 3, 4, 4), np.uint8)}, "data.path: {p} has no y_train (has x_train); valid: an .npz"),
    ({"x_train": np.zeros((20, 3, 4, 4), np.uint8), "y_train": np.arange(20) % 2, "x_val": np.zeros(3)},
     "data.path: {p} has unknown key(s) x_val; valid: x_train, y_train, x_test, y_test"),
    ({"x_train": np.zeros((20, 5, 4, 7), np.uint8), "y_train": np.arange(20) % 2},
     "data.path: {p} x_train: shape (20, 5, 4, 7) is not N×C×H×W or N×H×W×C"),
    ({"x_train": np.zeros((20, 3, 4, 4), np.uint8), "y_train": np.arange(19) % 2},
     "data.path: y_train: shape (19,) for 20 samples; valid: 20 integer labels"),
    ({"x_train": np.zeros((20, 3, 4, 4), np.uint8), "y_train": np.arange(20) % 2 - 1},
     "data.path: y_train: label -1 is out of range; valid: integer labels in [0, K)"),
    ({"x_train": np.zeros((20, 3, 4, 4), np.uint8), "y_train": np.arange(20) % 2,
      "x_test": np.zeros((5, 3, 4, 4), np.uint8), "y_test": np.full(5, 2)},
     "data.path: y_test: label 2 is out of range; valid: labels in [0, 2), the classes of the training labels"),
])
def test_bad_npz_named_before_anything_starts(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    [line] = data_problems(resolve({"data": {"name": "arrays", "path": str(path)}})["data"])
    assert line.startswith(message.format(p=path)), line


def test_missing_and_unreadable_npz(tmp_path):
    [line] = data_problems(resolve({"data": {"name": "arrays", "path": str(tmp_path / "no.npz")}})["data"])
    assert line.startswith(f"data.path: {tmp_path / 'no.npz'} is not a file; valid: an .npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    [line] = data_problems(resolve({"data": {"name": "arrays", "path": str(tmp_path / "junk.npz")}})["data"])
    assert line.startswith(f"data.path: {tmp_path / 'junk.npz'} is not a readable .npz")
    [line] = data_problems(resolve({"data": {"name": "arrays"}})["data"])
    assert line.startswith("data.path: dataset 'arrays' needs it; valid: ")


# ----------------------------------------------------------------------------------------------------------- factory

FACTORY_MODULE = '''
import numpy as np
import torch


def arrays(n=120, classes=3, size=8):
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = (rng.random((n, size, size, 1)) * 50 + y[:, None, None, None] * 60).astype(np.uint8)
    return {"x_train": x, "y_train": y}


def as_tuple():
    d = arrays()
    return d["x_train"][:100], d["y_train"][:100], d["x_train"][100:], d["y_train"][100:]


class Squares(torch.utils.data.Dataset):
    def __init__(self, n, offset=0):
        self.n, self.offset = n, offset
        self.targets = [i % 2 for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((1, 4, 4), float(self.targets[i]) + 0.1 * ((i + self.offset) % 3)), self.targets[i]


def datasets():
    return {"train": Squares(80), "test": Squares(20, offset=1)}


def broken():
    raise RuntimeError("no data today")
'''


@pytest.fixture()
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "my_byo_data.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_byo_data"
    sys.modules.pop("my_byo_data", None)


def test_factory_arrays_tuple_and_datasets(factory_module):
    data = resolve({"data": {"factory": f"{factory_module}:arrays", "options": {"n": 90, "classes": 3}}})["data"]
    s = load_splits(data)
    assert s.info["dataset"] == "factory" and s.in_channels == 1 and s.num_classes == 3
    assert sum(s.info["sizes"].values()) == 90  # options are the function's keyword arguments
    s = load_splits(resolve({"data": {"factory": f"{factory_module}:as_tuple"}})["data"])
    assert s.info["sizes"]["test"] == 20
    data = resolve({"data": {"factory": f"{factory_module}:datasets", "memory_limit": "1kB", "workers": 0}})["data"]
    s = load_splits(data)
    assert isinstance(s.train_x, StreamedImages) and s.info["sizes"]["test"] == 20 and s.num_classes == 2
    metrics = run_trial(trial_cfg(data, epochs=1))
    assert metrics["final"] and metrics["test/n"] == 20


def test_factory_problems_name_data_factory(factory_module):
    def problems(spec, **kw):
        return data_problems(resolve({"data": {"factory": spec, **kw}})["data"])

    [line] = problems("no_such_module_xyz:load")
    assert line.startswith("data.factory: cannot import module 'no_such_module_xyz' (ModuleNotFoundError")
    assert "valid: 'package.module:function' importable" in line
    assert problems("just_a_name") == ["data.factory: got 'just_a_name'; valid: 'package.module:function' importable "
                                       "in the trial's Python environment (installed, or on PYTHONPATH)"]
    assert problems(f"{factory_module}:nothing")[0].startswith(f"data.factory: '{factory_module}' has no attribute "
                                                               f"'nothing'; valid: one of its callables: ")
    assert "raised RuntimeError: no data today" in problems(f"{factory_module}:broken")[0]
    assert "got an unexpected keyword argument" in problems(f"{factory_module}:arrays", options={"bogus": 1})[0]
    with pytest.raises(Exception, match=r"data.name: 'cifar10' with data.factory set; valid: 'factory'"):
        resolve({"data": {"name": "cifar10", "factory": f"{factory_module}:arrays"}})


# ------------------------------------------------------------------------------------------- streaming (> the limit)


def test_memory_limit_values():
    assert memory_limit({"memory_limit": "512MB"}) == 512 * 10**6
    assert memory_limit({"memory_limit": "2GiB"}) == 2 * 2**30 and memory_limit({"memory_limit": 1000}) == 1000
    import os

    assert memory_limit({}) == int(0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    with pytest.raises(Exception, match=r"data.memory_limit: got 'lots'; valid: a byte count >= 0 or a size"):
        resolve({"data": {"memory_limit": "lots"}})


def test_streaming_trains_and_reports_the_same_metric_keys(tmp_path):
    root = write_folder(tmp_path / "imgs", per_class=40)
    base = {"name": "image_folder", "root": str(root), "imbalance": 2.0,
            "augment": {"flip": True, "crop": True, "pad": 1}}
    memory = run_trial(trial_cfg(base))
    streamed_data = {**base, "memory_limit": 1000, "workers": 2}
    splits = load_splits(resolve({"data": streamed_data})["data"])
    assert all(isinstance(getattr(splits, f"{s}_x"), StreamedImages) for s in ("train", "calib", "val", "test"))
    streamed = run_trial(trial_cfg(streamed_data))
    assert set(streamed) == set(memory)
    assert streamed["data/info"]["streamed"] is True and memory["data/info"]["streamed"] is False
    same = ("sizes", "class_counts", "num_classes", "in_channels", "image_size")
    assert {k: streamed["data/info"][k] for k in same} == {k: memory["data/info"][k] for k in same}
    counts = memory["data/info"]["class_counts"]["train"]
    assert counts == long_tail_counts(counts[0], 3, 2.0) and counts[0] > counts[2]  # the long-tail profile
    assert streamed["data/info"]["mean"] == pytest.approx(memory["data/info"]["mean"], rel=1e-9)
    assert streamed["final"] and memory["final"]
    # the same batches, augmentations and normalisation: the same trial up to float rounding
    for key in ("val/acc", "test/acc", "val/nll_raw", "train/loss"):
        assert streamed[key] == pytest.approx(memory[key], abs=1e-4), key


def test_streaming_under_two_ddp_processes_matches_the_in_memory_run(tmp_path):
    root = write_folder(tmp_path / "imgs", per_class=30)
    runs = {}
    for limit in (None, 1000):
        cfg = trial_cfg({"name": "image_folder", "root": str(root), "memory_limit": limit, "workers": 0})
        cfg["train"]["workers"] = 2
        runs[limit] = run_trial(cfg)
    assert runs[1000]["data/info"]["streamed"] is True and runs[None]["data/info"]["streamed"] is False
    assert set(runs[1000]) == set(runs[None])
    for key in ("val/acc", "val/nll", "train/loss", "test/acc"):
        assert runs[1000][key] == pytest.approx(runs[None][key], abs=1e-4), key


# ------------------------------------------------------------------------------------------------------------- CLI

SPACE = """\
name: byo
description: image_folder data, tiny
data: {name: image_folder, root: ROOT, memory_limit: LIMIT, workers: 1, val: 0.3}
model: {name: mlp, width: 16, depth: 1}
train: {epochs: 2, batch_size: 32, threads: 1}
calibration: {method: ts}
search: {sampler: random, num_samples: 2, seed: 0}
scheduler: {name: fifo}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
space:
  train.lr: {low: 0.05, high: 0.2, log: true}
"""


def write_space(folder: Path, root: Path, limit: str = "null") -> str:
    path = folder / "byo.yaml"
    path.write_text(SPACE.replace("ROOT", str(root)).replace("LIMIT", limit))
    return str(path)


def test_validate_reports_a_missing_root(tmp_path, capsys):
    assert main(["validate", write_space(tmp_path, tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"data.root: {tmp_path / 'nowhere'} is not a directory; valid: a folder holding train/<class>/" in err
    root = write_folder(tmp_path / "imgs")
    assert main(["validate", write_space(tmp_path, root)]) == 0


def test_validate_reads_an_image_folder_and_an_npz_without_torch(tmp_path):
    import subprocess

    root = write_folder(tmp_path / "imgs")
    np.savez(tmp_path / "d.npz", x_train=np.zeros((40, 8, 8, 3), np.uint8), y_train=np.arange(40) % 2)
    code = ("import sys; from gce_search.search.cli import main; "
            "codes = [main(['validate', sys.argv[1]]), main(['validate', sys.argv[1], '--set', 'data.name=arrays', "
            "'--set', 'data.path=' + sys.argv[2]])]; print(codes, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, write_space(tmp_path, root), str(tmp_path / "d.npz")],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[0, 0] False", out.stdout + out.stderr


@pytest.fixture()
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_tiny_search_on_an_image_folder_through_the_cli(local_ray, tmp_path, capsys):
    root = write_folder(tmp_path / "imgs", per_class=60)
    storage = tmp_path / "results"
    assert main(["run", write_space(tmp_path, root, limit="1000"), "--storage", str(storage), "--name", "byo"]) == 0
    folders = sorted(p.parent for p in (storage / "byo").glob("*/result.json"))
    assert len(folders) == 2
    for folder in folders:
        last = json.loads((folder / "result.json").read_text().splitlines()[-1])
        assert last["final"] and last["data/info"]["streamed"] is True and last["data/info"]["dataset"] == "image_folder"
        assert last["config"]["trial_config"]["data"]["root"] == str(root) and last["val/n"] == 43
    out = capsys.readouterr().out
    assert "(2 complete)" in out and "Pareto front" in out
