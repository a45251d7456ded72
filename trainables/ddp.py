"""Multi-process trials: `train.workers: N` runs the trial loop in N processes of its own (DDP).

The trial (a Ray Tune function trainable or `gce-search train`) spawns its N workers inside the resources it has
reserved: one per GPU with NCCL on a GPU node (Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs), N gloo processes
on CPU. We do not use Ray's TorchTrainer inside a Tune trial: it leaks its workers when ASHA stops the trial and
later trials hang (ray#54305, docs/design.md "Ray and Optuna facts").

The workers are fresh interpreters (`python -c "from gce_search.trainables.ddp import worker_main; ..."`), not
multiprocessing children: `spawn` would re-run the parent's main module in every worker (a user's script without a
`__main__` guard would recurse; a Ray worker's main module drags in Ray). Each worker talks to the parent over a
private socketpair: rank 0 sends each epoch's metrics and checkpoint directory and waits until the parent has
called the reporter, so a stop (the reporter raising, Tune's SystemExit on stop, Ctrl-C) reaches the workers at
the next epoch: the parent terminates them in a `finally`. A parent that dies without running its `finally`
(SIGKILL, Ray killing the actor) takes its workers with it: they ask the kernel for SIGKILL on the parent's death
(PR_SET_PDEATHSIG) and also poll their parent id, since PDEATHSIG fires on the exit of the spawning *thread*.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch

# Seconds the parent waits for a worker's message before checking that every worker is still alive.
_POLL_S = 1.0
# Seconds between a worker's checks that its parent is alive.
_PARENT_POLL_S = 0.5
# Seconds given to workers to exit after SIGTERM before SIGKILL.
_TERMINATE_GRACE_S = 5.0


@dataclass
class DistContext:
    """Where this process sits in a multi-process trial (None in a single-process trial)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def group(self):
        import torch.distributed as dist

        return dist.group.WORLD


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


class _PipeReporter:
    """Rank 0's reporter: hand (metrics, checkpoint_dir) to the parent and wait until it has been reported."""

    def __init__(self, conn):
        self.conn = conn

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.conn.send(("report", 0, metrics, checkpoint_dir))
        self.conn.recv()  # the parent terminates us instead of answering when it stops the trial


def worker(rank: int, world_size: int, init_method: str, cfg: dict, restore_from: str | None, conn,
           threads: int, report: bool, loop: Callable) -> None:
    """One DDP process of a multi-process trial: init the process group, run the epoch loop
    (`loop(cfg, reporter, restore_from, DistContext)`, trainables.trial.run_loop), report if rank 0."""
    import torch.distributed as dist

    try:
        torch.set_num_threads(threads)
        if cfg["train"]["device"] == "cpu" or not torch.cuda.is_available():
            device, backend = torch.device("cpu"), "gloo"
        else:
            device, backend = torch.device("cuda", rank), "nccl"
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(minutes=30))
        reporter = _PipeReporter(conn) if rank == 0 and report else None
        last = loop(cfg, reporter, restore_from, DistContext(rank, world_size, device))
        # Tear the group down together: a rank that destroys it while a peer is still in gloo can abort the peer.
        dist.barrier()
        conn.send(("done", rank, last if rank == 0 else None, None))
    except BaseException:
        try:
            conn.send(("error", rank, traceback.format_exc(), None))
        except OSError:
            pass  # the parent is gone
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def worker_main() -> None:
    """Entry point of a worker interpreter: argv[1] is the parent's pid, argv[2] the fd of its socketpair end."""
    from multiprocessing.connection import Connection

    parent_pid, fd = int(sys.argv[1]), int(sys.argv[2])
    _die_with_parent(parent_pid)
    conn = Connection(fd)
    job = conn.recv()
    try:
        worker(conn=conn, **job)
    except BaseException:
        sys.exit(1)


def _check_devices(cfg: dict, world_size: int) -> None:
    device = cfg["train"]["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: got 'cuda' but no GPU is visible to this process; valid: 'cpu' or 'auto'")
    if device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() < world_size:
        raise ValueError(f"train.workers: got {world_size} but this trial sees {torch.cuda.device_count()} GPU(s); "
                         f"valid: at most {torch.cuda.device_count()} (reserve one GPU per worker), or "
                         f"train.device: cpu for gloo processes")


def _stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + _TERMINATE_GRACE_S
    for p in processes:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _spawn(rank: int, conn_fd: int) -> subprocess.Popen:
    import gce_search

    env = dict(os.environ)
    # The worker must import this very package, wherever the parent found it (an unpacked Ray runtime_env too).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(gce_search.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    code = "from gce_search.trainables.ddp import worker_main; worker_main()"
    return subprocess.Popen([sys.executable, "-c", code, str(os.getpid()), str(conn_fd)], env=env,
                            pass_fds=(conn_fd,))


def run_distributed(cfg: dict, reporter, restore_from: str | None, loop: Callable) -> dict:
    """Run a resolved trial config in cfg['train']['workers'] processes; call `reporter` here for rank 0.

    `loop` is the epoch loop every process runs (trainables.trial.run_loop); it travels to the workers by reference
    (a module-level function, pickled as its name), so this module does not import the trial loop."""
    from multiprocessing import Pipe
    from multiprocessing.connection import wait

    world_size = int(cfg["train"]["workers"])
    _check_devices(cfg, world_size)
    on_cpu = cfg["train"]["device"] == "cpu" or not torch.cuda.is_available()
    # The trial's CPUs are shared between its processes (Ray sets the thread count to the trial's CPUs).
    threads = max(1, torch.get_num_threads() // world_size) if on_cpu else max(1, torch.get_num_threads())
    # A file rendezvous in a private directory: no port to pick, so concurrent trials on a node cannot collide.
    rendezvous = tempfile.mkdtemp(prefix="gce-ddp-")
    init_method = "file://" + os.path.join(rendezvous, "store")
    processes: list[subprocess.Popen] = []
    conns = []
    try:
        for rank in range(world_size):
            here, there = Pipe(duplex=True)
            processes.append(_spawn(rank, there.fileno()))
            there.close()
            here.send({"rank": rank, "world_size": world_size, "init_method": init_method, "cfg": cfg,
                       "restore_from": restore_from, "threads": threads, "report": reporter is not None,
                       "loop": loop})
            conns.append(here)
        rank_of = {id(c): r for r, c in enumerate(conns)}
        open_conns, finished = list(conns), set()
        last = None
        while open_conns:
            ready = wait(open_conns, timeout=_POLL_S)
            if not ready:
                failed = [(r, p) for r, p in enumerate(processes) if p.poll() not in (None, 0)]
                if failed:
                    rank, p = failed[0]
                    raise RuntimeError(f"DDP worker rank {rank} exited with code {p.returncode} before the trial "
                                       f"finished (killed, out of memory, or a crash without a Python error)")
                continue
            for conn in ready:
                try:
                    kind, rank, payload, checkpoint_dir = conn.recv()
                except (EOFError, OSError, pickle.UnpicklingError):
                    open_conns.remove(conn)
                    rank = rank_of[id(conn)]
                    if rank not in finished:
                        try:
                            code = processes[rank].wait(_TERMINATE_GRACE_S)
                        except subprocess.TimeoutExpired:
                            code = None
                        raise RuntimeError(f"DDP worker rank {rank} closed its pipe (exit code {code}) before the "
                                           f"trial finished (killed, out of memory, or a crash without a Python "
                                           f"error)") from None
                    continue
                if kind == "report":
                    reporter(payload, checkpoint_dir)
                    conn.send(True)
                elif kind == "done":
                    finished.add(rank)
                    if rank == 0:
                        last = payload
                elif kind == "error":
                    raise RuntimeError(f"DDP worker rank {rank} failed:\n{payload}")
        for p in processes:
            p.wait()
        return last
    finally:
        _stop(processes)
        for conn in conns:
            conn.close()
        shutil.rmtree(rendezvous, ignore_errors=True)
