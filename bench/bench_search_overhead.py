"""Search overhead of gce-search on a local Ray instance: how much of the machine goes to trials.

    python bench/bench_search_overhead.py [--trials 16] [--trial-seconds 10] [--rss-trials 0] [--no-quickstart]

1. `--trials` trials of about `--trial-seconds` of real torch compute each (single-threaded matmuls, reported as 5
   epochs), run through the driver's own assembly (CalibratedSearcher on a journal, ConcurrencyLimiter at the
   slot count, progress callback, JSON/CSV loggers, FIFO so every trial runs its whole budget), with
   reuse_actors on and off. Reports
       overhead ratio   = (wall x concurrency) / sum of the trials' compute time      (1.0 = no overhead)
       start cost       = (wall x concurrency - sum of compute) / trials               (slot-seconds per trial)
   where wall runs from Tuner.fit() to its return and compute is timed inside each trial around the matmuls only.
2. Peak RSS of the driver process (ru_maxrss) and of one trial process (max over trials, measured in the trial).
   `--rss-trials N` adds an N-trial search of near-empty trials to see how the driver grows with trial count.
3. Wall time of `gce-search run` (the quickstart space) from the command to the finished summary.

Prints numbers; asserts nothing. It uses every core: run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import torch

MATRIX = 256
EPOCHS = 5

SPACE = """\
name: overhead
description: driver assembly for the overhead benchmark (the trainable is synthetic)
data: {name: digits}
model: {name: mlp}
train: {epochs: %d}
search: {sampler: tpe, num_samples: %d, seed: 0}
scheduler: {name: fifo}
resources: {cpus_per_trial: 1, gpus_per_trial: 0, reuse_actors: %s}
space:
  loss.name: {choices: [cross_entropy, gce]}
  gce.lam: {low: 0.0, high: 2.0}
  calibration.breakpoints: {breakpoints: {pieces: [2, 5]}}
"""


def matmuls(n: int) -> None:
    a = torch.randn(MATRIX, MATRIX)
    for _ in range(n):
        a = torch.tanh(a @ a)


def calibrate(seconds_per_epoch: float) -> int:
    """Matmuls per epoch for about `seconds_per_epoch` on one thread of this machine, now."""
    torch.set_num_threads(1)
    n = 20
    while True:
        t0 = time.perf_counter()
        matmuls(n)
        took = time.perf_counter() - t0
        if took > 0.5:
            return max(1, int(n * seconds_per_epoch / took))
        n *= 2


def synthetic_trainable(config: dict) -> None:
    from ray import tune

    entered = time.time()
    torch.set_num_threads(1)
    compute = 0.0
    for epoch in range(1, EPOCHS + 1):
        t0 = time.perf_counter()
        matmuls(config["matmuls_per_epoch"])
        compute += time.perf_counter() - t0
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tune.report({"epoch": epoch, "val/acc": 0.5, "val/ece": 0.05, "score": 0.45, "status": "ok",
                     "final": epoch == EPOCHS, "compute_s": compute, "rss_mib": rss_mib,
                     "entered_at": entered, "left_at": time.time()})


def run_search(num_trials: int, reuse: bool, matmuls_per_epoch: int, root: str, slots: int) -> dict:
    from ray import tune
    from ray.tune import PlacementGroupFactory

    from gce_search.search.driver import build_tuner, trial_resources
    from gce_search.search.progress import ProgressPrinter
    from gce_search.spaces.loading import load_spec

    path = os.path.join(root, f"overhead-{reuse}-{num_trials}.yaml")
    with open(path, "w") as f:
        f.write(SPACE % (EPOCHS, num_trials, "true" if reuse else "false"))
    spec = load_spec(path)
    name = f"overhead-reuse-{reuse}-{num_trials}"
    exp_dir = os.path.join(root, name)
    os.makedirs(exp_dir)

    def with_work(config):
        synthetic_trainable({**config, "matmuls_per_epoch": matmuls_per_epoch})

    with open(os.devnull, "w") as quiet:
        tuner, _ = build_tuner(spec, root, name, exp_dir, ProgressPrinter(max_t=EPOCHS, stream=quiet),
                               slots=slots, trainable=tune.with_resources(
                                   with_work, PlacementGroupFactory([trial_resources(spec)])))
        fit_at = time.time()
        t0 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t0
    compute = sum(r.metrics.get("compute_s", 0.0) for r in grid)
    trial_rss = max(r.metrics.get("rss_mib", 0.0) for r in grid)
    errors = sum(r.error is not None for r in grid)
    entered = sorted(r.metrics.get("entered_at", float("inf")) for r in grid)
    # Cold start: the slot-seconds each slot waits from fit() to its first trial (Ray starts a worker, which imports
    # torch and the trainable); after that a slot only pays the hand-over from one trial to the next.
    firsts = entered[:min(slots, len(entered))]
    cold_idle = sum(t - fit_at for t in firsts)
    return {"wall": wall, "compute": compute, "trial_rss_mib": trial_rss, "errors": errors, "n": len(grid),
            "first_start": firsts[0] - fit_at, "all_busy": firsts[-1] - fit_at, "cold_idle": cold_idle}


def time_quickstart(root: str) -> float | None:
    exe = shutil.which("gce-search")
    cmd = [exe] if exe else [sys.executable, "-m", "gce_search"]
    t0 = time.perf_counter()
    done = subprocess.run([*cmd, "run", "--storage", os.path.join(root, "qs"), "--name", "quickstart-bench"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        print(f"quickstart failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        return None
    tail = [ln for ln in done.stdout.splitlines() if ln.startswith("Search finished")]
    print(f"  {tail[0] if tail else ''}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--trial-seconds", type=float, default=10.0)
    p.add_argument("--rss-trials", type=int, default=0, help="also run an N-trial search of near-empty trials")
    p.add_argument("--no-quickstart", action="store_true")
    p.add_argument("--modes", default="on,off", help="reuse_actors settings to run: on,off")
    args = p.parse_args()

    import ray

    from gce_search.search.driver import configure_tune_environment

    cpus = os.cpu_count() or 1
    per_epoch = calibrate(args.trial_seconds / EPOCHS)
    print(f"machine: {cpus} CPUs, load average {os.getloadavg()[0]:.1f} at start; {per_epoch} matmuls "
          f"({MATRIX}x{MATRIX}) per epoch ~ {args.trial_seconds / EPOCHS:.1f} s on one thread; "
          f"torch {torch.__version__}, ray {ray.__version__}")
    root = tempfile.mkdtemp(prefix="gce-overhead-")
    configure_tune_environment()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        for mode in args.modes.split(","):
            reuse = mode.strip() == "on"
            r = run_search(args.trials, reuse, per_epoch, root, slots=cpus)
            ratio = r["wall"] * cpus / r["compute"]
            start_cost = (r["wall"] * cpus - r["compute"]) / r["n"]
            warm_ratio = (r["wall"] * cpus - r["cold_idle"]) / r["compute"]
            warm_cost = (r["wall"] * cpus - r["cold_idle"] - r["compute"]) / r["n"]
            print(f"reuse_actors={'on ' if reuse else 'off'}: {r['n']} trials ({r['errors']} errors), wall "
                  f"{r['wall']:.1f} s x {cpus} slots, compute {r['compute']:.1f} s -> overhead ratio {ratio:.3f}, "
                  f"start cost {start_cost:.2f} slot-s/trial; trial process peak RSS {r['trial_rss_mib']:.0f} MiB")
            print(f"    cold start: first trial running {r['first_start']:.1f} s after fit(), every slot busy after "
                  f"{r['all_busy']:.1f} s ({r['cold_idle']:.1f} slot-s); without it: overhead ratio "
                  f"{warm_ratio:.3f}, start cost {warm_cost:.2f} slot-s/trial")
        if args.rss_trials:
            r = run_search(args.rss_trials, True, 1, root, slots=cpus)
            print(f"{r['n']} near-empty trials: wall {r['wall']:.1f} s "
                  f"({(r['wall'] * cpus - r['compute']) / r['n']:.2f} slot-s/trial)")
        print(f"driver peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
              f"(this process: Tuner, searcher, callbacks; Ray's own daemons not included)")
    finally:
        ray.shutdown()
    print(f"load average {os.getloadavg()[0]:.1f} after the overhead runs")
    if not args.no_quickstart:
        wall = time_quickstart(root)
        if wall is not None:
            print(f"gce-search run (quickstart), command to summary: {wall:.1f} s")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
