"""Training throughput of fp32, fp32 + channels_last, bf16 and bf16 + channels_last on this CPU, and what the
`auto` probe (trainables.precision) decides here.

Forward + backward of a model on a random batch of the given input shape, each variant timed for about
`--seconds` per round, the variants interleaved over `--rounds` rounds so that machine noise hits all alike;
prints the median images/s per variant and its ratio to fp32 in the same run, then the probe's own measurement
(its small batch, a fresh cache) and its decision. Prints numbers only.

    python bench/bench_precision.py [--model small_cnn] [--width 32] [--size 28] [--channels 1] [--batch 128]
                                    [--threads 1] [--rounds 3] [--seconds 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--size", type=int, default=28, help="image height and width (Fashion-MNIST: 28)")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["GCE_SEARCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-precision-")  # a probe from scratch

    from gce_search.trainables.config import resolve
    from gce_search.trainables.models import build_model
    from gce_search.trainables.precision import VARIANTS, cpu_model, decide, has_conv, measure

    model_cfg = {"name": args.model, "width": args.width}
    model = build_model(model_cfg, args.channels, args.classes, args.size)
    shape = (args.channels, args.size, args.size)
    variants = VARIANTS if has_conv(model) else tuple(v for v in VARIANTS if not v[2])
    print(f"{args.model} width {args.width}, input {args.channels}x{args.size}x{args.size}, batch {args.batch}, "
          f"{args.threads} thread(s), {cpu_model()}, torch {torch.__version__}")
    rates: dict[str, list[float]] = {v[0]: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            rate = measure(model, shape, args.classes, args.batch, (variant,), min_time_s=args.seconds,
                           max_steps=10_000)
            rates[variant[0]].append(rate[variant[0]])
    base = statistics.median(rates["fp32"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:<20} {median:9.1f} img/s  {median / base:5.2f}x fp32  (rounds: "
              f"{', '.join(f'{v:.1f}' for v in values)})")

    train = resolve({"model": model_cfg, "train": {"batch_size": args.batch, "device": "cpu"}})["train"]
    t0 = time.perf_counter()
    precision = decide(train, model, model_cfg, shape, args.classes, torch.device("cpu"))
    spent = time.perf_counter() - t0
    probe = ", ".join(f"{k} {v:.1f}" for k, v in precision.images_per_s.items())
    print(f"probe ({spent:.1f} s): {probe} img/s -> auto chooses bf16 {precision.bf16}, channels_last "
          f"{precision.channels_last}")


if __name__ == "__main__":
    main()
