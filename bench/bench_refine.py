"""Time of the calibration refinement (trainables.calibration.refine) against an explicit cross-validation loop that
fits the real calibrators (trainables.calibration) on every fold, in the same run.

    python bench/bench_refine.py                       # 5,000 x 10 and 10,000 x 100 logits, 200 candidates x 5 folds
    python bench/bench_refine.py --threads 1

The loop baseline is timed on `--loop-candidates` candidates and scaled to 200 (its cost is linear in them); both
score the same candidates, and the script prints how far apart their held-out ECEs are.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gce_search.trainables import metrics
from gce_search.trainables.calibration import IdentityCalibrator, PiecewiseTemperatureScaling, TemperatureScaling, refine
from gce_search.trainables.refine import TPE_SHARE, _Scorer, _tpe_candidates, refine_candidates


def synthetic(n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    z = torch.randn(n, k, generator=g)
    z[torch.arange(n), y] += torch.rand(n, generator=g) * 6
    return z * torch.where(z.max(1).values > 4, 2.0, 0.6).unsqueeze(1), y


def loop_cv(z, y, candidates, folds: int, seed: int):
    conf = torch.softmax(z.double(), 1).max(1).values.numpy()
    order = np.argsort(conf, kind="stable")
    fold = np.empty(len(y), dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(len(y))] = np.arange(len(y)) % folds
    out = []
    for method, bps in candidates:
        eces = []
        for f in range(folds):
            train, held = torch.from_numpy(order[fold != f]), torch.from_numpy(order[fold == f])
            cal = {"none": IdentityCalibrator, "ts": TemperatureScaling}.get(method)
            cal = cal() if cal else PiecewiseTemperatureScaling(bps)
            cal.fit(z[train], y[train])
            eces.append(metrics.ece(torch.softmax(cal.transform(z[held]).double(), 1), y[held]))
        out.append(float(np.mean(eces)))
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-candidates", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'logits':>12}  {'refine s':>8}  {'of it: TPE':>10}  {'loop s (x200)':>13}  {'ratio':>6}  "
          f"{'max |dECE|':>10}  winner")
    for n, k in ((5000, 10), (10000, 100)):
        z, y = synthetic(n, k)
        refine(z, y)  # warm-up (imports, allocator)
        times, info = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            _, info = refine(z, y, candidates=200, folds=5)
            times.append(time.perf_counter() - started)
        tpe = []
        scorer = _Scorer(z, y, 5, 50, 10.0, 15, 0)
        pool = refine_candidates(scorer.conf_sorted, (2, 6), 200, np.random.default_rng(0))
        grid_eces, _ = scorer.score([m for m, _ in pool], [b for _, b in pool])
        n_tpe = round(200 * TPE_SHARE)
        for _ in range(args.repeats):  # the inner TPE phase alone, on the other candidates' scores
            started = time.perf_counter()
            _tpe_candidates(scorer, pool[:200 - n_tpe], grid_eces[:200 - n_tpe], (2, 6), n_tpe,
                            np.random.default_rng(0))
            tpe.append(time.perf_counter() - started)
        subset = pool[:args.loop_candidates]
        started = time.perf_counter()
        exact = loop_cv(z, y, subset, 5, 0)
        loop_s = (time.perf_counter() - started) * 200 / len(subset)
        refine_s = float(np.median(times))
        print(f"{n:>6} x {k:<4}  {refine_s:>8.3f}  {float(np.median(tpe)):>10.3f}  {loop_s:>13.1f}  "
              f"{loop_s / refine_s:>5.0f}x  {np.abs(grid_eces[:len(subset)] - exact).max():>10.2e}  "
              f"{info['method']} {[round(b, 3) for b in info['breakpoints']]}")


if __name__ == "__main__":
    main()
