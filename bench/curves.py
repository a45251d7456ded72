"""Recorded learning curves: every configuration of a categorical space trained to full budget, once.

    python bench/curves.py record --space bench/tables/fmlt100_mlp.yaml --out bench-out/fmlt100_mlp --procs 2
    python bench/curves.py verify --table bench/tables/fmlt100_mlp.npz --space bench/tables/fmlt100_mlp.yaml --configs 0 1
    python bench/curves.py subset --table bench/tables/fmlt100_mlp.npz --out tests/data/curves_small.npz ...
    python bench/curves.py info --table bench/tables/fmlt100_mlp.npz

`record` enumerates the full grid of the space's *training* parameters (every parameter but
`calibration.breakpoints`; a parameter that does not apply to a loss is left out, as the search leaves it out),
orders it by a seeded farthest-point design (so any prefix of the recording is spread over the space) and trains each
configuration with the real trial loop (`trainables.trial`) for `train.epochs` epochs, with no early stopping, one
thread per process. After each epoch it takes the calib, val and test logits and fits *every* breakpoint vector of
`calibration.breakpoints` on calib (ATS does not change training, so one trained model serves them all), scoring
val and test through each. A table row is (trained model, breakpoint vector): the space's whole grid.

Per configuration and epoch it records the val and test metrics (acc, calibrated and raw ECE, NLL, Brier, ...), the
score, the training loss and the epoch's wall time as the trial loop measured it (training + its own evaluation; the
extra calibrators are not counted). Beside the table, one `samples/<index>.npz` per configuration holds, for val and
test, each sample's top-label confidence (float16) and correctness (bits) at every epoch before calibration and at
the rung epochs (1, 3, 9, ...) after each calibrator, plus the calib, val and test logits (float16) at the rung
epochs: what noise-aware ranking and post-hoc calibration need. They are 1.1 MB per configuration and are not
shipped; `record` regenerates them with the table.

`record` is resumable: each configuration is written (atomically) when it is done, and a rerun skips the ones
present. The table is assembled from them at the end (`table.npz`). On one machine and library stack the recording
is deterministic (CPU, one thread per process, every seed fixed): `verify` retrains configurations and compares them
with the table bit for bit.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_FORMAT = 1
CAL_KEY = "calibration.breakpoints"
# what the table holds per (configuration, epoch, calibrator); val/acc and test/acc do not depend on the calibrator
METRICS = ("val/acc", "val/ece", "val/ece_raw", "val/adaece", "val/cece", "val/nll", "val/nll_raw", "val/brier",
           "score", "test/acc", "test/ece", "test/ece_raw", "test/adaece", "test/nll", "test/nll_raw", "test/brier")
# per (configuration, epoch)
EPOCH_VALUES = ("train/loss", "time/train_s", "time/eval_s")


# ------------------------------------------------------------------------------------------------------ the grid


def training_params(spec) -> list:
    return [p for p in spec.params if p.key != CAL_KEY]


def calibration_options(spec) -> list:
    """The breakpoint vectors of the space's `calibration.breakpoints` (categorical), or one: the base config's."""
    for p in spec.params:
        if p.key == CAL_KEY:
            if p.kind != "categorical":
                raise SystemExit(f"{CAL_KEY}: the recorded space needs it categorical (choices: [[...], ...]), "
                                 f"got a {p.kind} range")
            return [list(c) for c in p.choices]
    return [list(spec.apply({})["calibration"].get("breakpoints") or [])]


def full_grid(spec) -> list[dict]:
    """Every combination of the training parameters' choices that the search can propose (inactive ones left out)."""
    params = training_params(spec)
    bad = [p.key for p in params if p.kind != "categorical"]
    if bad:
        raise SystemExit(f"{', '.join(bad)}: a recorded space has categorical parameters only (choices: [...]); "
                         f"a range cannot be looked up exactly")
    out: list[dict] = []

    def walk(i: int, chosen: dict) -> None:
        if i == len(params):
            out.append(dict(chosen))
            return
        p = params[i]
        if not spec.is_active(p, chosen):
            walk(i + 1, chosen)
            return
        for choice in p.choices:
            chosen[p.key] = choice
            walk(i + 1, chosen)
            del chosen[p.key]

    walk(0, {})
    return out


def _encode(spec, configs: list[dict]) -> np.ndarray:
    """Unit-cube coordinates for the design: numeric choices by their rank, others one-hot (distance 1 apart)."""
    columns = []
    for p in training_params(spec):
        numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p.choices)
        if numeric:
            ranks = {c: k / max(1, len(p.choices) - 1) for k, c in enumerate(sorted(p.choices))}
            columns.append(np.array([[ranks[c[p.key]] if p.key in c else 0.5] for c in configs]))
        else:
            onehot = np.array([[float(c.get(p.key) == v) / math.sqrt(2) for v in p.choices] for c in configs])
            columns.append(onehot)
    return np.hstack(columns)


def design_order(spec, configs: list[dict], seed: int) -> list[int]:
    """A seeded farthest-point order of `configs`: each next one is the farthest from those before it (ties by a
    seeded permutation), so every prefix covers the space."""
    x = _encode(spec, configs)
    rng = np.random.default_rng(seed)
    tie = rng.permutation(len(configs)) / len(configs) * 1e-9
    first = int(rng.integers(len(configs)))
    order = [first]
    dist = np.linalg.norm(x - x[first], axis=1)
    dist[first] = -1
    for _ in range(len(configs) - 1):
        nxt = int(np.argmax(dist + tie * (dist >= 0)))
        order.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
        dist[order] = -1
    return order


def rung_epochs(epochs: int, grace: int = 1, eta: int = 3) -> list[int]:
    out, r = [], grace
    while r < epochs:
        out.append(r)
        r *= eta
    return out + [epochs]


# --------------------------------------------------------------------------------------------------- recording


@contextlib.contextmanager
def _cached_load_splits():
    """One copy of the data per process while recording (the splits depend on the data section only)."""
    from gce_search.trainables import data as data_module

    original = data_module.load_splits
    cache: dict = {}

    def load_splits(data_cfg, device=None):
        key = json.dumps(data_cfg, sort_keys=True, default=str) + str(device)
        if key not in cache:
            cache[key] = original(data_cfg, device=device)
        return cache[key]

    data_module.load_splits = load_splits
    try:
        yield
    finally:
        data_module.load_splits = original


def record_config(spec, flat: dict, options: list, out_dir: Path, index: int) -> dict:
    """Train one configuration to full budget; return its row and write its samples file."""
    import torch

    from gce_search.trainables.config import resolve
    from gce_search.trainables.loop import score_epoch, split_metrics
    from gce_search.trainables.trial import _Trial

    cfg = resolve(spec.apply({**flat, CAL_KEY: options[0]} if any(p.key == CAL_KEY for p in spec.params) else flat))
    epochs = int(cfg["train"]["epochs"])
    torch.set_num_threads(int(cfg["train"].get("threads") or 1))
    rungs = rung_epochs(epochs)
    nk, nm = len(options), len(METRICS)
    values = np.full((epochs, nk, nm), np.nan)
    per_epoch = np.full((epochs, len(EPOCH_VALUES)), np.nan)
    trial = _Trial(cfg, None)
    data, nc = trial.data, trial.data.num_classes
    n_bins = cfg["objective"]["n_bins"]
    ys = {s: getattr(data, f"{s}_y").cpu() for s in ("calib", "val", "test")}
    samples: dict[str, np.ndarray] = {}
    for s in ("val", "test"):
        samples[f"{s}_conf"] = np.zeros((epochs, len(ys[s])), np.float16)
        samples[f"{s}_correct"] = np.zeros((epochs, (len(ys[s]) + 7) // 8), np.uint8)
        samples[f"{s}_conf_cal"] = np.zeros((len(rungs), nk, len(ys[s])), np.float16)
    for s in ("calib", "val", "test"):
        samples[f"{s}_logits"] = np.zeros((len(rungs), len(ys[s]), nc), np.float16)
    diverged_at = 0
    started = time.perf_counter()
    for e in range(epochs):
        m = trial.run_epoch()
        per_epoch[e] = [m["train/loss"], m["time/train_s"], m["time/eval_s"]]
        if m["status"] == "diverged":
            diverged_at = e + 1
            break
        logits = {s: trial.logits(getattr(data, f"{s}_x")) for s in ("calib", "val", "test")}
        for k, bp in enumerate(options):
            cfg_k = copy.deepcopy(cfg)
            cfg_k["calibration"]["breakpoints"] = bp
            scored, calibrator = score_epoch(cfg_k, (logits["calib"], ys["calib"]), (logits["val"], ys["val"]), nc)
            if k == 0 and not (scored["val/ece"] == m["val/ece"] and scored["val/acc"] == m["val/acc"]):
                raise AssertionError(f"config {index} epoch {e + 1}: recomputed val metrics differ from the loop's")
            scored.update(split_metrics("test", logits["test"], ys["test"], calibrator, nc, n_bins))
            values[e, k] = [scored[key] for key in METRICS]
            if e + 1 in rungs:
                r = rungs.index(e + 1)
                for s in ("val", "test"):
                    probs = torch.softmax(calibrator.transform(logits[s]), dim=1)
                    samples[f"{s}_conf_cal"][r, k] = probs.max(dim=1).values.numpy().astype(np.float16)
        for s in ("val", "test"):
            probs = torch.softmax(logits[s], dim=1)
            conf, pred = probs.max(dim=1)
            samples[f"{s}_conf"][e] = conf.numpy().astype(np.float16)
            samples[f"{s}_correct"][e] = np.packbits((pred == ys[s]).numpy())
        if e + 1 in rungs:
            r = rungs.index(e + 1)
            for s in ("calib", "val", "test"):
                samples[f"{s}_logits"][r] = logits[s].numpy().astype(np.float16)
    row = {"index": index, "config": flat, "values": values.tolist(), "per_epoch": per_epoch.tolist(),
           "diverged_at": diverged_at, "record_s": time.perf_counter() - started}
    samples_dir = out_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    tmp = samples_dir / f".{index}.tmp.npz"
    np.savez_compressed(tmp, **samples)
    os.replace(tmp, samples_dir / f"{index}.npz")
    return row


def _worker(args) -> None:
    space, out_dir, indices, overrides = args
    from gce_search.spaces.loading import load_spec

    spec = load_spec(space, overrides)
    configs = full_grid(spec)
    options = calibration_options(spec)
    rows_dir = Path(out_dir) / "rows"
    with _cached_load_splits():
        _record_rows(spec, configs, options, out_dir, rows_dir, indices)


def _record_rows(spec, configs, options, out_dir, rows_dir, indices) -> None:
    for index in indices:
        row = record_config(spec, configs[index], options, Path(out_dir), index)
        tmp = rows_dir / f".{index}.tmp"
        tmp.write_text(json.dumps(row, allow_nan=True))
        os.replace(tmp, rows_dir / f"{index}.json")
        print(f"[{len(list(rows_dir.glob('*.json')))}/{len(configs)}] config {index} "
              f"{json.dumps(configs[index])} in {row['record_s']:.1f} s", flush=True)


def cmd_record(args) -> int:
    from gce_search.spaces.loading import load_spec

    spec = load_spec(args.space, args.set)
    configs = full_grid(spec)
    options = calibration_options(spec)
    order = design_order(spec, configs, args.seed)
    if args.limit:
        order = order[:args.limit]
    out = Path(args.out)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    (out / "space.yaml").write_text(Path(args.space).read_text())
    todo = [i for i in order if not (out / "rows" / f"{i}.json").exists()]
    print(f"{len(configs)} training configurations x {len(options)} calibrators; {len(order)} to record, "
          f"{len(order) - len(todo)} already done; {args.procs} processes", flush=True)
    started = time.time()
    if todo:
        shares = [todo[w::args.procs] for w in range(args.procs)]
        work = [(args.space, str(out), share, list(args.set)) for share in shares if share]
        if len(work) == 1:
            _worker(work[0])
        else:
            with mp.get_context("spawn").Pool(len(work)) as pool:
                pool.map(_worker, work)
    table = assemble(spec, out, order, options, args)
    print(f"recorded in {time.time() - started:.0f} s; table {table} "
          f"({table.stat().st_size / 2**20:.2f} MiB)")
    return 0


def assemble(spec, out: Path, order: list[int], options: list, args) -> Path:
    from gce_search.trainables.config import resolve

    configs = full_grid(spec)
    rows = [json.loads((out / "rows" / f"{i}.json").read_text()) for i in order]
    base = resolve(spec.apply({**configs[0], **({CAL_KEY: options[0]} if len(options) > 1 else {})}))
    meta = {
        "format": TABLE_FORMAT,
        "space": spec.to_dict(),
        "space_file": os.path.basename(str(args.space)),
        "overrides": list(args.set),
        "seed": args.seed,
        "configs": [r["config"] for r in rows],
        "grid_index": [r["index"] for r in rows],
        "options": options,
        "metrics": list(METRICS),
        "epoch_values": list(EPOCH_VALUES),
        "epochs": int(base["train"]["epochs"]),
        "rungs": rung_epochs(int(base["train"]["epochs"])),
        "diverged_at": [r["diverged_at"] for r in rows],
        "record_s": [r["record_s"] for r in rows],
        "versions": _versions(),
        "data_info": _data_info(base["data"]),
    }
    values = np.array([r["values"] for r in rows], dtype=np.float64)
    per_epoch = np.array([r["per_epoch"] for r in rows], dtype=np.float64)
    path = out / "table.npz"
    tmp = out / ".table.tmp.npz"
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), values=values, per_epoch=per_epoch)
    os.replace(tmp, path)
    return path


def _data_info(data_cfg: dict) -> dict:
    """The data's description as a full-budget result carries it (`data/info`): sizes, class counts, classes."""
    from gce_search.trainables.data import load_splits

    info = load_splits(data_cfg).info
    return json.loads(json.dumps(info, default=str))


def _versions() -> dict:
    import platform

    import optuna
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "optuna": optuna.__version__, "machine": platform.machine(), "processor": platform.processor()}


# ----------------------------------------------------------------------------------------------------- the table


@dataclass
class Table:
    """A recorded table. `values[i, e, k, m]`: configuration i (training), epoch e + 1, calibrator k, METRICS[m];
    `per_epoch[i, e, :]`: EPOCH_VALUES. A searchable configuration is (i, k)."""

    meta: dict
    values: np.ndarray
    per_epoch: np.ndarray

    @property
    def configs(self) -> list[dict]:
        return self.meta["configs"]

    @property
    def options(self) -> list:
        return self.meta["options"]

    @property
    def epochs(self) -> int:
        return int(self.meta["epochs"])

    def metric(self, name: str) -> int:
        return self.meta["metrics"].index(name)

    def epoch_seconds(self, i: int) -> np.ndarray:
        """Wall time of each epoch of configuration i (training + the trial loop's evaluation)."""
        t = self.per_epoch[i, :, 1] + self.per_epoch[i, :, 2]
        return np.where(np.isfinite(t), t, 0.0)

    def last_epoch(self, i: int) -> int:
        """The epochs configuration i reports: all of them, or up to the one that diverged."""
        d = int(self.meta["diverged_at"][i])
        return d if d else self.epochs

    def result(self, i: int, k: int, epoch: int) -> dict:
        """The result the trial loop reports after `epoch` (1-based) for (i, k): the metric keys of a Tune result,
        `final` at the full budget (test metrics only then, as the loop reports them)."""
        if not 1 <= epoch <= self.last_epoch(i):
            raise ValueError(f"configuration {i} reports epochs 1..{self.last_epoch(i)}; got {epoch}")
        row = self.values[i, epoch - 1, k]
        out = {"epoch": epoch, "training_iteration": epoch,
               "train/loss": float(self.per_epoch[i, epoch - 1, 0])}
        diverged = self.meta["diverged_at"][i] == epoch
        final = epoch >= self.epochs
        for m, name in enumerate(self.meta["metrics"]):
            if name.startswith("test/") and not final:
                continue
            out[name] = float(row[m]) if not diverged else math.nan
        out["val/n"] = int(self.meta["data_info"]["sizes"]["val"])
        if final:
            out["data/info"] = self.meta["data_info"]
        out["status"] = "diverged" if diverged else "ok"
        out["final"] = bool(final and not diverged)
        out["time_this_iter_s"] = float(self.epoch_seconds(i)[epoch - 1])
        return out

    def spec(self):
        from gce_search.spaces.validation import spec_from_dict

        return spec_from_dict(self.meta["space"])

    def training_keys(self) -> list[str]:
        keys = []
        for c in self.configs:
            keys.extend(k for k in c if k not in keys)
        return keys

    def index(self) -> dict:
        """(training key) -> i."""
        keys = self.training_keys()
        return {_key(c, keys): i for i, c in enumerate(self.configs)}


def _key(flat: dict, keys: list[str]) -> tuple:
    return tuple((k, json.dumps(flat[k])) for k in keys if k in flat)


def load_table(path: str | os.PathLike) -> Table:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != TABLE_FORMAT:
            raise SystemExit(f"{path}: not a curves table of format {TABLE_FORMAT}")
        return Table(meta, z["values"], z["per_epoch"])


def save_table(table: Table, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(table.meta)), values=table.values, per_epoch=table.per_epoch)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ other commands


def cmd_assemble(args) -> int:
    """Assemble the table from the recorded rows (what `record` does at its end)."""
    from gce_search.spaces.loading import load_spec

    spec = load_spec(args.space, args.set)
    order = design_order(spec, full_grid(spec), args.seed)
    out = Path(args.out)
    done = [i for i in order if (out / "rows" / f"{i}.json").exists()]
    path = assemble(spec, out, done, calibration_options(spec), args)
    print(f"{path}: {len(done)} configurations ({path.stat().st_size / 2**20:.2f} MiB)")
    return 0


def cmd_verify(args) -> int:
    """Retrain configurations of the table and compare their rows bit for bit."""
    from gce_search.spaces.loading import load_spec

    table = load_table(args.table)
    spec = load_spec(args.space, table.meta["overrides"])
    import tempfile

    bad = 0
    with tempfile.TemporaryDirectory() as tmp, _cached_load_splits():
        for i in args.configs:
            row = record_config(spec, table.configs[i], table.options, Path(tmp), table.meta["grid_index"][i])
            same = np.array_equal(np.array(row["values"]), table.values[i], equal_nan=True)
            print(f"config {i} {json.dumps(table.configs[i])}: {'identical' if same else 'DIFFERENT'} "
                  f"({row['record_s']:.1f} s)")
            bad += not same
    return 1 if bad else 0


def cmd_subset(args) -> int:
    """A small table from a big one: the configurations whose values are in the given choices, first E epochs."""
    table = load_table(args.table)
    keep = {}
    for item in args.keep:
        key, _, value = item.partition("=")
        keep[key] = [json.loads(v) for v in value.split("|")]
    rows = [i for i, c in enumerate(table.configs) if all(c.get(k, v[0]) in v for k, v in keep.items())]
    options = list(range(len(table.options))) if not args.options else args.options
    epochs = args.epochs or table.epochs
    meta = copy.deepcopy(table.meta)
    meta["configs"] = [table.configs[i] for i in rows]
    meta["grid_index"] = [table.meta["grid_index"][i] for i in rows]
    meta["diverged_at"] = [table.meta["diverged_at"][i] if table.meta["diverged_at"][i] <= epochs else 0
                           for i in rows]
    meta["record_s"] = [table.meta["record_s"][i] for i in rows]
    meta["options"] = [table.options[k] for k in options]
    meta["epochs"] = epochs
    meta["rungs"] = rung_epochs(epochs)
    meta["space"] = _subset_space(table.meta["space"], keep, meta["options"], epochs)
    meta["subset_of"] = os.path.basename(str(args.table))
    out = Table(meta, table.values[rows][:, :epochs][:, :, options], table.per_epoch[rows][:, :epochs])
    save_table(out, args.out)
    print(f"{args.out}: {len(rows)} configurations x {len(options)} calibrators, {epochs} epochs, "
          f"{Path(args.out).stat().st_size / 1024:.0f} KiB")
    return 0


def _subset_space(space: dict, keep: dict, options: list, epochs: int) -> dict:
    space = copy.deepcopy(space)
    original_losses = set(space["space"].get("loss.name", {}).get("choices", []))
    space.setdefault("train", {})["epochs"] = epochs
    for key, entry in space["space"].items():
        if key in keep:
            entry["choices"] = [c for c in entry["choices"] if c in keep[key]]
        if key == CAL_KEY:
            entry["choices"] = options
    losses = space["space"].get("loss.name", {}).get("choices")
    kept = {}
    for key, entry in space["space"].items():
        owner = key.partition(".")[0]
        if losses is not None and owner in original_losses and owner not in losses:
            continue  # the parameter of a loss the subset no longer has
        if len(entry.get("choices", [None])) > 0:
            kept[key] = entry
    space["space"] = kept
    return space


def bootstrap_ece_std(confidence: np.ndarray, correct: np.ndarray, n_bins: int, resamples: int,
                      rng: np.random.Generator) -> tuple[float, float]:
    """(ECE, bootstrap standard deviation of the ECE) of top-label confidences and correctness, with the tool's
    equal-width binning (trainables.metrics.equal_width_bins); resampling as multinomial counts per sample."""
    from gce_search.trainables.metrics import equal_width_bins

    n = len(confidence)
    bins = equal_width_bins(confidence, n_bins)
    gap = correct.astype(np.float64) - confidence.astype(np.float64)  # per-sample (correct - confidence)

    def ece_of(weights: np.ndarray) -> np.ndarray:  # weights [R, N] -> ECE [R]
        sums = np.zeros((weights.shape[0], n_bins))
        for b in range(n_bins):
            members = bins == b
            if members.any():
                sums[:, b] = weights[:, members] @ gap[members]
        return np.abs(sums).sum(axis=1) / n

    point = float(ece_of(np.ones((1, n)))[0])
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    return point, float(ece_of(counts).std())


def cmd_noise(args) -> int:
    """The sampling noise of a val ECE: bootstrap standard deviation at the full budget, from the recorded
    per-sample calibrated confidences (the samples files `record` writes beside the table)."""
    table = load_table(args.table)
    rng = np.random.default_rng(args.seed)
    n_val = int(table.meta["data_info"]["sizes"]["val"])
    full = [i for i in range(len(table.configs)) if table.last_epoch(i) == table.epochs]
    stds, gaps = [], []
    for i in rng.choice(full, min(args.configs, len(full)), replace=False):
        z = np.load(Path(args.samples) / f"{table.meta['grid_index'][i]}.npz")
        correct = np.unpackbits(z["val_correct"][-1])[:n_val]
        k = int(rng.integers(len(table.options)))
        point, std = bootstrap_ece_std(z["val_conf_cal"][-1, k].astype(np.float64), correct, args.bins,
                                       args.resamples, rng)
        stds.append(std)
        gaps.append(abs(point - table.values[i, -1, k, table.metric("val/ece")]))
    print(f"val ECE ({n_val} samples, {args.bins} bins), bootstrap std over {args.resamples} resamples, "
          f"{len(stds)} configurations: median {np.median(stds):.4f}, range {min(stds):.4f}-{max(stds):.4f} "
          f"(ECE from the float16 confidences within {max(gaps):.1e} of the table's)")
    return 0


def cmd_info(args) -> int:
    table = load_table(args.table)
    n, e, k, _ = table.values.shape
    final = table.values[:, -1]
    acc, ece = final[..., table.metric("val/acc")], final[..., table.metric("val/ece")]
    seconds = np.array([table.epoch_seconds(i).sum() for i in range(n)])
    print(f"{args.table}: {n} trained configurations x {k} calibrators = {n * k} rows, {e} epochs")
    print(f"  final val/acc {np.nanmin(acc):.4f}..{np.nanmax(acc):.4f}, val/ece {np.nanmin(ece):.4f}.."
          f"{np.nanmax(ece):.4f}; diverged {sum(1 for d in table.meta['diverged_at'] if d)}")
    print(f"  full-budget trial time {seconds.min():.1f}..{seconds.max():.1f} s (mean {seconds.mean():.1f}); "
          f"recording {sum(table.meta['record_s']):.0f} s of process time")
    print(f"  recorded with {table.meta['versions']}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/curves.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("record", help="train every configuration of a categorical space to full budget")
    p.add_argument("--space", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the design order")
    p.add_argument("--limit", type=int, default=None, help="record only the first N of the design")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(run=cmd_record)
    p = sub.add_parser("assemble", help="assemble table.npz from the rows recorded so far")
    p.add_argument("--space", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(run=cmd_assemble)
    p = sub.add_parser("verify", help="retrain configurations and compare with the table bit for bit")
    p.add_argument("--table", required=True)
    p.add_argument("--space", required=True)
    p.add_argument("--configs", type=int, nargs="+", default=[0])
    p.set_defaults(run=cmd_verify)
    p = sub.add_parser("subset", help="a small table from a big one")
    p.add_argument("--table", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--keep", action="append", default=[], metavar="KEY=V1|V2", help="JSON values")
    p.add_argument("--options", type=int, nargs="*", default=None, help="calibrator indices to keep")
    p.add_argument("--epochs", type=int, default=None)
    p.set_defaults(run=cmd_subset)
    p = sub.add_parser("noise", help="bootstrap standard deviation of val ECEs from the recorded samples")
    p.add_argument("--table", required=True)
    p.add_argument("--samples", required=True, help="the samples/ folder `record` wrote beside the table")
    p.add_argument("--configs", type=int, default=12)
    p.add_argument("--resamples", type=int, default=200)
    p.add_argument("--bins", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_noise)
    p = sub.add_parser("info", help="summarise a table")
    p.add_argument("--table", required=True)
    p.set_defaults(run=cmd_info)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
