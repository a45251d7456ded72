"""Trial-loop throughput against a bare PyTorch loop, and one full `gce-search train` run.

    python bench/bench_trial.py                 # ~5-10 min on 2 busy CPU cores
    python bench/bench_trial.py --json out.json # also write every number

Part 1, throughput (images/s) of the same model on the same on-device data, same batch order and batch size, in
the same process, with bf16 autocast and channels_last each on and off:
  - small_cnn on Fashion-MNIST (28×28, 1 channel),
  - fast_cnn (airbench-style) on synthetic 32×32×3 images.
"bare" is the loop anyone would write (randperm, index, forward, cross-entropy, backward, SGD step); "trial" is
the trial loop's training phase (`time/train_s` of `_Trial.run_epoch`: per-step LR, per-sample loss, loss
bookkeeping), and "with eval" adds what a trial does per epoch besides training (logits on calib and val, ATS
fit, metrics). Adjacent (bare, trial) epochs are paired and the median per-pair ratio reported, since the load of
a shared machine drifts by several times within a minute. The evaluation share is large here because calib + val
(256 + 256 images) are as large as the tiny training subsample; in a real run (45k train, 5k + 5k held out) it is
a few percent. A benchmark measures; it does not pass or fail.

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

from gce_search.trainables.config import resolve
from gce_search.trainables.models import build_model


class BareLoop:
    """The loop anyone would write, on the trial's own data tensors: randperm, index, forward, CE, backward, step."""

    def __init__(self, cfg: dict, data):
        tc = cfg["train"]
        self.data, self.bs, self.bf16 = data, tc["batch_size"], tc["bf16"]
        self.fmt = torch.channels_last if tc["channels_last"] else torch.contiguous_format
        torch.manual_seed(cfg["seed"])
        self.model = build_model(cfg["model"], data.in_channels, data.num_classes,
                                 data.image_size).to(memory_format=self.fmt)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=tc["lr"], momentum=tc["momentum"],
                                   weight_decay=tc["weight_decay"])
        self.gen = torch.Generator().manual_seed(cfg["seed"])

    def epoch(self) -> float:
        """Seconds for one pass over the training split (the last partial batch dropped, as the trial does)."""
        t0 = time.perf_counter()
        x_all, y_all, bs = self.data.train_x, self.data.train_y, self.bs
        perm = torch.randperm(x_all.shape[0], generator=self.gen)
        self.model.train()
        for s in range(x_all.shape[0] // bs):
            idx = perm[s * bs:(s + 1) * bs]
            x, y = x_all[idx].contiguous(memory_format=self.fmt), y_all[idx]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return time.perf_counter() - t0


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
    """Pairs of adjacent epochs (bare, trial), alternating which goes first, after one warm-up epoch each.

    The trial side is the trial loop's own epoch (`_Trial.run_epoch`: training, then logits on calib and val, ATS
    fit and metrics), timed by the trial itself. On a shared machine the load drifts by several times within a
    minute, so we report the median over pairs of the per-pair ratio: adjacent epochs see nearly the same load.
    """
    from gce_search.trainables.trial import _Trial

    rows = []
    for case, base in CASES.items():
        small = case.startswith("small_cnn")
        max_train = args.small_cnn_images if small else args.fast_cnn_images
        pairs = args.pairs if small else max(2, args.pairs // 2)
        for bf16 in (False, True):
            for channels_last in (False, True):
                cfg = resolve({
                    "seed": 0,
                    "data": {**base["data"], "max_train": max_train},
                    "model": base["model"],
                    "loss": {"name": "cross_entropy"},
                    "calibration": {"method": "ats", "min_samples": 20},
                    "train": {"epochs": 1000, "batch_size": 128, "lr": 0.05, "schedule": "constant",
                              "device": "cpu", "bf16": bf16, "channels_last": channels_last,
                              "eval_batch_size": 256},
                })
                trial = _Trial(cfg, None)
                bare = BareLoop(cfg, trial.data)
                images = trial.steps_per_epoch * trial.batch_size
                bare.epoch()
                trial.run_epoch()  # warm-up
                bare_s, train_s, eval_s = [], [], []
                loads = [os.getloadavg()[0]]
                for r in range(pairs):
                    if r % 2:
                        m = trial.run_epoch()
                        bare_s.append(bare.epoch())
                    else:
                        bare_s.append(bare.epoch())
                        m = trial.run_epoch()
                    train_s.append(m["time/train_s"])
                    eval_s.append(m["time/eval_s"])
                loads.append(os.getloadavg()[0])
                ratio = statistics.median(b / t for b, t in zip(bare_s, train_s))
                ratio_e2e = statistics.median(b / (t + e) for b, t, e in zip(bare_s, train_s, eval_s))
                bare_ips = images / statistics.median(bare_s)
                trial_ips = images / statistics.median(train_s)
                row = {"case": case, "bf16": bf16, "channels_last": channels_last, "train_images": images,
                       "pairs": pairs, "bare_img_s": bare_ips, "trial_img_s": trial_ips, "ratio": ratio,
                       "ratio_e2e": ratio_e2e, "bare_s": bare_s, "trial_train_s": train_s, "trial_eval_s": eval_s,
                       "load_avg_1min": loads}
                rows.append(row)
                print(f"{case:32s} bf16={bf16!s:5s} channels_last={channels_last!s:5s}  bare {bare_ips:7.1f} img/s  "
                      f"trial {trial_ips:7.1f} img/s  trial/bare {ratio:4.2f}  with eval {ratio_e2e:4.2f}  "
                      f"[median of {pairs} pairs; load {loads[0]:.1f}-{loads[1]:.1f}]", flush=True)
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
        proc = subprocess.run([sys.executable, "-m", "gce_search", "train", path, "--out", out],
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
    p.add_argument("--pairs", type=int, default=6, help="adjacent (bare, trial) epoch pairs per setting "
                                                        "(half as many for fast_cnn)")
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
