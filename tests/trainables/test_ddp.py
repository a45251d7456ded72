"""Multi-process trials: global-batch GCE gradients under DDP, reporting from rank 0, no orphan processes."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest
import torch
import torch.multiprocessing as mp

from tests.waiting import hang_s, wait_until
from gce_search.trainables.trial import forward_backward, load_checkpoint, local_shard, run_trial

WORLD = 2
GLOBAL_BATCH = 12
MODEL = {"name": "mlp", "width": 16, "depth": 1}


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(GLOBAL_BATCH, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)
    y[:3] = torch.tensor([0, 1, 2])
    return x, y


def _model():
    from gce_search.trainables.models import build_model

    torch.manual_seed(0)
    return build_model(MODEL, 1, 3, 4).double()


def _loss_and_grads(model, loss_fn, x, y, reduction, world_size, rank):
    model.zero_grad(set_to_none=True)
    local_sum = forward_backward(model, loss_fn, local_shard(x, rank, world_size), local_shard(y, rank, world_size),
                                 reduction=reduction, global_batch=GLOBAL_BATCH, world_size=world_size)
    return local_sum, [p.grad.detach().clone() for p in model.parameters()]


# Both batch-coupled losses; one spawn serves both (a worker interpreter costs seconds to start).
LOSS_CFGS = [{"name": "gce", "lam": 1.0}, {"name": "mmce", "lam": 2.0}]


def _gradient_worker(rank, init_method, results):
    """One rank: the trial's forward_backward on its share of the global batch, through DDP."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from gce_search.trainables.losses import build_loss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        x, y = _batch()
        x = x.double()
        out = {}
        for i, loss_cfg in enumerate(LOSS_CFGS):
            ddp = DistributedDataParallel(_model())
            loss_fn = build_loss(loss_cfg, 3, process_group=dist.group.WORLD)
            for reduction in ("mean", "sum"):
                local_sum, grads = _loss_and_grads(ddp, loss_fn, x, y, reduction, WORLD, rank)
                dist.all_reduce(local_sum)
                # numpy, not tensors: a tensor on a torch queue is shared by fd and dies with this process.
                out[i, reduction] = (float(local_sum), [g.numpy() for g in grads])
        if rank == 0:
            results.put(out)
        dist.barrier()  # tear down together: destroying the group under a peer still in gloo aborts the peer
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_match_one_process_on_the_global_batch():
    from gce_search.trainables.losses import build_loss

    x, y = _batch()
    x = x.double()
    expected = {}
    for i, loss_cfg in enumerate(LOSS_CFGS):
        model = _model()
        loss_fn = build_loss(loss_cfg, 3)
        for reduction in ("mean", "sum"):
            expected[i, reduction] = _loss_and_grads(model, loss_fn, x, y, reduction, 1, 0)
        # A shard-local batch term differs from the global one (else the comparison would prove nothing).
        local_only = loss_fn(model(local_shard(x, 0, WORLD)), local_shard(y, 0, WORLD))
        assert not torch.allclose(local_only, loss_fn(model(x), y)[: GLOBAL_BATCH // WORLD])

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    store = tempfile.mkdtemp(prefix="gce-test-ddp-")
    try:
        mp.start_processes(_gradient_worker, args=(f"file://{store}/store", results), nprocs=WORLD,
                           start_method="spawn")
        got = results.get(timeout=hang_s())  # the workers have joined: their results are queued
    finally:
        shutil.rmtree(store, ignore_errors=True)
    for key, (loss_sum, grads) in expected.items():
        ddp_sum, ddp_grads = got[key]
        assert ddp_sum == pytest.approx(float(loss_sum), abs=1e-5), key
        for g1, g2 in zip(grads, ddp_grads):
            torch.testing.assert_close(torch.from_numpy(g2), g1, atol=1e-5, rtol=1e-5)


def _is_worker(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
        return proc.status() != psutil.STATUS_ZOMBIE and "trainables.ddp import worker_main" in cmdline
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _spawned_workers(parent: psutil.Process | None = None) -> list[psutil.Process]:
    return [c for c in (parent or psutil.Process()).children(recursive=True) if _is_worker(c)]


CFG = {"data": {"name": "digits", "max_train": 400}, "model": {"name": "mlp", "width": 32},
       "loss": {"name": "gce", "lam": 1.0}, "calibration": {"method": "ts"},
       "train": {"epochs": 3, "batch_size": 40, "lr": 0.05, "device": "cpu", "workers": 2}}


class TrialStopped(BaseException):
    """Like Tune's SystemExit on stop: not an Exception, so only a `finally` sees it."""


class _StopAfter:
    def __init__(self, epoch):
        self.epoch, self.metrics, self.dirs = epoch, [], []

    def __call__(self, metrics, checkpoint_dir):
        self.metrics.append(metrics)
        self.dirs.append(checkpoint_dir)
        if self.epoch is not None and metrics["epoch"] >= self.epoch:
            raise TrialStopped


def test_stopped_multiprocess_trial_leaves_no_workers_and_resumes():
    assert not _spawned_workers()
    stop = _StopAfter(1)
    with pytest.raises(TrialStopped):
        run_trial(CFG, stop)
    assert not _spawned_workers()  # terminated in run_distributed's finally, before run_trial returned
    assert [m["epoch"] for m in stop.metrics] == [1]

    rest, single = _StopAfter(None), _StopAfter(None)
    last = run_trial(CFG, rest, restore_from=stop.dirs[0])
    try:
        assert [m["epoch"] for m in rest.metrics] == [2, 3]
        assert last["final"] is True and last["status"] == "ok" and last["test/n"] > 0
        state = load_checkpoint(rest.dirs[-1])
        assert state["epoch"] == 3 and len(state["rng"]["by_rank"]) == 2
        assert not _spawned_workers()

        # Same global batches, same gradients: the 2-process run tracks the 1-process run closely.
        run_trial({**CFG, "train": {**CFG["train"], "workers": 1}}, single)
        for a, b in zip(stop.metrics + rest.metrics, single.metrics):
            assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-4)
            assert a["val/acc"] == pytest.approx(b["val/acc"], abs=2.5 / a["val/n"])
    finally:
        for d in stop.dirs + rest.dirs + single.dirs:
            if d:
                shutil.rmtree(d, ignore_errors=True)


# No `if __name__ == "__main__"` guard on purpose: workers are fresh interpreters, they never re-run this script.
PARENT_SCRIPT = textwrap.dedent("""
    import pathlib, shutil, sys
    from gce_search.trainables.trial import run_trial
    marker = pathlib.Path(sys.argv[1])
    cfg = {cfg!r}
    cfg["train"]["epochs"] = 1000
    def reporter(metrics, checkpoint_dir):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        marker.write_text(str(metrics["epoch"]))
    run_trial(cfg, reporter)
""")


def test_killed_parent_takes_its_workers_with_it(tmp_path):
    marker = tmp_path / "epoch"
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT.format(cfg=CFG))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, str(script), str(marker)], env=env)
    try:
        wait_until(marker.exists, what="the multi-process trial to report an epoch", proc=parent, watch=[tmp_path])
        assert marker.exists(), "the multi-process trial never reported an epoch"
        workers = _spawned_workers(psutil.Process(parent.pid))
        assert len(workers) == 2
        parent.send_signal(signal.SIGKILL)  # no finally, no atexit: only the workers' own watch can act
        parent.wait(10)
        try:
            wait_until(lambda: not any(_is_worker(w) for w in workers), what="the orphaned DDP workers to exit",
                       watch=[lambda: sum(_is_worker(w) for w in workers)])
        except AssertionError:
            pass  # the assertion below names them
        alive = [w.pid for w in workers if _is_worker(w)]
        assert not alive, f"orphaned DDP workers: {alive}"
    finally:
        if parent.poll() is None:
            parent.kill()
        for w in locals().get("workers", []):
            if _is_worker(w):
                w.kill()
