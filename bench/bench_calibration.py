"""Fit time of ATS (3 breakpoints) and TS on 10,000 x 100 logits; prints medians, asserts nothing.

    python bench/bench_calibration.py [--n 10000] [--classes 100] [--repeats 21] [--threads N]

Logits: Gaussian with a per-sample scale so that the uncalibrated confidences fill every ATS piece; labels drawn
from softmax(logits / 1.5). For context it also times a SciPy bounded (Brent) search on log T whose objective is
torch's cross_entropy, the straightforward way to fit TS.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch


def median_ms(fn, repeats: int) -> tuple[float, float, float]:
    """Median, interquartile range and minimum in ms; the minimum is the least disturbed by other processes."""
    fn()  # warm-up: first-call allocations and dispatch
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return (1e3 * statistics.median(times), 1e3 * (times[(3 * len(times)) // 4] - times[len(times) // 4]),
            1e3 * times[0])


def main() -> None:
    from scipy.optimize import minimize_scalar

    from gce_search.trainables import calibration
    from gce_search.trainables.calibration import PiecewiseTemperatureScaling, TemperatureScaling

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    scale = 0.5 + 4.0 * torch.rand(args.n, 1, generator=g)
    logits = torch.randn(args.n, args.classes, generator=g) * scale
    labels = torch.multinomial(torch.softmax(logits / 1.5, dim=1), 1, generator=g)[:, 0]
    breakpoints = [0.5, 0.8, 0.95]

    # Count passes over the logits (one exp over [N, K] each) to explain the timings.
    passes = {"rows": 0, "calls": 0}
    original = calibration._nll_gradient_curvature

    def counting(shifted, *args):
        passes["rows"] += shifted.shape[0]
        passes["calls"] += 1
        return original(shifted, *args)

    calibration._nll_gradient_curvature = counting
    ats = PiecewiseTemperatureScaling(breakpoints).fit(logits, labels)
    ats_passes = dict(passes)
    passes.update(rows=0, calls=0)
    ts = TemperatureScaling().fit(logits, labels)
    ts_passes = dict(passes)
    calibration._nll_gradient_curvature = original

    def scipy_ts():
        z = logits.double()

        def nll(log_t):
            return torch.nn.functional.cross_entropy(z / math.exp(log_t), labels).item()

        return math.exp(minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded",
                                        options={"xatol": 1e-6}).x)

    ats_ms, ats_iqr, ats_min = median_ms(lambda: PiecewiseTemperatureScaling(breakpoints).fit(logits, labels), args.repeats)
    ts_ms, ts_iqr, ts_min = median_ms(lambda: TemperatureScaling().fit(logits, labels), args.repeats)
    transform_ms, transform_iqr, transform_min = median_ms(lambda: ats.transform(logits), args.repeats)
    scipy_ms, scipy_iqr, scipy_min = median_ms(scipy_ts, max(3, args.repeats // 4))

    print(f"logits {args.n} x {args.classes} float32, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"median of {args.repeats} (IQR) [min]")
    print(f"ATS fit, breakpoints {breakpoints}: {ats_ms:8.2f} ms ({ats_iqr:.2f}) [{ats_min:.2f}]   "
          f"temperatures {[round(t, 3) for t in ats.temperatures]}, pieces {ats.fit_info['piece_counts']}, "
          f"{ats_passes['calls']} Newton evaluations = {ats_passes['rows'] / args.n:.1f} passes over the logits")
    print(f"TS fit:                          {ts_ms:8.2f} ms ({ts_iqr:.2f}) [{ts_min:.2f}]   "
          f"temperature {ts.temperatures[0]:.4f}, {ts_passes['calls']} Newton evaluations")
    print(f"ATS transform:                   {transform_ms:8.2f} ms ({transform_iqr:.2f}) [{transform_min:.2f}]")
    print(f"TS by SciPy bounded Brent on log T over cross_entropy (for context): {scipy_ms:8.2f} ms ({scipy_iqr:.2f}) [{scipy_min:.2f}],"
          f" T = {scipy_ts():.4f}")


if __name__ == "__main__":
    main()
