"""The resolved trial config: every key, its default and unit, and the validation that names bad input.

A trial config is a plain nested dict (YAML/JSON-serialisable). The same dict drives a search trial and
`gce-search train`, and is what `gce-search export` writes, so it must hold everything a run depends on.
"""
from __future__ import annotations

import copy
import difflib
import os
from typing import Any

from gce_search.trainables import external
from gce_search.trainables.catalog import CALIBRATORS, DATASETS, LOSSES, LR_SCHEDULES, MODELS, OPTIMIZERS
from gce_search.errors import ConfigError
from gce_search.trainables.registry import Param
from gce_search.trainables.user_code import TRAINABLE_FORM, form_problem

_FRACTION_OR_COUNT = "a fraction in (0, 1) or a count >= 1"

# Seeds go to torch.manual_seed (at most 2^64 - 1, after offsets added per rank) and numpy's legacy seeding (at
# most 2^32 - 1); one 32-bit range keeps every consumer in bounds.
MAX_SEED = 2**32 - 1
# ECE bins: a histogram over [0, 1]; beyond a thousand bins every bin of a validation split is nearly empty, and a
# huge count only allocates (objective.n_bins: 1e9 would ask for 1e9 bins).
MAX_BINS = 1000
# torch intra-op threads: a fixed bound (not this machine's cpu count), so that a config validates the same on
# every machine; more threads than this only oversubscribe any existing node.
MAX_THREADS = 1024

# Every fixed-key setting: its default (written once, here), its valid values and its unit. Loss, model and dataset
# parameters are declared in trainables.catalog and checked against their registries. Sections mirror
# docs/architecture.md.
SCHEMA: dict[str, Param] = {
    "seed": Param(0, low=0, high=MAX_SEED, kind="int", doc="model init, batch order, augmentation"),
    "data.name": Param("digits", kind="str", doc="trainables.catalog.DATASETS key"),
    "data.root": Param(None, kind="str", doc="directory of the on-disk files; null: the dataset's usual place; "
                                             "image_folder: the folder holding train/<class>/ (docs/byo.md)"),
    "data.path": Param(None, kind="str", doc="arrays: the .npz file with x_train, y_train (x_test, y_test)"),
    "data.factory": Param(None, kind="str", doc="'module:function' returning your data (docs/byo.md); set, the "
                                                "dataset is 'factory' (data.name may be left out)"),
    "data.options": Param({}, kind="mapping", doc="data.factory: keyword arguments of the function"),
    "data.memory_limit": Param(None, kind="bytes", doc="image_folder/arrays/factory: decoded data above this many "
                                                       "bytes (float32) is streamed through a DataLoader; null: "
                                                       "0.25 of RAM (CPU) or of GPU memory (cuda)"),
    "data.workers": Param(None, low=0, kind="int", doc="DataLoader worker processes when streaming; null: "
                                                       "min(4, CPUs); 0: decode in the trial's process"),
    "data.subset": Param(None, kind="str", doc='MedMNIST subset name, e.g. "pathmnist"'),
    "data.download": Param(False, kind="bool",
                           doc="CIFAR only: fetch through torchvision when the machine has network"),
    "data.imbalance": Param(None, low=1.0,
                            doc="long-tail ratio rho >= 1, training split only (Cao et al. 2019 profile)"),
    "data.split_seed": Param(0, low=0, high=MAX_SEED, kind="int", doc="seeds the four disjoint splits"),
    "data.calib": Param(0.15, low=0.0, low_inclusive=False,
                        doc="calibration split: fraction (< 1) or count (>= 1) of the train/calib/val pool"),
    "data.val": Param(0.15, low=0.0, low_inclusive=False, doc="validation split, same convention"),
    "data.test": Param(None, low=0.0, low_inclusive=False,
                       doc="null: the dataset's own test split where it has one, else 0.2 of the data"),
    "data.augment.crop": Param(False, kind="bool", doc="random crop after padding, on-device, in batch"),
    "data.augment.pad": Param(4, low=0, kind="int", doc="crop padding, pixels"),
    "data.augment.flip": Param(False, kind="bool", doc="random horizontal flip, on-device, in batch"),
    "data.max_train": Param(None, low=1, kind="int", doc="cap on training samples, for quick runs"),
    "train.epochs": Param(10, low=1, kind="int", doc="full budget, epochs (ASHA's max_t)"),
    "train.batch_size": Param(128, low=1, kind="int", doc="global batch, samples"),
    "train.optimizer": Param("sgd", choices=tuple(OPTIMIZERS.names()), doc="trainables.catalog.OPTIMIZERS key"),
    "train.lr": Param(0.1, low=0.0, low_inclusive=False),
    "train.momentum": Param(0.9, low=0.0, high=1.0, high_inclusive=False),
    "train.nesterov": Param(False, kind="bool"),
    "train.weight_decay": Param(5e-4, low=0.0),
    "train.schedule": Param("cosine", choices=tuple(LR_SCHEDULES.names()),
                            doc="per-epoch LR schedule, trainables.catalog.LR_SCHEDULES key"),
    "train.milestones": Param([], kind="list", doc="multistep: epochs at which lr *= gamma"),
    "train.gamma": Param(0.1, low=0.0, low_inclusive=False),
    "train.reduction": Param("mean", choices=("mean", "sum"),
                             doc="mean | sum over the batch (the calibration papers sum and clip at 2)"),
    "train.grad_clip": Param(None, low=0.0, low_inclusive=False, doc="max global gradient norm"),
    "train.bf16": Param("auto", kind="auto_bool",
                        doc="bf16 autocast for the forward pass; auto: decided on the device (trainables.precision)"),
    "train.channels_last": Param("auto", kind="auto_bool",
                                 doc="channels_last memory format for conv nets; auto: as bf16"),
    "train.device": Param("auto", choices=("auto", "cpu", "cuda"), doc="auto: cuda when visible, else cpu"),
    "train.workers": Param(1, low=1, kind="int", doc="DDP processes: GPUs on a GPU node, gloo processes on CPU"),
    "train.eval_batch_size": Param(1024, low=1, kind="int"),
    # Float sums depend on the thread count, so a search sets it from resources.cpus_per_trial and an exported
    # config retrains with the same value.
    "train.threads": Param(None, low=1, high=MAX_THREADS, kind="int",
                           doc="torch intra-op threads per process; null: torch's default"),
    "calibration.method": Param("ats", kind="str", doc="trainables.catalog.CALIBRATORS key"),
    "calibration.breakpoints": Param([0.5, 0.8, 0.95], kind="list",
                                     doc="ATS: confidence breakpoints, strictly increasing in (0, 1); or "
                                         "{refine: cv, pieces: [2, 6], candidates: 200, folds: 5}: the "
                                         "calibrator chosen per model by cross-validation (trainables.refine)"),
    "calibration.min_samples": Param(50, low=1, kind="int",
                                     doc="ATS: pieces with fewer calibration samples use the global temperature"),
    "calibration.prior_samples": Param(10.0, low=0.0, doc="ATS: each piece's 1/T is shrunk toward the global 1/T "
                                                          "with this many samples' weight"),
    "objective.w_acc": Param(1.0, low=0.0,
                             doc="score = w_acc * val/acc - w_ece * <the objective.ece_metric key, val/ece>"),
    "objective.w_ece": Param(1.0, low=0.0),
    "objective.n_bins": Param(15, low=1, high=MAX_BINS, kind="int", doc="ECE bins"),
    "objective.ece_metric": Param("ece", choices=("ece", "smece", "debiased"),
                                  doc="the calibration error the search minimises (score and front): ece (15-bin, "
                                      "val/ece), smece (smooth ECE, val/smece) or debiased (val/debiased_ece)"),
    "trainable": Param(None, kind="str", doc='your own training loop, "module:function" taking (config, session) '
                                             "(trainables.user_loop, docs/byo.md); null: the shipped loop"),
}

# The sections of a trial config, in order; `model` and `loss` are `{name: <registry key>, **its parameters}`.
# A model section may instead be `{factory: "module:function", **its keywords}` (trainables.external).
ENTRY_DEFAULTS = {"model": {"name": "mlp"}, "loss": {"name": "cross_entropy"}}
SECTIONS = ("seed", "data", "model", "loss", "train", "calibration", "objective", "trainable")


# objective.ece_metric -> the result key the search minimises (the score's ECE term and the front's second axis).
ECE_METRIC_KEYS = {"ece": "val/ece", "smece": "val/smece", "debiased": "val/debiased_ece"}


def objective_ece_key(objective: dict | None) -> str:
    """The validation key of `objective.ece_metric` (val/ece by default and for a config from before the option)."""
    return ECE_METRIC_KEYS[(objective or {}).get("ece_metric") or "ece"]


def _defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section in SECTIONS:
        if section in ENTRY_DEFAULTS:
            out[section] = copy.deepcopy(ENTRY_DEFAULTS[section])
        for path, param in SCHEMA.items():
            if path == section or path.startswith(section + "."):
                set_path(out, path, copy.deepcopy(param.default))
    return out


# Keys whose value may be null (then the documented default behaviour applies).
NULLABLE = {k for k, p in SCHEMA.items() if p.default is None}


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in, recursively for dicts."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def get_path(cfg: dict, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = node[part]
    return node


def set_path(cfg: dict, path: str, value: Any) -> None:
    """Set a dotted path, creating missing mappings; ValueError when a step of the path holds a value."""
    parts = path.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"{path}: {'.'.join(parts[:i + 1])} holds a value ({node!r}), not a mapping; valid: "
                             f"a dotted path to a setting")
    node[parts[-1]] = value


# The trial config with every default: derived from SCHEMA and ENTRY_DEFAULTS, so each default is written once.
DEFAULTS: dict[str, Any] = _defaults()


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _walk_unknown(cfg: dict, defaults: dict, prefix: str, problems: list[str], open_sections: set[str]) -> None:
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if prefix.rstrip(".") in open_sections:
            continue  # parameters of a registry entry: checked against the registry
        if key not in defaults:
            problems.append(
                f"{path}: unknown key{_suggest(str(key), list(defaults))}; valid: {', '.join(defaults)}"
            )
        elif isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                problems.append(f"{path}: expected a mapping; valid keys: {', '.join(defaults[key])}")
            else:
                _walk_unknown(value, defaults[key], path + ".", problems, open_sections)


def _registry_params(kind: str, section: dict, path: str, problems: list[str]) -> None:
    """Check a `{name: ..., **params}` section against its registry entry's declared parameters (a model from
    outside the catalog by its form only: the space checker and the build check the rest, trainables.external)."""
    if kind == "model" and external.is_external(section):
        problems.extend(external.form_problems(section, path))
        return
    reg = {"loss": LOSSES, "model": MODELS}[kind]
    name = section.get("name")
    if name not in reg:
        more = ", torchvision.<builder>, timm.<model>, or a factory: key" if kind == "model" else ""
        problems.append(f"{path}.name: unknown {kind} {name!r}{_suggest(str(name), reg.names())}; "
                        f"valid: {', '.join(reg.names())}{more}")
        return
    params: dict[str, Param] = reg[name].params
    for key, value in section.items():
        if key == "name":
            continue
        if key not in params:
            valid = ", ".join(params) if params else "none"
            problems.append(f"{path}.{key}: not a parameter of {kind} {name!r}{_suggest(key, list(params))}; "
                            f"valid: {valid}")
            continue
        p = params[key].problem(value)
        if p is not None:
            problems.append(f"{path}.{key}: {p}; valid: {params[key].describe()}")


REFINE_FORM = ("{refine: cv, pieces: [LO, HI], candidates: N, folds: K} (pieces 1 <= LO <= HI <= 16, candidates "
               "2..5000, folds 2..20, optional seed)")
REFINE_DEFAULTS = {"refine": "cv", "pieces": [2, 6], "candidates": 200, "folds": 5, "seed": 0}
REFINE_KEYS = set(REFINE_DEFAULTS)


def refine_options(value: dict) -> dict:
    """A refinement request with REFINE_DEFAULTS filled in where it is silent."""
    return {**REFINE_DEFAULTS, **value}


def is_refine(value: Any) -> bool:
    """Whether calibration.breakpoints asks for the cross-validated refinement (trainables.refine)."""
    return isinstance(value, dict)


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_refine(value: dict) -> str | None:
    """None if `value` is a valid refinement request, else what is wrong (ending in what would be valid)."""
    unknown = sorted(set(value) - REFINE_KEYS)
    if unknown:
        return f"unknown key {unknown[0]!r}; valid: {REFINE_FORM}"
    if value.get("refine") != "cv":
        return f"refine: got {value.get('refine')!r}; valid: cv (k-fold cross-validation inside the calib split)"
    value = refine_options(value)
    pieces = value["pieces"]
    if not (isinstance(pieces, (list, tuple)) and len(pieces) == 2 and all(_int_in(p, 1, 16) for p in pieces)
            and pieces[0] <= pieces[1]):
        return f"pieces: got {pieces!r}; valid: [LO, HI] with 1 <= LO <= HI <= 16"
    if not _int_in(value["candidates"], 2, 5000):
        return f"candidates: got {value.get('candidates')!r}; valid: an integer in 2..5000"
    if not _int_in(value["folds"], 2, 20):
        return f"folds: got {value.get('folds')!r}; valid: an integer in 2..20"
    if not _int_in(value["seed"], 0, 2**32 - 1):
        return f"seed: got {value.get('seed')!r}; valid: an integer >= 0"
    return None


def check_breakpoints(value: Any) -> str | None:
    """None if `value` is a strictly increasing list of numbers inside (0, 1) or a refinement request (REFINE_FORM),
    else what is wrong."""
    if is_refine(value):
        problem = check_refine(value)
        return None if problem is None else f"refinement {problem}"
    if not isinstance(value, (list, tuple)):
        return f"got {value!r}"
    for b in value:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 < float(b) < 1.0:
            return f"got {list(value)!r}: every breakpoint must be a number inside (0, 1)"
    if any(float(a) >= float(b) for a, b in zip(value, value[1:])):
        return f"got {list(value)!r}: breakpoints must be strictly increasing"
    return None


def problems_of(cfg: dict) -> list[str]:
    """Every problem of a full (merged) trial config, one line each."""
    problems: list[str] = []
    _walk_unknown(cfg, DEFAULTS, "", problems, open_sections={"model", "loss", "data.options"})
    for path, param in SCHEMA.items():
        try:
            value = get_path(cfg, path)
        except (KeyError, TypeError):
            continue  # reported as a structural problem above
        if value is None and path in NULLABLE:
            continue
        if path == "calibration.breakpoints" and is_refine(value):
            continue  # a refinement request: check_breakpoints below
        p = param.problem(value)
        if p is not None:
            problems.append(f"{path}: {p}; valid: {param.describe()}")
    for frac_key in ("data.calib", "data.val", "data.test"):
        v = get_path(cfg, frac_key) if isinstance(cfg.get("data"), dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 and not float(v).is_integer():
            problems.append(f"{frac_key}: got {v!r}; valid: {_FRACTION_OR_COUNT}")
    if isinstance(cfg.get("loss"), dict):
        _registry_params("loss", cfg["loss"], "loss", problems)
    elif "loss" in cfg:
        problems.append("loss: expected a mapping with a 'name' key")
    if isinstance(cfg.get("model"), dict):
        _registry_params("model", cfg["model"], "model", problems)
    elif "model" in cfg:
        problems.append("model: expected a mapping with a 'name' key")
    if isinstance(cfg.get("data"), dict):
        name = cfg["data"].get("name")
        if name not in DATASETS:
            problems.append(f"data.name: unknown dataset {name!r}{_suggest(str(name), DATASETS.names())}; "
                            f"valid: {', '.join(DATASETS.names())}")
        elif cfg["data"].get("factory") is not None and name not in ("factory", DEFAULTS["data"]["name"]):
            problems.append(f"data.name: {name!r} with data.factory set; valid: 'factory' or no data.name (the "
                            f"factory's data is the dataset)")
        elif cfg["data"].get("factory") is None and name == "factory":
            problems.append("data.factory: dataset 'factory' needs it; valid: 'package.module:function'")
    if isinstance(cfg.get("calibration"), dict):
        method = cfg["calibration"].get("method")
        if method not in CALIBRATORS:
            problems.append(f"calibration.method: unknown calibrator {method!r}; "
                            f"valid: {', '.join(CALIBRATORS.names())}")
        value = cfg["calibration"].get("breakpoints")
        bp = check_breakpoints(value)
        if bp is not None:
            problems.append(f"calibration.breakpoints: {bp}" if is_refine(value) else
                            f"calibration.breakpoints: {bp}; valid: a strictly increasing list inside (0, 1), or "
                            f"{REFINE_FORM}")
    if isinstance(cfg.get("trainable"), str) and form_problem(cfg["trainable"]) is not None:
        problems.append(f"trainable: {form_problem(cfg['trainable'])}; valid: {TRAINABLE_FORM}")
    if isinstance(cfg.get("train"), dict):
        ms = cfg["train"].get("milestones")
        if isinstance(ms, (list, tuple)) and not all(isinstance(m, int) and m >= 1 for m in ms):
            problems.append(f"train.milestones: got {ms!r}; valid: a list of epochs (integers >= 1)")
    return problems


def with_defaults(partial: dict) -> dict:
    """A copy of `partial` with every default filled in. A `model:` section holding a `factory` (and no `name`)
    keeps no default name: it is a factory's section (trainables.external)."""
    cfg = deep_merge(DEFAULTS, partial)
    given = partial.get("model")
    if isinstance(given, dict) and "factory" in given and "name" not in given:
        cfg["model"].pop("name", None)
    return cfg


def resolve(partial: dict | None = None, source: str = "") -> dict:
    """Fill defaults into a partial trial config and validate it; raise ConfigError listing every problem."""
    if partial is None:
        partial = {}
    if not isinstance(partial, dict):
        raise ConfigError([f"(top level): expected a mapping, got {type(partial).__name__}"], source)
    cfg = with_defaults(partial)
    problems = problems_of(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def trial_problems(cfg: dict) -> list[str]:
    """Problems between settings of a resolved config that each look valid alone (run before anything starts)."""
    tc = cfg["train"]
    problems = []
    if tc["batch_size"] % tc["workers"]:
        problems.append(f"train.batch_size: got {tc['batch_size']} with train.workers {tc['workers']}; valid: a "
                        f"multiple of train.workers (every process gets an equal share of the global batch)")
    if tc["optimizer"] == "sgd" and tc["nesterov"] and tc["momentum"] <= 0:
        problems.append("train.nesterov: true needs train.momentum > 0; valid: momentum in (0, 1) or nesterov false")
    return problems


def threads_for(cpus_per_trial: float, workers: int = 1) -> int:
    """Torch threads per process for a trial reserving `cpus_per_trial` CPUs over `workers` processes: what Ray
    gives a trial worker (OMP_NUM_THREADS = its whole CPUs, at least 1)."""
    return max(1, int(cpus_per_trial) // max(1, int(workers)))


def pin_threads(cfg: dict, cpus_per_trial: float) -> dict:
    """Set an unset `train.threads` of a resolved config to what a trial reserving `cpus_per_trial` CPUs gets, so
    that a retrain of the recorded config sums floats the same way (in place; returns cfg)."""
    if cfg["train"]["threads"] is None:
        cfg["train"]["threads"] = threads_for(cpus_per_trial, cfg["train"]["workers"])
    return cfg


PATH_KEYS = ("root", "path")  # data.root, data.path: files the trial reads


def anchor_paths(partial: Any, base: str | os.PathLike | None = None) -> Any:
    """`partial` (a partial trial config or a space file's sections) with a relative data.root / data.path made
    absolute against `base` (default: the current directory), as a user means it when typing it: a trial runs in
    a folder of its own (and on another node), where a relative path would name something else. Other values and
    anything not a string stay as they are; the input is not changed."""
    if not isinstance(partial, dict) or not isinstance(partial.get("data"), dict):
        return partial
    data = dict(partial["data"])
    for key in PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value and "://" not in value and not os.path.isabs(os.path.expanduser(value)):
            data[key] = os.path.abspath(os.path.join(base if base is not None else os.getcwd(), value))
    return {**partial, "data": data}

