"""The trial loop: one code path for a Ray Tune trial and for `gce-search train`.

`run_trial(config, reporter, restore_from)` builds data, model, loss and optimiser from a resolved trial config and
trains epoch by epoch: train → logits on calib and val → fit the calibrator on calib → raw and calibrated metrics
on val → `score` → `reporter(metrics, checkpoint_dir)`; after the last epoch of the full budget the same metrics on
test. Ray Tune is a thin adapter around it (`search.trainable`), and `train.workers > 1` runs the same loop
in N processes (`trainables.ddp`).

Reproducibility: the whole state that the next epoch depends on (model, optimiser, LR step, the batch-order and
augmentation generator, torch's global RNG, numpy/python RNGs, the loss's state such as AdaFocal's gammas) is in
the checkpoint, so a run resumed after epoch k gives bitwise the same metrics on CPU as an uninterrupted one.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
import time
from typing import Any, Callable

import torch

from gce_search.trainables.catalog import LR_SCHEDULES, OPTIMIZERS
from gce_search.trainables.checkpoints import CHECKPOINT_FILE
from gce_search.trainables.config import resolve, trial_problems
from gce_search.trainables.ddp import DistContext, run_distributed
from gce_search.trainables.loop import CALIBRATED_KEYS, RAW_KEYS  # noqa: F401  (re-exported)
from gce_search.trainables.loop import diverged_metrics, is_finite, resolve_device, score_epoch, split_metrics
from gce_search.trainables.loop import plain as _plain
from gce_search.trainables.loop import rng_state as _rng_state
from gce_search.trainables.loop import set_rng_state as _set_rng_state
from gce_search.trainables.registry import ConfigError
from gce_search.trainables.step_progress import StepProgress, current_sink

Reporter = Callable[[dict, "str | None"], None]

CHECKPOINT_FORMAT = 1
# CALIBRATED_KEYS (contract names) and RAW_KEYS (`_raw` suffix) are in trainables.loop, shared with your own loop.
# Entries of the final result that describe the whole run, not an epoch (kept out of the per-epoch history).
PER_RUN_KEYS = ("data/info", "device/info")
# Sections a checkpoint must agree with: resuming a different model/loss/data would load into the wrong thing.
_RESUME_MUST_MATCH = ("seed", "data", "model", "loss")


# ------------------------------------------------------------------------------------------------ building blocks


def build_optimizer(params, train_cfg: dict) -> torch.optim.Optimizer:
    """The optimiser `train.optimizer` names (trainables.catalog.OPTIMIZERS), with the config's lr and weight decay."""
    return OPTIMIZERS.get(train_cfg["optimizer"]).impl(params, train_cfg)


@OPTIMIZERS.implements("sgd")
def _sgd(params, train_cfg: dict) -> torch.optim.Optimizer:
    if train_cfg["nesterov"] and train_cfg["momentum"] <= 0:
        raise ValueError("train.nesterov: true needs train.momentum > 0; valid: momentum in (0, 1)")
    return torch.optim.SGD(params, lr=train_cfg["lr"], momentum=train_cfg["momentum"],
                           nesterov=bool(train_cfg["nesterov"]), weight_decay=train_cfg["weight_decay"])


@OPTIMIZERS.implements("adamw")
def _adamw(params, train_cfg: dict) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])


def learning_rate(train_cfg: dict, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimiser step `step` (0-based, counted over the whole run), by `train.schedule`
    (trainables.catalog.LR_SCHEDULES).

    constant, cosine and multistep change once per epoch, exactly as torch's ConstantLR-free base rate,
    CosineAnnealingLR(T_max=epochs) and MultiStepLR(milestones, gamma) stepped after every epoch (milestone m:
    epochs with 0-based index >= m are scaled). cosine_step is CosineAnnealingLR(T_max=epochs × steps per epoch)
    stepped after every optimiser step. onecycle changes every step, as torch's OneCycleLR (cosine
    annealing, pct_start 0.3, div_factor 25, final_div_factor 1e4); momentum is not cycled.
    """
    return LR_SCHEDULES.get(train_cfg["schedule"]).impl(train_cfg, step, steps_per_epoch)


@LR_SCHEDULES.implements("constant")
def _constant(train_cfg: dict, step: int, steps_per_epoch: int) -> float:
    return float(train_cfg["lr"])


@LR_SCHEDULES.implements("cosine")
def _cosine(train_cfg: dict, step: int, steps_per_epoch: int) -> float:
    epoch = step // steps_per_epoch
    return float(train_cfg["lr"]) * (1.0 + math.cos(math.pi * epoch / int(train_cfg["epochs"]))) / 2.0


@LR_SCHEDULES.implements("cosine_step")
def _cosine_step(train_cfg: dict, step: int, steps_per_epoch: int) -> float:
    total = int(train_cfg["epochs"]) * steps_per_epoch
    return float(train_cfg["lr"]) * (1.0 + math.cos(math.pi * step / total)) / 2.0


@LR_SCHEDULES.implements("multistep")
def _multistep(train_cfg: dict, step: int, steps_per_epoch: int) -> float:
    epoch = step // steps_per_epoch
    return float(train_cfg["lr"]) * float(train_cfg["gamma"]) ** sum(1 for m in train_cfg["milestones"] if epoch >= m)


@LR_SCHEDULES.implements("onecycle")
def _onecycle(train_cfg: dict, step: int, steps_per_epoch: int) -> float:
    base, epochs = float(train_cfg["lr"]), int(train_cfg["epochs"])
    total = epochs * steps_per_epoch
    initial, peak = base / 25.0, base
    final = initial / 1e4
    warm_end, last = 0.3 * total - 1.0, float(total - 1)

    def anneal(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)

    if warm_end > 0 and step <= warm_end:
        return anneal(initial, peak, step / warm_end)
    start = max(warm_end, 0.0)
    return anneal(peak, final, (step - start) / (last - start) if last > start else 1.0)


def local_shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s contiguous share of a global batch (equal shares: batch_size is a multiple of workers)."""
    n = batch.shape[0] // world_size
    return batch[rank * n:(rank + 1) * n]


def forward_backward(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, *, reduction: str,
                     global_batch: int, world_size: int = 1, bf16: bool = False) -> torch.Tensor:
    """Forward this process's share of a global batch, backward the objective; return the summed losses.

    The objective is the mean (or sum) of per-sample losses over the *global* batch. Under DDP every rank's
    gradient is averaged over ranks, and GCE's batch term is gathered with gradients over the global batch
    (build_loss(process_group=...)), so each rank backpropagates world_size × its share of the global objective:
    the averaged gradient is then the gradient of the single-process objective.
    """
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    # The loss (softmax, logs, batch averages) runs in float32 whatever the forward precision.
    losses = loss_fn(logits.float(), y)
    local_sum = losses.sum()
    scale = float(world_size) / (global_batch if reduction == "mean" else 1.0)
    (local_sum * scale).backward()
    return local_sum.detach()


# ------------------------------------------------------------------------------------------------------ the trial


class _Trial:
    """Everything one trial process holds: data, model, loss, optimiser, generator, epoch counter."""

    step_progress = None  # trainables.step_progress.StepProgress: reports from inside a long epoch

    def __init__(self, cfg: dict, dist_ctx: DistContext | None, precision=None):
        from gce_search.trainables.calibration import build_calibrator
        from gce_search.trainables.data import augment, eval_batches, load_splits, train_batches
        from gce_search.trainables.losses import build_loss
        from gce_search.trainables.models import build_model

        self.cfg = cfg
        self.dist = dist_ctx
        tc = cfg["train"]
        self.train_cfg = tc
        self.device = dist_ctx.device if dist_ctx else resolve_device(tc["device"])
        self.rank = dist_ctx.rank if dist_ctx else 0
        self.world_size = dist_ctx.world_size if dist_ctx else 1
        if tc["batch_size"] % self.world_size:
            raise ValueError(f"train.batch_size: got {tc['batch_size']} with train.workers {self.world_size}; "
                             f"valid: a multiple of train.workers (every process gets an equal share)")

        self.data = load_splits(cfg["data"], device=self.device)
        if self.data.info.get("features") and cfg["model"].get("name", "mlp") != "mlp":
            raise ValueError(f"model.name: {cfg['model']['name']!r} is a conv net and the data are feature vectors "
                             f"(N×{self.data.in_channels}); valid: 'mlp'")
        n_train = self.data.train_y.shape[0]
        # The last partial batch is dropped: GCE estimates the class marginal on the mini-batch, so a small
        # remainder batch would give a noisy regulariser, and DDP needs equal shares. The order is reshuffled
        # every epoch, so every sample is still seen.
        self.batch_size = min(tc["batch_size"], n_train - n_train % self.world_size)
        if self.batch_size < self.world_size:
            raise ValueError(f"data: the training split has {n_train} samples, fewer than train.workers "
                             f"{self.world_size}; valid: more training samples or fewer workers")
        self.steps_per_epoch = n_train // self.batch_size

        torch.manual_seed(cfg["seed"])
        model = build_model(cfg["model"], self.data.in_channels, self.data.num_classes, self.data.image_size)
        # A resumed trial keeps the precision it started with (a new probe could decide otherwise).
        self.precision = precision if precision is not None else self._decide_precision(model)
        self.bf16 = self.precision.bf16
        self.memory_format = torch.channels_last if self.precision.channels_last else torch.contiguous_format
        model = model.to(self.device, memory_format=self.memory_format)
        self.model = model  # the bare module: evaluation, checkpoints
        self.forward_model: torch.nn.Module = model  # what the training step calls (DDP wrapper under DDP)
        if dist_ctx is not None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(model, device_ids=ids)
            # Dropout masks should differ between the shards of a batch.
            torch.manual_seed(cfg["seed"] + 7919 * self.rank)

        self.loss_fn = build_loss(cfg["loss"], self.data.num_classes,
                                  process_group=dist_ctx.group if dist_ctx else None)
        self.optimizer = build_optimizer(model.parameters(), tc)
        self.build_calibrator = lambda: build_calibrator(cfg["calibration"])
        self.calibrator = None
        # One generator on the data's device for batch order and augmentation; the same seed on every rank
        # gives every rank the same global batch, of which each takes its share.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg["seed"] + 0x5EED)
        self.augment_cfg = cfg["data"]["augment"]
        self.augmenting = bool(self.augment_cfg["crop"] or self.augment_cfg["flip"])
        self.augment = augment
        self.train_batches, self.eval_batches = train_batches, eval_batches  # tensors, or streamed from disk
        self.epoch = 0  # completed epochs
        self.history: list[dict] = []
        self._device_info_reported = False

    def _decide_precision(self, model: torch.nn.Module):
        """bf16 / channels_last for this trial (trainables.precision); under DDP rank 0 decides for every rank."""
        from gce_search.trainables.precision import decide

        precision = None
        if self.rank == 0:
            precision = decide(self.train_cfg, model, self.cfg["model"], tuple(self.data.train_x.shape[1:]),
                               self.data.num_classes, self.device)
            for warning in precision.warnings:
                print(f"gce-search: warning: {warning}", file=sys.stderr, flush=True)
        if self.dist is not None:
            import torch.distributed as dist

            box = [precision]
            dist.broadcast_object_list(box, src=0)
            precision = box[0]
        return precision

    # ---- state

    def state_dict(self, metrics: dict) -> dict:
        rng = _rng_state()
        if self.dist is not None:
            import torch.distributed as dist

            by_rank: list = [None] * self.world_size
            dist.all_gather_object(by_rank, rng)
        else:
            by_rank = [rng]
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "config": copy.deepcopy(self.cfg),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            # The LR is a pure function of the step (learning_rate), so the schedule's state is the step count.
            "scheduler": {"schedule": self.train_cfg["schedule"], "step": self.epoch * self.steps_per_epoch},
            "loss": self.loss_fn.state_dict(),
            "calibrator": self.calibrator.state_dict() if self.calibrator is not None else None,
            "rng": {"generator": self.generator.get_state(), "by_rank": by_rank},
            "metrics": _plain(metrics),
            "history": _plain(self.history),
            "precision": {"bf16": self.precision.bf16, "channels_last": self.precision.channels_last},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss_fn.load_state_dict(state["loss"])
        if state.get("calibrator") is not None:
            self.calibrator = self.build_calibrator()
            self.calibrator.load_state_dict(state["calibrator"])
        self.generator.set_state(state["rng"]["generator"])
        by_rank = state["rng"]["by_rank"]
        _set_rng_state(by_rank[self.rank] if self.rank < len(by_rank) else by_rank[0])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))

    # ---- one epoch

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the shuffled training split; (mean per-sample loss, seconds)."""
        t0 = time.perf_counter()
        tc = self.train_cfg
        x_all, y_all = self.data.train_x, self.data.train_y
        self.forward_model.train()
        perm = torch.randperm(x_all.shape[0], generator=self.generator, device=self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        first_step = self.epoch * self.steps_per_epoch
        on_step = self.step_progress.epoch(self.epoch + 1) if self.step_progress is not None else None
        bs = self.batch_size
        batches = self.train_batches(x_all, perm, self.steps_per_epoch, bs)
        for s in range(self.steps_per_epoch):
            idx = perm[s * bs:(s + 1) * bs]
            x, y = next(batches), y_all[idx]
            if self.augmenting:
                x = self.augment(x, self.augment_cfg, self.generator)
            if self.world_size > 1:
                x, y = local_shard(x, self.rank, self.world_size), local_shard(y, self.rank, self.world_size)
            if self.memory_format is torch.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = learning_rate(tc, first_step + s, self.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum += forward_backward(self.forward_model, self.loss_fn, x, y, reduction=tc["reduction"],
                                         global_batch=bs, world_size=self.world_size, bf16=self.bf16)
            if tc["grad_clip"] is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc["grad_clip"])
            self.optimizer.step()
            if on_step is not None:
                on_step(s + 1)
        if self.dist is not None:
            import torch.distributed as dist

            dist.all_reduce(loss_sum)
        mean_loss = float(loss_sum) / (self.steps_per_epoch * bs)
        return mean_loss, time.perf_counter() - t0

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Full-precision logits (CPU, float32) in eval mode; calibration needs them unrounded."""
        self.model.eval()
        eb = self.train_cfg["eval_batch_size"]
        out = []
        for xb in self.eval_batches(x, eb):
            out.append(self.model(xb.contiguous(memory_format=self.memory_format)).float().cpu())
        self.model.train()
        return torch.cat(out) if out else torch.zeros(0, self.data.num_classes)

    def _sync_buffers(self) -> None:
        # BatchNorm running statistics drift apart between ranks after the last step (DDP broadcasts rank 0's
        # buffers at the start of each forward only): evaluate every rank with rank 0's.
        if self.dist is not None:
            import torch.distributed as dist

            for buf in self.model.buffers():
                dist.broadcast(buf, src=0)

    def evaluate(self, split: str, calibrator) -> dict:
        x, y = getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y").cpu()
        raw_logits = self.logits(x)
        return split_metrics(split, raw_logits, y, calibrator, self.data.num_classes, self.cfg["objective"]["n_bins"])

    def run_epoch(self) -> dict:
        """Train one epoch and score it; returns the epoch's metrics (status ok or diverged)."""
        tc = self.train_cfg
        epoch = self.epoch + 1
        train_loss, train_s = self.train_epoch()
        t_eval = time.perf_counter()
        self._sync_buffers()
        calib_logits = self.logits(self.data.calib_x)
        val_logits = self.logits(self.data.val_x)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train/loss": train_loss,
            "lr": learning_rate(tc, epoch * self.steps_per_epoch - 1, self.steps_per_epoch),
            "calib/n": int(self.data.calib_y.shape[0]),
            "val/n": int(self.data.val_y.shape[0]),
            "train/bf16": self.precision.bf16,
            "train/channels_last": self.precision.channels_last,
        }
        if not is_finite(train_loss, calib_logits, val_logits):
            metrics.update(diverged_metrics(epoch))  # every val metric and the score NaN; the trial stops here
            self.epoch = epoch
            metrics.update(self._timing(train_s, time.perf_counter() - t_eval))
            return metrics
        scored, calibrator = score_epoch(self.cfg, (calib_logits, self.data.calib_y.cpu()),
                                         (val_logits, self.data.val_y.cpu()), self.data.num_classes)
        self.calibrator = calibrator
        metrics.update(scored)
        # AdaFocal adapts its gammas to held-out calibration statistics (Ghosh 2022 uses a validation split); we
        # give it the calib split so that nothing about training depends on val, which ranks the trials.
        self.loss_fn.on_epoch_end(calib_logits.to(self.device), self.data.calib_y)
        self.epoch = epoch
        metrics["final"] = epoch >= tc["epochs"]
        if metrics["final"]:
            metrics.update(self.evaluate("test", calibrator))
            metrics["data/info"] = copy.deepcopy(self.data.info)
        if metrics["final"] or not self._device_info_reported:
            # in the first result this process reports too, so a search can show a precision warning at once
            metrics["device/info"] = self.precision.info(self.device)
            self._device_info_reported = True
        metrics.update(self._timing(train_s, time.perf_counter() - t_eval))
        return metrics

    def _timing(self, train_s: float, eval_s: float) -> dict:
        images = self.steps_per_epoch * self.batch_size
        return {"time/train_s": train_s, "time/eval_s": eval_s,
                "train/images_per_s": images / train_s if train_s > 0 else math.nan}


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by run_trial (a directory holding checkpoint.pt, or the file itself)."""
    file = os.path.join(path, CHECKPOINT_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ValueError(f"restore_from: {path!r} holds no {CHECKPOINT_FILE}; valid: a directory written by "
                         f"run_trial's reporter (or gce-search train --out)")
    return torch.load(file, map_location="cpu", weights_only=True)


def _check_resumable(cfg: dict, state: dict, where: str) -> None:
    saved = state.get("config", {})
    differ = [key for key in _RESUME_MUST_MATCH if saved.get(key) != cfg.get(key)]
    if differ:
        raise ValueError(f"restore_from: the checkpoint in {where!r} was written with a different "
                         f"{', '.join(differ)} section; valid: resume with the config it was written with")


def run_loop(cfg: dict, reporter: Reporter | None, restore_from: str | None,
             dist_ctx: DistContext | None = None) -> dict:
    """The epoch loop for a resolved config, in this process (one rank of a DDP trial when dist_ctx is set)."""
    threads = cfg["train"]["threads"]
    if threads is None:
        return _run_loop(cfg, reporter, restore_from, dist_ctx)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # reductions (hence the last bits of every metric) depend on the thread count
    try:
        return _run_loop(cfg, reporter, restore_from, dist_ctx)
    finally:
        torch.set_num_threads(previous)


def _run_loop(cfg: dict, reporter: Reporter | None, restore_from: str | None,
              dist_ctx: DistContext | None) -> dict:
    from gce_search.trainables.precision import from_checkpoint

    state = None
    if restore_from is not None:
        state = load_checkpoint(restore_from)
        _check_resumable(cfg, state, restore_from)
    trial = _Trial(cfg, dist_ctx, precision=from_checkpoint(state.get("precision")) if state else None)
    metrics: dict = {}
    sink = current_sink() if trial.rank == 0 else None
    if sink is not None:
        trial.step_progress = StepProgress(sink, cfg["train"]["epochs"], trial.steps_per_epoch, trial.batch_size)
    if state is not None:
        trial.load_state_dict(state)
        metrics = dict(state.get("metrics") or {})
    while trial.epoch < cfg["train"]["epochs"]:
        metrics = trial.run_epoch()
        trial.history.append(_plain({k: v for k, v in metrics.items() if k not in PER_RUN_KEYS}))
        diverged = metrics["status"] == "diverged"
        checkpoint_dir = None
        # state_dict is a collective under DDP (every rank joins); without a reporter nobody takes it.
        wanted = not diverged and (reporter is not None or dist_ctx is not None)
        state = trial.state_dict(metrics) if wanted else None
        if reporter is not None:
            if state is not None:
                checkpoint_dir = tempfile.mkdtemp(prefix="gce-checkpoint-")
                torch.save(state, os.path.join(checkpoint_dir, CHECKPOINT_FILE))
            reporter(_plain(metrics), checkpoint_dir)
        if diverged:
            break
    return _plain(metrics)


def run_trial(config: dict, reporter: Reporter | None = None, restore_from: str | None = None) -> dict:
    """Train one trial config for its full budget (from the epoch after `restore_from`'s checkpoint).

    `reporter(metrics, checkpoint_dir)` is called once per epoch; `checkpoint_dir` is a fresh temporary directory
    holding checkpoint.pt (None for a diverged epoch), owned by the reporter after the call. Returns the last
    metrics. `train.workers > 1` runs the loop in that many processes (trainables.ddp); rank 0 reports.
    """
    cfg = resolve(config)
    problems = trial_problems(cfg)
    if problems:
        raise ConfigError(problems)
    if cfg["trainable"] is not None:  # your own training loop, scored, reported and checkpointed as this one
        from gce_search.trainables.user_loop import run_user_loop

        return run_user_loop(cfg, reporter, restore_from)
    if cfg["train"]["workers"] > 1:
        return run_distributed(cfg, reporter, restore_from, loop=run_loop)
    return run_loop(cfg, reporter, restore_from)
