"""Your own training loop: `trainable: "my_pkg.train:train"` in a space file or a trial config replaces the
shipped loop (docs/byo.md, "Your own training loop").

gce-search imports the function (trainables.user_code), seeds torch, numpy and `random` with the config's `seed`,
and calls `train(config, session)` once per trial with the resolved trial config. The function trains as it likes
and calls `session.report(epoch=..., logits={"calib": (logits, labels), "val": (...), "test": (...)},
train_loss=..., state=...)` after each epoch; the session then does what the shipped loop does at the end of an
epoch (trainables.loop): fits the configured calibrator on calib, computes every metric key on val (raw and
calibrated), the score and the status, on the final epoch (`train.epochs`) the same on test, reports through the
trial's reporter (Ray Tune in a search: ASHA and MO-ASHA see the trial as any other, and a trial Tune stops gets
SystemExit out of `report`) and checkpoints `state`. A resumed trial gets that state back as
`session.restored_state` and goes on after `session.start_epoch`.

The checkpoint (checkpoint.pt) loads with torch.load(weights_only=True) whatever the state: a state of tensors,
dicts, lists, tuples, strings and numbers is stored as it is, anything else torch.save can write is stored as the
bytes of its own torch.save (loaded back with weights_only=False, in the trial that wrote it only). It also holds
the epoch's raw calib/val (and final test) logits, so the predictions of a finished trial (reliability diagrams,
the ECE bootstrap) are read from it instead of being recomputed from a model.
"""
from __future__ import annotations

import copy
import io
import os
import random
import tempfile
import time
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import torch

from gce_search.errors import ConfigError
from gce_search.trainables.checkpoints import CHECKPOINT_FILE
from gce_search.trainables.loop import (diverged_metrics, is_finite, plain, resolve_device, rng_state, score_epoch,
                                        set_rng_state, split_metrics)
from gce_search.trainables.user_code import load_trainable

CHECKPOINT_FORMAT = 1
LOOP = "trainable"  # checkpoint["loop"]: written by this module (the shipped loop's checkpoints have no such key)
SPLITS = ("calib", "val", "test")
# Entries of the final result that describe the whole run, not an epoch (kept out of the per-epoch history).
PER_RUN_KEYS = ("data/info", "device/info")
# Sections a checkpoint must agree with to be resumed.
_RESUME_MUST_MATCH = ("seed", "data", "model", "loss", "trainable")
# Result names gce-search sets itself (here, in search.trainable and in Ray Tune): refused in report(metrics=...).
_RESERVED = ("epoch", "score", "status", "final", "diverged_epoch", "train/loss", "done", "training_iteration",
             "node_id", "cuda_visible_devices", "logged_epoch")
_RESERVED_PREFIXES = ("val/", "test/", "calib/", "calibration/", "data/", "device/", "time/")
_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes, torch.dtype, torch.device, torch.Size)


class _Stopped(BaseException):
    """Raised out of session.report after a diverged epoch, so that the user's loop stops (a BaseException: an
    `except Exception` in the loop does not swallow it)."""


def _weights_only(obj: Any, depth: int = 0) -> bool:
    """Whether torch.load(weights_only=True) reads `obj` back as it is: tensors, dicts, lists, tuples, numbers,
    strings (a model's or an optimiser's state_dict is)."""
    if depth > 100:
        return False
    if isinstance(obj, torch.Tensor):
        return type(obj) in (torch.Tensor, torch.nn.Parameter)
    if isinstance(obj, _PLAIN_SCALARS):
        return True
    if type(obj) in (dict, OrderedDict):
        return all(isinstance(k, (str, int)) and _weights_only(v, depth + 1) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return all(_weights_only(v, depth + 1) for v in obj)
    return False


def _pack_state(state: Any) -> dict:
    if _weights_only(state):
        return {"state": state, "state_pickle": None}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return {"state": None, "state_pickle": torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)}


def _unpack_state(saved: dict) -> Any:
    if saved.get("state_pickle") is None:
        return saved.get("state")
    data = saved["state_pickle"].numpy().tobytes()
    # the trial's own checkpoint, written by _pack_state above from what its loop passed as `state`
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _pair(split: str, value: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 CPU logits [N, K], int64 CPU labels [N]) from what report got for `split`."""
    where = f"session.report(logits={{{split!r}: ...}})"
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{where}: got {type(value).__name__}; valid: a pair (logits [N, K], labels [N]) of tensors "
                         f"or numpy arrays")
    try:
        logits = torch.as_tensor(value[0]).detach().to("cpu", torch.float32)
        labels = torch.as_tensor(value[1]).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{where}: cannot be read as tensors ({err}); valid: a pair (logits [N, K], labels [N]) "
                         f"of tensors or numpy arrays") from None
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
        raise ValueError(f"{where}: logits of shape {tuple(logits.shape)}; valid: [N, K] with N >= 1 samples and "
                         f"K >= 2 classes")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{where}: labels of shape {tuple(labels.shape)} for logits {tuple(logits.shape)}; valid: "
                         f"[{logits.shape[0]}] (one label per row)")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{where}: labels of dtype {labels.dtype}; valid: integer class indices")
    labels = labels.long()
    k = logits.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"{where}: labels range over [{int(labels.min())}, {int(labels.max())}]; valid: class "
                         f"indices in [0, {k - 1}] for {k} logit columns")
    return logits.contiguous(), labels


class _SessionLoss:
    """`session.loss`: the `loss:` section's loss as `(logits [B, K], targets [B]) -> per-sample losses [B]`,
    built for K classes on its first call (trainables.losses.build_loss)."""

    def __init__(self, loss_cfg: dict, num_classes: int | None, state: dict | None):
        self.loss_cfg = loss_cfg
        self.impl = None
        self._state = state
        if num_classes is not None:
            self._build(num_classes)

    def _build(self, num_classes: int) -> None:
        from gce_search.trainables.losses import build_loss

        self.impl = build_loss(self.loss_cfg, num_classes)
        if self._state:
            self.impl.load_state_dict(self._state)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.impl is None:
            self._build(int(logits.shape[-1]))
        return self.impl(logits.float(), targets)

    def on_epoch_end(self, calib_logits: torch.Tensor, calib_labels: torch.Tensor) -> None:
        if self.impl is not None:
            self.impl.on_epoch_end(calib_logits, calib_labels)

    def state_dict(self) -> dict | None:
        return self.impl.state_dict() if self.impl is not None else self._state

    def __repr__(self) -> str:
        return f"session.loss({self.impl!r})" if self.impl is not None else f"session.loss({self.loss_cfg!r})"


class Session:
    """What `train(config, session)` gets. Attributes: `config` (the resolved trial config), `epochs`
    (train.epochs), `start_epoch` (epochs already done: 0 on a fresh start, the checkpoint's epoch on a resume; the
    next report is epoch start_epoch + 1), `restored_state` (the `state` of that checkpoint's report, tensors on
    the CPU; None on a fresh start; its first read puts back the RNG states of that report), `device` (train.device resolved), `data` (the `data:` section's splits,
    loaded on first use: trainables.data.load_splits), `loss` (the `loss:` section's loss) and
    `build_model()` (the `model:` section's network for `data`)."""

    def __init__(self, cfg: dict, reporter: Callable | None, restored: dict | None):
        self.config = copy.deepcopy(cfg)
        self.epochs = int(cfg["train"]["epochs"])
        self.device = resolve_device(cfg["train"]["device"])
        self.start_epoch = int(restored["epoch"]) if restored else 0
        self._restored = restored
        self._restored_state = _unpack_state(restored) if restored else None
        self._rng_restored = restored is None
        self.history: list[dict] = list(restored.get("history", [])) if restored else []
        self.last_metrics: dict = dict(restored.get("metrics") or {}) if restored else {}
        self.finished = bool(restored) and self.start_epoch >= self.epochs
        self._reporter = reporter
        self._data = None
        self._loss = None
        self._loss_state = restored.get("loss") if restored else None
        self._since = time.perf_counter()

    # ---- what the loop may use

    @property
    def restored_state(self) -> Any:
        """The `state` of the report the trial resumes after (tensors on the CPU), None on a fresh start. The
        first read on a resume also puts the torch, numpy and `random` RNG states back as they were at that
        report: a loop that builds its model, reads restored_state, then trains, goes on exactly as an
        uninterrupted run would (on the CPU)."""
        if not self._rng_restored:
            self._rng_restored = True
            set_rng_state(self._restored["rng"]["by_rank"][0])
        return self._restored_state

    @property
    def data(self):
        """The `data:` section's train/calib/val/test splits on `device` (trainables.data.DataSplits: `train_x`,
        `train_y`, ..., `num_classes`, `in_channels`, `image_size`, `info`); loaded on first use."""
        if self._data is None:
            from gce_search.trainables.data import load_splits

            self._data = load_splits(self.config["data"], device=self.device)
        return self._data

    def build_model(self) -> torch.nn.Module:
        """The `model:` section's network (trainables.models.build_model) for `data`'s shape, on `device`."""
        from gce_search.trainables.models import build_model

        d = self.data
        return build_model(self.config["model"], d.in_channels, d.num_classes, d.image_size).to(self.device)

    @property
    def loss(self) -> _SessionLoss:
        """The `loss:` section's loss (GCE, focal, ...): `(logits [B, K], targets [B]) -> per-sample losses [B]`;
        reduce it as you like (e.g. `.mean()`). Stateful losses (AdaFocal) are updated on the calib logits at each
        report and checkpointed with the trial."""
        if self._loss is None:
            k = self._data.num_classes if self._data is not None else None
            self._loss = _SessionLoss(self.config["loss"], k, self._loss_state)
        return self._loss

    # ---- report

    def report(self, *, epoch: int, logits: dict, train_loss: float, state: Any = None,
               metrics: dict | None = None) -> dict:
        """Score, report and checkpoint epoch `epoch` (1-based; each epoch once, in order, from start_epoch + 1 to
        `epochs`). `logits`: {"calib": (logits [N, K], labels [N]), "val": (...)} of the model after the epoch,
        plus "test" on the final epoch (epoch == epochs; ignored before); tensors or numpy arrays, any device.
        `train_loss`: the epoch's mean training loss. `state`: what a resumed trial gets back as restored_state
        (None: nothing). `metrics`: extra scalars of your own, reported under their names. Returns the epoch's
        metrics. After a diverged epoch (a non-finite train_loss or logit) the loop is stopped (report does not
        return); a trial stopped by the search (ASHA) gets Tune's SystemExit out of report."""
        t0 = time.perf_counter()
        expected = self.start_epoch + 1 + sum(1 for h in self.history if h.get("epoch", 0) > self.start_epoch)
        if self.finished:
            raise RuntimeError(f"session.report(epoch={epoch!r}): the trial already reported its final epoch "
                               f"{self.epochs} (train.epochs); valid: return from train after it")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or int(epoch) != expected:
            raise ValueError(f"session.report(epoch={epoch!r}): valid: {expected} (each epoch once, in order, from "
                             f"session.start_epoch + 1 = {self.start_epoch + 1} to train.epochs = {self.epochs})")
        epoch = int(epoch)
        final = epoch >= self.epochs
        if not isinstance(logits, dict):
            raise ValueError(f"session.report(logits=...): got {type(logits).__name__}; valid: a dict "
                             f"{{'calib': (logits, labels), 'val': (logits, labels)}} (and 'test' on the final "
                             f"epoch)")
        unknown = sorted(set(logits) - set(SPLITS))
        needed = ["calib", "val", "test"] if final else ["calib", "val"]
        missing = [s for s in needed if s not in logits]
        if unknown or missing:
            what = f"unknown split(s) {unknown}" if unknown else f"no {', '.join(repr(m) for m in missing)}"
            raise ValueError(f"session.report(logits=...): {what} at epoch {epoch}; valid: keys 'calib' and 'val'"
                             f"{', and test on the final epoch ' + str(self.epochs) if final else ''}")
        pairs = {s: _pair(s, logits[s]) for s in needed}
        ks = {s: p[0].shape[1] for s, p in pairs.items()}
        if len(set(ks.values())) != 1:
            raise ValueError(f"session.report(logits=...): class counts differ between splits ({ks}); valid: the "
                             f"same K logit columns for every split")
        num_classes = ks["val"]
        try:
            train_loss = float(train_loss)
        except (TypeError, ValueError):
            raise ValueError(f"session.report(train_loss={train_loss!r}): valid: a number (the epoch's mean "
                             f"training loss)") from None
        extra = self._extra_metrics(metrics)

        out: dict[str, Any] = {"epoch": epoch, "train/loss": train_loss, "calib/n": int(pairs["calib"][1].shape[0]),
                               "val/n": int(pairs["val"][1].shape[0])}
        if not is_finite(train_loss, pairs["calib"][0], pairs["val"][0]):
            out.update(diverged_metrics(epoch))
            out.update(extra)
            out.update(self._timing(t0))
            self._deliver(out, None)
            self.finished = True
            raise _Stopped()
        scored, calibrator = score_epoch(self.config, pairs["calib"], pairs["val"], num_classes)
        out.update(scored)
        if self._loss is not None:
            self._loss.on_epoch_end(pairs["calib"][0].to(self.device), pairs["calib"][1].to(self.device))
        out["final"] = final
        if final:
            out.update(split_metrics("test", pairs["test"][0], pairs["test"][1], calibrator, num_classes,
                                     self.config["objective"]["n_bins"]))
            if self._data is not None and getattr(self._data, "info", None):
                out["data/info"] = copy.deepcopy(self._data.info)
        out.update(extra)
        out.update(self._timing(t0))
        checkpoint = None
        if self._reporter is not None:
            checkpoint = {
                "format": CHECKPOINT_FORMAT, "loop": LOOP, "epoch": epoch, "config": copy.deepcopy(self.config),
                **_pack_state(state),
                "loss": self._loss.state_dict() if self._loss is not None else self._loss_state,
                "calibrator": calibrator.state_dict(),
                "rng": {"by_rank": [rng_state()]},
                "metrics": plain(out),
                "history": plain([*self.history, {k: v for k, v in out.items() if k not in PER_RUN_KEYS}]),
                "logits": {s: {"logits": p[0], "labels": p[1]} for s, p in pairs.items()},
            }
        self._deliver(out, checkpoint)
        if final:
            self.finished = True
        return plain(out)

    def _extra_metrics(self, metrics: dict | None) -> dict:
        """Your own scalars for this epoch's result; names gce-search reports itself are refused."""
        if metrics is None:
            return {}
        if not isinstance(metrics, dict):
            raise ValueError(f"session.report(metrics={metrics!r}): valid: a dict of your own scalar metrics")
        out = {}
        for key, value in metrics.items():
            if not isinstance(key, str) or key in _RESERVED or key.startswith(_RESERVED_PREFIXES):
                raise ValueError(f"session.report(metrics={{{key!r}: ...}}): a name gce-search reports itself or "
                                 f"keeps for its own metrics; valid: a name of your own (e.g. 'lr', 'train/acc', "
                                 f"'my/grad_norm'), not {', '.join(sorted(_RESERVED))} or names starting with "
                                 f"{', '.join(_RESERVED_PREFIXES)}")
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(f"session.report(metrics={{{key!r}: {value!r}}}): valid: a number or a string")
            out[key] = value
        return out

    def _timing(self, t0: float) -> dict:
        now = time.perf_counter()
        return {"time/train_s": t0 - self._since, "time/eval_s": now - t0}

    def _deliver(self, metrics: dict, checkpoint: dict | None) -> None:
        self.history.append(plain({k: v for k, v in metrics.items() if k not in PER_RUN_KEYS}))
        self.last_metrics = plain(metrics)
        if self._reporter is not None:
            checkpoint_dir = None
            if checkpoint is not None:
                checkpoint_dir = tempfile.mkdtemp(prefix="gce-checkpoint-")
                torch.save(checkpoint, os.path.join(checkpoint_dir, CHECKPOINT_FILE))
            self._reporter(plain(metrics), checkpoint_dir)
        self._since = time.perf_counter()  # the next epoch's training time starts after the report


def _load(restore_from: str, cfg: dict) -> dict:
    file = os.path.join(restore_from, CHECKPOINT_FILE) if os.path.isdir(restore_from) else restore_from
    if not os.path.isfile(file):
        raise ValueError(f"restore_from: {restore_from!r} holds no {CHECKPOINT_FILE}; valid: a directory written by "
                         f"the trial's reporter (or gce-search train --out)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if state.get("loop") != LOOP:
        raise ValueError(f"restore_from: the checkpoint in {restore_from!r} was written by the shipped training "
                         f"loop, not by trainable {cfg['trainable']!r}; valid: resume with the config it was "
                         f"written with")
    saved = state.get("config", {})
    differ = [key for key in _RESUME_MUST_MATCH if saved.get(key) != cfg.get(key)]
    if differ:
        raise ValueError(f"restore_from: the checkpoint in {restore_from!r} was written with a different "
                         f"{', '.join(differ)} section; valid: resume with the config it was written with")
    return state


def run_user_loop(cfg: dict, reporter: Callable | None, restore_from: str | None) -> dict:
    """Run the resolved config's `trainable` (trainables.trial.run_trial calls this when it is set): returns the
    last metrics. ConfigError when the function cannot be loaded; RuntimeError when it returns before reporting
    the final epoch (and did not diverge)."""
    try:
        fn = load_trainable(cfg["trainable"])
    except ValueError as err:
        raise ConfigError([str(err)]) from None
    threads = cfg["train"]["threads"]
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)  # reductions (hence the last bits of every metric) depend on the thread count
    try:
        restored = _load(restore_from, cfg) if restore_from is not None else None
        session = Session(cfg, reporter, restored)
        if session.finished:
            return session.last_metrics
        # seeded as on a fresh start also on a resume, so that what the loop draws before it reads
        # session.restored_state (a model's initial weights) is the same; that read puts the report's RNG back
        seed = int(cfg["seed"])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            fn(copy.deepcopy(cfg), session)
        except _Stopped:
            return session.last_metrics
        if not session.finished:
            done = session.history[-1]["epoch"] if session.history else session.start_epoch
            raise RuntimeError(f"trainable {cfg['trainable']!r} returned after reporting epoch {done} of "
                               f"train.epochs {session.epochs}; valid: a loop that calls session.report for every "
                               f"epoch from session.start_epoch + 1 to session.epochs")
        return session.last_metrics
    finally:
        if threads is not None:
            torch.set_num_threads(previous)


def is_user_loop_checkpoint(state: dict) -> bool:
    """Whether a loaded checkpoint.pt was written by a `trainable:` loop (it holds logits, not a model)."""
    return isinstance(state, dict) and state.get("loop") == LOOP


def stored_logits(state: dict, splits) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (logits, labels)} a user-loop checkpoint holds; ValueError naming a split it does not hold (test is
    there on the final epoch only)."""
    held = state.get("logits") or {}
    out = {}
    for split in splits:
        if split not in held:
            raise ValueError(f"splits: the checkpoint of trainable {state.get('config', {}).get('trainable')!r} at "
                             f"epoch {state.get('epoch')} holds the logits of {', '.join(held) or 'no split'}, not "
                             f"{split!r}; valid: one of those")
        out[split] = (held[split]["logits"], held[split]["labels"])
    return out
