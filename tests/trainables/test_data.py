"""trainables.data: every loader on its real on-disk format, the splits, the long-tail profile and augmentation."""
from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainables import formats
from gce_search.trainables.data import (
    DATASETS,
    FASHION_MNIST_ROOT,
    augment,
    load_splits,
    long_tail_counts,
    parse_options,
    raw_data,
    read_idx,
    split_indices,
)

SPLITS = ("train", "calib", "val", "test")


def _cfg(**kw) -> dict:
    base = {"name": "synthetic", "root": None, "subset": None, "download": False, "imbalance": None,
            "split_seed": 0, "calib": 0.15, "val": 0.15, "test": None,
            "augment": {"crop": False, "pad": 4, "flip": False}, "max_train": None}
    base.update(kw)
    return base


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(x.shape[0], -1)}


# ------------------------------------------------------------------------------------------------------- long tail


def test_long_tail_counts_match_published_sizes():
    # Cao et al. 2019 (LDAM): CIFAR-10-LT and CIFAR-100-LT at rho = 100 have 12,406 and 10,847 training images.
    assert sum(long_tail_counts(5000, 10, 100)) == 12406
    assert sum(long_tail_counts(500, 100, 100)) == 10847
    # by hand: 5000·100^(-1/9) = 2997.3…, 5000·100^(-4/9) = 645.9…, tail 5000/100 = 50
    counts = long_tail_counts(5000, 10, 100)
    assert counts[0] == 5000 and counts[1] == 2997 and counts[4] == 645 and counts[-1] == 50
    assert long_tail_counts(5000, 10, 10)[-1] == 500
    assert long_tail_counts(7, 4, 1) == [7, 7, 7, 7]
    with pytest.raises(ValueError, match="data.imbalance"):
        long_tail_counts(10, 3, 0.5)


def test_imbalance_applies_to_training_split_only():
    subset = "classes=5,train=2000,test=100"
    balanced = load_splits(_cfg(subset=subset))
    lt = load_splits(_cfg(subset=subset, imbalance=10))
    train_counts = balanced.info["class_counts"]["train"]
    expected = long_tail_counts(max(train_counts), 5, 10)
    assert lt.info["class_counts"]["train"] == [min(e, c) for e, c in zip(expected, train_counts)]
    assert lt.info["class_counts"]["train"][-1] == int(max(train_counts) / 10)
    for split in ("calib", "val", "test"):  # untouched, and the very same samples
        assert lt.info["class_counts"][split] == balanced.info["class_counts"][split]
        assert torch.equal(getattr(lt, f"{split}_y"), getattr(balanced, f"{split}_y"))
    # the long-tailed training set is a subset of the balanced one (before normalisation, which differs)
    def unnormalised(s):
        std, mean = (torch.tensor(s.info[k]).view(1, -1, 1, 1) for k in ("std", "mean"))
        return s.train_x * std + mean

    raw_bal, raw_lt = unnormalised(balanced), unnormalised(lt)
    d = torch.cdist(raw_lt.reshape(len(raw_lt), -1), raw_bal.reshape(len(raw_bal), -1),
                    compute_mode="donot_use_mm_for_euclid_dist")
    assert d.min(dim=1).values.max() < 1e-3


# ---------------------------------------------------------------------------------------------------------- splits


def test_splits_are_disjoint_cover_the_pool_and_are_stratified():
    y = np.repeat(np.arange(4), [100, 60, 30, 10])
    parts = split_indices(y, 4, _cfg(calib=0.2, val=40), np.random.default_rng(3))
    sets = [set(parts[s].tolist()) for s in ("train", "calib", "val")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set.union(*sets) == set(range(y.size))
    assert len(parts["calib"]) == 40 and len(parts["val"]) == 40
    for split in ("calib", "val"):
        counts = np.bincount(y[parts[split]], minlength=4)
        expected = 40 * np.array([100, 60, 30, 10]) / 200
        assert np.all(np.abs(counts - expected) <= 1), (split, counts)


def test_load_splits_tensors_sizes_and_info():
    s = load_splits(_cfg(subset="classes=3,size=6,channels=2,train=300,test=90", calib=0.1, val=45))
    assert (s.num_classes, s.in_channels, s.image_size) == (3, 2, 6)
    assert s.info["sizes"] == {"train": 300 - 30 - 45, "calib": 30, "val": 45, "test": 90}
    for split in SPLITS:
        x, y = getattr(s, f"{split}_x"), getattr(s, f"{split}_y")
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (s.info["sizes"][split], 2, 6, 6) and y.shape == (x.shape[0],)
        assert sum(s.info["class_counts"][split]) == x.shape[0]
        assert s.info["class_counts"][split] == torch.bincount(y, minlength=3).tolist()
    json.dumps(s.info)  # goes into the trial's results
    # disjoint as samples: synthetic images are continuous noise, so equal rows would mean a shared sample
    rows = [_rows(getattr(s, f"{split}_x")) for split in SPLITS]
    assert sum(len(r) for r in rows) == len(set.union(*rows)) == 300 + 90


def test_normalised_by_training_statistics():
    cfg = _cfg(subset="classes=3,channels=3,size=5,train=400")
    s = load_splits(cfg)
    assert torch.allclose(s.train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(s.train_x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    raw = raw_data("synthetic", None, cfg["subset"])
    test_raw = torch.from_numpy(np.array(raw.test_x))
    mean = test_raw.new_tensor(s.info["mean"]).view(1, 3, 1, 1)
    std = test_raw.new_tensor(s.info["std"]).view(1, 3, 1, 1)
    assert torch.allclose(s.test_x, (test_raw - mean) / std, atol=1e-5)
    # the statistics are the training split's, not the pool's
    pool = torch.from_numpy(np.array(raw.train_x)).double()
    assert not torch.allclose(pool.mean(dim=(0, 2, 3)), torch.tensor(s.info["mean"], dtype=torch.float64),
                              atol=1e-9)


def test_splits_are_deterministic_and_seeded():
    cfg = _cfg(subset="classes=4,train=400", imbalance=5, max_train=150)
    a, b = load_splits(cfg), load_splits(dict(cfg))
    for split in SPLITS:
        assert torch.equal(getattr(a, f"{split}_x"), getattr(b, f"{split}_x"))
        assert torch.equal(getattr(a, f"{split}_y"), getattr(b, f"{split}_y"))
    c = load_splits(_cfg(subset="classes=4,train=400", imbalance=5, max_train=150, split_seed=1))
    assert not torch.equal(a.calib_x, c.calib_x)


def test_max_train_caps_and_keeps_calib_val():
    full = load_splits(_cfg(subset="classes=4,train=400"))
    capped = load_splits(_cfg(subset="classes=4,train=400", max_train=100))
    assert capped.info["sizes"]["train"] == 100
    assert capped.info["class_counts"]["train"] == [25, 25, 25, 25]  # stratified cap
    assert torch.equal(capped.val_y, full.val_y) and torch.equal(capped.calib_y, full.calib_y)


def test_dataset_without_test_split_carves_it():
    s = load_splits(_cfg(name="digits"))
    assert s.info["sizes"]["test"] == round(0.2 * 1797)
    assert sum(s.info["sizes"].values()) == 1797
    t = load_splits(_cfg(name="digits", test=100, calib=200, val=0.1))
    assert t.info["sizes"]["test"] == 100 and t.info["sizes"]["calib"] == 200
    assert t.info["sizes"]["val"] == round(0.1 * 1697)
    assert (t.in_channels, t.image_size, t.num_classes) == (1, 8, 10)


def test_test_fraction_subsamples_an_official_test_split_and_leaves_the_pool_alone():
    a = load_splits(_cfg(subset="classes=4,train=200,test=200"))
    b = load_splits(_cfg(subset="classes=4,train=200,test=200", test=40))
    assert b.info["sizes"]["test"] == 40 and b.info["class_counts"]["test"] == [10, 10, 10, 10]
    assert _rows(b.test_x) <= _rows(a.test_x)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)


@pytest.mark.parametrize("kw, path", [
    ({"calib": 0.5, "val": 0.5}, "data.calib \\+ data.val"),
    ({"calib": 10_000}, "data.calib"),
    ({"val": 2.5}, "data.val"),
    ({"name": "digits", "test": 1797}, "data.test"),
    ({"name": "cifar11"}, "unknown dataset 'cifar11'.*cifar10"),
    ({"subset": "classes=1"}, "data.subset"),
    ({"subset": "colour=red"}, "data.subset.*classes"),
    # load_splits is public: a cap of 0 or 0.5 would empty the training split, -3 would drop its last 3 samples
    ({"max_train": 0}, "data.max_train: got 0"),
    ({"max_train": 0.5}, "data.max_train: got 0.5"),
    ({"max_train": -3}, "data.max_train: got -3"),
    ({"max_train": 2.5}, "data.max_train: got 2.5"),
])
def test_bad_split_config_names_the_key(kw, path):
    with pytest.raises(ValueError, match=path):
        load_splits(_cfg(**kw))


def test_raw_data_is_cached_and_read_only():
    a = raw_data("digits")
    assert raw_data("digits") is a
    with pytest.raises(ValueError):
        a.train_x[0, 0, 0, 0] = 1.0


# ------------------------------------------------------------------------------------------------------- synthetic


def test_synthetic_options_and_learnable():
    assert parse_options("synthetic", "classes=3, size=4") == {"classes": 3, "size": 4}
    assert parse_options("digits", "ignored") == {}
    s = load_splits(_cfg(subset="classes=5,size=8,train=600,test=200"))
    # nearest class mean on the training split already separates the classes: the task is learnable
    means = torch.stack([s.train_x[s.train_y == k].mean(0) for k in range(5)]).flatten(1)
    pred = torch.cdist(s.test_x.flatten(1), means).argmin(1)
    assert (pred == s.test_y).float().mean() > 0.9
    hard = load_splits(_cfg(subset="classes=5,size=8,train=600,test=200,noise=50"))
    means = torch.stack([hard.train_x[hard.train_y == k].mean(0) for k in range(5)]).flatten(1)
    assert (torch.cdist(hard.test_x.flatten(1), means).argmin(1) == hard.test_y).float().mean() < 0.6


# --------------------------------------------------------------------------------------------------- fashion_mnist


def test_fashion_mnist_real_files(fashion_mnist_root):
    # data.root null reads Debian's location; a test-only root is passed on
    root = None if fashion_mnist_root == FASHION_MNIST_ROOT else fashion_mnist_root
    raw = raw_data("fashion_mnist", root)
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.test_x.shape == (10000, 1, 28, 28)
    assert raw.train_x.dtype == np.uint8
    assert np.bincount(raw.train_y).tolist() == [6000] * 10
    assert np.bincount(raw.test_y).tolist() == [1000] * 10
    s = load_splits(_cfg(name="fashion_mnist", root=root, max_train=500, test=200))
    assert s.info["sizes"] == {"train": 500, "calib": 9000, "val": 9000, "test": 200}
    assert s.train_y.min() == 0 and s.train_y.max() == 9


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_formats(tmp_path, compress):
    written = formats.write_fashion_mnist(tmp_path, n_train=30, n_test=12, compress=compress)
    raw = raw_data("fashion_mnist", str(tmp_path))
    np.testing.assert_array_equal(raw.train_x, written["train"][0])
    np.testing.assert_array_equal(raw.train_y, written["train"][1])
    np.testing.assert_array_equal(raw.test_x, written["test"][0])
    np.testing.assert_array_equal(raw.test_y, written["test"][1])


def test_read_idx_against_the_header_by_hand(tmp_path):
    path = tmp_path / "x-idx2-ubyte"
    path.write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]))
    np.testing.assert_array_equal(read_idx(path), [[1, 2, 3], [4, 5, 6]])


def test_fashion_mnist_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        raw_data("fashion_mnist", str(tmp_path / "nowhere"))
    formats.write_fashion_mnist(tmp_path / "a", n_train=10, n_test=10)
    (tmp_path / "a" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz.*apt-get install"):
        raw_data("fashion_mnist", str(tmp_path / "a"))
    # truncated data
    formats.write_fashion_mnist(tmp_path / "b", n_train=10, n_test=10, compress=False)
    p = tmp_path / "b" / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated or corrupt"):
        raw_data("fashion_mnist", str(tmp_path / "b"))
    # wrong magic
    formats.write_fashion_mnist(tmp_path / "c", n_train=10, n_test=10)
    with gzip.open(tmp_path / "c" / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x1f\x00\x08\x01garbage")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz: not an idx file"):
        raw_data("fashion_mnist", str(tmp_path / "c"))
    # not gzip at all under a .gz name
    formats.write_fashion_mnist(tmp_path / "d", n_train=10, n_test=10)
    (tmp_path / "d" / "t10k-images-idx3-ubyte.gz").write_bytes(b"plain text")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        raw_data("fashion_mnist", str(tmp_path / "d"))
    # label count mismatch
    formats.write_fashion_mnist(tmp_path / "e", n_train=10, n_test=10)
    formats.write_idx(tmp_path / "e" / "train-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    with pytest.raises(ValueError, match="expected 10 labels"):
        raw_data("fashion_mnist", str(tmp_path / "e"))
    # label out of range
    formats.write_fashion_mnist(tmp_path / "f", n_train=10, n_test=10)
    formats.write_idx(tmp_path / "f" / "train-labels-idx1-ubyte.gz", np.full(10, 10, np.uint8))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        raw_data("fashion_mnist", str(tmp_path / "f"))


def test_fashion_mnist_default_root_is_debian_location(fashion_mnist_root):
    assert FASHION_MNIST_ROOT == "/usr/share/datasets/fashion-mnist"
    assert Path(fashion_mnist_root, "train-images-idx3-ubyte.gz").is_file()  # as the Debian package ships it


# ----------------------------------------------------------------------------------------------------------- cifar


def test_cifar10_pickle_batches(tmp_path):
    written = formats.write_cifar10(tmp_path, per_batch=12, n_test=20)
    raw = raw_data("cifar10", str(tmp_path))
    assert raw.train_x.shape == (60, 3, 32, 32) and raw.test_x.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(raw.train_x, written["train"][0])
    np.testing.assert_array_equal(raw.train_y, written["train"][1])
    np.testing.assert_array_equal(raw.test_x, written["test"][0])
    # b'data' rows are the R plane, then G, then B, each row-major: pixel (c, h, w) is at c·1024 + h·32 + w
    flat = pickle.load(open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "rb"), encoding="bytes")[b"data"]
    assert raw.train_x[12, 1, 3, 5] == flat[0, 1024 + 3 * 32 + 5]
    assert raw.class_names[0] == "airplane" and raw.num_classes == 10
    s = load_splits(_cfg(name="cifar10", root=str(tmp_path), calib=6, val=6))
    assert s.info["sizes"] == {"train": 48, "calib": 6, "val": 6, "test": 20}
    assert (s.in_channels, s.image_size) == (3, 32)


def test_cifar100_fine_labels(tmp_path):
    written = formats.write_cifar100(tmp_path, n_train=200, n_test=100)
    raw = raw_data("cifar100", str(tmp_path))
    assert raw.num_classes == 100 and raw.class_names[7] == "fine7"
    np.testing.assert_array_equal(raw.train_y, written["train"][1])  # fine, not coarse labels
    np.testing.assert_array_equal(raw.test_x, written["test"][0])


def test_cifar_missing_files_say_how_to_obtain_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*cifar-10-python.tar.gz.*download: true"):
        raw_data("cifar10", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar-100-python.*cifar-100-python.tar.gz.*download: true"):
        raw_data("cifar100", str(tmp_path))
    formats.write_cifar10(tmp_path / "a", per_batch=2, n_test=2)
    (tmp_path / "a" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        raw_data("cifar10", str(tmp_path / "a"))


def test_cifar_malformed_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    formats.write_cifar10(tmp_path, per_batch=2, n_test=2)
    (folder / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_1: not a CIFAR python-pickle batch"):
        raw_data("cifar10", str(tmp_path))
    formats.write_cifar10(tmp_path, per_batch=2, n_test=2)
    with open(folder / "data_batch_4", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="data_batch_4: missing key b'labels'"):
        raw_data("cifar10", str(tmp_path))
    formats.write_cifar10(tmp_path, per_batch=2, n_test=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"test_batch: b'data' must be uint8 of shape \(N, 3072\)"):
        raw_data("cifar10", str(tmp_path))
    formats.write_cifar10(tmp_path, per_batch=2, n_test=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"a", b"b"]}, f)
    with pytest.raises(ValueError, match="batches.meta: b'label_names' lists 2 classes, expected 10"):
        raw_data("cifar10", str(tmp_path))


def test_cifar_download_skipped_when_files_are_present(tmp_path):
    # download: true with valid files must not touch the network (this machine has none)
    formats.write_cifar10(tmp_path, per_batch=2, n_test=2)
    assert raw_data("cifar10", str(tmp_path), download=True).train_x.shape == (10, 3, 32, 32)


class _RunsOnLoad:
    """Unpickling an instance calls `call(*args)`: what a crafted batch file uses to run code."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "object array", "codec"])
def test_a_crafted_cifar_batch_is_refused_and_its_payload_does_not_run(tmp_path, payload):
    import codecs
    import os

    formats.write_cifar10(tmp_path, per_batch=2, n_test=2)
    marker = tmp_path / "payload-ran"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    data = np.zeros((2, 3072), np.uint8)
    if payload == "os.system":
        evil = _RunsOnLoad(os.system, f"touch {marker}")
    elif payload == "builtins.exec":
        evil = _RunsOnLoad(exec, f"open({str(marker)!r}, 'w').close()")
    elif payload == "object array":  # an object array's elements are pickled objects of their own
        evil = np.array([_RunsOnLoad(os.system, f"touch {marker}")], dtype=object)
    else:
        evil = _RunsOnLoad(codecs.encode, "x", "rot13")
    for protocol in (2, 4, 5):
        with open(batch, "wb") as f:
            pickle.dump({b"data": data, b"labels": [0, 1], b"batch_label": evil}, f, protocol=protocol)
        with pytest.raises(ValueError, match=r"data_batch_1: not loaded, refused .*a CIFAR batch holds") as err:
            raw_data("cifar10", str(tmp_path))
        assert str(batch) in str(err.value)
        assert not marker.exists(), f"the payload ran ({payload}, protocol {protocol})"


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_still_load(tmp_path, protocol):
    written = formats.write_cifar10(tmp_path, per_batch=3, n_test=4)
    folder = tmp_path / "cifar-10-batches-py"
    for path in folder.iterdir():  # the same batches re-pickled: numpy scalars and arrays, bytes, str, lists
        obj = pickle.load(open(path, "rb"), encoding="bytes")
        obj[b"num_vis" if path.name == "batches.meta" else b"extra"] = np.int64(3072)
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
    raw = raw_data("cifar10", str(tmp_path))
    np.testing.assert_array_equal(raw.train_x, written["train"][0])
    np.testing.assert_array_equal(raw.test_y, written["test"][1])


# --------------------------------------------------------------------------------------------------- tiny_imagenet


def test_tiny_imagenet_folder_layout(tmp_path):
    written = formats.write_tiny_imagenet(tmp_path, num_classes=3, per_class=4, n_val=6, size=16)
    raw = raw_data("tiny_imagenet", str(tmp_path))
    assert raw.train_x.shape == (12, 3, 16, 16) and raw.test_x.shape == (6, 3, 16, 16)
    assert raw.num_classes == 3 and list(raw.class_names) == written["wnids"]
    np.testing.assert_array_equal(raw.train_y, written["train"][1])
    np.testing.assert_array_equal(raw.test_y, written["test"][1])  # labels from val_annotations.txt
    # flat-colour JPEGs decode to their colour within JPEG's rounding; the grayscale one is promoted to RGB
    centre = raw.train_x[:, :, 8, 8].astype(int)
    assert np.abs(centre - written["train"][0].astype(int)).max() <= 3
    assert np.abs(raw.test_x[:, :, 8, 8].astype(int) - written["test"][0].astype(int)).max() <= 3
    assert centre[0, 0] == centre[0, 1] == centre[0, 2]
    s = load_splits(_cfg(name="tiny_imagenet", root=str(tmp_path), calib=3, val=3))
    assert s.info["sizes"]["test"] == 6 and s.info["sizes"]["train"] == 6


def test_tiny_imagenet_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200/wnids.txt.*tiny-imagenet-200.zip"):
        raw_data("tiny_imagenet", str(tmp_path))
    formats.write_tiny_imagenet(tmp_path / "a", size=8)
    ann = tmp_path / "a" / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\tn99999999\t0\t0\t7\t7\n")
    with pytest.raises(ValueError, match="val_annotations.txt:7: class 'n99999999' is not listed"):
        raw_data("tiny_imagenet", str(tmp_path / "a"))
    written = formats.write_tiny_imagenet(tmp_path / "b", size=8)
    (tmp_path / "b" / "tiny-imagenet-200" / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match="val_2.JPEG, which does not exist"):
        raw_data("tiny_imagenet", str(tmp_path / "b"))
    formats.write_tiny_imagenet(tmp_path / "c", size=8)
    wnid = written["wnids"][1]
    bad = tmp_path / "c" / "tiny-imagenet-200" / "train" / wnid / "images" / f"{wnid}_0.JPEG"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=f"{wnid}_0.JPEG: cannot decode"):
        raw_data("tiny_imagenet", str(tmp_path / "c"))
    formats.write_tiny_imagenet(tmp_path / "d", size=8)
    import shutil

    shutil.rmtree(tmp_path / "d" / "tiny-imagenet-200" / "train" / wnid)
    with pytest.raises(FileNotFoundError, match=f"train/{wnid}/images for class {wnid}"):
        raw_data("tiny_imagenet", str(tmp_path / "d"))


# -------------------------------------------------------------------------------------------------------- medmnist


@pytest.mark.parametrize("rgb", [True, False])
def test_medmnist_npz(tmp_path, rgb):
    written = formats.write_medmnist(tmp_path, "bloodmnist" if rgb else "organamnist", sizes=(30, 10, 12),
                                     num_classes=3, size=28, rgb=rgb)
    raw = raw_data("medmnist", str(tmp_path), "bloodmnist" if rgb else "organamnist")
    channels = 3 if rgb else 1
    # the official val split joins the pool that calib/val/train are carved from
    assert raw.train_x.shape == (40, channels, 28, 28) and raw.test_x.shape == (12, channels, 28, 28)
    np.testing.assert_array_equal(raw.train_x[:30], written["train"][0])
    np.testing.assert_array_equal(raw.train_x[30:], written["val"][0])
    np.testing.assert_array_equal(raw.test_y, written["test"][1])
    assert raw.num_classes == 3
    s = load_splits(_cfg(name="medmnist", root=str(tmp_path), subset="bloodmnist" if rgb else "organamnist",
                         calib=6, val=6))
    assert s.info["sizes"] == {"train": 28, "calib": 6, "val": 6, "test": 12} and s.in_channels == channels


def test_medmnist_refusals(tmp_path):
    formats.write_medmnist(tmp_path, "chestmnist", label_columns=14)
    with pytest.raises(ValueError, match="multi-label subset.*chestmnist"):
        raw_data("medmnist", str(tmp_path), "chestmnist")
    with pytest.raises(ValueError, match="data.subset: medmnist needs a subset name"):
        raw_data("medmnist", str(tmp_path), None)
    with pytest.raises(FileNotFoundError, match="pathmnist.npz"):
        raw_data("medmnist", str(tmp_path), "pathmnist")
    np.savez(tmp_path / "partial.npz", train_images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="missing array.*train_labels"):
        raw_data("medmnist", str(tmp_path), "partial")
    good = {f"{s}_{k}": v for s in ("train", "val", "test")
            for k, v in (("images", np.zeros((4, 8, 8), np.uint8)), ("labels", np.array([[0], [1], [0], [1]])))}
    np.savez(tmp_path / "flat.npz", **(good | {"val_images": np.zeros((4, 64), np.uint8)}))
    with pytest.raises(ValueError, match="flat.npz: val_images must be N×H×W .grayscale. or N×H×W×3"):
        raw_data("medmnist", str(tmp_path), "flat")
    np.savez(tmp_path / "short.npz", **(good | {"test_labels": np.array([[0], [1]])}))
    with pytest.raises(ValueError, match="short.npz: test_labels holds 2 labels for 4 images"):
        raw_data("medmnist", str(tmp_path), "short")
    np.savez(tmp_path / "ok.npz", **good)
    assert raw_data("medmnist", str(tmp_path), "ok").train_x.shape == (8, 1, 8, 8)
    (tmp_path / "broken.npz").write_bytes(b"PK not really")
    with pytest.raises(ValueError, match="broken.npz: not a readable .npz"):
        raw_data("medmnist", str(tmp_path), "broken")


# ---------------------------------------------------------------------------------------------------- augmentation


def test_augment_is_deterministic_and_preserves_shape():
    x = torch.randn(64, 3, 8, 8)
    cfg = {"crop": True, "pad": 2, "flip": True}
    a = augment(x, cfg, torch.Generator().manual_seed(5))
    b = augment(x, cfg, torch.Generator().manual_seed(5))
    c = augment(x, cfg, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment(x, {"crop": False, "flip": False}, torch.Generator()), x)
    assert torch.equal(augment(x, {"crop": True, "pad": 0, "flip": False}, torch.Generator()), x)


def test_flip_mirrors_whole_images():
    x = torch.arange(200 * 2 * 3 * 4, dtype=torch.float32).view(200, 2, 3, 4)
    before = x.clone()
    out = augment(x, {"crop": False, "flip": True}, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)  # input untouched
    flipped = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert torch.all(flipped ^ same)  # every image exactly mirrored left-right or untouched
    assert 70 < int(flipped.sum()) < 130  # about half (p = 0.5, n = 200: 100 ± 3.5σ)
    assert torch.equal(out[flipped][:, :, :, 0], x[flipped][:, :, :, -1])


def test_crop_is_a_window_of_the_zero_padded_image():
    pad, n = 2, 50
    x = torch.rand(n, 2, 5, 5) + 1.0  # no zeros, so the padding is recognisable
    out = augment(x, {"crop": True, "pad": pad, "flip": False}, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    offsets = set()
    for i in range(n):  # reference, per sample: which of the (2·pad+1)² windows is it?
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 5])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 10  # the offsets vary across the batch


def test_augment_rejects_bad_input():
    with pytest.raises(ValueError, match="data.augment.pad"):
        augment(torch.zeros(2, 1, 4, 4), {"crop": True, "pad": -1}, torch.Generator())
    with pytest.raises(ValueError, match="N×C×H×W"):
        augment(torch.zeros(4, 4), {"flip": True}, torch.Generator())


def test_registry_lists_every_dataset():
    assert set(DATASETS.names()) >= {"digits", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "medmnist",
                                     "synthetic"}
    for name, info in DATASETS.items():
        assert info.name == name and info.description


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_splits_and_augment_on_device(device):
    s = load_splits(_cfg(subset="classes=3,channels=3,size=8,train=120,test=30"), device=device)
    for split in SPLITS:
        assert getattr(s, f"{split}_x").device.type == device and getattr(s, f"{split}_y").device.type == device
    cfg = {"crop": True, "pad": 2, "flip": True}
    for gen_device in {"cpu", device}:  # a generator on the CPU or on the data's device both work
        a = augment(s.train_x, cfg, torch.Generator(device=gen_device).manual_seed(0))
        b = augment(s.train_x, cfg, torch.Generator(device=gen_device).manual_seed(0))
        assert a.device.type == device and torch.equal(a, b)
