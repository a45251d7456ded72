"""Replay searches on a recorded learning-curve table with a simulated clock (no Ray cluster, no training).

    python bench/simulate_search.py --table bench/tables/fmlt100_mlp.npz --seeds 50 --workers 4 --budget-s 600 \
        --out bench-out/sim

Each arm is driven with the real objects: gce-search's Optuna searcher (`search.searcher.CalibratedSearcher` on the
space's own define-by-run function, with the tool's TPE / NSGA-II / random samplers), Ray's `ASHAScheduler` and
`FIFOScheduler` and the project's `MultiObjectiveASHA` (built by `search.schedulers.build_scheduler`, as a search
builds them). Their real `suggest` / `on_trial_add` / `on_trial_result` / `on_trial_complete` methods are called with
the recorded results, in the order Ray Tune's controller calls them (scheduler first; on STOP the scheduler's and
the searcher's `on_trial_complete`; otherwise the searcher's `on_trial_result`, and a trial whose trainable returned
completes), in simulated-time order: W workers, each epoch taking its recorded wall time, plus a start-up time per
trial. The peers run on the same table and clock: plain Optuna (TPE + MedianPruner on the score, ask/tell, W trials
at a time) and Syne Tune's MOASHA and random search through Syne Tune's own simulator backend (bench/syne_arms.py).

What is measured is what the user gets: the front of the full-budget trials chosen on val, its hypervolume on val and
*on the test split* (the test metrics of the same trials), against the fixed reference (acc 0, ECE 1), at every
simulated time. DIR/summary.json holds, per arm, the mean and 95% CI over seeds of the final test and val
hypervolume, the time to reach random FIFO's final test hypervolume (median over seeds, and the fraction of seeds
that reach it), and the paired differences to MO-ASHA; DIR/curves.npz the curves; DIR/*.png the plots.
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import curves  # noqa: E402

# arm -> how it is built. "tool": CalibratedSearcher + a scheduler; "optuna": plain Optuna; "syne": Syne Tune.
ARMS: dict[str, dict] = {
    "random_fifo": {"kind": "tool", "sampler": "random", "scheduler": "fifo"},
    "tpe_fifo": {"kind": "tool", "sampler": "tpe", "scheduler": "fifo"},
    "nsga2_fifo": {"kind": "tool", "sampler": "nsga2", "scheduler": "fifo"},
    "random_asha": {"kind": "tool", "sampler": "random", "scheduler": "asha"},
    "tpe_asha": {"kind": "tool", "sampler": "tpe", "scheduler": "asha"},
    "random_moasha": {"kind": "tool", "sampler": "random", "scheduler": "moasha"},
    "tpe_moasha": {"kind": "tool", "sampler": "tpe", "scheduler": "moasha"},
    "tpe_moasha_epsnet": {"kind": "tool", "sampler": "tpe", "scheduler": "moasha", "ranking": "epsnet"},
    "tpe_moasha_crowding": {"kind": "tool", "sampler": "tpe", "scheduler": "moasha", "ranking": "crowding"},
    # noise-aware promotions; the table holds no per-sample bootstrap, so each result gets the interval
    # val/ece +- 1.96 * ECE_NOISE (the bootstrap std of the recorded val ECEs, `curves.py noise`) and val/n
    "tpe_moasha_robust": {"kind": "tool", "sampler": "tpe", "scheduler": "moasha", "ranking": "robust"},
    "optuna_median": {"kind": "optuna"},
    "st_random": {"kind": "syne"},
    "st_moasha": {"kind": "syne"},
    "st_moasha_ranked": {"kind": "syne"},
}
ECE_NOISE = 0.0043  # bench/curves.py noise on bench/tables/fmlt100_mlp.npz: bootstrap std of a val ECE
BASELINE = "random_fifo"
REFERENCE_ARM = "tpe_moasha"


# ------------------------------------------------------------------------------------------------- the lookup


class Lookup:
    """(training configuration i, calibrator k) of a proposal, exactly; a proposal outside the table is an error."""

    def __init__(self, table: curves.Table):
        self.table = table
        self.spec = table.spec()
        self.keys = table.training_keys()
        self.by_key = table.index()
        self.option_labels = [json.dumps(o) for o in table.options]

    def of_flat(self, flat: dict) -> tuple[int, int]:
        key = curves._key(flat, self.keys)
        if key not in self.by_key:
            raise KeyError(f"proposal {flat} is not a recorded configuration")
        bp = flat.get(curves.CAL_KEY, self.table.options[0])
        if isinstance(bp, str):
            bp = json.loads(bp)
        return self.by_key[key], self.option_labels.index(json.dumps([float(b) for b in bp]))

    def flat(self, i: int, k: int) -> dict:
        """The space parameters of (i, k)."""
        flat = dict(self.table.configs[i])
        if any(p.key == curves.CAL_KEY for p in self.spec.params):
            flat[curves.CAL_KEY] = self.table.options[k]
        return flat

    def of_searcher_config(self, config: dict) -> tuple[int, int]:
        """From the config the tool's searcher hands Ray: each suggested value under its parameter name."""
        flat = {p.key: config[p.key] for p in self.spec.params if p.key in config}
        return self.of_flat(flat)


# -------------------------------------------------------------------------------------------- the event loop


@dataclass
class SimTrial:
    """What the schedulers read of a Ray trial: its id (and, for a reader, config and last result)."""

    trial_id: str
    config: dict = field(default_factory=dict)
    last_result: dict = field(default_factory=dict)
    status: str = "RUNNING"


@dataclass
class Run:
    """One simulated search: its completions and every result, in simulated time."""

    arm: str
    seed: int
    completions: list = field(default_factory=list)   # (time, i, k) of the trials complete at the full budget
    results: list = field(default_factory=list)       # (time, trial number, i, k, epoch, decision)
    trials: int = 0
    epochs: int = 0
    wall_s: float = 0.0


class Clock:
    """Events (time, sequence number, payload) popped in time order; equal times in the order they were pushed."""

    def __init__(self):
        self._heap: list = []
        self._seq = 0

    def push(self, t: float, payload) -> None:
        heapq.heappush(self._heap, (float(t), self._seq, payload))
        self._seq += 1

    def pop(self):
        t, _, payload = heapq.heappop(self._heap)
        return t, payload

    def __len__(self) -> int:
        return len(self._heap)


def _schedule(table: curves.Table, clock: Clock, now: float, number: int, i: int, startup_s: float) -> None:
    clock.push(now + startup_s + table.epoch_seconds(i)[0], (number, 1))


def simulate_tool(table: curves.Table, arm: str, seed: int, workers: int, budget_s: float, *, grace_period: int = 1,
                  reduction_factor: int = 3, brackets: int = 1, ranking: str = "nondominated",
                  startup_s: float = 0.0, max_trials: int | None = None, journal_path: str | None = None,
                  ece_noise: float = ECE_NOISE) -> Run:
    """A search of the tool: CalibratedSearcher + FIFO / ASHA / MO-ASHA, called as Ray Tune's controller calls them
    (with the flattened results Ray passes). The study is in Optuna's in-memory storage, or in a journal file at
    `journal_path` (as a search keeps it; the same proposals and decisions, several times slower)."""
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.utils import flatten_dict

    from gce_search.search.schedulers import build_scheduler
    from gce_search.search.searcher import CalibratedSearcher
    from gce_search.search.space import define_by_run, make_sampler

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec_arm = ARMS[arm]
    lookup = Lookup(table)
    spec = lookup.spec
    np.random.seed(seed)  # Ray's ASHAScheduler draws brackets from numpy's global generator
    sampler = make_sampler({"sampler": spec_arm["sampler"], "seed": seed,
                            "num_samples": max_trials or spec.search.num_samples})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = CalibratedSearcher(define_by_run(spec), sampler=sampler, journal_path=journal_path,
                                      storage=None if journal_path else optuna.storages.InMemoryStorage())
    settings = {"name": spec_arm["scheduler"]}
    if spec_arm["scheduler"] in ("asha", "moasha"):
        settings.update(grace_period=grace_period, reduction_factor=reduction_factor, brackets=brackets)
    if spec_arm["scheduler"] == "moasha":
        settings["ranking"] = spec_arm.get("ranking", ranking)
        if settings["ranking"] == "crowding":  # NSGA-II's tie-break inside a front instead of hypervolume
            from gce_search.search.moasha import NonDominatedRanking

            settings["ranking"] = NonDominatedRanking(reference_point=None)
    objective = spec.apply(lookup.flat(0, 0))["objective"]
    scheduler = build_scheduler(settings, max_t=table.epochs, objective=objective)
    scheduler.set_search_properties("score", "max")  # TuneConfig(metric="score", mode="max"), as the driver
    run = Run(arm, seed)
    clock = Clock()
    trials: dict[int, tuple[SimTrial, int, int]] = {}
    val_n = int(((table.meta.get("data_info") or {}).get("sizes") or {}).get("val", 5000))
    started = time.perf_counter()

    def start(now: float) -> bool:
        if max_trials is not None and run.trials >= max_trials:
            return False
        number = run.trials
        trial = SimTrial(f"sim{number:05d}")
        config = searcher.suggest(trial.trial_id)
        if config is None:
            return False
        trial.config = config
        i, k = lookup.of_searcher_config(config)
        scheduler.on_trial_add(None, trial)
        trials[number] = (trial, i, k)
        run.trials += 1
        _schedule(table, clock, now, number, i, startup_s)
        return True

    def complete(trial: SimTrial, result: dict) -> None:
        scheduler.on_trial_complete(None, trial, result)
        searcher.on_trial_complete(trial.trial_id, result=result)
        trial.status = "TERMINATED"

    for _ in range(workers):
        start(0.0)
    while len(clock):
        now, (number, epoch) = clock.pop()
        if now > budget_s:
            break
        trial, i, k = trials[number]
        result = flatten_dict({**table.result(i, k, epoch), "trial_id": trial.trial_id})
        if settings.get("ranking") == "robust":  # what a trial reports, with the recorded noise level
            result.update({"val/n": val_n, "val/ece_lo": max(result["val/ece"] - 1.96 * ece_noise, 0.0),
                           "val/ece_hi": result["val/ece"] + 1.96 * ece_noise})
        decision = scheduler.on_trial_result(None, trial, result)
        trial.last_result = result
        run.epochs += 1
        returned = epoch >= table.last_epoch(i)  # the trainable's loop ends: full budget or diverged
        run.results.append((now, number, i, k, epoch, decision))
        ended = True
        if decision == TrialScheduler.STOP:
            complete(trial, result)
        else:
            searcher.on_trial_result(trial.trial_id, result)
            if returned:
                complete(trial, result)
            else:
                ended = False
                clock.push(now + table.epoch_seconds(i)[epoch], (number, epoch + 1))
        if ended:
            if result.get("final") and result.get("status") == "ok":
                run.completions.append((now, i, k))
            start(now)
    run.wall_s = time.perf_counter() - started
    return run


def simulate_optuna(table: curves.Table, arm: str, seed: int, workers: int, budget_s: float, *,
                    startup_s: float = 0.0, max_trials: int | None = None, **_) -> Run:
    """Plain Optuna, as a user would run it without Ray: TPESampler(seed) + MedianPruner on the score, ask/tell,
    `workers` trials at a time (as n_jobs=workers would), each epoch reported and checked with should_prune."""
    import optuna

    from gce_search.search.space import sample_params

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lookup = Lookup(table)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner())
    run = Run(arm, seed)
    clock = Clock()
    trials: dict[int, tuple[object, int, int]] = {}
    started = time.perf_counter()

    def start(now: float) -> None:
        if max_trials is not None and run.trials >= max_trials:
            return
        trial = study.ask()
        i, k = lookup.of_flat(sample_params(trial, lookup.spec))
        trials[run.trials] = (trial, i, k)
        _schedule(table, clock, now, run.trials, i, startup_s)
        run.trials += 1

    for _ in range(workers):
        start(0.0)
    while len(clock):
        now, (number, epoch) = clock.pop()
        if now > budget_s:
            break
        trial, i, k = trials[number]
        result = table.result(i, k, epoch)
        run.epochs += 1
        score = result["score"]
        if result["status"] == "diverged" or not math.isfinite(score):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            decision = "FAIL"
        elif epoch >= table.epochs:
            study.tell(trial, score)
            run.completions.append((now, i, k))
            decision = "COMPLETE"
        else:
            trial.report(score, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                decision = "PRUNED"
            else:
                decision = "CONTINUE"
                clock.push(now + table.epoch_seconds(i)[epoch], (number, epoch + 1))
        run.results.append((now, number, i, k, epoch, decision))
        if decision != "CONTINUE":
            start(now)
    run.wall_s = time.perf_counter() - started
    return run


def simulate_syne(table: curves.Table, arm: str, seed: int, workers: int, budget_s: float, *,
                  grace_period: int = 1, reduction_factor: int = 3, startup_s: float = 0.0, **_) -> Run:
    """Syne Tune's own MOASHA / random search on its simulator backend (bench/syne_arms.py), with the same start-up
    time per trial (added to the trial's elapsed time before its first epoch)."""
    import syne_arms

    started = time.perf_counter()
    events = syne_arms.run_syne(table, arm, seed, workers, budget_s, grace_period=grace_period,
                                reduction_factor=reduction_factor, startup_s=startup_s)
    run = Run(arm, seed)
    numbers: dict = {}
    for ev in events:
        if ev["time"] > budget_s:
            continue
        number = numbers.setdefault(ev["trial"], len(numbers))
        run.epochs += 1
        run.results.append((ev["time"], number, ev["i"], ev["k"], ev["epoch"], "RESULT"))
        result = table.result(ev["i"], ev["k"], ev["epoch"])
        if result.get("final") and result.get("status") == "ok":
            run.completions.append((ev["time"], ev["i"], ev["k"]))
    run.trials = len(numbers)
    run.wall_s = time.perf_counter() - started
    return run


SIMULATORS = {"tool": simulate_tool, "optuna": simulate_optuna, "syne": simulate_syne}


def simulate(table, arm, seed, workers, budget_s, **kw) -> Run:
    return SIMULATORS[ARMS[arm]["kind"]](table, arm, seed, workers, budget_s, **kw)


# ------------------------------------------------------------------------------------------------ measuring


def final_points(table: curves.Table, completions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """times, val (acc, ece) and test (acc, ece) of the complete trials (chance-level ones left out, as the tool's
    front leaves them out: search.records.trial_outcome)."""
    from gce_search.search.records import trial_outcome

    e = table.epochs
    times, val, test = [], [], []
    for t, i, k in completions:
        result = table.result(i, k, e)
        if trial_outcome(result) != "complete":
            continue
        times.append(t)
        val.append((result["val/acc"], result["val/ece"]))
        test.append((result["test/acc"], result["test/ece"]))
    return np.array(times), np.array(val).reshape(-1, 2), np.array(test).reshape(-1, 2)


def hv_curves(table: curves.Table, run: Run, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(val HV, test HV of the val front) at each time of `grid`."""
    from gce_search.search.pareto import hypervolume_acc_ece, objective_front

    times, val, test = final_points(table, run.completions)
    hv_val, hv_test = np.zeros(len(grid)), np.zeros(len(grid))
    last_n, last = -1, (0.0, 0.0)
    for g, t in enumerate(grid):
        n = int(np.searchsorted(times, t, side="right"))  # completions are in time order
        if n != last_n:
            if n == 0:
                last = (0.0, 0.0)
            else:
                rows = [{"val/acc": a, "val/ece": b} for a, b in val[:n]]
                front = objective_front(rows)
                last = (hypervolume_acc_ece(val[:n][front]), hypervolume_acc_ece(test[:n][front]))
            last_n = n
        hv_val[g], hv_test[g] = last
    return hv_val, hv_test


def mean_ci(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the half-width of its 95% t-interval."""
    from scipy import stats

    x = np.asarray(x, dtype=float)
    n = x.shape[axis]
    mean = x.mean(axis=axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    half = stats.t.ppf(0.975, n - 1) * x.std(axis=axis, ddof=1) / math.sqrt(n)
    return mean, half


def time_to(curve: np.ndarray, grid: np.ndarray, target: float) -> float:
    hit = np.nonzero(curve >= target - 1e-12)[0]
    return float(grid[hit[0]]) if len(hit) else math.inf


def rung_fidelity(table: curves.Table) -> dict:
    """How well a rung's results predict the full-budget ones, over every (configuration, calibrator) of the table
    that does not diverge: Spearman correlation of val/acc, val/ece and the score at each rung with the same at the
    full budget, and the share of the full-budget Pareto front (val) that a top-1/3 cut at the rung would keep,
    by score (ASHA) and by non-dominated rank (MO-ASHA's first criterion)."""
    from scipy import stats

    from gce_search.search.pareto import as_minimization, non_dominated_sort, objective_front

    e_full = table.epochs
    ia, ie, isc = table.metric("val/acc"), table.metric("val/ece"), table.metric("score")
    rows = [(i, k) for i in range(len(table.configs)) if table.last_epoch(i) == e_full
            for k in range(len(table.options))]
    final = np.array([table.values[i, e_full - 1, k] for i, k in rows])
    front = set(objective_front([{"val/acc": r[ia], "val/ece": r[ie]} for r in final]))
    out = {"configurations": len(rows), "full_budget_front": len(front), "rungs": {}}
    for rung in table.meta["rungs"][:-1]:
        at = np.array([table.values[i, rung - 1, k] for i, k in rows])
        keep = int(math.ceil(len(rows) / 3))
        by_score = set(np.argsort(-at[:, isc], kind="stable")[:keep].tolist())
        ranks = np.empty(len(rows))
        for r, members in enumerate(non_dominated_sort(as_minimization(at[:, [ia, ie]]))):
            ranks[members] = r
        by_front = set(np.argsort(ranks, kind="stable")[:keep].tolist())
        out["rungs"][str(rung)] = {
            "spearman_acc": float(stats.spearmanr(at[:, ia], final[:, ia]).statistic),
            "spearman_ece": float(stats.spearmanr(at[:, ie], final[:, ie]).statistic),
            "spearman_score": float(stats.spearmanr(at[:, isc], final[:, isc]).statistic),
            "front_kept_by_score_top_third": len(front & by_score) / max(1, len(front)),
            "front_kept_by_pareto_rank_top_third": len(front & by_front) / max(1, len(front)),
        }
    return out


def saturation(table: curves.Table, sizes=(4, 8, 16, 32, 64, 128, 256), draws: int = 300, seed: int = 0) -> dict:
    """What any search could get: the val and test hypervolume of the val front of n configurations drawn at
    random from the complete ones (mean and std over `draws`), and of all of them (the table's oracle), against the
    best test hypervolume (the test front of the whole table)."""
    from gce_search.search.pareto import hypervolume_acc_ece, objective_front
    from gce_search.search.records import trial_outcome

    e = table.epochs
    rows = [(i, k) for i in range(len(table.configs)) if table.last_epoch(i) == e
            for k in range(len(table.options)) if trial_outcome(table.result(i, k, e)) == "complete"]
    val = np.array([(table.result(i, k, e)["val/acc"], table.result(i, k, e)["val/ece"]) for i, k in rows])
    test = np.array([(table.result(i, k, e)["test/acc"], table.result(i, k, e)["test/ece"]) for i, k in rows])

    def of(idx):
        front = objective_front([{"val/acc": a, "val/ece": b} for a, b in val[idx]])
        return hypervolume_acc_ece(val[idx][front]), hypervolume_acc_ece(test[idx][front])

    rng = np.random.default_rng(seed)
    front = objective_front([{"val/acc": a, "val/ece": b} for a, b in val])
    members = [{"config": table.configs[rows[j][0]], "breakpoints": table.options[rows[j][1]],
                "val": [float(v) for v in val[j]], "test": [float(v) for v in test[j]]} for j in front]
    out = {"complete": len(rows), "oracle": dict(zip(("hv_val", "hv_test"), of(np.arange(len(rows))))),
           "oracle_front (acc, ece)": members,
           "best_test_front_hv": hypervolume_acc_ece(test), "random": {}}
    for n in sizes:
        if n > len(rows):
            break
        hv = np.array([of(rng.choice(len(rows), n, replace=False)) for _ in range(draws)])
        out["random"][str(n)] = {"hv_val_mean": float(hv[:, 0].mean()), "hv_test_mean": float(hv[:, 1].mean()),
                                 "hv_test_std": float(hv[:, 1].std())}
    return out


# ----------------------------------------------------------------------------------------------------- driver


def _one(job) -> dict:
    table_path, arm, seed, workers, budget_s, kw, grid = job
    table = _TABLES.setdefault(table_path, curves.load_table(table_path))
    run = simulate(table, arm, seed, workers, budget_s, **kw)
    hv_val, hv_test = hv_curves(table, run, np.asarray(grid))
    return {"arm": arm, "seed": seed, "hv_val": hv_val.tolist(), "hv_test": hv_test.tolist(),
            "trials": run.trials, "epochs": run.epochs, "complete": len(run.completions),
            "complete_distinct": len({(i, k) for _t, i, k in run.completions}), "wall_s": run.wall_s}


_TABLES: dict = {}


def summarise(runs: list[dict], grid: np.ndarray, arms: list[str], budget_s: float) -> dict:
    by_arm = {a: sorted((r for r in runs if r["arm"] == a), key=lambda r: r["seed"]) for a in arms}
    test = {a: np.array([r["hv_test"] for r in rs]) for a, rs in by_arm.items()}
    val = {a: np.array([r["hv_val"] for r in rs]) for a, rs in by_arm.items()}
    baseline = BASELINE if BASELINE in test else arms[0]
    target = float(test[baseline][:, -1].mean())
    summary: dict = {"budget_s": budget_s, "target": {"arm": baseline, "hv_test": target}, "arms": {}}
    for a in arms:
        m, h = mean_ci(test[a][:, -1])
        mv, hvv = mean_ci(val[a][:, -1])
        ttt = np.array([time_to(c, grid, target) for c in test[a]])
        reached = np.isfinite(ttt)
        median_ttt = float(np.median(ttt))
        median_ttt = median_ttt if math.isfinite(median_ttt) else None  # fewer than half the seeds reach it
        entry = {
            "seeds": len(by_arm[a]),
            "hv_test_mean": float(m), "hv_test_ci": float(h),
            "hv_val_mean": float(mv), "hv_val_ci": float(hvv),
            "time_to_target": {"median_s": median_ttt, "fraction_reached": float(reached.mean()),
                               "median_fraction_of_budget": None if median_ttt is None else median_ttt / budget_s},
            "hv_test_at": {f"{f:.2f}": float(test[a][:, int(round(f * (len(grid) - 1)))].mean())
                           for f in (1 / 3, 2 / 3, 1.0)},
            "trials_mean": float(np.mean([r["trials"] for r in by_arm[a]])),
            "complete_mean": float(np.mean([r["complete"] for r in by_arm[a]])),
            # a configuration completed again is the same training run (its seed is fixed)
            "complete_distinct_mean": float(np.mean([r["complete_distinct"] for r in by_arm[a]])),
            "epochs_mean": float(np.mean([r["epochs"] for r in by_arm[a]])),
            "sim_wall_s_mean": float(np.mean([r["wall_s"] for r in by_arm[a]])),
        }
        if REFERENCE_ARM in test and a != REFERENCE_ARM and len(test[a]) == len(test[REFERENCE_ARM]):
            entry["vs_" + REFERENCE_ARM] = paired(test[REFERENCE_ARM], test[a], grid)
        summary["arms"][a] = entry
    return summary


def paired(ref: np.ndarray, other: np.ndarray, grid: np.ndarray) -> dict:
    """ref − other by seed: at 1/3, 2/3 and the whole budget, and the time-averaged test HV (area under the curve
    over the budget, divided by it)."""
    out = {}
    for f in (1 / 3, 2 / 3, 1.0):
        g = int(round(f * (len(grid) - 1)))
        d = ref[:, g] - other[:, g]
        m, h = mean_ci(d)
        out[f"at_{f:.2f}"] = {"mean": float(m), "ci": float(h), "ref_ahead": float((d > 0).mean()),
                              "ties": float((d == 0).mean())}
    area = lambda c: np.trapezoid(c, grid, axis=1) / (grid[-1] - grid[0])  # noqa: E731
    d = area(ref) - area(other)
    m, h = mean_ci(d)
    out["area"] = {"mean": float(m), "ci": float(h), "ref_ahead": float((d > 0).mean())}
    return out


def plot(summary: dict, curves_by_arm: dict, grid: np.ndarray, out: Path, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for split in ("test", "val"):
        fig, ax = plt.subplots(figsize=(8, 5))
        for arm, c in curves_by_arm.items():
            m, h = mean_ci(c[split])
            style = "-" if ARMS[arm]["kind"] == "tool" else "--"
            ax.plot(grid, m, style, label=arm, lw=2 if arm == REFERENCE_ARM else 1.2)
            ax.fill_between(grid, m - h, m + h, alpha=0.15)
        ax.axhline(summary["target"]["hv_test"], color="k", lw=0.8, ls=":", label="random FIFO final (test)")
        # zoomed on where the arms differ: from the lowest mean after the first quarter of the budget up
        means = [np.mean(c[split], axis=0)[len(grid) // 4:] for c in curves_by_arm.values()]
        lo, hi = min(float(m.min()) for m in means), max(float(m.max()) for m in means)
        ax.set_ylim(lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo))
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel(f"hypervolume on {split} of the val front")
        ax.set_title(title)
        ax.legend(fontsize=8, ncol=2)
        ax.grid(alpha=0.3)
        path = out / f"hv_{split}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    return files


def markdown(summary: dict) -> str:
    """The summary as a Markdown table (DIR/summary.md)."""
    lines = ["| arm | test HV (mean ± 95% CI) | val HV | time to random FIFO's final test HV (median; seeds reaching) "
             "| test HV at 1/3 of the budget | MO-ASHA − arm, final test HV (95% CI; MO-ASHA ahead in) "
             "| trials started | complete |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, e in summary["arms"].items():
        ttt = e["time_to_target"]
        t = "—" if ttt["median_s"] is None else (f"{ttt['median_s']:.0f} s "
                                                  f"({ttt['median_fraction_of_budget']:.2f} of the budget)")
        vs = e.get(f"vs_{REFERENCE_ARM}")
        d = "—" if vs is None else (f"{vs['at_1.00']['mean']:+.4f} ± {vs['at_1.00']['ci']:.4f} "
                                    f"({vs['at_1.00']['ref_ahead']:.0%})")
        lines.append(f"| {arm} | {e['hv_test_mean']:.4f} ± {e['hv_test_ci']:.4f} | {e['hv_val_mean']:.4f} "
                     f"| {t}; {ttt['fraction_reached']:.0%} | {e['hv_test_at']['0.33']:.4f} | {d} "
                     f"| {e['trials_mean']:.0f} | {e['complete_mean']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/simulate_search.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--seeds", type=int, default=50, help="seeds 0..N-1")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--budget-s", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--brackets", type=int, default=1)
    parser.add_argument("--ranking", default="nondominated")
    parser.add_argument("--startup-s", type=float, default=0.0, help="simulated start-up time of each trial")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--grid", type=int, default=201, help="points of the time grid")
    args = parser.parse_args(argv)
    table = curves.load_table(args.table)
    if args.budget_s <= 0 or args.workers < 1 or args.seeds < 1:
        parser.error("--budget-s > 0, --workers >= 1 and --seeds >= 1")
    grid = np.linspace(0.0, args.budget_s, args.grid)
    kw = {"grace_period": args.grace_period, "reduction_factor": args.reduction_factor, "brackets": args.brackets,
          "ranking": args.ranking, "startup_s": args.startup_s}
    jobs = [(args.table, arm, seed, args.workers, args.budget_s, kw, grid.tolist())
            for seed in range(args.seeds) for arm in args.arms]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.procs > 1:
        with ProcessPoolExecutor(args.procs) as pool:
            runs = list(pool.map(_one, jobs, chunksize=1))
    else:
        runs = [_one(j) for j in jobs]
    elapsed = time.time() - started
    summary = summarise(runs, grid, args.arms, args.budget_s)
    summary["rung_fidelity"] = rung_fidelity(table)
    summary["saturation"] = saturation(table)
    summary.update({"table": os.path.basename(args.table), "workers": args.workers, "settings": kw,
                    "elapsed_s": elapsed, "procs": args.procs,
                    "command": "python bench/simulate_search.py " + " ".join(sys.argv[1:] if argv is None else argv)})
    by_arm = {a: {"test": np.array([r["hv_test"] for r in runs if r["arm"] == a]),
                  "val": np.array([r["hv_val"] for r in runs if r["arm"] == a])} for a in args.arms}
    np.savez_compressed(out / "curves.npz", grid=grid,
                        **{f"{a}_{s}": c[s] for a, c in by_arm.items() for s in ("test", "val")})
    summary["plots"] = plot(summary, by_arm, grid, out, f"{table.meta['space']['name']}: {args.seeds} seeds, "
                                                         f"{args.workers} workers")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(markdown(summary))
    print(f"{len(jobs)} simulated searches in {elapsed:.0f} s ({args.procs} processes); target (random FIFO final "
          f"test HV) {summary['target']['hv_test']:.4f}")
    print(f"{'arm':15s} {'test HV (95% CI)':>22s} {'val HV':>8s} {'t->target':>14s} {'trials':>7s} {'complete':>8s}")
    for a, e in summary["arms"].items():
        ttt = e["time_to_target"]
        t = "—" if ttt["median_s"] is None else f"{ttt['median_s']:.0f}s ({ttt['median_fraction_of_budget']:.2f})"
        print(f"{a:15s} {e['hv_test_mean']:.4f} ± {e['hv_test_ci']:.4f} {e['hv_val_mean']:8.4f} "
              f"{t:>10s} {ttt['fraction_reached']:.0%} {e['trials_mean']:7.0f} {e['complete_mean']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
