"""Trial-loop throughput against a bare PyTorch loop, and one full `gce-search train` run.

    python bench/bench_trial.py                 # ~5-10 min on 2 busy CPU cores
    python bench/bench_trial.py --json out.json # also write every number

Part 1, throughput (images/s) of the same model on the same on-device data, same batch order and batch size, in
the same process, with bf16 autocast and channels_last each on and off:
  - small_cnn on Fashion-MNIST (28×28, 1 channel),
  - fast_cnn (airbench-style) on synthetic 32×32×3 images.
"bare" is the loop anyone would write (randperm, index, forward, cross-entropy, backward, SGD step); "trial" is
run_trial's own training phase (`time/train_s`: LR schedule, per-sample loss, divergence bookkeeping), and
"trial e2e" adds what a trial does per epoch besides training (logits on calib and val, ATS fit, metrics).
The first epoch of each run is a warm-up and is not counted; each loop runs --rounds times, interleaved, and
the best run counts (the machine is shared). The evaluation share of "trial e2e" is large here because calib +
val (256 + 256 images) are as large as the tiny training subsample; in a real run (45k train, 5k + 5k held
out) it is a few percent. A benchmark measures; it does not pass or fail.

Part 2: `gce-search train` of small_cnn on Fashion-MNIST in a subprocess: wall time, peak RSS, test acc/ECE.
Subsampled (--train-images, --test-images) to fit a few minutes on 2 CPU cores; the numbers say so.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainables.config import resolve  # noqa: E402
from trainables.data import load_splits  # noqa: E402
from trainables.models import build_model  # noqa: E402
from trainables.trial import run_trial  # noqa: E402


def bare_loop(cfg: dict, epochs: int) -> float:
    """Images/s of a plain training loop over epochs 2..epochs (epoch 1 warms up)."""
    tc = cfg["train"]
    data = load_splits(cfg["data"], device="cpu")
    torch.manual_seed(cfg["seed"])
    fmt = torch.channels_last if tc["channels_last"] else torch.contiguous_format
    model = build_model(cfg["model"], data.in_channels, data.num_classes, data.image_size).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=tc["lr"], momentum=tc["momentum"], weight_decay=tc["weight_decay"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    n, bs = data.train_x.shape[0], tc["batch_size"]
    steps = n // bs
    model.train()
    timed, images = 0.0, 0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            x, y = data.train_x[idx].contiguous(memory_format=fmt), data.train_y[idx]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc["bf16"]):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch > 0:
            timed += time.perf_counter() - t0
            images += steps * bs
    return images / timed


def trial_loop(cfg: dict) -> tuple[float, float]:
    """(training-phase images/s, end-to-end images/s incl. per-epoch evaluation) over epochs 2..end."""
    seen: list[dict] = []

    def reporter(metrics: dict, checkpoint_dir: str | None) -> None:
        seen.append(metrics)
        if checkpoint_dir:
            import shutil

            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    run_trial(cfg, reporter)
    later = seen[1:]
    images = sum(m["train/images_per_s"] * m["time/train_s"] for m in later)
    train_s = sum(m["time/train_s"] for m in later)
    total_s = sum(m["time/train_s"] + m["time/eval_s"] for m in later)
    return images / train_s, images / total_s


CASES = {
    "small_cnn / fashion_mnist 28x28": {
        "data": {"name": "fashion_mnist", "calib": 256, "val": 256, "test": 256},
        "model": {"name": "small_cnn"},
    },
    "fast_cnn / synthetic 32x32x3": {
        "data": {"name": "synthetic", "subset": "classes=10,size=32,channels=3,train=1024,test=128,noise=1.0",
                 "calib": 128, "val": 128},
        "model": {"name": "fast_cnn"},
    },
}


def throughput(args) -> list[dict]:
    rows = []
    for case, base in CASES.items():
        max_train = args.small_cnn_images if case.startswith("small_cnn") else args.fast_cnn_images
        for bf16 in (False, True):
            for channels_last in (False, True):
                cfg = resolve({
                    "seed": 0,
                    "data": {**base["data"], "max_train": max_train},
                    "model": base["model"],
                    "loss": {"name": "cross_entropy"},
                    "calibration": {"method": "ats", "min_samples": 20},
                    "train": {"epochs": args.epochs, "batch_size": 128, "lr": 0.05, "schedule": "constant",
                              "device": "cpu", "bf16": bf16, "channels_last": channels_last,
                              "eval_batch_size": 256},
                })
                loads, bare, trial, e2e = [], [], [], []
                # Rounds in ABBA order, best of each: on a shared machine the load drifts and spikes, and the
                # best run is the one least disturbed by it.
                for r in range(args.rounds):
                    loads.append(os.getloadavg()[0])
                    order = ("bare", "trial") if r % 2 == 0 else ("trial", "bare")
                    for which in order:
                        if which == "bare":
                            bare.append(bare_loop(cfg, args.epochs))
                        else:
                            t, e = trial_loop(cfg)
                            trial.append(t)
                            e2e.append(e)
                b, t, e = max(bare), max(trial), max(e2e)
                row = {"case": case, "bf16": bf16, "channels_last": channels_last, "train_images": max_train,
                       "bare_img_s": b, "trial_img_s": t, "trial_e2e_img_s": e, "ratio": t / b,
                       "ratio_e2e": e / b, "runs": {"bare": bare, "trial": trial, "trial_e2e": e2e},
                       "load_avg_1min": loads}
                rows.append(row)
                print(f"{case:34s} bf16={bf16!s:5s} channels_last={channels_last!s:5s}  bare {b:7.1f}  "
                      f"trial {t:7.1f} ({t / b:4.2f}x)  trial e2e {e:7.1f} ({e / b:4.2f}x)  "
                      f"[best of {args.rounds}; load {', '.join(f'{x:.1f}' for x in loads)}]", flush=True)
    return rows


def full_train(args) -> dict:
    cfg = {
        "seed": 0,
        "data": {"name": "fashion_mnist", "max_train": args.train_images, "calib": 1000, "val": 1000,
                 "test": args.test_images},
        "model": {"name": "small_cnn"},
        "loss": {"name": "gce", "lam": 1.0},
        "calibration": {"method": "ats", "breakpoints": [0.5, 0.8, 0.95]},
        "train": {"epochs": args.train_epochs, "batch_size": 128, "lr": 0.05, "schedule": "cosine",
                  "device": "cpu", "bf16": True, "channels_last": True, "eval_batch_size": 500},
    }
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        path = os.path.join(tmp, "small_cnn_fmnist.yaml")
        with open(path, "w") as fh:
            yaml.safe_dump(cfg, fh)
        out = os.path.join(tmp, "out")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "search.cli", "train", path, "--out", out],
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        wall = time.perf_counter() - t0
        peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            raise SystemExit(f"gce-search train failed with exit code {proc.returncode}")
        with open(os.path.join(out, "metrics.json")) as fh:
            metrics = json.load(fh)
    row = {"config": cfg, "wall_s": wall, "peak_rss_mib": peak_rss_mib,
           **{k: metrics[k] for k in ("test/acc", "test/ece", "test/ece_raw", "test/n", "val/acc", "val/ece")}}
    print(f"gce-search train small_cnn / fashion_mnist ({args.train_images} train images, {args.train_epochs} "
          f"epochs, test n={metrics['test/n']}): wall {wall:.1f} s, peak RSS {peak_rss_mib:.0f} MiB, "
          f"test/acc {metrics['test/acc']:.4f}, test/ece {metrics['test/ece']:.4f} "
          f"(raw {metrics['test/ece_raw']:.4f})", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs per throughput run (the first is a warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved runs of each loop; the best one counts")
    p.add_argument("--small-cnn-images", type=int, default=512, help="training images per epoch, small_cnn")
    p.add_argument("--fast-cnn-images", type=int, default=256, help="training images per epoch, fast_cnn")
    p.add_argument("--train-images", type=int, default=3000, help="training images for the full train run")
    p.add_argument("--train-epochs", type=int, default=3)
    p.add_argument("--test-images", type=int, default=2000, help="test images (subsample of the 10k test split)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--json", default=None, help="write every number to this file")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)
    t0 = time.perf_counter()
    result: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if not args.skip_throughput:
        rows = throughput(args)
        result["throughput"] = rows
        print(f"median trial/bare ratio {statistics.median(r['ratio'] for r in rows):.2f} "
              f"(end-to-end {statistics.median(r['ratio_e2e'] for r in rows):.2f})", flush=True)
    if not args.skip_train:
        result["train"] = full_train(args)
    result["bench_wall_s"] = time.perf_counter() - t0
    print(f"bench wall time {result['bench_wall_s']:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
