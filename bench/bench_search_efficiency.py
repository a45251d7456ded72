"""Search efficiency: hypervolume of the accuracy-vs-ECE front against wall-clock, per search strategy, on real searches.

Arms, each given the same wall-clock budget and run for several seeds:
  random_fifo    random sampler, no early stopping (the baseline)
  tpe_fifo       TPE, no early stopping
  tpe_asha       TPE + ASHA on the scalar score (w_acc·acc − w_ece·ece)
  tpe_moasha     TPE + multi-objective ASHA (Pareto rank on val/acc ↑, val/ece ↓; search.moasha)
  optuna_median  the peer baseline without Ray: plain Optuna in this process (TPE, MedianPruner on the score)

The Ray arms run the real driver (`search.driver.cmd_run`, i.e. `gce-search run` with `--set` overrides); the Optuna
arm runs the same trial function (`trainables.trial.run_trial`) on configs from the same define-by-run space. Note
the Optuna arm is one process (one trial at a time) while Ray runs as many trials as the CPUs allow: that is the
comparison a user faces, and the table says so.

Measured per arm and seed, from each epoch's result (time since the arm's first trial started; Ray's start-up
before that is reported apart, as a fixed cost that would swamp short budgets; Tune's time budget starts with fit):
- hypervolume over time of the *full-budget* trials (search.pareto.hypervolume_acc_ece, fixed reference
  (acc 0, ece 1)); early-stopped trials' partial metrics never enter a front;
- final hypervolume at the budget; time and epochs until the arm first reaches the random baseline's final
  hypervolume (mean over its seeds); epochs consumed in total.
Goals reported against: ASHA or MO-ASHA reach the random search's final hypervolume with <= 1/3 of the
random search's epochs; MO-ASHA's hypervolume >= scalar ASHA's at equal budget. A benchmark measures; it does not
pass or fail.

    python bench/bench_search_efficiency.py --datasets digits fashion_mnist_lt --seeds 0 1 2 --budget-s 900 \
        --out bench/results/search_efficiency [--docs docs/search_efficiency.md]
    python bench/bench_search_efficiency.py --smoke      # seconds-long run of every arm on digits, for the code path

Re-running with the same --out reuses finished runs (their events.json); --analyse-only rebuilds table and plots.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from gce_search.search.pareto import hypervolume_acc_ece
from gce_search.trainables.checkpoints import RESULT_FILE, read_result_lines

ARMS = ("random_fifo", "tpe_fifo", "tpe_asha", "tpe_moasha", "optuna_median")
BASELINE_ARM = "random_fifo"

# Per benchmark dataset: sections replaced in the quickstart space (its searched parameters stay: loss, GCE lambda,
# focal gamma, learning rate, ATS breakpoints).
DATASETS = {
    "digits": {"data": {"name": "digits"}, "model": {"name": "mlp", "width": 128, "depth": 2}},
    # Fashion-MNIST-LT, rho = 100 (Cao et al. 2019 profile on the training split only), small CNN
    "fashion_mnist_lt": {"data": {"name": "fashion_mnist", "imbalance": 100},
                         "model": {"name": "small_cnn"}, "calibration": {"min_samples": 50}},
}
EPOCHS = 9  # full budget; with grace 1 and eta 3 the rungs are at 1, 3, 9

SCHEDULERS = {
    "random_fifo": ("random", {"name": "fifo"}),
    "tpe_fifo": ("tpe", {"name": "fifo"}),
    "tpe_asha": ("tpe", {"name": "asha", "grace_period": 1, "reduction_factor": 3}),
    "tpe_moasha": ("tpe", {"name": "moasha", "grace_period": 1, "reduction_factor": 3}),
    "optuna_median": ("tpe", {"name": "fifo"}),  # the scheduler section is unused: Optuna's pruner stops trials
}


def write_space(dataset: str, arm: str, seed: int, budget_s: float, folder: Path) -> Path:
    """The quickstart space with this dataset's and arm's sections, as a YAML file for `gce-search run`."""
    import yaml

    from gce_search.spaces.loading import locate
    from gce_search.trainables.config import deep_merge
    from gce_search.yamlio import read_yaml

    spec = read_yaml(locate("quickstart"))
    sampler, scheduler = SCHEDULERS[arm]
    spec["name"] = f"{dataset}-{arm}"
    spec["seed"] = seed
    for section, values in DATASETS[dataset].items():
        spec[section] = dict(values) if section in ("data", "model") else deep_merge(spec.get(section, {}), values)
    spec["train"]["epochs"] = EPOCHS
    spec["scheduler"] = dict(scheduler)
    # num_samples is large so that the wall-clock budget, not the trial count, ends every arm.
    spec["search"].update(sampler=sampler, seed=seed, num_samples=100000, timeout_s=budget_s)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset}-{arm}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------- running


def run_ray_arm(arm: str, dataset: str, seed: int, budget_s: float, out: Path, extra: list[str]) -> dict:
    import gce_search

    name = f"{dataset}-{arm}-s{seed}"
    storage = out / "runs"
    shutil.rmtree(storage / name, ignore_errors=True)
    space = write_space(dataset, arm, seed, budget_s, out / "spaces")
    started = time.time()
    exp = gce_search.run_search(space, storage=storage, name=name, overrides=extra)
    return read_ray_events(exp.path, started)


def read_ray_events(exp_dir: Path, started: float) -> dict:
    """One event per reported epoch, timed from when Tune started the first trial (Ray's start-up, reported apart
    as `startup_s`, is a fixed cost that would otherwise swamp short budgets). Ray's `timestamp` has 1 s
    resolution."""
    per_trial = {}
    for folder in sorted(p for p in exp_dir.iterdir() if (p / RESULT_FILE).is_file()):
        # a truncated last line of a trial stopped mid-write is skipped
        rows = [row for row in read_result_lines(folder / RESULT_FILE)[0] if "epoch" in row and "timestamp" in row]
        if rows:
            per_trial[folder.name] = rows
    if not per_trial:
        return {"startup_s": None, "events": []}
    first_start = min(rows[0]["timestamp"] - rows[0].get("time_total_s", 0.0) for rows in per_trial.values())
    events = [_event(row["timestamp"] - first_start, trial, row) for trial, rows in per_trial.items() for row in rows]
    return {"startup_s": first_start - started, "events": sorted(events, key=lambda e: e["t"])}


def _event(t: float, trial: str, metrics: dict) -> dict:
    return {"t": float(t), "trial": trial, "epoch": metrics.get("epoch"), "val/acc": metrics.get("val/acc"),
            "val/ece": metrics.get("val/ece"), "final": metrics.get("final") is True,
            "status": metrics.get("status", "ok")}


def run_optuna_arm(dataset: str, seed: int, budget_s: float, out: Path, extra: list[str]) -> dict:
    """Plain Optuna in one process: TPE on the scalar score, MedianPruner after each epoch."""
    import optuna

    from gce_search.search.space import define_by_run
    from gce_search.spaces.loading import load_spec
    from gce_search.trainables.trial import run_trial

    spec = load_spec(str(write_space(dataset, "optuna_median", seed, budget_s, out / "spaces")), list(extra))
    space = define_by_run(spec)
    events: list[dict] = []
    started = time.time()

    def objective(trial):
        config = space(trial)["trial_config"]
        trial_id = f"optuna_{trial.number:05d}"
        last: dict = {}

        def reporter(metrics: dict, checkpoint_dir: str | None) -> None:
            if checkpoint_dir:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
            events.append(_event(time.time() - started, trial_id, metrics))
            last.update(metrics)
            score = metrics.get("score")
            if score is None or not math.isfinite(score):
                return
            trial.report(float(score), int(metrics["epoch"]))
            if not metrics.get("final") and trial.should_prune():
                raise optuna.TrialPruned()

        run_trial(config, reporter)
        score = last.get("score")
        return float(score) if score is not None and math.isfinite(score) else float("nan")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
    study.optimize(objective, timeout=budget_s, catch=(RuntimeError,))
    return {"startup_s": 0.0, "events": events}


# -------------------------------------------------------------------------------------------------- analysis


def hypervolume_curve(events: list[dict], horizon_s: float) -> list[tuple[float, float]]:
    """(time, hypervolume of the full-budget trials finished by then), one point per finished trial."""
    finished = [e for e in events if e["final"] and e["t"] <= horizon_s and e["status"] != "diverged"]
    points, curve = [], []
    for e in sorted(finished, key=lambda e: e["t"]):
        points.append((e["val/acc"], e["val/ece"]))
        curve.append((e["t"], hypervolume_acc_ece(points)))
    return curve


def hypervolume_at(curve: list[tuple[float, float]], t: float) -> float:
    value = 0.0
    for time_s, hv in curve:
        if time_s > t:
            break
        value = hv
    return value


def first_reach(events: list[dict], curve: list[tuple[float, float]], target: float) -> tuple[float, int] | None:
    """(time, epochs consumed by then) when the hypervolume first reaches target; None if never."""
    for time_s, hv in curve:
        if hv >= target - 1e-12:
            return time_s, sum(1 for e in events if e["t"] <= time_s)
    return None


def summarise(records: dict, horizon_s: float) -> dict:
    """records[arm][seed] = {"startup_s", "events"} -> per-arm statistics (see the module docstring)."""
    runs = {arm: {seed: rec["events"] for seed, rec in seeds.items()} for arm, seeds in records.items()}
    curves = {arm: {seed: hypervolume_curve(ev, horizon_s) for seed, ev in seeds.items()}
              for arm, seeds in runs.items()}
    finals = {arm: [hypervolume_at(c, horizon_s) for c in curves[arm].values()] for arm in runs}
    target = statistics.mean(finals[BASELINE_ARM]) if finals.get(BASELINE_ARM) else None
    if target is not None and target <= 0:
        target = None  # the baseline finished no full-budget trial: nothing to reach
    baseline_epochs = (statistics.mean(sum(1 for e in ev if e["t"] <= horizon_s)
                                       for ev in runs[BASELINE_ARM].values()) if BASELINE_ARM in runs else None)
    table = {}
    for arm, seeds in runs.items():
        epochs = [sum(1 for e in ev if e["t"] <= horizon_s) for ev in seeds.values()]
        complete = [len({e["trial"] for e in ev if e["final"] and e["t"] <= horizon_s}) for ev in seeds.values()]
        trials = [len({e["trial"] for e in ev if e["t"] <= horizon_s}) for ev in seeds.values()]
        reach = [first_reach(seeds[s], curves[arm][s], target) if target is not None else None for s in seeds]
        startups = [rec["startup_s"] for rec in records[arm].values() if rec["startup_s"] is not None]
        reached = [r for r in reach if r is not None]
        table[arm] = {
            "seeds": len(seeds),
            "final_hv_mean": statistics.mean(finals[arm]),
            "final_hv_std": statistics.stdev(finals[arm]) if len(finals[arm]) > 1 else 0.0,
            "epochs_mean": statistics.mean(epochs),
            "startup_s_mean": statistics.mean(startups) if startups else None,
            "trials_mean": statistics.mean(trials),
            "complete_trials_mean": statistics.mean(complete),
            "reached": len(reached),
            "time_to_baseline_hv_median": statistics.median(r[0] for r in reached) if reached else None,
            "epochs_to_baseline_hv_median": statistics.median(r[1] for r in reached) if reached else None,
            "epochs_to_baseline_hv_fraction": (statistics.median(r[1] for r in reached) / baseline_epochs
                                               if reached and baseline_epochs else None),
        }
    return {"horizon_s": horizon_s, "baseline_final_hv": target, "baseline_epochs": baseline_epochs,
            "arms": table, "curves": {a: {str(s): c for s, c in cs.items()} for a, cs in curves.items()}}


def markdown_table(dataset: str, summary: dict) -> str:
    def fmt(v, spec=".3f"):
        return "—" if v is None else format(v, spec)

    lines = [f"### {dataset} (budget {summary['horizon_s']:g} s per run; random baseline final hypervolume "
             f"{fmt(summary['baseline_final_hv'], '.4f')}, {fmt(summary['baseline_epochs'], '.0f')} epochs)", "",
             "| arm | final HV (mean ± std, n) | time to random's HV (median s; reached) | epochs to random's HV "
             "(median; ÷ random's epochs) | epochs consumed | trials (full budget) | start-up s |",
             "|---|---|---|---|---|---|---|"]
    for arm, row in summary["arms"].items():
        lines.append(
            f"| {arm} | {row['final_hv_mean']:.4f} ± {row['final_hv_std']:.4f} (n={row['seeds']}) | "
            f"{fmt(row['time_to_baseline_hv_median'], '.0f')} ({row['reached']}/{row['seeds']}) | "
            f"{fmt(row['epochs_to_baseline_hv_median'], '.0f')} ({fmt(row['epochs_to_baseline_hv_fraction'], '.2f')})"
            f" | {row['epochs_mean']:.0f} | {row['trials_mean']:.0f} ({row['complete_trials_mean']:.0f}) | "
            f"{fmt(row['startup_s_mean'], '.0f')} |")
    return "\n".join(lines) + "\n"


def plot(dataset: str, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = summary["horizon_s"]
    grid = np.linspace(0, horizon, 200)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arm, curves in summary["curves"].items():
        values = np.array([[hypervolume_at(c, t) for t in grid] for c in curves.values()])
        ax.plot(grid, values.mean(axis=0), label=f"{arm} (n={len(values)})")
        ax.fill_between(grid, values.min(axis=0), values.max(axis=0), alpha=0.15)
    ax.set_xlabel("wall-clock since the first trial started (s)")
    ax.set_ylabel("hypervolume (acc ↑, ECE ↓; reference acc 0, ECE 1)")
    ax.set_title(f"Search efficiency on {dataset}: mean, min–max over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget-s", type=float, default=900.0, help="wall-clock budget of every run (s)")
    parser.add_argument("--out", default="bench/results/search_efficiency")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every arm (e.g. data.max_train=2000)")
    parser.add_argument("--docs", default=None, help="also write the tables to this markdown file")
    parser.add_argument("--analyse-only", action="store_true", help="only rebuild tables and plots from --out")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long run of every arm on digits (checks the code path, measures nothing)")
    args = parser.parse_args()
    if args.smoke:
        args.datasets, args.seeds, args.budget_s = ["digits"], [0], 30.0
        args.extra = [*args.extra, "data.max_train=300"]
        if args.out == parser.get_default("out"):
            args.out = tempfile.mkdtemp(prefix="bench_search_efficiency_")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for dataset in args.datasets:
        runs: dict[str, dict[int, dict]] = {}
        for arm in args.arms:
            for seed in args.seeds:
                cache = out / "events" / f"{dataset}-{arm}-s{seed}.json"
                if cache.is_file():
                    events = json.loads(cache.read_text())
                elif args.analyse_only:
                    continue
                else:
                    print(f"== {dataset} {arm} seed {seed}: {args.budget_s:g} s", flush=True)
                    if arm == "optuna_median":
                        events = run_optuna_arm(dataset, seed, args.budget_s, out.resolve(), args.extra)
                    else:
                        events = run_ray_arm(arm, dataset, seed, args.budget_s, out.resolve(), args.extra)
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    cache.write_text(json.dumps(events))
                runs.setdefault(arm, {})[seed] = events
        if not runs:
            continue
        summary = summarise(runs, args.budget_s)
        (out / f"{dataset}.json").write_text(json.dumps(summary, indent=1))
        plot(dataset, summary, out / f"{dataset}.png")
        section = markdown_table(dataset, summary)
        sections.append(section)
        print(section, flush=True)
    report = "\n".join(sections)
    (out / "search_efficiency.md").write_text(report)
    if args.docs:
        Path(args.docs).write_text(
            "# Search efficiency (bench/bench_search_efficiency.py)\n\n"
            f"Command: `python bench/bench_search_efficiency.py --datasets {' '.join(args.datasets)} --seeds "
            f"{' '.join(map(str, args.seeds))} --budget-s {args.budget_s:g}`; machine: {os.cpu_count()} CPUs. "
            "Hypervolume of the full-budget trials against the fixed reference (acc 0, ECE 1). optuna_median runs "
            "one trial at a time in one process; the Ray arms run as many as the CPUs allow.\n\n" + report)
    print(f"tables, JSON and plots in {out}")


if __name__ == "__main__":
    main()
