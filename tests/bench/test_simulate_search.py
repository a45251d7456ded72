"""bench/simulate_search.py: the simulated clock, exact lookups, the arms, and decisions equal to a real Ray Tune run's.

The table is tests/data/curves_small.npz, a subset of the recorded benchmark (bench/tables/fmlt100_mlp.npz; see
docs/search_efficiency.md for the command that made it).
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import curves  # noqa: E402
import simulate_search as sim  # noqa: E402

SMALL = REPO / "tests" / "data" / "curves_small.npz"


@pytest.fixture(scope="module")
def table() -> curves.Table:
    return curves.load_table(SMALL)


def test_the_clock_pops_in_time_order_and_keeps_the_push_order_of_ties():
    clock = sim.Clock()
    for t, name in [(3.0, "c"), (1.0, "a"), (2.0, "b1"), (2.0, "b2"), (0.5, "first"), (2.0, "b3")]:
        clock.push(t, name)
    popped = [clock.pop() for _ in range(len(clock))]
    assert popped == [(0.5, "first"), (1.0, "a"), (2.0, "b1"), (2.0, "b2"), (2.0, "b3"), (3.0, "c")]


def _hand_table(epoch_s: list[list[float]], epochs: int = 3) -> curves.Table:
    """A table of len(epoch_s) configurations of one parameter, with the given epoch times, metrics improving."""
    n = len(epoch_s)
    values = np.zeros((n, epochs, 1, len(curves.METRICS)))
    for i in range(n):
        for e in range(epochs):
            acc, ece = 0.5 + 0.04 * i + 0.01 * e, 0.1 - 0.005 * i
            row = {m: 0.0 for m in curves.METRICS}
            row.update({"val/acc": acc, "val/ece": ece, "test/acc": acc, "test/ece": ece, "score": acc - ece})
            values[i, e, 0] = [row[m] for m in curves.METRICS]
    per_epoch = np.zeros((n, epochs, len(curves.EPOCH_VALUES)))
    per_epoch[:, :, 1] = np.array(epoch_s)
    lrs = [0.001 * (i + 1) for i in range(n)]
    space = {"name": "hand", "seed": 0, "data": {"name": "digits"}, "model": {"name": "mlp", "width": 8},
             "train": {"epochs": epochs, "device": "cpu"}, "search": {"sampler": "random", "seed": 0},
             "scheduler": {"name": "fifo"}, "space": {"train.lr": {"choices": lrs}}}
    meta = {"format": curves.TABLE_FORMAT, "space": space, "configs": [{"train.lr": lr} for lr in lrs],
            "grid_index": list(range(n)), "options": [[0.8]], "metrics": list(curves.METRICS),
            "epoch_values": list(curves.EPOCH_VALUES), "epochs": epochs, "rungs": curves.rung_epochs(epochs),
            "diverged_at": [0] * n, "record_s": [0.0] * n,
            "data_info": {"sizes": {"val": 100}, "num_classes": 10}}
    return curves.Table(meta, values, per_epoch)


def test_simulated_time_is_the_recorded_epoch_times_on_w_workers():
    # 4 configurations, 2 workers: each result arrives at the trial's start + its cumulative epoch times, and a
    # trial starts when a worker frees.
    epoch_s = [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [2.0, 2.0, 2.0], [0.25, 0.25, 0.25]]
    table = _hand_table(epoch_s)
    run = sim.simulate(table, "random_fifo", seed=0, workers=2, budget_s=100.0, max_trials=4, startup_s=0.5)
    assert run.trials == 4 and len(run.completions) == 4
    times = [r[0] for r in run.results]
    assert times == sorted(times)
    starts: dict[int, float] = {}
    for t, number, i, _k, epoch, _decision in run.results:
        starts.setdefault(number, t - 0.5 - epoch_s[i][0])
        assert t == pytest.approx(starts[number] + 0.5 + sum(epoch_s[i][:epoch]))
    # at most 2 trials at a time: a trial starts only when an earlier one has ended
    ends = {number: t for t, number, *_ in run.results}
    order = sorted(starts, key=lambda n: starts[n])
    for n in order[2:]:
        running = [m for m in order if starts[m] < starts[n] + 1e-9 and ends[m] > starts[n] + 1e-9 and m != n]
        assert len(running) <= 1
    assert starts[order[0]] == starts[order[1]] == 0.0
    # the budget cuts off what has not arrived by then
    cut = sim.simulate(table, "random_fifo", seed=0, workers=2, budget_s=2.0, max_trials=4, startup_s=0.5)
    assert all(t <= 2.0 for t, *_ in cut.results) and len(cut.results) < len(run.results)


def test_every_proposal_is_looked_up_exactly(table):
    lookup = sim.Lookup(table)
    for i in range(len(table.configs)):
        for k in range(len(table.options)):
            assert lookup.of_flat(lookup.flat(i, k)) == (i, k)
    outside = {**lookup.flat(0, 0), "train.lr": 0.123}
    with pytest.raises(KeyError, match="not a recorded configuration"):
        lookup.of_flat(outside)


@pytest.mark.parametrize("arm", list(sim.ARMS))
def test_every_arm_runs_and_its_front_is_measured_on_test(table, arm):
    budget = 0.6 * float(np.mean([table.epoch_seconds(i).sum() for i in range(len(table.configs))])) * 6
    run = sim.simulate(table, arm, seed=1, workers=2, budget_s=budget)
    assert run.trials >= 2 and run.epochs > 0
    assert all(t <= budget for t, *_ in run.results)
    grid = np.linspace(0, budget, 21)
    hv_val, hv_test = sim.hv_curves(table, run, grid)
    assert np.all(np.diff(hv_val) >= -1e-12)  # the val front only grows
    if run.completions:
        assert hv_val[-1] > 0 and hv_test[-1] > 0
    for _t, i, k in run.completions:
        assert table.result(i, k, table.epochs)["final"]


def test_the_command_writes_summary_and_plots(tmp_path):
    out = tmp_path / "sim"
    arms = ["random_fifo", "tpe_asha", "tpe_moasha", "optuna_median", "st_moasha"]
    assert sim.main(["--table", str(SMALL), "--seeds", "3", "--workers", "2", "--budget-s", "60", "--out",
                     str(out), "--procs", "1", "--grid", "31", "--arms", *arms]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == set(arms)
    for arm, entry in summary["arms"].items():
        for key in ("hv_test_mean", "hv_test_ci", "hv_val_mean", "time_to_target"):
            assert key in entry
        assert 0 < entry["hv_test_mean"] <= 1 and entry["seeds"] == 3
        assert set(entry["time_to_target"]) >= {"median_s", "fraction_reached"}
        if arm != "tpe_moasha":
            assert set(entry["vs_tpe_moasha"]) == {"at_0.33", "at_0.67", "at_1.00", "area"}
    assert (out / "hv_test.png").stat().st_size > 0 and (out / "hv_val.png").stat().st_size > 0
    saved = np.load(out / "curves.npz")
    assert saved["tpe_moasha_test"].shape == (3, 31)


# ------------------------------------------------------------------------------------ against a real Tune run


def _replay_trainable(table_path: str, bench_dir: str):
    """A Ray trainable that reports the table's results of the configuration it is given (only strings are
    captured: the worker imports the bench modules itself)."""

    def trainable(config):
        import sys

        from ray import tune

        sys.path.insert(0, bench_dir)
        import curves as table_module
        import simulate_search as simulator

        t = table_module.load_table(table_path)
        i, k = simulator.Lookup(t).of_searcher_config(config)
        for epoch in range(1, t.last_epoch(i) + 1):
            result = t.result(i, k, epoch)
            for key in ("training_iteration", "time_this_iter_s"):  # Ray's own keys
                result.pop(key)
            tune.report(result)

    return trainable


def _study_record(journal: Path) -> list[tuple]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="gce-search", storage=storage)
    return [(t.number, json.dumps(t.params, sort_keys=True), t.state.name, t.values, t.user_attrs.get("outcome"),
             t.user_attrs.get("last_epoch")) for t in study.get_trials(deepcopy=False)]


@pytest.mark.parametrize("arm", ["tpe_moasha", "random_asha"])
def test_the_simulator_decides_as_a_real_tune_run(table, tmp_path, arm):
    """One worker, 10 trials: Ray Tune (a real local cluster) with the tool's searcher and scheduler, its trainable
    replaying the table, against the simulator. Same proposals, same stops, same Optuna records."""
    import ray
    from ray import tune

    from gce_search.search.schedulers import build_scheduler
    from gce_search.search.searcher import CalibratedSearcher
    from gce_search.search.space import define_by_run, make_sampler

    n = 10
    spec = table.spec()
    simulated = tmp_path / "sim.journal"
    run = sim.simulate(table, arm, seed=3, workers=1, budget_s=1e9, max_trials=n, journal_path=str(simulated))
    assert run.trials == n
    # the study in memory (how the benchmark runs) decides exactly as in a journal file (how a search runs)
    in_memory = sim.simulate(table, arm, seed=3, workers=1, budget_s=1e9, max_trials=n)
    assert in_memory.results == run.results and in_memory.completions == run.completions
    stopped = [r for r in run.results if r[5] == "STOP" and r[4] < table.epochs]
    assert stopped, "no trial was stopped early: the comparison lost its point"

    settings = {"name": sim.ARMS[arm]["scheduler"], "grace_period": 1, "reduction_factor": 3, "brackets": 1}
    if settings["name"] == "moasha":
        settings["ranking"] = "nondominated"
    lookup = sim.Lookup(table)
    objective = spec.apply(lookup.flat(0, 0))["objective"]
    real = tmp_path / "real.journal"
    searcher = CalibratedSearcher(define_by_run(spec), journal_path=str(real),
                                  sampler=make_sampler({"sampler": sim.ARMS[arm]["sampler"], "seed": 3,
                                                        "num_samples": n}))
    np.random.seed(3)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            _replay_trainable(str(SMALL), str(REPO / "bench")),
            tune_config=tune.TuneConfig(metric="score", mode="max", search_alg=searcher, num_samples=n,
                                        max_concurrent_trials=1, reuse_actors=True,
                                        scheduler=build_scheduler(copy.deepcopy(settings), table.epochs,
                                                                  objective)),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="replay", verbose=0),
        )
        grid = tuner.fit()
        assert len(grid) == n and not grid.errors
    finally:
        ray.shutdown()
    assert _study_record(real) == _study_record(simulated)
