"""Does the simulator agree with a real search? One real `gce-search run` on the recorded space, checked against
the table and against the simulator on the same setting.

    python bench/sim_vs_real.py --table bench/tables/fmlt100_mlp.npz --budget-s 300 --out bench-out/sim_vs_real

1. Runs the real search (Ray, the trial loop, real training) on the table's space for `--budget-s` seconds of
   wall clock (`search.timeout_s`), with the scheduler and sampler given (default: the space's, TPE + MO-ASHA) and
   `--workers` concurrent trials (`resources.cpus_per_trial` 1 on a local Ray of that many CPUs).
2. Compares every epoch every real trial reported with the table's row for its configuration: the metrics are the
   same trained model's, so they should be equal (bit for bit on the machine that recorded the table).
3. Measures what the simulator assumes: each trial's start-up (the first result's wall time minus the trial loop's
   own epoch time) and the epoch times.
4. Simulates the same arm with the same workers and budget over `--seeds` seeds (start-up: the measured median) and
   puts the real run's numbers (trials started, complete, val and test hypervolume of the front) in the
   simulator's distribution.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import curves  # noqa: E402
import simulate_search as sim  # noqa: E402

COMPARED = ("val/acc", "val/ece", "val/nll", "score")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/sim_vs_real.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--space", default=str(Path(__file__).parent / "tables" / "fmlt100_mlp.yaml"))
    parser.add_argument("--budget-s", type=float, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--arm", default="tpe_moasha", choices=[a for a, s in sim.ARMS.items() if s["kind"] == "tool"])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--out", required=True)
    parser.add_argument("--reuse", action="store_true", help="analyse an earlier run in OUT instead of running")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = curves.load_table(args.table)
    arm = sim.ARMS[args.arm]
    name = "real"
    if not args.reuse:
        cmd = ["gce-search", "run", args.space, "--storage", str(out), "--name", name,
               "--set", f"search.timeout_s={int(args.budget_s)}", "--set", "search.num_samples=100000",
               "--set", f"search.sampler={arm['sampler']}", "--set", "search.seed=0",
               "--set", f"scheduler.name={arm['scheduler']}", "--set", "resources.cpus_per_trial=1",
               "--set", f"search.max_concurrent={args.workers}"]
        started = time.time()
        proc = subprocess.run(cmd, text=True, capture_output=True)
        (out / "run.log").write_text(proc.stdout + proc.stderr)
        print(f"real run: exit {proc.returncode} in {time.time() - started:.0f} s ({' '.join(cmd)})")
    from gce_search.api import load_experiment
    from gce_search.trainables.checkpoints import read_result_lines

    exp = load_experiment(out / name)
    lookup = sim.Lookup(table)
    equal = differ = 0
    worst = 0.0
    startups, epoch_real, epoch_table = [], [], []
    for trial in exp.trials:
        flat = {k: v for k, v in trial.params.items() if v is not None}
        i, k = lookup.of_flat(flat)
        for row in trial.history:
            e = int(row["epoch"])
            ref = table.result(i, k, e)
            for key in COMPARED + (("test/acc", "test/ece") if row.get("final") else ()):
                value = row.get(key)
                both_nan = isinstance(value, float) and math.isnan(value) and math.isnan(ref[key])
                if value == ref[key] or both_nan:
                    equal += 1
                else:
                    differ += 1
                    if isinstance(row.get(key), (int, float)) and math.isfinite(ref[key]):
                        worst = max(worst, abs(row[key] - ref[key]))
            loop_s = row.get("time/train_s", 0.0) + row.get("time/eval_s", 0.0)
            epoch_real.append(loop_s)
            epoch_table.append(float(table.epoch_seconds(i)[e - 1]))
        # Ray's own record of the first result: its time_this_iter_s runs from the trial's start
        lines, _torn = read_result_lines(trial.path / "result.json")
        first = next((line for line in lines if line.get("training_iteration") == 1), None)
        if first is not None and isinstance(first.get("time_this_iter_s"), (int, float)):
            startups.append(first["time_this_iter_s"] - first.get("time/train_s", 0.0) - first.get("time/eval_s", 0.0))
    # Worker time the table does not account for (Ray's scheduling, actor reuse, the trial's start-up, a
    # checkpoint per epoch, results sent): W x budget minus the trial loop's own epoch times, per trial started.
    overhead_total = args.workers * args.budget_s - float(np.sum(epoch_real))
    startup = max(0.0, overhead_total / max(1, len(exp.trials)))
    counts = exp.counts()
    real = {"trials": len(exp.trials), "complete": counts.get("complete", 0), "hv_val": exp.hypervolume(),
            "hv_test": _test_hv(exp)}
    grid = np.linspace(0.0, args.budget_s, 101)
    runs = [sim.simulate(table, args.arm, seed, args.workers, args.budget_s, startup_s=startup)
            for seed in range(args.seeds)]
    simulated = {"trials": [r.trials for r in runs], "complete": [len(r.completions) for r in runs],
                 "hv_val": [], "hv_test": []}
    for r in runs:
        hv_val, hv_test = sim.hv_curves(table, r, grid)
        simulated["hv_val"].append(float(hv_val[-1]))
        simulated["hv_test"].append(float(hv_test[-1]))
    report = {
        "command": "python bench/sim_vs_real.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "arm": args.arm, "workers": args.workers, "budget_s": args.budget_s,
        "values_equal": equal, "values_different": differ, "max_abs_difference": worst,
        "overhead_worker_s": overhead_total, "overhead_s_per_trial (the simulated start-up)": startup,
        "first_result_startup_s_quartiles": _quartiles(startups),
        "epoch_s_real_median": float(np.median(epoch_real)) if epoch_real else None,
        "epoch_s_table_median": float(np.median(epoch_table)) if epoch_table else None,
        "real": real,
        "simulated": {key: {"mean": float(np.mean(v)), "p05": float(np.percentile(v, 5)),
                            "p95": float(np.percentile(v, 95)),
                            "real_percentile": float(np.mean(np.array(v) <= real[key]) * 100)}
                      for key, v in simulated.items()},
    }
    (out / "sim_vs_real.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


def _test_hv(exp) -> float:
    from gce_search.search.pareto import hypervolume_acc_ece

    front = exp.front()
    points = [(t.final["test/acc"], t.final["test/ece"]) for t in front if "test/acc" in t.final]
    return hypervolume_acc_ece(points) if points else 0.0


def _quartiles(values) -> list[float]:
    return [float(np.percentile(values, q)) for q in (25, 50, 75)] if values else []


if __name__ == "__main__":
    sys.exit(main())
