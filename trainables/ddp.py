"""Multi-process trials: `train.workers: N` runs the trial loop in N processes of its own (DDP).

The trial (a Ray Tune function trainable or `gce-search train`) spawns its N workers inside the resources it has
reserved: one per GPU with NCCL on a GPU node (Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs), N gloo processes
on CPU. We do not use Ray's TorchTrainer inside a Tune trial: it leaks its workers when ASHA stops the trial and
later trials hang (ray#54305, DESIGN.md "Ray and Optuna facts").

Rank 0 sends each epoch's metrics and checkpoint directory back through a queue and waits until the parent has
called the reporter, so a stop (the reporter raising, Tune's SystemExit on stop, Ctrl-C) reaches the workers at
the next epoch: the parent terminates them in a `finally`. A parent that dies without running its `finally`
(SIGKILL, Ray killing the actor) takes its workers with it: they ask the kernel for SIGKILL on the parent's death
(PR_SET_PDEATHSIG) and also poll their parent id, since PDEATHSIG fires on the exit of the spawning *thread*.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from datetime import timedelta

import torch

# Seconds the parent waits for a worker's message before checking that every worker is still alive.
_POLL_S = 1.0
# Seconds between a worker's checks that its parent is alive.
_PARENT_POLL_S = 0.5
# Seconds given to workers to exit after SIGTERM before SIGKILL.
_TERMINATE_GRACE_S = 5.0


def _die_with_parent(parent_pid: int) -> None:
    """Exit this worker when the process that spawned it dies, however it dies."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        except OSError:  # pragma: no cover - no glibc: the polling thread below still covers it
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(_PARENT_POLL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class _QueueReporter:
    """Rank 0's reporter: hand (metrics, checkpoint_dir) to the parent and wait until it has been reported."""

    def __init__(self, to_parent, ack):
        self.to_parent, self.ack = to_parent, ack

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.to_parent.put(("report", 0, metrics, checkpoint_dir))
        self.ack.get()  # the parent terminates us instead of answering when it stops the trial


def worker(rank: int, world_size: int, init_method: str, cfg: dict, restore_from: str | None, to_parent, ack,
           parent_pid: int, threads: int, report: bool) -> None:
    """One DDP process of a multi-process trial (spawned by run_distributed; importable for `spawn`)."""
    _die_with_parent(parent_pid)
    import torch.distributed as dist

    from trainables.trial import DistContext, run_loop

    try:
        torch.set_num_threads(threads)
        if cfg["train"]["device"] == "cpu" or not torch.cuda.is_available():
            device, backend = torch.device("cpu"), "gloo"
        else:
            device, backend = torch.device("cuda", rank), "nccl"
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(minutes=30))
        reporter = _QueueReporter(to_parent, ack) if rank == 0 and report else None
        last = run_loop(cfg, reporter, restore_from, DistContext(rank, world_size, device))
        if rank == 0:
            to_parent.put(("done", 0, last, None))
    except BaseException:
        to_parent.put(("error", rank, traceback.format_exc(), None))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _check_devices(cfg: dict, world_size: int) -> None:
    device = cfg["train"]["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: got 'cuda' but no GPU is visible to this process; valid: 'cpu' or 'auto'")
    if device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() < world_size:
        raise ValueError(f"train.workers: got {world_size} but this trial sees {torch.cuda.device_count()} GPU(s); "
                         f"valid: at most {torch.cuda.device_count()} (reserve one GPU per worker), or "
                         f"train.device: cpu for gloo processes")


def _stop(processes: list) -> None:
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + _TERMINATE_GRACE_S
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            p.kill()
            p.join(_TERMINATE_GRACE_S)


def run_distributed(cfg: dict, reporter, restore_from: str | None) -> dict:
    """Run a resolved trial config in cfg['train']['workers'] processes; call `reporter` here for rank 0."""
    import torch.multiprocessing as mp

    world_size = int(cfg["train"]["workers"])
    _check_devices(cfg, world_size)
    on_cpu = cfg["train"]["device"] == "cpu" or not torch.cuda.is_available()
    # The trial's CPUs are shared between its processes (Ray sets the thread count to the trial's CPUs).
    threads = max(1, torch.get_num_threads() // world_size) if on_cpu else max(1, torch.get_num_threads())
    ctx = mp.get_context("spawn")
    to_parent, ack = ctx.Queue(), ctx.Queue()
    # A file rendezvous in a private directory: no port to pick, so concurrent trials on a node cannot collide.
    rendezvous = tempfile.mkdtemp(prefix="gce-ddp-")
    init_method = "file://" + os.path.join(rendezvous, "store")
    processes = [ctx.Process(target=worker, name=f"gce-ddp-rank{rank}", daemon=True,
                             args=(rank, world_size, init_method, cfg, restore_from, to_parent, ack, os.getpid(),
                                   threads, reporter is not None))
                 for rank in range(world_size)]
    try:
        for p in processes:
            p.start()
        while True:
            try:
                kind, rank, payload, checkpoint_dir = to_parent.get(timeout=_POLL_S)
            except queue.Empty:
                failed = [p for p in processes if p.exitcode not in (None, 0)]
                if not failed and any(p.exitcode is None for p in processes):
                    continue
                try:  # a worker that exited may have sent its traceback (or rank 0 its last result) just now
                    kind, rank, payload, checkpoint_dir = to_parent.get(timeout=5.0)
                except queue.Empty:
                    p = (failed or processes)[0]
                    raise RuntimeError(f"DDP worker {p.name} exited with code {p.exitcode} before the trial "
                                       f"finished (killed, out of memory, or a crash without a Python "
                                       f"error)") from None
            if kind == "report":
                reporter(payload, checkpoint_dir)
                ack.put(True)
            elif kind == "done":
                for p in processes:
                    p.join(60.0)
                return payload
            else:
                raise RuntimeError(f"DDP worker rank {rank} failed:\n{payload}")
    finally:
        _stop(processes)
        for q in (to_parent, ack):
            q.cancel_join_thread()
            q.close()
        shutil.rmtree(rendezvous, ignore_errors=True)
