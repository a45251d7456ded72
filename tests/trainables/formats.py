"""Write tiny datasets in the real on-disk formats the loaders of trainables.data read.

Each writer returns the arrays it wrote (images N×C×H×W uint8, labels int64) so a test can compare them with what
the loader decodes. The layouts follow the official distributions byte for byte where it matters: idx headers
(LeCun's MNIST format), CIFAR python-pickle batches with byte-string keys, the tiny-imagenet-200 folder tree with
real JPEG files, and MedMNIST's .npz keys.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """An idx file of unsigned bytes: magic 0x00 0x00 0x08 <ndim>, big-endian int32 dims, then the data."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    payload = header + array.tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_fashion_mnist(root: Path, n_train: int = 40, n_test: int = 20, size: int = 28, compress: bool = True,
                        seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four Fashion-MNIST idx files (train-images-idx3-ubyte[.gz] etc.) with random images and labels 0..9."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(y)
        write_idx(Path(root) / f"{prefix}-images-idx3-ubyte{suffix}", x)
        write_idx(Path(root) / f"{prefix}-labels-idx1-ubyte{suffix}", y)
        out[split] = (x[:, None], y.astype(np.int64))
    return out


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # protocol 2 and byte-string keys, as in the official Python-2-era batches
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 10, n_test: int = 20,
                  seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cifar-10-batches-py/: data_batch_1..5, test_batch (b'data' N×3072 uint8, b'labels' list), batches.meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        _pickle(folder / f"data_batch_{i}", {b"batch_label": f"training batch {i} of 5".encode(), b"labels": y,
                                             b"data": x, b"filenames": [b"x.png"] * per_batch})
        xs.append(x)
        ys += y
    tx = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    ty = [int(v) for v in np.arange(n_test) % 10]
    _pickle(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": ty, b"data": tx,
                                    b"filenames": [b"x.png"] * n_test})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _pickle(folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072})
    return {"train": (np.concatenate(xs).reshape(-1, 3, 32, 32), np.asarray(ys, np.int64)),
            "test": (tx.reshape(-1, 3, 32, 32), np.asarray(ty, np.int64))}


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100,
                   seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cifar-100-python/: train, test (b'data', b'fine_labels', b'coarse_labels'), meta (b'fine_label_names')."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in np.arange(n) % 100]
        _pickle(folder / split, {b"filenames": [b"x.png"] * n, b"batch_label": split.encode(),
                                 b"fine_labels": fine, b"coarse_labels": [v // 5 for v in fine], b"data": x})
        out[split] = (x.reshape(-1, 3, 32, 32), np.asarray(fine, np.int64))
    _pickle(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                              b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return out


def write_tiny_imagenet(root: Path, num_classes: int = 3, per_class: int = 4, n_val: int = 6, size: int = 64,
                        grayscale_first: bool = True, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tiny-imagenet-200/: wnids.txt, train/<wnid>/images/<wnid>_<i>.JPEG, val/images/val_<i>.JPEG, and
    val/val_annotations.txt (filename, wnid, bbox, tab-separated). Images are flat colours so JPEG compression
    keeps them within a few grey levels; the first training image is grayscale (mode 'L') like ~2% of the real
    set. Returns the colours written (N×3, the expected decoded pixel value) rather than full images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{1000000 + 17 * i:08d}" for i in range(num_classes)]
    (base).mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    train_colours, train_labels = [], []
    for c, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(per_class):
            colour = tuple(int(v) for v in rng.integers(16, 240, 3))
            if grayscale_first and c == 0 and i == 0:
                colour = (colour[0],) * 3
                Image.new("L", (size, size), colour[0]).save(folder / f"{wnid}_{i}.JPEG", quality=95)
            else:
                Image.new("RGB", (size, size), colour).save(folder / f"{wnid}_{i}.JPEG", quality=95)
            train_colours.append(colour)
            train_labels.append(c)
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    lines, val_colours, val_labels = [], [], []
    for i in range(n_val):
        c = i % num_classes
        colour = tuple(int(v) for v in rng.integers(16, 240, 3))
        Image.new("RGB", (size, size), colour).save(base / "val" / "images" / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{wnids[c]}\t0\t0\t{size - 1}\t{size - 1}")
        val_colours.append(colour)
        val_labels.append(c)
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "test" / "images").mkdir(parents=True, exist_ok=True)  # the official, unlabelled test set
    Image.new("RGB", (size, size), (0, 0, 0)).save(base / "test" / "images" / "test_0.JPEG")
    return {"train": (np.asarray(train_colours, np.uint8), np.asarray(train_labels, np.int64)),
            "test": (np.asarray(val_colours, np.uint8), np.asarray(val_labels, np.int64)), "wnids": wnids}


def write_medmnist(root: Path, subset: str = "pathmnist", sizes: tuple[int, int, int] = (30, 10, 12),
                   num_classes: int = 3, size: int = 28, rgb: bool = True, label_columns: int = 1,
                   seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """<root>/<subset>.npz with train_images/train_labels/val_.../test_...: images N×H×W (grayscale) or N×H×W×3
    (RGB) uint8, labels N×1 integers (N×label_columns 0/1 for a multi-label subset like chestmnist)."""
    rng = np.random.default_rng(seed)
    arrays, out = {}, {}
    for split, n in zip(("train", "val", "test"), sizes):
        shape = (n, size, size, 3) if rgb else (n, size, size)
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        if label_columns == 1:
            y = (np.arange(n) % num_classes).astype(np.uint8)[:, None]
        else:
            y = rng.integers(0, 2, (n, label_columns)).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y
        out[split] = (x.transpose(0, 3, 1, 2) if rgb else x[:, None], y.reshape(n, -1)[:, 0].astype(np.int64))
    Path(root).mkdir(parents=True, exist_ok=True)
    np.savez_compressed(Path(root) / f"{subset}.npz", **arrays)
    return out
