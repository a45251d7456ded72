"""Datasets as whole tensors on the trial's device (or streamed, above data.memory_limit): registry, your own data,
four disjoint seeded splits, long-tail, augmentation.

Small-image datasets fit in device memory, so a trial indexes batches out of one tensor and augments them in batch
on the device (airbench, Jordan 2024) instead of running a DataLoader with per-sample Python transforms.

Each dataset's loader decodes its on-disk format into a `RawData` (uint8 or float32 arrays, N×C×H×W) once per process
(`raw_data`, cached); `load_splits` then carves train / calib / val / test from it by the trial config's `data:`
section, applies the long-tail profile and the training cap to the training split only, and normalises every split
with the training split's per-channel mean and std.

Your own data (image_folder, arrays, factory; docs/byo.md, "Data") is opened lazily (`own_data`: LazyImages, no
image decoded); when its float32 size is above data.memory_limit, `load_splits` leaves the images on disk
(StreamedImages) and a trial reads each batch through a DataLoader (`train_batches`, `eval_batches`).
"""
from __future__ import annotations

import functools
import gzip
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from gce_search.trainables.catalog import DATASETS
from gce_search.trainables.registry import Param
from gce_search.trainables.user_code import import_reference
from gce_search.yamlio import parse_yaml_value

# torch is imported by the two functions that make tensors (load_splits, augment): the file and split checks
# (data_problems, for `gce-search validate`) need numpy only.
if TYPE_CHECKING:
    import torch

# Where dataset files are looked for when data.root is null (except fashion_mnist, which has its Debian location).
DEFAULT_ROOT = "~/.cache/gce-search/data"
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

# Official download names, quoted in the errors that say how to obtain a missing dataset.
CIFAR10_ARCHIVE = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_ARCHIVE = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
TINY_IMAGENET_ARCHIVE = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MEDMNIST_HOME = "https://zenodo.org/records/10519652 (or `pip install medmnist` and its download=True)"


@dataclass(frozen=True)
class RawData:
    """A decoded dataset: images N×C×H×W (uint8, or float32 for digits/synthetic), labels int64 in [0, K)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray | None  # None: the dataset has no test split of its own
    test_y: np.ndarray | None
    num_classes: int
    class_names: tuple[str, ...] = ()


def _root(root: str | None, default: str) -> Path:
    return Path(os.path.expanduser(root if root is not None else default))


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{where}: labels must lie in [0, {num_classes}), found [{y.min()}, {y.max()}]")


# --------------------------------------------------------------------------------------------------------- digits


@DATASETS.implements("digits")
def load_digits(root: str | None, subset: str | None, download: bool, options: dict) -> RawData:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # pixel values 0..16
    y = bunch.target.astype(np.int64)
    return RawData(x, y, None, None, 10, tuple(str(i) for i in range(10)))


# --------------------------------------------------------------------------------------------------- fashion_mnist

_IDX_DTYPES = {0x08: np.uint8}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_FASHION_HOWTO = ("install it with `apt-get install dataset-fashion-mnist` (files go to "
                  f"{FASHION_MNIST_ROOT}), or put the four idx files from "
                  "https://github.com/zalandoresearch/fashion-mnist (data/fashion) under data.root")


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format; gzip-compressed when the name ends in .gz) of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read this idx file ({err}); re-fetch it: {_FASHION_HOWTO}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file (the first two bytes of the magic number must be 0); "
                         f"re-fetch it: {_FASHION_HOWTO}")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: idx element type 0x{type_code:02x} is not supported; valid: 0x08 (unsigned byte)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx header; re-fetch it: {_FASHION_HOWTO}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise ValueError(f"{path}: idx header says shape {shape} ({expected} bytes) but the file holds "
                         f"{len(data) - header} bytes of data; the file is truncated or corrupt: {_FASHION_HOWTO}")
    return np.frombuffer(data, dtype=_IDX_DTYPES[type_code], offset=header).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    # The Debian package and the Zalando repository ship .gz; extracted copies keep the bare name; the original
    # MNIST mirrors also used a dot before "idx".
    candidates = [stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"]
    for name in candidates:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"fashion_mnist: expected {root / (stem + '.gz')} (or the uncompressed {stem}) "
                            f"and found neither; {_FASHION_HOWTO}")


@DATASETS.implements("fashion_mnist")
def load_fashion_mnist(root: str | None, subset: str | None, download: bool, options: dict) -> RawData:
    base = _root(root, FASHION_MNIST_ROOT)
    if not base.is_dir():
        raise FileNotFoundError(f"fashion_mnist: directory {base} does not exist; {_FASHION_HOWTO}")
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img_path = _find_idx(base, f"{prefix}-images-idx3-ubyte")
        lab_path = _find_idx(base, f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3:
            raise ValueError(f"{img_path}: expected 3-D images (N, 28, 28), got shape {images.shape}; "
                             f"{_FASHION_HOWTO}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"{lab_path}: expected {images.shape[0]} labels to match {img_path.name}, "
                             f"got shape {labels.shape}; {_FASHION_HOWTO}")
        labels = labels.astype(np.int64)
        _check_labels(labels, 10, str(lab_path))
        arrays[split] = (images[:, None, :, :], labels)
    return RawData(*arrays["train"], *arrays["test"], 10, FASHION_MNIST_CLASSES)


# ------------------------------------------------------------------------------------------------------------ cifar


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that asks for something other than plain data and numpy arrays."""


CIFAR_PICKLE_HOLDS = "dicts, lists, tuples, bytes, str, numbers and numpy arrays of numbers"


def _checked_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:  # an object array would hold arbitrary pickled objects
        raise RefusedPickle(f"refused numpy dtype {dtype}: a CIFAR batch holds {CIFAR_PICKLE_HOLDS}")
    return dtype


def _latin1_encode(text, encoding="utf-8"):
    # Python 3 pickles bytes with protocols 0-2 as _codecs.encode(text, "latin1"); no other codec is needed
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle(f"refused _codecs.encode with {encoding!r}: a CIFAR batch holds {CIFAR_PICKLE_HOLDS}")
    return text.encode("latin1")


def _cifar_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only callables a CIFAR batch may name: numpy's array and dtype reconstruction (old and new module
    names), and the bytes encoding of protocols 0-2."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric

    def checked_scalar(dtype, *args):
        return multiarray.scalar(_checked_dtype(dtype), *args)

    def checked_reconstruct(subtype, shape, dtype):
        return multiarray._reconstruct(subtype, shape, _checked_dtype(dtype))

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _checked_dtype,
                                           ("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = checked_reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = checked_scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """pickle.Unpickler that builds plain data and numpy arrays only: a crafted batch file cannot run code.

    Pickle opcodes build dicts, lists, tuples, bytes, str, numbers, bools and None by themselves; anything else
    goes through find_class, which knows only the callables of _cifar_pickle_globals."""

    def __init__(self, file):
        # The official batches are Python 2 pickles of byte-string keys; torchvision reads them the same way.
        super().__init__(file, encoding="bytes")
        self._allowed = _cifar_pickle_globals()

    def find_class(self, module: str, name: str):
        found = self._allowed.get((module, name))
        if found is None:
            raise RefusedPickle(f"refused {module}.{name}: a CIFAR batch holds {CIFAR_PICKLE_HOLDS}, and loading "
                                f"anything else could run code")
        return found


def _unpickle(path: Path, howto: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"expected the CIFAR batch file {path}; {howto}")
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f).load()
    except RefusedPickle as err:
        raise ValueError(f"{path}: not loaded, {err}; {howto}") from None
    except Exception as err:  # any unpickling failure means a corrupt or foreign file
        raise ValueError(f"{path}: not a CIFAR python-pickle batch ({type(err).__name__}: {err}); {howto}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}; {howto}")
    return obj


def _cifar_batch(path: Path, label_key: bytes, howto: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path, howto)
    for key in (b"data", label_key):
        if key not in batch:
            found = ", ".join(repr(k) for k in batch)
            raise ValueError(f"{path}: missing key {key!r} (found {found}); {howto}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}; {howto}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {label_key!r} must hold {data.shape[0]} labels, got shape {labels.shape}; {howto}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_download(torchvision_name: str, base: Path, download: bool, archive: str) -> None:
    if not download:
        return
    import torchvision.datasets as tvd

    try:
        for train in (True, False):
            getattr(tvd, torchvision_name)(str(base), train=train, download=True)
    except Exception as err:  # network errors come in many types (URLError, socket timeouts, checksum failures)
        raise FileNotFoundError(f"data.download: true could not fetch {torchvision_name} into {base} "
                                f"({type(err).__name__}: {err}); download {archive} by hand and extract it "
                                f"under data.root ({base})") from None


def _load_cifar(root: str | None, download: bool, *, folder: str, archive: str, torchvision_name: str,
                train_files: list[str], test_file: str, meta_file: str, label_key: bytes, names_key: bytes,
                num_classes: int) -> RawData:
    base = _root(root, DEFAULT_ROOT)
    folder_path = base / folder
    howto = (f"extract {archive.rsplit('/', 1)[-1]} ({archive}) under data.root so that {folder_path} holds "
             f"{', '.join(train_files)}, {test_file} and {meta_file}, or set data.download: true on a machine "
             f"with network")
    needed = [folder_path / n for n in (*train_files, test_file, meta_file)]
    if download and not all(p.is_file() for p in needed):
        _cifar_download(torchvision_name, base, download, archive)
    missing = [p for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{torchvision_name.lower()}: expected {missing[0]}"
                                f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; {howto}")
    parts = [_cifar_batch(folder_path / n, label_key, howto) for n in train_files]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _cifar_batch(folder_path / test_file, label_key, howto)
    meta = _unpickle(folder_path / meta_file, howto)
    if names_key not in meta:
        raise ValueError(f"{folder_path / meta_file}: missing key {names_key!r}; {howto}")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key])
    if len(names) != num_classes:
        raise ValueError(f"{folder_path / meta_file}: {names_key!r} lists {len(names)} classes, expected "
                         f"{num_classes}; {howto}")
    _check_labels(train_y, num_classes, str(folder_path / train_files[0]))
    _check_labels(test_y, num_classes, str(folder_path / test_file))
    return RawData(train_x, train_y, test_x, test_y, num_classes, names)


@DATASETS.implements("cifar10")
def load_cifar10(root: str | None, subset: str | None, download: bool, options: dict) -> RawData:
    return _load_cifar(root, download, folder="cifar-10-batches-py", archive=CIFAR10_ARCHIVE,
                       torchvision_name="CIFAR10", train_files=[f"data_batch_{i}" for i in range(1, 6)],
                       test_file="test_batch", meta_file="batches.meta", label_key=b"labels",
                       names_key=b"label_names", num_classes=10)


@DATASETS.implements("cifar100")
def load_cifar100(root: str | None, subset: str | None, download: bool, options: dict) -> RawData:
    return _load_cifar(root, download, folder="cifar-100-python", archive=CIFAR100_ARCHIVE,
                       torchvision_name="CIFAR100", train_files=["train"], test_file="test", meta_file="meta",
                       label_key=b"fine_labels", names_key=b"fine_label_names", num_classes=100)


# ---------------------------------------------------------------------------------------------------- tiny_imagenet


def _read_jpegs(paths: list[Path], howto: str) -> np.ndarray:
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                # About 2% of Tiny-ImageNet images are grayscale JPEGs: promote to RGB like torchvision's loader.
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        except Exception as err:  # PIL raises several types for unreadable images
            raise ValueError(f"{path}: cannot decode this image ({type(err).__name__}: {err}); {howto}") from None

    # PIL releases the GIL while decoding, so threads give a real speed-up on 100k small JPEGs.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(read, paths, chunksize=256))
    if not images:
        return np.zeros((0, 3, 64, 64), np.uint8)
    shape = images[0].shape
    for path, im in zip(paths, images):
        if im.shape != shape:
            raise ValueError(f"{path}: image size {im.shape[:2]} differs from {paths[0]} {shape[:2]}; "
                             f"every image must have the same size; {howto}")
    return np.stack(images).transpose(0, 3, 1, 2).copy()


def _tiny_imagenet_howto(base: Path) -> str:
    return (f"unzip {TINY_IMAGENET_ARCHIVE.rsplit('/', 1)[-1]} ({TINY_IMAGENET_ARCHIVE}) under data.root so that "
            f"{base} holds wnids.txt, train/<wnid>/images/*.JPEG, val/images/ and val/val_annotations.txt")


def _tiny_imagenet_index(base: Path, howto: str) -> tuple[list[str], list[Path], list[int], list[Path], list[int]]:
    """The class ids and the image paths with their labels, from the folder listing (no image is decoded)."""
    wnids_path = base / "wnids.txt"
    if not wnids_path.is_file():
        raise FileNotFoundError(f"tiny_imagenet: expected {wnids_path}; {howto}")
    wnids = [w.strip() for w in wnids_path.read_text().splitlines() if w.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise ValueError(f"{wnids_path}: expected one distinct WordNet id per line, got {len(wnids)} lines "
                         f"({len(set(wnids))} distinct); {howto}")
    index = {w: i for i, w in enumerate(wnids)}
    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        folder = base / "train" / wnid / "images"
        if not folder.is_dir():
            raise FileNotFoundError(f"tiny_imagenet: expected the folder {folder} for class {wnid} listed in "
                                    f"wnids.txt; {howto}")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
        if not files:
            raise FileNotFoundError(f"tiny_imagenet: {folder} holds no .JPEG images; {howto}")
        train_paths += files
        train_labels += [index[wnid]] * len(files)
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise FileNotFoundError(f"tiny_imagenet: expected {annotations}; {howto}")
    val_paths: list[Path] = []
    val_labels: list[int] = []
    for lineno, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise ValueError(f"{annotations}:{lineno}: expected tab-separated 'filename<TAB>wnid<TAB>bbox...', "
                             f"got {line!r}; {howto}")
        filename, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise ValueError(f"{annotations}:{lineno}: class {wnid!r} is not listed in {wnids_path}; {howto}")
        path = base / "val" / "images" / filename
        if not path.is_file():
            raise FileNotFoundError(f"tiny_imagenet: {annotations}:{lineno} names {path}, which does not exist; "
                                    f"{howto}")
        val_paths.append(path)
        val_labels.append(index[wnid])
    return wnids, train_paths, train_labels, val_paths, val_labels


@DATASETS.implements("tiny_imagenet")
def load_tiny_imagenet(root: str | None, subset: str | None, download: bool, options: dict) -> RawData:
    base = _root(root, DEFAULT_ROOT) / "tiny-imagenet-200"
    howto = _tiny_imagenet_howto(base)
    wnids, train_paths, train_labels, val_paths, val_labels = _tiny_imagenet_index(base, howto)
    train_x = _read_jpegs(train_paths, howto)
    test_x = _read_jpegs(val_paths, howto)
    if test_x.shape[1:] != train_x.shape[1:] and len(val_paths):
        raise ValueError(f"tiny_imagenet: val images are {test_x.shape[2:]} but train images are "
                         f"{train_x.shape[2:]}; {howto}")
    return RawData(train_x, np.asarray(train_labels, np.int64), test_x, np.asarray(val_labels, np.int64),
                   len(wnids), tuple(wnids))


# --------------------------------------------------------------------------------------------------------- medmnist

_MEDMNIST_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")


def _medmnist_images(arr: np.ndarray, path: Path, key: str, howto: str) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[:, None, :, :]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{path}: {key} must be N×H×W (grayscale) or N×H×W×3 (RGB), got shape {arr.shape}; "
                         f"{howto}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{path}: {key} must be uint8, got {arr.dtype}; {howto}")
    return np.ascontiguousarray(arr)


def _medmnist_labels(arr: np.ndarray, n: int, path: Path, key: str, howto: str) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] > 1:
        raise ValueError(f"{path}: {key} has {arr.shape[1]} columns: this is a multi-label subset (such as "
                         f"chestmnist), which single-label classification cannot use; valid: a multi-class "
                         f"subset whose labels are N×1, e.g. pathmnist, dermamnist, bloodmnist, organamnist")
    arr = arr.reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{path}: {key} holds {arr.shape[0]} labels for {n} images; {howto}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: {key} must be integers, got {arr.dtype}; {howto}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{path}: {key} holds negative labels; {howto}")
    return arr.astype(np.int64)


def _medmnist_archive(root: str | None, subset: str | None) -> tuple[Path, str]:
    """The subset's .npz (which must exist) and how to get it."""
    base = _root(root, DEFAULT_ROOT)
    if not subset:
        raise ValueError("data.subset: medmnist needs a subset name, the stem of <data.root>/<subset>.npz; "
                         "valid: e.g. pathmnist, dermamnist, bloodmnist, organamnist, pathmnist_64")
    path = base / f"{subset}.npz"
    howto = f"download {subset}.npz from MedMNIST ({MEDMNIST_HOME}) into {base}"
    if not path.is_file():
        raise FileNotFoundError(f"medmnist: expected {path}; {howto}")
    return path, howto


@DATASETS.implements("medmnist")
def load_medmnist(root: str | None, subset: str | None, download: bool, options: dict) -> RawData:
    path, howto = _medmnist_archive(root, subset)
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as err:  # zipfile and numpy raise several types for a corrupt archive
        raise ValueError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err}); {howto}") from None
    with npz:
        missing = [k for k in _MEDMNIST_KEYS if k not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {', '.join(missing)} (found {', '.join(npz.files)}); "
                             f"valid: an archive with {', '.join(_MEDMNIST_KEYS)}; {howto}")
        arrays = {k: npz[k] for k in _MEDMNIST_KEYS}
    split = {}
    for s in ("train", "val", "test"):
        x = _medmnist_images(arrays[f"{s}_images"], path, f"{s}_images", howto)
        y = _medmnist_labels(arrays[f"{s}_labels"], x.shape[0], path, f"{s}_labels", howto)
        split[s] = (x, y)
    shapes = {s: split[s][0].shape[1:] for s in split}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{path}: image shapes differ between splits {shapes}; {howto}")
    num_classes = int(max(split[s][1].max(initial=-1) for s in split)) + 1
    if num_classes < 2:
        raise ValueError(f"{path}: the labels name fewer than 2 classes; {howto}")
    train_x = np.concatenate([split["train"][0], split["val"][0]])
    train_y = np.concatenate([split["train"][1], split["val"][1]])
    return RawData(train_x, train_y, split["test"][0], split["test"][1], num_classes)


# -------------------------------------------------------------------------------------------------------- synthetic

SYNTHETIC_OPTIONS = DATASETS["synthetic"].params


@DATASETS.implements("synthetic")
def load_synthetic(root: str | None, subset: str | None, download: bool, options: dict) -> RawData:
    o = {k: p.default for k, p in SYNTHETIC_OPTIONS.items()} | options
    rng = np.random.default_rng(o["seed"])
    k, c, s = o["classes"], o["channels"], o["size"]
    # Smooth prototypes (a 3×3 box blur of white noise) so a conv net has spatial structure to pick up.
    proto = rng.standard_normal((k, c, s + 2, s + 2))
    proto = sum(proto[:, :, i:i + s, j:j + s] for i in range(3) for j in range(3)) / 3.0

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % k
        rng.shuffle(y)
        x = proto[y] + o["noise"] * rng.standard_normal((n, c, s, s))
        return x.astype(np.float32), y.astype(np.int64)

    train_x, train_y = sample(o["train"])
    test_x, test_y = sample(o["test"])
    return RawData(train_x, train_y, test_x, test_y, k, tuple(f"class{i}" for i in range(k)))


# ---------------------------------------------------------------------------- your own data: folder, arrays, factory

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FOLDER_LAYOUT = ("a folder holding train/<class>/*.png|jpg (torchvision's ImageFolder layout), optionally val/ and "
                  "test/ with the same class folders")
_ARRAYS_LAYOUT = ("an .npz (numpy.savez) with x_train, y_train and optionally x_test, y_test: images N×C×H×W or "
                  "N×H×W×C (C of 1 or 3), N×H×W, or feature vectors N×D; uint8 or float; integer labels in [0, K)")
_FACTORY_RETURNS = ("a dict with x_train, y_train (optionally x_test, y_test) or a tuple (x_train, y_train[, x_test, "
                    "y_test]) of arrays as for data.path, or a dict {'train': Dataset, 'test': Dataset (optional)} of "
                    "torch.utils.data.Dataset items (image, label)")


class LazyImages:
    """A split's images, decoded on access: `shape` (N, C, H, W), `read(indices)` -> array n×C×H×W (uint8 or
    float32). `features`: the samples are feature vectors D×1×1 (an mlp's input, not images)."""

    shape: tuple[int, int, int, int]
    features: bool = False

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes_float32(self) -> int:
        return 4 * int(np.prod(self.shape, dtype=np.int64))

    def read(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class FileImages(LazyImages):
    """Image files decoded with PIL (grayscale stays 1 channel, everything else becomes RGB); all one size."""

    def __init__(self, paths: list[Path], mode: str, size: tuple[int, int]):
        self.paths, self.mode, self.size = paths, mode, size
        self.shape = (len(paths), 1 if mode == "L" else 3, size[1], size[0])

    def _decode(self, path: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert(self.mode), dtype=np.uint8)
        except Exception as err:  # PIL raises several types for unreadable images
            raise ValueError(f"data.root: {path} cannot be decoded ({type(err).__name__}: {err}); valid: "
                             f"PNG or JPEG files") from None
        if (arr.shape[1], arr.shape[0]) != self.size:
            raise ValueError(f"data.root: {path} is {arr.shape[1]}×{arr.shape[0]}, the first image "
                             f"{self.paths[0]} is {self.size[0]}×{self.size[1]}; valid: images of one size")
        return arr if arr.ndim == 3 else arr[:, :, None]

    def read(self, indices: np.ndarray) -> np.ndarray:
        if len(indices) == 0:
            return np.zeros((0, *self.shape[1:]), np.uint8)
        return np.stack([self._decode(self.paths[int(i)]) for i in indices]).transpose(0, 3, 1, 2).copy()


def _to_nchw(shape: tuple[int, ...], where: str) -> tuple[str, tuple[int, int, int, int]]:
    """The layout of an image or feature array of `shape` and its N×C×H×W shape; ValueError naming `where`."""
    if len(shape) == 2:
        return "features", (shape[0], shape[1], 1, 1)
    if len(shape) == 3:
        return "nhw", (shape[0], 1, shape[1], shape[2])
    if len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):
        return "nchw", (shape[0], shape[1], shape[2], shape[3])
    if len(shape) == 4 and shape[3] in (1, 3):
        return "nhwc", (shape[0], shape[3], shape[1], shape[2])
    raise ValueError(f"{where}: shape {tuple(shape)} is not N×C×H×W or N×H×W×C with C of 1 or 3, N×H×W, or N×D; "
                     f"valid: {_ARRAYS_LAYOUT}")


def _batch_as_nchw(x: np.ndarray, layout: str) -> np.ndarray:
    """A batch read in its stored layout (_to_nchw's `layout`) as contiguous N×C×H×W, uint8 or float32."""
    if layout == "features":
        x = x[:, :, None, None]
    elif layout == "nhw":
        x = x[:, None]
    elif layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x if x.dtype == np.uint8 else x.astype(np.float32))


class ArrayImages(LazyImages):
    """Images in an array (memory-mapped from an uncompressed .npz member, or in memory), indexed lazily."""

    def __init__(self, array: np.ndarray | None, where: str, *, mmap: tuple | None = None):
        # mmap: (file, offset, shape, dtype, fortran) of an uncompressed .npz member, opened lazily (and again in
        # each DataLoader worker: the pickled state carries the location, not the data)
        self._array, self._mmap = array, mmap
        shape = tuple(mmap[2]) if mmap is not None else array.shape
        dtype = np.dtype(mmap[3]) if mmap is not None else array.dtype
        if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
            raise ValueError(f"{where}: dtype {dtype}; valid: {_ARRAYS_LAYOUT}")
        self.layout, self.shape = _to_nchw(shape, where)
        self.features = self.layout == "features"

    def array(self) -> np.ndarray:
        if self._array is None:
            file, offset, shape, dtype, fortran = self._mmap
            self._array = np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=tuple(shape),
                                    order="F" if fortran else "C")
        return self._array

    def __getstate__(self):
        state = dict(self.__dict__)
        if self._mmap is not None:
            state["_array"] = None
        return state

    def read(self, indices: np.ndarray) -> np.ndarray:
        return _batch_as_nchw(self.array()[np.asarray(indices, np.int64)], self.layout)


class DatasetImages(LazyImages):
    """The images of a torch Dataset of (image, label) items; an image is a tensor or array C×H×W, H×W or D."""

    def __init__(self, dataset, where: str):
        self.dataset = dataset
        try:
            n = len(dataset)
        except TypeError:
            raise ValueError(f"{where}: a Dataset without len(); valid: {_FACTORY_RETURNS}") from None
        if n < 1:
            raise ValueError(f"{where}: the Dataset is empty; valid: {_FACTORY_RETURNS}")
        first = self._image(0, where)
        self.layout, self.shape = _to_nchw((n, *first.shape), where)
        self.features = self.layout == "features"
        self.dtype = np.uint8 if first.dtype == np.uint8 else np.float32

    def _image(self, i: int, where: str = "data.factory") -> np.ndarray:
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError(f"{where}: item {i} is {type(item).__name__}; valid: (image, label) pairs")
        image = item[0]
        return np.asarray(image.numpy() if hasattr(image, "numpy") else image)

    def labels(self) -> np.ndarray:
        targets = getattr(self.dataset, "targets", None)  # torchvision's convention: labels without decoding
        if targets is not None and len(targets) == len(self.dataset):
            return np.asarray(targets).reshape(-1)
        return np.asarray([int(self.dataset[i][1]) for i in range(len(self.dataset))])

    def read(self, indices: np.ndarray) -> np.ndarray:
        images = [self._image(int(i)) for i in indices]
        if not images:
            return np.zeros((0, *self.shape[1:]), self.dtype)
        return _batch_as_nchw(np.stack(images), self.layout)


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    out = {}
    for c in classes:
        files = sorted(p for p in c.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"data.root: the class folder {c} holds no {'/'.join(IMAGE_SUFFIXES)} image; valid: "
                             f"{_FOLDER_LAYOUT}, every class folder with at least one image")
        out[c.name] = files
    return out


def _image_folder(root: str | None) -> RawData:
    if root is None:
        raise ValueError(f"data.root: image_folder needs it; valid: {_FOLDER_LAYOUT}")
    base = Path(os.path.expanduser(root))
    if not base.is_dir():
        raise FileNotFoundError(f"data.root: {base} is not a directory; valid: {_FOLDER_LAYOUT}")
    if not (base / "train").is_dir():
        raise FileNotFoundError(f"data.root: {base} has no train/ folder; valid: {_FOLDER_LAYOUT}")
    train = _class_folders(base / "train")
    if len(train) < 2:
        raise ValueError(f"data.root: {base / 'train'} holds {len(train)} class folder(s); valid: {_FOLDER_LAYOUT}, "
                         f"with at least 2 classes")
    names = tuple(train)
    index = {c: i for i, c in enumerate(names)}
    extra = {}
    for split in ("val", "test"):
        if (base / split).is_dir():
            found = _class_folders(base / split)
            unknown = sorted(set(found) - set(names))
            if unknown:
                raise ValueError(f"data.root: {base / split} has class folder(s) {', '.join(unknown)} that train/ "
                                 f"does not; valid: class folders among train/'s: {', '.join(names)}")
            extra[split] = found

    def flat(classes: dict[str, list[Path]]) -> tuple[list[Path], np.ndarray]:
        paths = [p for c in classes for p in classes[c]]
        return paths, np.asarray([index[c] for c in classes for _ in classes[c]], np.int64)

    from PIL import Image

    first = next(iter(train.values()))[0]
    try:
        with Image.open(first) as im:
            mode, size = ("L" if im.mode in ("L", "1", "I;16", "I") else "RGB"), im.size
    except Exception as err:  # PIL raises several types for unreadable images
        raise ValueError(f"data.root: {first} cannot be decoded ({type(err).__name__}: {err}); valid: PNG or JPEG "
                         f"files") from None
    # val/ joins the train/calib/val pool (split by data.calib / data.val like the rest); test/ is the test split
    train_paths, train_y = flat(train)
    if "val" in extra:
        val_paths, val_y = flat(extra["val"])
        train_paths, train_y = train_paths + val_paths, np.concatenate([train_y, val_y])
    test_x = test_y = None
    if "test" in extra:
        test_paths, test_y = flat(extra["test"])
        test_x = FileImages(test_paths, mode, size)
    return RawData(FileImages(train_paths, mode, size), train_y, test_x, test_y, len(names), names)


def _npz_member(path: Path, key: str, zf) -> tuple | None:
    """(file, offset, shape, dtype, fortran) of an uncompressed .npy member of an .npz, for np.memmap; None when
    it is compressed (read whole then)."""
    import zipfile

    info = zf.getinfo(key + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"data.path: {path} member {key} holds Python objects; valid: {_ARRAYS_LAYOUT}")
    return (str(path), offset, shape, dtype.str, fortran)


def _check_arrays(x: LazyImages, y: Any, where_y: str, num_classes: int | None = None) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1 or y.shape[0] != len(x):
        raise ValueError(f"{where_y}: shape {y.shape} for {len(x)} samples; valid: {len(x)} integer labels")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)):
            raise ValueError(f"{where_y}: dtype {y.dtype}; valid: integer labels in [0, K)")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"{where_y}: label {int(y.min())} is out of range; valid: integer labels in [0, K)")
    if num_classes is not None and y.size and y.max() >= num_classes:
        raise ValueError(f"{where_y}: label {int(y.max())} is out of range; valid: labels in [0, {num_classes}), "
                         f"the classes of the training labels")
    return y


def _raw_from_arrays(arrays: dict, where: str, what: str) -> RawData:
    """RawData from {x_train, y_train[, x_test, y_test]} of LazyImages / label arrays; `where` is the config key."""
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise ValueError(f"{where}: {what} has no {key} (has {', '.join(sorted(arrays)) or 'nothing'}); valid: "
                             f"{_ARRAYS_LAYOUT}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{where}: {what} has only one of x_test, y_test; valid: both or neither")
    unknown = sorted(set(arrays) - {"x_train", "y_train", "x_test", "y_test"})
    if unknown:
        raise ValueError(f"{where}: {what} has unknown key(s) {', '.join(unknown)}; valid: x_train, y_train, x_test, "
                         f"y_test")
    train_x = arrays["x_train"]
    train_y = _check_arrays(train_x, arrays["y_train"], f"{where}: y_train")
    if len(train_x) < 2:
        raise ValueError(f"{where}: x_train holds {len(train_x)} samples; valid: {_ARRAYS_LAYOUT}")
    num_classes = int(train_y.max()) + 1
    if num_classes < 2:
        raise ValueError(f"{where}: y_train names fewer than 2 classes; valid: labels of at least 2 classes")
    test_x = test_y = None
    if "x_test" in arrays:
        test_x = arrays["x_test"]
        if tuple(test_x.shape[1:]) != tuple(train_x.shape[1:]):
            raise ValueError(f"{where}: x_test samples are {tuple(test_x.shape[1:])} (C, H, W), x_train's are "
                             f"{tuple(train_x.shape[1:])}; valid: the same shape")
        test_y = _check_arrays(test_x, arrays["y_test"], f"{where}: y_test", num_classes)
    if train_x.shape[2] != train_x.shape[3]:
        raise ValueError(f"{where}: images are {train_x.shape[2]}×{train_x.shape[3]}; valid: square images")
    return RawData(train_x, train_y, test_x, test_y, num_classes, tuple(str(i) for i in range(num_classes)))


def _npz_arrays(path_cfg: str | None) -> RawData:
    import zipfile

    if path_cfg is None:
        raise ValueError(f"data.path: dataset 'arrays' needs it; valid: {_ARRAYS_LAYOUT}")
    path = Path(os.path.expanduser(path_cfg))
    if not path.is_file():
        raise FileNotFoundError(f"data.path: {path} is not a file; valid: {_ARRAYS_LAYOUT}")
    try:
        with zipfile.ZipFile(path) as zf:
            keys = [n.removesuffix(".npy") for n in zf.namelist()]
            unknown = sorted(set(keys) - {"x_train", "y_train", "x_test", "y_test"})
            if unknown:
                raise ValueError(f"data.path: {path} has unknown key(s) {', '.join(unknown)}; valid: x_train, "
                                 f"y_train, x_test, y_test")
            arrays: dict[str, Any] = {}
            for key in keys:
                where = f"data.path: {path} {key}"
                loc = _npz_member(path, key, zf) if key.startswith("x_") else None
                if key.startswith("x_") and loc is not None:
                    arrays[key] = ArrayImages(None, where, mmap=loc)
                    continue
                with zf.open(key + ".npy") as f:
                    arr = np.lib.format.read_array(f, allow_pickle=False)
                arrays[key] = ArrayImages(arr, where) if key.startswith("x_") else arr
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"data.path: {path} is not a readable .npz ({type(err).__name__}: {err}); valid: "
                         f"{_ARRAYS_LAYOUT}") from None
    return _raw_from_arrays(arrays, "data.path", str(path))


def import_factory(spec: str | None) -> Callable:
    """The function a `data.factory: 'module:function'` names; ValueError naming data.factory."""
    return import_reference(spec, "data.factory", "'package.module:function' importable in the trial's Python "
                            "environment (installed, or on PYTHONPATH)", "a function returning arrays or Datasets")


def _factory_data(spec: str | None, options: dict) -> RawData:
    fn = import_factory(spec)
    try:
        out = fn(**options)
    except Exception as err:  # the user's code
        raise ValueError(f"data.factory: {spec}(**data.options) raised {type(err).__name__}: {err}; valid: a "
                         f"function returning {_FACTORY_RETURNS}") from None
    if isinstance(out, (tuple, list)):
        if len(out) not in (2, 4):
            raise ValueError(f"data.factory: returned a tuple of {len(out)}; valid: {_FACTORY_RETURNS}")
        out = dict(zip(("x_train", "y_train", "x_test", "y_test"), out))
    if not isinstance(out, dict):
        raise ValueError(f"data.factory: returned {type(out).__name__}; valid: {_FACTORY_RETURNS}")
    if "train" in out:
        unknown = sorted(set(out) - {"train", "test"})
        if unknown:
            raise ValueError(f"data.factory: returned key(s) {', '.join(map(str, unknown))}; valid: train, test")
        splits = {s: DatasetImages(out[s], f"data.factory: {s}") for s in ("train", "test") if s in out}
        arrays = {"x_train": splits["train"], "y_train": splits["train"].labels()}
        if "test" in splits:
            arrays["x_test"], arrays["y_test"] = splits["test"], splits["test"].labels()
        return _raw_from_arrays(arrays, "data.factory", "the returned Datasets")
    arrays = {}
    for key, value in out.items():
        if str(key).startswith("x_"):
            value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
            arrays[key] = ArrayImages(value, f"data.factory: {key}")
        else:
            arrays[key] = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    return _raw_from_arrays(arrays, "data.factory", "the returned dict")


def dataset_name(data_cfg: dict) -> str:
    """The dataset a `data:` section reads: 'factory' whenever data.factory is set, else data.name."""
    return "factory" if data_cfg.get("factory") is not None else data_cfg.get("name", "digits")


def _own_key(data_cfg: dict) -> tuple:
    import json

    return (dataset_name(data_cfg), data_cfg.get("root"), data_cfg.get("path"), data_cfg.get("factory"),
            json.dumps(data_cfg.get("options") or {}, sort_keys=True, default=str))


@DATASETS.implements("image_folder")
def open_image_folder(data_cfg: dict) -> RawData:
    return _image_folder(data_cfg.get("root"))


@DATASETS.implements("arrays")
def open_arrays(data_cfg: dict) -> RawData:
    return _npz_arrays(data_cfg.get("path"))


@DATASETS.implements("factory")
def open_factory(data_cfg: dict) -> RawData:
    return _factory_data(data_cfg.get("factory"), data_cfg.get("options") or {})


@functools.lru_cache(maxsize=4)
def _own_cached(key: tuple) -> RawData:
    import json

    name, root, path, factory, options = key
    data_cfg = {"root": root, "path": path, "factory": factory, "options": json.loads(options)}
    return DATASETS.get(name).impl(data_cfg)


def own_data(data_cfg: dict) -> RawData:
    """Your own data (image_folder, arrays, factory) with lazily decoded images (LazyImages), opened once per
    process; ValueError / FileNotFoundError naming data.root, data.path or data.factory."""
    return _own_cached(_own_key(data_cfg))


@functools.lru_cache(maxsize=2)
def _own_decoded(key: tuple) -> RawData:
    lazy = _own_cached(key)
    xs = []
    for x in (lazy.train_x, lazy.test_x):
        arr = None if x is None else x.read(np.arange(len(x)))
        if arr is not None:
            arr.setflags(write=False)  # shared by every trial of this process: must never change
        xs.append(arr)
    return RawData(xs[0], lazy.train_y, xs[1], lazy.test_y, lazy.num_classes, lazy.class_names)


def memory_limit(data_cfg: dict, device: Any = "cpu") -> int:
    """data.memory_limit in bytes; null: 0.25 of this machine's RAM (CPU) or of the GPU's memory (cuda)."""
    from gce_search.trainables.registry import parse_bytes

    value = data_cfg.get("memory_limit")
    if value is not None:
        return parse_bytes(value)
    if str(device).startswith("cuda"):
        import torch

        return int(0.25 * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return int(0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def decoded_bytes(raw: RawData) -> int:
    """Bytes of every sample of `raw` as float32, the size it takes on the trial's device."""
    return sum(x.nbytes_float32 for x in (raw.train_x, raw.test_x) if x is not None)


def data_workers(data_cfg: dict) -> int:
    """DataLoader workers of the streaming path: data.workers, or min(4, the CPUs this process may use)."""
    workers = data_cfg.get("workers")
    if workers is not None:
        return int(workers)
    return min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class _Rows:
    """torch Dataset over whole batches: item `positions` (a list) -> the decoded rows, as one tensor."""

    def __init__(self, images: LazyImages, indices: np.ndarray):
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions):
        import torch

        return torch.from_numpy(self.images.read(self.indices[np.asarray(positions, np.int64)]))


class StreamedImages:
    """A split larger than memory: its rows of a LazyImages, decoded per batch by DataLoader workers and normalised
    on the device as the in-memory path normalises (x - mean) / std. `shape` as a tensor's: (N, C, H, W)."""

    def __init__(self, images: LazyImages, indices: np.ndarray, shift, scale, device, workers: int):
        self.images, self.indices, self.workers = images, np.asarray(indices, np.int64), int(workers)
        self.shift, self.scale, self.device = shift, scale, device
        self.shape = (len(self.indices), *images.shape[1:])

    def batches(self, positions: list):
        """Normalised float32 batches on the device for each list of positions (into this split), in order."""
        from torch.utils.data import DataLoader

        loader = DataLoader(_Rows(self.images, self.indices), batch_size=None, sampler=positions,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda")
        for x in loader:
            yield (x.to(self.device, non_blocking=True).float() - self.shift) * self.scale


def train_batches(x_all, perm, steps: int, batch_size: int):
    """The training batches of one epoch in the order of `perm`: indexed out of a tensor on the device, or
    decoded per batch by a DataLoader for a StreamedImages split."""
    if isinstance(x_all, StreamedImages):
        order = perm.cpu().numpy()
        yield from x_all.batches([order[s * batch_size:(s + 1) * batch_size] for s in range(steps)])
        return
    for s in range(steps):
        yield x_all[perm[s * batch_size:(s + 1) * batch_size]]


def eval_batches(x, batch_size: int):
    """A split in order, `batch_size` rows at a time (the last batch may be smaller)."""
    n = x.shape[0]
    if isinstance(x, StreamedImages):
        yield from x.batches([np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)])
        return
    for i in range(0, n, batch_size):
        yield x[i:i + batch_size]


# ---------------------------------------------------------------------------------------------------- decoding cache


def parse_options(name: str, subset: str | None) -> dict[str, Any]:
    """Parse a dataset's 'key=value,key=value' options from data.subset, checked against its declared options."""
    declared = DATASETS.get(name).params
    if not declared or not subset:
        return {}
    out: dict[str, Any] = {}
    for item in subset.split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in declared:
            valid = ", ".join(f"{k} ({p.describe()})" for k, p in declared.items())
            raise ValueError(f"data.subset: {item.strip()!r} is not an option of dataset {name!r}; "
                             f"valid: comma-separated key=value with keys {valid}")
        out[key] = declared[key].check(f"data.subset: {name} option {key}", parse_yaml_value(raw))
    return out


@functools.lru_cache(maxsize=4)
def _raw_cached(name: str, root: str | None, subset: str | None, download: bool) -> RawData:
    info = DATASETS.get(name)
    raw = info.impl(root, subset, download, parse_options(name, subset))
    for arr in (raw.train_x, raw.train_y, raw.test_x, raw.test_y):
        if arr is not None:
            arr.setflags(write=False)  # shared by every trial of this process: must never change
    return raw


def raw_data(name: str, root: str | None = None, subset: str | None = None, download: bool = False) -> RawData:
    """The decoded dataset, decoded once per process (repeated trials in one Ray worker reuse it)."""
    return _raw_cached(name, root, subset, bool(download))


# ------------------------------------------------------------------------------- sizes without decoding (pre-checks)


@dataclass(frozen=True)
class DataLabels:
    """A dataset's labels and class count, read without decoding its images: what the split sizes depend on."""

    train_y: np.ndarray
    test_y: np.ndarray | None  # None: the dataset has no test split of its own
    num_classes: int


def _idx_count(path: Path, ndim: int, item_bytes: int) -> int:
    """The sample count in an idx file's header, checked against the file's length (for .gz, the uncompressed
    length the gzip trailer records, modulo 2^32)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
        if path.suffix == ".gz":
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                length = int.from_bytes(f.read(4), "little")
        else:
            length = path.stat().st_size
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read this idx file ({err}); re-fetch it: {_FASHION_HOWTO}") from None
    if len(header) < 4 + 4 * ndim or header[:2] != b"\0\0" or header[3] != ndim:
        raise ValueError(f"{path}: not a {ndim}-dimensional idx file; re-fetch it: {_FASHION_HOWTO}")
    n = int.from_bytes(header[4:8], "big")
    expected = 4 + 4 * ndim + n * item_bytes
    if length != (expected % 2**32 if path.suffix == ".gz" else expected):
        raise ValueError(f"{path}: the idx header says {n} samples ({expected} bytes) but the file holds {length} "
                         f"bytes; the file is truncated or corrupt: {_FASHION_HOWTO}")
    return n


def _fashion_mnist_labels(root: str | None, subset: str | None, download: bool, options: dict) -> DataLabels:
    base = _root(root, FASHION_MNIST_ROOT)
    if not base.is_dir():
        raise FileNotFoundError(f"fashion_mnist: directory {base} does not exist; {_FASHION_HOWTO}")
    labels = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img_path = _find_idx(base, f"{prefix}-images-idx3-ubyte")
        lab_path = _find_idx(base, f"{prefix}-labels-idx1-ubyte")
        n = _idx_count(img_path, 3, 28 * 28)
        y = read_idx(lab_path)  # 60k bytes: read whole, so the class counts are the real ones
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"{lab_path}: expected {n} labels to match {img_path.name}, got shape {y.shape}; "
                             f"{_FASHION_HOWTO}")
        y = y.astype(np.int64)
        _check_labels(y, 10, str(lab_path))
        labels[split] = y
    return DataLabels(labels["train"], labels["test"], 10)


def _cifar_labels(name: str, root: str | None, download: bool, folder: str, archive: str, train_files: list[str],
                  test_file: str, meta_file: str, num_classes: int) -> DataLabels | None:
    """CIFAR's batches are pickles (their labels cannot be read without unpickling ~30 MB each): the files must be
    there with at least the bytes of their images; the labels are the datasets' balanced counts."""
    folder_path = _root(root, DEFAULT_ROOT) / folder
    needed = [folder_path / n for n in (*train_files, test_file, meta_file)]
    missing = [p for p in needed if not p.is_file()]
    if missing and download:
        return None  # fetched when the trial starts
    if missing:
        raise FileNotFoundError(f"{name}: expected {missing[0]}"
                                f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; extract "
                                f"{archive.rsplit('/', 1)[-1]} ({archive}) under data.root, or set data.download: "
                                f"true on a machine with network")
    per_train = 50_000 // len(train_files)
    for path, n in [*((folder_path / f, per_train) for f in train_files), (folder_path / test_file, 10_000)]:
        size = path.stat().st_size
        if size < n * 3 * 32 * 32:
            raise ValueError(f"{path}: {size} bytes, fewer than the {n * 3 * 32 * 32} of its {n} images; the file "
                             f"is truncated: extract {archive.rsplit('/', 1)[-1]} ({archive}) again")
    return DataLabels(np.arange(50_000) % num_classes, np.arange(10_000) % num_classes, num_classes)


def _tiny_imagenet_labels(root: str | None, subset: str | None, download: bool, options: dict) -> DataLabels:
    base = _root(root, DEFAULT_ROOT) / "tiny-imagenet-200"
    wnids, _, train_labels, _, val_labels = _tiny_imagenet_index(base, _tiny_imagenet_howto(base))
    return DataLabels(np.asarray(train_labels, np.int64), np.asarray(val_labels, np.int64), len(wnids))


def _medmnist_labels_only(root: str | None, subset: str | None, download: bool, options: dict) -> DataLabels:
    """The label arrays (small) and the image arrays' headers (their shapes) of a MedMNIST archive."""
    import zipfile

    path, howto = _medmnist_archive(root, subset)
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n.removesuffix(".npy"): n for n in zf.namelist()}
            missing = [k for k in _MEDMNIST_KEYS if k not in names]
            if missing:
                raise ValueError(f"{path}: missing array(s) {', '.join(missing)} (found {', '.join(names)}); "
                                 f"valid: an archive with {', '.join(_MEDMNIST_KEYS)}; {howto}")
            labels = {}
            for split in ("train", "val", "test"):
                with zf.open(names[f"{split}_images"]) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read_header(f)
                with zf.open(names[f"{split}_labels"]) as f:
                    y = np.lib.format.read_array(f, allow_pickle=False)
                labels[split] = _medmnist_labels(y, shape[0], path, f"{split}_labels", howto)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err}); {howto}") from None
    train_y = np.concatenate([labels["train"], labels["val"]])
    num_classes = int(max(labels[s].max(initial=-1) for s in labels)) + 1
    if num_classes < 2:
        raise ValueError(f"{path}: the labels name fewer than 2 classes; {howto}")
    return DataLabels(train_y, labels["test"], num_classes)


def _synthetic_labels(root: str | None, subset: str | None, download: bool, options: dict) -> DataLabels:
    o = {k: p.default for k, p in SYNTHETIC_OPTIONS.items()} | options
    return DataLabels(np.arange(o["train"]) % o["classes"], np.arange(o["test"]) % o["classes"], o["classes"])


def _digits_labels(root: str | None, subset: str | None, download: bool, options: dict) -> DataLabels:
    raw = raw_data("digits")
    return DataLabels(raw.train_y, None, raw.num_classes)


_LABEL_READERS: dict[str, Callable[..., DataLabels | None]] = {
    "digits": _digits_labels,
    "fashion_mnist": _fashion_mnist_labels,
    "cifar10": lambda root, subset, download, options: _cifar_labels(
        "cifar10", root, download, "cifar-10-batches-py", CIFAR10_ARCHIVE, [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch", "batches.meta", 10),
    "cifar100": lambda root, subset, download, options: _cifar_labels(
        "cifar100", root, download, "cifar-100-python", CIFAR100_ARCHIVE, ["train"], "test", "meta", 100),
    "tiny_imagenet": _tiny_imagenet_labels,
    "medmnist": _medmnist_labels_only,
    "synthetic": _synthetic_labels,
}


@functools.lru_cache(maxsize=8)
def data_labels(name: str, root: str | None = None, subset: str | None = None,
                download: bool = False) -> DataLabels | None:
    """The labels of a registered dataset from its files' headers and listings (no image decoded); None when they
    cannot be known before the trial runs (a download still to happen, a dataset without a label reader).
    FileNotFoundError / ValueError as the dataset's loader would raise them."""
    reader = _LABEL_READERS.get(name)
    if reader is None:
        return None
    return reader(root, subset, bool(download), parse_options(name, subset))


def data_problems(data_cfg: dict, model_cfg: dict | None = None) -> list[str]:
    """What a trial would find wrong with the data of a resolved `data:` section, found before it starts: the
    files (present, readable headers, sizes that match) and the split sizes they give (the rule load_splits
    applies, on the real labels where they are cheap to read). Your own data (image_folder, arrays, factory) is
    listed, its array headers read and its factory called; with `model_cfg`, a conv model on feature vectors is
    refused too."""
    name = dataset_name(data_cfg)
    if name in DATASETS and DATASETS.get(name).own_data:
        try:
            raw = own_data(data_cfg)
            _check_features(raw, data_cfg)
            plan_splits(raw.train_y, raw.test_y, raw.num_classes, data_cfg)
        except (OSError, ValueError) as err:
            return [str(err)]
        model = (model_cfg or {}).get("name")
        if raw.train_x.features and model is not None and model != "mlp":
            return [f"model.name: {model!r} is a conv net and the data are feature vectors "
                    f"(N×{raw.train_x.shape[1]}); valid: 'mlp'"]
        return []
    where = f"data (dataset {data_cfg.get('name')!r}, data.root {data_cfg.get('root')!r})"
    try:
        labels = data_labels(data_cfg["name"], data_cfg.get("root"), data_cfg.get("subset"),
                             bool(data_cfg.get("download", False)))
    except (OSError, ValueError) as err:
        return [f"{where}: {err}"]
    if labels is None:
        return []
    try:
        plan_splits(labels.train_y, labels.test_y, labels.num_classes, data_cfg)
    except ValueError as err:
        return [str(err)]
    return []


# ------------------------------------------------------------------------------------------------------------ splits


def long_tail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Per-class training counts of the exponential long-tail profile (Cao et al. 2019, LDAM-DRW).

    n_i = int(n_max · ρ^(−i/(K−1))), i = 0 … K−1; written as n_max · (1/ρ)^(i/(K−1)) like LDAM's code so the
    rounding matches its published sizes (CIFAR-10-LT ρ=100: 12,406; CIFAR-100-LT ρ=100: 10,847).
    """
    if imbalance < 1:
        raise ValueError(f"data.imbalance: got {imbalance!r}; valid: a ratio >= 1")
    if num_classes == 1:
        return [int(n_max)]
    factor = 1.0 / imbalance
    return [int(n_max * factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def _stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of indices in which every prefix holds each class in proportion (within one sample).

    Each sample's key is (its random rank within its class + U(0,1)) / class size; sorting the keys interleaves
    the classes evenly, so the first n indices are a stratified random sample of size n.
    """
    if y.size == 0:
        return np.zeros(0, np.int64)
    perm = rng.permutation(y.size)
    ys = y[perm]
    counts = np.bincount(ys)
    order_by_class = np.argsort(ys, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(y.size, np.int64)
    rank[order_by_class] = np.arange(y.size) - np.repeat(starts, counts)
    key = (rank + rng.random(y.size)) / counts[ys]
    return perm[np.argsort(key, kind="stable")]


def _size(value: float | int | None, total: int, path: str, default: float | None = None) -> int:
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{path}: got {value!r}; valid: a fraction in (0, 1) or a count >= 1")
    if value < 1:
        n = int(round(value * total))
    else:
        if not float(value).is_integer():
            raise ValueError(f"{path}: got {value!r}; valid: a fraction in (0, 1) or a count >= 1")
        n = int(value)
    if n < 1 or n > total:
        raise ValueError(f"{path}: {value!r} of {total} samples gives {n}; valid: at least 1 and at most {total}")
    return n


@dataclass
class DataSplits:
    """Four disjoint splits as tensors on one device: images float32 N×C×H×W (normalised), labels int64. Data above
    data.memory_limit keeps its images on disk: each `*_x` is then a StreamedImages (see train_batches)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    calib_x: torch.Tensor
    calib_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    info: dict = field(default_factory=dict)  # JSON-serialisable: sizes, per-class counts, normalisation


_MAX_TRAIN = Param(None, low=1, kind="int", doc="cap on training samples")


def split_indices(y_pool: np.ndarray, num_classes: int, data_cfg: dict,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Indices into the pool for train / calib / val, after the long-tail profile and the training cap."""
    n = y_pool.size
    n_calib = _size(data_cfg.get("calib", 0.15), n, "data.calib")
    n_val = _size(data_cfg.get("val", 0.15), n, "data.val")
    if n_calib + n_val >= n:
        raise ValueError(f"data.calib + data.val: {n_calib} + {n_val} samples leave none of the {n} for training; "
                         f"valid: calib + val < {n}")
    order = _stratified_order(y_pool, rng)
    calib, val, train = order[:n_calib], order[n_calib:n_calib + n_val], order[n_calib + n_val:]
    imbalance = data_cfg.get("imbalance")
    if imbalance is not None:
        counts = np.bincount(y_pool[train], minlength=num_classes)
        target = long_tail_counts(int(counts.max()), num_classes, float(imbalance))
        # `train` is already in random order, so the first n_i of class i are a seeded random subsample.
        emptied = [c for c in range(num_classes) if counts[c] > 0 and target[c] < 1]
        if emptied:
            raise ValueError(f"data.imbalance: {imbalance!r} leaves {len(emptied)} of {num_classes} classes without a "
                             f"training sample (the largest class has {int(counts.max())}, the smallest keeps "
                             f"largest / imbalance); valid: a ratio in [1, {int(counts.max())}] for this data, so that "
                             f"each class keeps at least one training sample")
        keep = np.zeros(train.size, bool)
        for c in range(num_classes):
            members = np.flatnonzero(y_pool[train] == c)
            keep[members[:target[c]]] = True
        train = train[keep]
    max_train = data_cfg.get("max_train")
    if max_train is not None:
        # Checked here too (not only by trainables.config): 0 or a fraction would empty the training split and a
        # negative count would slice off the end of it, silently.
        max_train = int(_MAX_TRAIN.check("data.max_train", max_train))
    if max_train is not None and train.size > max_train:
        # Stratified, so the cap keeps the (possibly long-tailed) class profile.
        train = train[_stratified_order(y_pool[train], rng)[:max_train]]
    return {"train": np.sort(train), "calib": np.sort(calib), "val": np.sort(val)}


def plan_splits(train_y: np.ndarray, test_y: np.ndarray | None, num_classes: int, data_cfg: dict) -> dict:
    """Which samples go to which split, from the labels alone: {'pool': indices of the train/calib/val pool into
    the dataset's training images, 'parts': train/calib/val indices into the pool, 'test': indices of the test split
    (into the training images when the dataset has no test split of its own, into its test split when data.test
    subsamples that, None for the whole official test split)}. ValueError names the data setting that does not fit.
    """
    seed = int(data_cfg.get("split_seed", 0) or 0)
    # Separate streams for the test split and the pool, so calib/val/train of a dataset with its own test split
    # do not move when data.test changes.
    test_rng, pool_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 0])
    test_cfg = data_cfg.get("test")
    test_idx = None
    if test_y is None:
        order = _stratified_order(train_y, test_rng)
        n_test = _size(test_cfg, train_y.size, "data.test", default=0.2)
        if n_test >= train_y.size:
            raise ValueError(f"data.test: {n_test} of {train_y.size} samples leaves none for training; "
                             f"valid: fewer than {train_y.size}")
        test_idx, pool_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    else:
        pool_idx = np.arange(train_y.size)
        if test_cfg is not None:
            n_test = _size(test_cfg, test_y.size, "data.test")
            test_idx = np.sort(_stratified_order(test_y, test_rng)[:n_test])
    parts = split_indices(train_y[pool_idx], num_classes, data_cfg, pool_rng)
    return {"pool": pool_idx, "parts": parts, "test": test_idx}


def load_splits(data_cfg: dict, device: str | torch.device = "cpu") -> DataSplits:
    """Train / calib / val / test tensors on `device` for a trial config's `data:` section.

    calib and val are carved (stratified, seeded by data.split_seed) from the pool of the dataset's training
    images; the test split is the dataset's own test split, or, for a dataset without one, data.test (default
    0.2) carved off first. When the dataset has its own test split and data.test is set, the test split is a
    stratified subsample of that size of the official test split (quick runs). The long-tail profile and
    max_train act on the training split only, so calib, val and test are the same whatever they are.
    """
    import torch

    name = dataset_name(data_cfg)
    device = torch.device(device)
    own = DATASETS.get(name).own_data
    if own:
        lazy = own_data(data_cfg)
        _check_features(lazy, data_cfg)
        if decoded_bytes(lazy) > memory_limit(data_cfg, device):
            return _streamed_splits(lazy, name, data_cfg, device)
        raw = _own_decoded(_own_key(data_cfg))
    else:
        raw = raw_data(name, data_cfg.get("root"), data_cfg.get("subset"), bool(data_cfg.get("download", False)))
    seed = int(data_cfg.get("split_seed", 0) or 0)
    plan = plan_splits(raw.train_y, raw.test_y, raw.num_classes, data_cfg)
    pool_x, pool_y, pool_idx, parts = raw.train_x, raw.train_y, plan["pool"], plan["parts"]
    if raw.test_x is None:
        test_x, test_y = raw.train_x[plan["test"]], raw.train_y[plan["test"]]
    elif plan["test"] is None:
        test_x, test_y = raw.test_x, raw.test_y
    else:
        test_x, test_y = raw.test_x[plan["test"]], raw.test_y[plan["test"]]
    arrays = {s: (pool_x[pool_idx[idx]], pool_y[pool_idx[idx]]) for s, idx in parts.items()}
    arrays["test"] = (test_x, test_y)

    # np.require copies the read-only cached arrays (the official test split is not indexed, so not yet a copy).
    tensors = {s: (torch.from_numpy(np.require(x, requirements=["C", "W"])).to(device).float(),
                   torch.from_numpy(np.require(y, requirements=["C", "W"])).to(device))
               for s, (x, y) in arrays.items()}
    train_x = tensors["train"][0]
    mean = train_x.double().mean(dim=(0, 2, 3))
    std = train_x.double().std(dim=(0, 2, 3), unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant channel carries no signal: leave it
    scale = (1.0 / std).float().view(1, -1, 1, 1)
    shift = mean.float().view(1, -1, 1, 1)
    normed = {s: ((x - shift) * scale, y) for s, (x, y) in tensors.items()}

    _, c, h, w = raw.train_x.shape
    if h != w:
        raise ValueError(f"dataset {name!r}: images are {h}×{w}; valid: square images")
    info = {
        "dataset": name,
        "num_classes": raw.num_classes,
        "in_channels": int(c),
        "image_size": int(h),
        "sizes": {s: int(arrays[s][1].size) for s in ("train", "calib", "val", "test")},
        "class_counts": {s: np.bincount(arrays[s][1], minlength=raw.num_classes).astype(int).tolist()
                         for s in ("train", "calib", "val", "test")},
        "imbalance": data_cfg.get("imbalance"),
        "split_seed": seed,
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
    if own:
        info.update(_own_info(own_data(data_cfg), streamed=False))
    return DataSplits(normed["train"][0], normed["train"][1], normed["calib"][0], normed["calib"][1],
                      normed["val"][0], normed["val"][1], normed["test"][0], normed["test"][1],
                      raw.num_classes, int(c), int(h), info)


def _check_features(lazy: RawData, data_cfg: dict) -> None:
    if lazy.train_x.features and bool((data_cfg.get("augment") or {}).get("crop")):
        raise ValueError("data.augment.crop: the data are feature vectors (N×D), which have no pixels to crop; "
                         "valid: false")


def _own_info(lazy: RawData, streamed: bool) -> dict:
    return {"streamed": streamed, "features": bool(lazy.train_x.features),
            "class_names": list(lazy.class_names)}


def _streamed_splits(lazy: RawData, name: str, data_cfg: dict, device) -> DataSplits:
    """load_splits for data above data.memory_limit: the same four splits, with images left on disk (StreamedImages)
    and the training split's per-channel mean and std computed in one streamed pass."""
    import torch

    plan = plan_splits(lazy.train_y, lazy.test_y, lazy.num_classes, data_cfg)
    pool_idx, parts = plan["pool"], plan["parts"]
    rows = {s: (lazy.train_x, pool_idx[idx]) for s, idx in parts.items()}
    if lazy.test_x is None:
        rows["test"] = (lazy.train_x, plan["test"])
    elif plan["test"] is None:
        rows["test"] = (lazy.test_x, np.arange(len(lazy.test_x)))
    else:
        rows["test"] = (lazy.test_x, plan["test"])
    labels = {s: (lazy.train_y if images is lazy.train_x else lazy.test_y)[idx] for s, (images, idx) in rows.items()}
    workers = data_workers(data_cfg)
    _, c, h, w = lazy.train_x.shape
    if h != w:
        raise ValueError(f"dataset {name!r}: images are {h}×{w}; valid: square images")
    cpu = torch.device("cpu")
    stats = StreamedImages(lazy.train_x, rows["train"][1], 0.0, 1.0, cpu, workers)
    n = len(rows["train"][1])
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for xb in stats.batches([np.arange(i, min(i + 1024, n)) for i in range(0, n, 1024)]):
        xd = xb.double()
        s1 += xd.sum(dim=(0, 2, 3))
        s2 += (xd * xd).sum(dim=(0, 2, 3))
    mean = s1 / (n * h * w)
    std = (s2 / (n * h * w) - mean * mean).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # as the in-memory path
    scale = (1.0 / std).float().view(1, -1, 1, 1).to(device)
    shift = mean.float().view(1, -1, 1, 1).to(device)
    xs = {s: StreamedImages(images, idx, shift, scale, device, workers) for s, (images, idx) in rows.items()}
    ys = {s: torch.from_numpy(np.array(y, np.int64)).to(device) for s, y in labels.items()}
    seed = int(data_cfg.get("split_seed", 0) or 0)
    info = {
        "dataset": name,
        "num_classes": lazy.num_classes,
        "in_channels": int(c),
        "image_size": int(h),
        "sizes": {s: int(labels[s].size) for s in ("train", "calib", "val", "test")},
        "class_counts": {s: np.bincount(labels[s], minlength=lazy.num_classes).astype(int).tolist()
                         for s in ("train", "calib", "val", "test")},
        "imbalance": data_cfg.get("imbalance"),
        "split_seed": seed,
        "mean": mean.tolist(),
        "std": std.tolist(),
        **_own_info(lazy, streamed=True),
    }
    return DataSplits(xs["train"], ys["train"], xs["calib"], ys["calib"], xs["val"], ys["val"], xs["test"],
                      ys["test"], lazy.num_classes, int(c), int(h), info)


# ------------------------------------------------------------------------------------------------------ augmentation


def augment(x: torch.Tensor, aug_cfg: dict, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by `pad` pixels and/or random horizontal flip, for a whole batch at once.

    Runs on x's device with no per-sample Python; the random draws come from `generator` (on any device), so the
    result is a function of (x, aug_cfg, generator state). Padding is zero in normalised units, i.e. the
    training mean colour. Returns a new tensor; x is not modified.
    """
    import torch
    import torch.nn.functional as F

    crop, flip = bool(aug_cfg.get("crop", False)), bool(aug_cfg.get("flip", False))
    pad = int(aug_cfg.get("pad", 4))
    if pad < 0:
        raise ValueError(f"data.augment.pad: got {pad}; valid: an integer >= 0")
    if x.ndim != 4:
        raise ValueError(f"augment: expected a batch N×C×H×W, got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    gdev = generator.device
    if crop and pad > 0:
        shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=gdev).to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = shifts[0][:, None] + torch.arange(h, device=x.device)[None, :]  # N×H
        cols = shifts[1][:, None] + torch.arange(w, device=x.device)[None, :]  # N×W
        batch = torch.arange(n, device=x.device)[:, None, None]
        # Advanced indexing over (N, H, W) of the channels-last view gathers every crop in one kernel.
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        x = x.contiguous()
    if flip:
        mask = (torch.rand(n, generator=generator, device=gdev) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x
