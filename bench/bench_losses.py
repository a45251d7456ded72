"""GCE forward+backward time relative to cross-entropy (goal: <= 1.2x on a 1,024 x 100 batch).

Times one training-step's loss work: per-sample loss, mean, backward to the logits. Reports the median over many
repeats (after warm-up) of each loss, interleaved so that machine noise hits both alike, and the ratio of medians.
Prints numbers only; a benchmark measures, it does not pass or fail.

    python bench/bench_losses.py [--batch 1024] [--classes 100] [--repeats 500] [--threads N] [--device cpu]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from gce_search.trainables.losses import LOSSES, build_loss


def gce_composed(logits: torch.Tensor, targets: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """GCE as plain autograd ops (log-softmax, logsumexp over the batch), for comparison with the fused version."""
    log_probs = F.log_softmax(logits, dim=1)
    class_term = torch.logsumexp(log_probs, dim=0) - math.log(logits.shape[0])
    return -log_probs.gather(1, targets[:, None]).squeeze(1) + lam * class_term[targets]


def time_step(loss, logits: torch.Tensor, targets: torch.Tensor, sync) -> float:
    logits.grad = None
    start = time.perf_counter()
    loss(logits, targets).mean().backward()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--all", action="store_true", help="time every registered loss, not only CE and GCE")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    logits = (3.0 * torch.randn(args.batch, args.classes, generator=generator, dtype=dtype)).to(device)
    logits.requires_grad_(True)
    targets = torch.randint(0, args.classes, (args.batch,), generator=generator).to(device)

    names = list(LOSSES.names()) if args.all else ["cross_entropy", "gce"]
    losses = {name: build_loss({"name": name}, args.classes) for name in names}
    names.append("gce_composed")
    losses["gce_composed"] = gce_composed
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.warmup):
        for name in names:
            time_step(losses[name], logits, targets, sync)
    for _ in range(args.repeats):
        for name in names:  # interleaved: drift in machine load affects every loss alike
            times[name].append(time_step(losses[name], logits, targets, sync))

    base = statistics.median(times["cross_entropy"])
    base_p10 = sorted(times["cross_entropy"])[len(times["cross_entropy"]) // 10]
    print(f"device={device} dtype={args.dtype} batch={args.batch} classes={args.classes} "
          f"repeats={args.repeats} threads={torch.get_num_threads()} torch={torch.__version__}")
    # On a shared machine the 10th percentile is the steadier comparison; both ratios are printed.
    print(f"{'loss':<16}{'median_us':>12}{'p10_us':>10}{'p90_us':>10}{'vs_CE':>8}{'p10_vs_CE':>11}")
    for name in names:
        t = sorted(times[name])
        median = statistics.median(t)
        p10, p90 = t[len(t) // 10], t[(9 * len(t)) // 10]
        print(f"{name:<16}{median * 1e6:>12.1f}{p10 * 1e6:>10.1f}{p90 * 1e6:>10.1f}{median / base:>8.2f}"
              f"{p10 / base_p10:>11.2f}")


if __name__ == "__main__":
    main()
