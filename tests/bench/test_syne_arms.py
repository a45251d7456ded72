"""bench/syne_arms.py: Syne Tune's MOASHA and random search replayed on a recorded table in simulated time."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("syne_tune")

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import curves  # noqa: E402
import syne_arms  # noqa: E402

LOSSES = [{"loss.name": "cross_entropy"}, {"loss.name": "gce", "gce.lam": 0.2}, {"loss.name": "gce", "gce.lam": 0.5},
          {"loss.name": "focal", "focal.gamma": 2.0}]


def synthetic_table(lrs=(0.01, 0.1), wds=(0.0, 1e-4), n_options=3, epochs=9, diverge=(), seed=0) -> curves.Table:
    """A full-product table with plausible random curves (val/acc rising, val/ece falling), epochs of 0.3-0.6 s;
    `diverge`: {training config index: epoch} of configurations that diverge there."""
    rng = np.random.default_rng(seed)
    configs = [{**loss, "train.lr": lr, "train.weight_decay": wd} for loss, lr, wd in itertools.product(LOSSES, lrs, wds)]
    n, metrics = len(configs), list(curves.METRICS)
    values = np.full((n, epochs, n_options, len(metrics)), np.nan)
    per_epoch = np.full((n, epochs, len(curves.EPOCH_VALUES)), np.nan)
    diverged_at = [0] * n
    t = np.arange(1, epochs + 1)
    for i in range(n):
        top, rate = rng.uniform(0.6, 0.9), rng.uniform(0.2, 1.0)
        acc = top * (1 - np.exp(-rate * t)) + rng.normal(0, 0.01, epochs)
        for k in range(n_options):
            ece = rng.uniform(0.01, 0.1) + 0.2 * np.exp(-rate * t) + rng.normal(0, 0.005, epochs)
            values[i, :, k, metrics.index("val/acc")] = acc
            values[i, :, k, metrics.index("val/ece")] = np.abs(ece)
        per_epoch[i, :, 0] = np.exp(-rate * t)
        per_epoch[i, :, 1] = rng.uniform(0.25, 0.5, epochs)
        per_epoch[i, :, 2] = 0.05
        d = dict(diverge).get(i, 0)
        if d:
            diverged_at[i] = d
            values[i, d - 1:] = np.nan
            per_epoch[i, d:] = np.nan
    meta = {"format": curves.TABLE_FORMAT, "space": {}, "space_file": "synthetic.yaml", "overrides": [], "seed": seed,
            "configs": configs, "grid_index": list(range(n)), "options": [[0.5 + 0.1 * k] for k in range(n_options)],
            "metrics": metrics, "epoch_values": list(curves.EPOCH_VALUES), "epochs": epochs,
            "rungs": curves.rung_epochs(epochs), "diverged_at": diverged_at, "record_s": [1.0] * n,
            "versions": {}, "data_info": {"sizes": {"val": 1000}}}
    return curves.Table(meta, values, per_epoch)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> curves.Table:
    path = tmp_path_factory.mktemp("curves") / "table.npz"
    curves.save_table(synthetic_table(diverge={3: 2, 7: 5}), path)
    return curves.load_table(path)


def _check(table, results, budget):
    assert results
    times = [r["time"] for r in results]
    assert times == sorted(times) and 0 < times[0] and times[-1] <= budget
    for r in results:
        assert 0 <= r["i"] < len(table.configs) and 0 <= r["k"] < len(table.options)
        assert 1 <= r["epoch"] <= table.last_epoch(r["i"])
    by_trial: dict[int, list] = {}
    for r in results:
        by_trial.setdefault(r["trial"], []).append(r)
    for rows in by_trial.values():
        assert len({(r["i"], r["k"]) for r in rows}) == 1  # one configuration per trial
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))  # every epoch, in order
    return by_trial


def test_random_runs_every_trial_to_full_budget(table):
    budget = 60.0
    results = syne_arms.run_syne(table, "st_random", seed=1, workers=4, budget_s=budget)
    by_trial = _check(table, results, budget)
    for rows in by_trial.values():  # a trial's results are the table's epoch times apart
        seconds = table.epoch_seconds(rows[0]["i"])
        gaps = np.diff([r["time"] for r in rows])
        assert np.allclose(gaps, seconds[1:len(rows)], rtol=0, atol=1e-9)
    full = table.epochs * 0.6 + 0.5  # the longest a trial can take here, with polling slack
    for rows in by_trial.values():
        i = rows[0]["i"]
        started = rows[0]["time"] - table.epoch_seconds(i)[0]
        if started + full < budget:
            assert rows[-1]["epoch"] == table.last_epoch(i)
    assert len(by_trial) >= 4 * int(budget / full)


@pytest.mark.parametrize("arm", ["st_moasha", "st_moasha_ranked"])
def test_moasha_stops_trials_at_the_rungs(table, arm):
    budget = 60.0
    results = syne_arms.run_syne(table, arm, seed=1, workers=4, budget_s=budget)
    by_trial = _check(table, results, budget)
    assert len(by_trial) > 20
    ends: dict[int, int] = {}
    for rows in by_trial.values():
        ends[rows[-1]["epoch"]] = ends.get(rows[-1]["epoch"], 0) + 1
    # grace 1, eta 3, 9 epochs: rungs at 1 and 3. A stopped trial runs on until the next poll (0.05 s, less than an
    # epoch here), so it ends at the rung; otherwise at the full budget, at its divergence, or at the budget's end.
    last_started = {rows[-1]["epoch"] for rows in by_trial.values() if rows[-1]["time"] > budget - 0.6}
    diverged_ends = {d for d in table.meta["diverged_at"] if d}
    assert set(ends) <= {1, 3, table.epochs} | diverged_ends | last_started
    assert ends.get(1, 0) > ends.get(table.epochs, 0) > 0
    if arm == "st_moasha_ranked":
        assert ends.get(3, 0) > 0
    # (Syne Tune's own MOASHA decides by the row its priority sorts last, not by the new trial's rank: at rung 3
    # here it stops nothing; see syne_arms.FastNonDominatedPriority)
    diverged = [rows for rows in by_trial.values() if table.meta["diverged_at"][rows[0]["i"]]]
    for rows in diverged:
        assert rows[-1]["epoch"] <= table.last_epoch(rows[0]["i"])


def test_deterministic_for_a_seed(table):
    for arm in syne_arms.ARMS:
        a = syne_arms.run_syne(table, arm, seed=3, workers=2, budget_s=20.0)
        b = syne_arms.run_syne(table, arm, seed=3, workers=2, budget_s=20.0)
        c = syne_arms.run_syne(table, arm, seed=4, workers=2, budget_s=20.0)
        assert a == b
        assert a != c


def test_fast_path_gives_syne_tunes_results(table):
    """This module's bracket, priority and status counting change the speed only: a run is the same with Syne
    Tune's own Bracket, NonDominatedPriority and TuningStatus."""
    for arm in syne_arms.ARMS:
        fast = syne_arms.run_syne(table, arm, seed=5, workers=4, budget_s=40.0)
        stock = syne_arms.run_syne(table, arm, seed=5, workers=4, budget_s=40.0, fast=False)
        assert fast == stock and len({r["trial"] for r in fast}) > 10


def test_fast_priority_decides_as_syne_tunes():
    """MOASHA's bracket reads the last entry of the priority of (recorded + new): the fast priority's is Syne Tune's
    NonDominatedPriority's, ties and repeated rows included; the layers are those of peeling Pareto fronts."""
    from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import NonDominatedPriority
    from syne_tune.optimizer.schedulers.multiobjective.non_dominated_priority import pareto_efficient

    fast, _ = syne_arms._priorities()
    rng = np.random.default_rng(0)
    for case in range(150):
        n = int(rng.integers(1, 80))
        x = rng.integers(0, 5, size=(n, 2)).astype(float) if case % 2 else rng.uniform(size=(n, 2))
        if case % 3 == 0:
            x[rng.integers(0, n, size=n // 3)] = [1.0, 1.0]  # diverged trials: repeated worst rows
        stock, quick = NonDominatedPriority(dim=0)(x), fast(dim=0)(x)
        assert quick[-1] == stock[-1] and sorted(quick.tolist()) == list(range(n))
        remaining, layers, depth = np.arange(n), np.empty(n, dtype=int), 0
        while remaining.size:
            front = pareto_efficient(x[remaining])
            layers[remaining[front]] = depth
            remaining, depth = remaining[~front], depth + 1
        assert (syne_arms.nondomination_layers(x) == layers).all()


def test_rejects_a_table_that_is_not_a_full_product():
    t = synthetic_table()
    t.meta["configs"] = t.meta["configs"][:-1]
    t.values, t.per_epoch = t.values[:-1], t.per_epoch[:-1]
    with pytest.raises(ValueError, match="full product"):
        syne_arms.build_problem(t)
    with pytest.raises(ValueError, match="arm"):
        syne_arms.run_syne(synthetic_table(), "asha", seed=0, workers=1, budget_s=5.0)
