"""Coverage and cost of the bootstrap 95% intervals of the 15-bin ECE (trainables.metrics.bootstrap_intervals).

Synthetic models with a known top-label calibration error: confidence c ~ U(0.5, 1), right with probability
c - gap, so every bin's gap, and the binned ECE, is `gap`. For each (gap, n) the script draws `--draws` data sets
and reports how often the shipped interval (basic bootstrap) and the plain percentile interval of the same
resamples contain `gap`, and the time of one interval computation against one plain ECE.

    python bench/bench_ece_intervals.py --draws 100
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gce_search.trainables import metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    print(f"{'gap':>5} {'n':>6}  {'basic (shipped)':>15}  {'percentile':>10}  {'interval ms':>11}  {'ECE ms':>7}")
    for gap, n in ((0.05, 2000), (0.05, 5000), (0.02, 2000), (0.01, 5000), (0.0, 2000), (0.0, 5000)):
        rng = np.random.default_rng(args.seed)
        basic = percentile = 0
        t_interval = t_ece = 0.0
        for _ in range(args.draws):
            c = rng.uniform(0.5, 1.0, n)
            k = (rng.uniform(size=n) < c - gap).astype(float)
            seed = int(rng.integers(1 << 30))
            started = time.perf_counter()
            lo, hi = metrics.bootstrap_intervals(c, k, seed=seed)["ece"]
            t_interval += time.perf_counter() - started
            basic += lo <= gap <= hi
            # the same resamples, percentile interval (what the basic interval replaces)
            idx = np.random.default_rng(seed).integers(0, n, (metrics.BOOTSTRAP_RESAMPLES, n))
            started = time.perf_counter()
            point = metrics._ece(torch.from_numpy(c), torch.from_numpy(k), 15)
            t_ece += time.perf_counter() - started
            del point
            eces = [metrics._ece(torch.from_numpy(c[i]), torch.from_numpy(k[i]), 15) for i in idx]
            p_lo, p_hi = np.percentile(eces, [2.5, 97.5])
            percentile += p_lo <= gap <= p_hi
        print(f"{gap:>5} {n:>6}  {basic / args.draws:>15.2f}  {percentile / args.draws:>10.2f}  "
              f"{1e3 * t_interval / args.draws:>11.1f}  {1e3 * t_ece / args.draws:>7.2f}")


if __name__ == "__main__":
    main()
