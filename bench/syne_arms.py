"""Syne Tune's own searches replayed on a recorded learning-curve table (bench/curves.py), in simulated time.

    import curves, syne_arms
    table = curves.load_table("bench-out/fmlt100_mlp/table.npz")
    results = syne_arms.run_syne(table, "st_moasha", seed=0, workers=4, budget_s=300.0)

Arms, Syne Tune's code end to end (scheduler, tuner loop, simulator backend, stopping criterion; three of its classes
replaced by equivalents for speed, see below):

- `st_moasha`: `syne_tune.optimizer.schedulers.multiobjective.moasha.MOASHA` with its default priority
  (`NonDominatedPriority`, dim 0) on val/acc (max) and val/ece (min), resource `epoch`, max_t = the table's epochs,
  grace period and reduction factor as given, one bracket, stopping-type (a trial is stopped at a rung or runs on);
- `st_random`: `syne_tune.optimizer.baselines.RandomSearch` (FIFO: every trial runs to the full budget);
- `st_moasha_ranked`: the same MOASHA with a priority that ranks the new result by its Pareto layer
  (`LayerPriority`): what MOASHA's bracket means to do, which Syne Tune 0.16's default priority does not do.

Syne Tune 0.16's MOASHA does not rank the new result. `Bracket.on_result` computes `priorities =
priority(recorded + [new])` and continues the new trial iff the rank of `priorities[-1]` is within the top
1 / reduction_factor, reading the priorities as one value per row; but `NonDominatedPriority` returns
`nondominated_sort(...)`, the row *indices in sorted order*. So the bracket tests the index of the row sorted last
(the worst), not the new row's place: a new result that dominates every recorded one is stopped whenever the row
sorted last is not among the first third recorded (checked: 30 random rows plus a dominating one -> stop), and one
that is the new worst is always stopped; otherwise the decision is the same for any result the new trial reports. In
practice almost every trial stops at the first rung: on a synthetic 288 x 6 x 27 table, 300 s, 4 workers, 6 of
2,621 trials went past epoch 1 (seed 0), 46 of 2,053 (seed 1); `st_moasha_ranked`: about 250 of 730.
`st_moasha` keeps that behaviour exactly (it is the library's); `st_moasha_ranked` is the corrected reading.

Speed: Syne Tune's MOASHA bracket rebuilds and re-sorts a rung's every recorded result at each new result, and the
stock non-dominated sort peels every Pareto layer: quadratic per result, so a 2,600-trial run took 140-280 s. With
`fast=True` (the default) three equivalents give the same run (the tests compare whole runs with `fast=False`, the
stock classes): `FastNonDominatedPriority` (the same last entry, from an O(n log n) layering), `FastBracket` (the
rung's metrics kept in an array; only the new row ranked) and `CountingStatus` (failed trials counted as they
change, not re-counted over all trials at every tuner loop). Besides, the tuner's `time.sleep(0)` per poll is
skipped (`SimulatedTuner`) and the blackbox row is found by index, not through pandas.

The table becomes a `syne_tune.blackbox_repository.blackbox_tabular.BlackboxTabular` with four categorical
hyperparameters: `loss` (one string per loss variant, e.g. "gce:lam=0.5" or "cross_entropy": every training
parameter but the learning rate and weight decay), `lr`, `wd` and `bp` (index of the table's calibrator options). The
table is the full product of their choices, so every proposal is a recorded (i, k). It is served by a
`syne_tune.blackbox_repository.simulated_tabular_backend.UserBlackboxBackend` and the tuner runs with
`syne_tune.backend.simulator_backend.simulator_callback.SimulatorCallback`, `sleep_time=0` and a
`StoppingCriterion(max_wallclock_time=budget_s)`, which the callback turns into a bound on simulated time.

Choices made here (Syne Tune's defaults differ):

- Objectives: Syne Tune's schedulers take one `do_minimize` for all metrics, so the blackbox reports
  `val_err = 1 - val/acc` and `val_ece`, both minimised. `RandomSearch`'s searcher accepts one metric only (it
  asserts so; random search does not use it anyway): it gets `val_err`.
- Time: the blackbox's `elapsed_time` column is the cumulative sum of the table's epoch times (training + the trial
  loop's evaluation), what the simulator backend expects (time since the trial's start). The simulator's
  latencies (`SimulatorConfig`, 0.05 s each by default) are 0, and the real time the tuner and scheduler spend
  between backend calls is *not* added to simulated time (Syne Tune adds it by default, which makes a run depend on
  the machine's speed); so a run is a deterministic function of (table, arm, seed, workers, budget, poll_s). The
  tuner's only other clock is its polling step: while all workers are busy it advances simulated time by `poll_s`
  (Syne Tune's default is 5 s) and then sees every result that arrived meanwhile; a trial the scheduler stops runs
  on until that poll (plus 2 ms of the simulator's own stop bookkeeping). The run ends at the first poll that sees a
  result past `budget_s`; results after `budget_s` are not returned.
- Diverged configurations: the table has their metrics NaN at the divergence epoch and nothing after. Here the trial
  reports the divergence epoch with the worst values (`val_err = 1`, i.e. val/acc 0, and `val_ece = 1`) and then
  ends (the backend cuts the blackbox's curve there; the trial completes, as a crashed-but-reported trial would end).
- Results are collected by the callback in memory; nothing is written but the tuner's metadata file, in a temporary
  directory that is deleted (`SYNETUNE_FOLDER`), Syne Tune's printing and logging are silenced, and the tuner is not
  pickled (`save_tuner=False`).
- Seeding: MOASHA and the random searcher sample configurations from NumPy's global generator (Syne Tune calls
  `Domain.sample()` without a generator), so `seed` seeds it (and goes to the schedulers' `random_seed`); the global
  state is restored afterwards.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np

ARMS = ("st_moasha", "st_random", "st_moasha_ranked")
OBJECTIVES = ("val_err", "val_ece")  # both minimised: 1 - val/acc, val/ece
ELAPSED = "elapsed_time"  # cumulative seconds since the trial's start
RESOURCE = "epoch"
WORST = {"val_err": 1.0, "val_ece": 1.0}  # what a diverged epoch reports
LR, WD = "train.lr", "train.weight_decay"


@dataclass
class SyneProblem:
    """A table as Syne Tune sees it: the blackbox, the config space, and the way back to (i, k)."""

    blackbox: object  # BlackboxTabular
    config_space: dict
    index: dict  # (loss, lr, wd, bp) -> (i, k)
    last_epoch: list  # per training config i
    epochs: int
    n_options: int

    def lookup(self, config: dict) -> tuple[int, int]:
        return self.index[(config["loss"], float(config["lr"]), float(config["wd"]), int(config["bp"]))]


def loss_variant(config: dict) -> str:
    """"cross_entropy", "gce:lam=0.5", ...: the training parameters other than the learning rate and weight decay."""
    name = str(config.get("loss.name", "default"))
    extras = []
    for key in sorted(k for k in config if k not in ("loss.name", LR, WD)):
        short = key[len(name) + 1:] if key.startswith(name + ".") else key
        extras.append(f"{short}={config[key]}")
    return name + (":" + ",".join(extras) if extras else "")


def build_problem(table, startup_s: float = 0.0) -> SyneProblem:
    import pandas as pd
    from syne_tune.blackbox_repository.blackbox_tabular import BlackboxTabular
    from syne_tune.config_space import choice, randint

    n, epochs, n_k = len(table.configs), table.epochs, len(table.options)
    keys = [(loss_variant(c), float(c[LR]), float(c[WD])) for c in table.configs]
    losses = sorted({key[0] for key in keys})
    lrs = sorted({key[1] for key in keys})
    wds = sorted({key[2] for key in keys})
    if len(set(keys)) != n or n != len(losses) * len(lrs) * len(wds):
        raise ValueError(f"the table's {n} training configurations are not the full product of {len(losses)} loss "
                         f"variants x {len(lrs)} learning rates x {len(wds)} weight decays (with no duplicates): "
                         f"Syne Tune could propose configurations the table does not have")
    acc, ece = table.metric("val/acc"), table.metric("val/ece")
    # rows (i, k) in the order i * n_k + k; objectives (rows, seeds = 1, epochs, [val_err, val_ece, elapsed])
    y = np.empty((n, n_k, epochs, 3))
    y[..., 0] = 1.0 - np.transpose(table.values[:, :, :, acc], (0, 2, 1))
    y[..., 1] = np.transpose(table.values[:, :, :, ece], (0, 2, 1))
    last = [int(table.last_epoch(i)) for i in range(n)]
    for i in range(n):
        y[i, :, :, 2] = startup_s + np.cumsum(table.epoch_seconds(i))[None, :]  # start-up before epoch 1
        if last[i] < epochs or not np.isfinite(y[i, :, :, :2]).all():
            # the diverged epoch (NaN in the table) and the epochs after it (never reported): the worst values
            bad = ~np.isfinite(y[i, :, :, :2])
            y[i, :, :, 0][bad[..., 0]] = WORST["val_err"]
            y[i, :, :, 1][bad[..., 1]] = WORST["val_ece"]
    hp = pd.DataFrame([{"loss": keys[i][0], "lr": keys[i][1], "wd": keys[i][2], "bp": k}
                       for i in range(n) for k in range(n_k)])
    config_space = {"loss": choice(losses), "lr": choice(lrs), "wd": choice(wds), "bp": choice(list(range(n_k)))}
    with warnings.catch_warnings():  # pandas' deprecation of set_index(inplace=True), used by BlackboxTabular
        warnings.simplefilter("ignore")
        blackbox = BlackboxTabular(
            hyperparameters=hp, configuration_space=config_space, fidelity_space={RESOURCE: randint(1, epochs)},
            objectives_evaluations=y.reshape(n * n_k, 1, epochs, 3), fidelity_values=np.arange(1, epochs + 1),
            objectives_names=[*OBJECTIVES, ELAPSED])
    index = {(keys[i][0], keys[i][1], keys[i][2], k): (i, k) for i in range(n) for k in range(n_k)}
    assert len(index) == n * n_k
    return SyneProblem(blackbox, config_space, index, last, epochs, n_k)


_cache: dict = {}


def problem_for(table, startup_s: float = 0.0) -> SyneProblem:
    """`build_problem`, kept for the last table and start-up seen (a benchmark runs many seeds on one table)."""
    hit = _cache.get("table")
    if hit is None or hit[0] is not table or hit[1] != startup_s:
        _cache["table"] = (table, startup_s, build_problem(table, startup_s))
    return _cache["table"][2]


@functools.lru_cache(maxsize=None)
def _classes():
    """Syne Tune's classes, subclassed where this module changes a default (see the module's docstring)."""
    from syne_tune.backend.simulator_backend.simulator_backend import SimulatorConfig
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.backend.simulator_backend.time_keeper import SimulatedTimeKeeper
    from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
    from syne_tune.constants import ST_TUNER_TIME
    from syne_tune.backend.trial_status import Status
    from syne_tune.tuner import Tuner
    from syne_tune.tuner_logger import TunerLogger
    from syne_tune.tuning_status import TuningStatus

    class SimulatedTimeOnly(SimulatedTimeKeeper):
        """Simulated time advances by the tuner's (simulated) sleeps and the backend's events only, not by the real
        time spent in the tuner and scheduler."""

        def real_time_since_last_recent_exit(self) -> float:
            return 0.0

    class TableBackend(UserBlackboxBackend):
        """The blackbox's curve of a configuration, cut after its last recorded epoch (a diverged one's)."""

        def __init__(self, problem: SyneProblem, poll_s: float):
            super().__init__(blackbox=problem.blackbox, elapsed_time_attr=ELAPSED, seed=0,
                             simulator_config=SimulatorConfig(0.0, 0.0, 0.0, 0.0, 0.0), tuner_sleep_time=poll_s)
            self._problem = problem
            self._time_keeper = SimulatedTimeOnly()

        def config_objectives(self, config: dict, seed: int) -> list[dict]:
            # what the parent's `metrics_for_configuration` does, with the row found by `lookup` (the blackbox's own
            # lookup by value goes through a pandas MultiIndex, 2 ms a trial), up to the last recorded epoch
            i, k = self._problem.lookup(config)
            values = self.blackbox.objective_function(i * self._problem.n_options + k, seed=seed)
            names = self.blackbox.objectives_names
            return [{**dict(zip(names, values[e].tolist())), RESOURCE: e + 1}
                    for e in range(self._problem.last_epoch[i])]

    class Collect(SimulatorCallback):
        """Keeps (simulated time, trial, config, epoch) of every result the tuner passes on; writes nothing."""

        def __init__(self):
            super().__init__()
            self.rows: list[tuple] = []

        def on_trial_result(self, trial, status, result, decision):
            self.rows.append((float(result[ST_TUNER_TIME]), int(trial.trial_id), trial.config, int(result[RESOURCE])))

        def store_results(self):
            pass

    class SimulatedTuner(Tuner):
        """`Tuner` whose sleeps are simulated only: Syne Tune's `_sleep` calls `time.sleep(0)` (a yield of the
        process, up to a millisecond on a busy machine, thousands of times a run) before the callbacks that advance
        simulated time."""

        def _sleep(self):
            for callback in self.callbacks:
                callback.on_tuning_sleep(self.sleep_time)

    class CountingStatus(TuningStatus):
        """`TuningStatus` that counts failed trials as they change status: the tuner asks for the count at every
        loop and the stock property re-counts every trial's status (quadratic over a run)."""

        def __init__(self, metric_names):
            super().__init__(metric_names)
            self._failed: set = set()

        def update(self, trial_status_dict, new_results):
            super().update(trial_status_dict, new_results)
            for trial_id, (_, status) in trial_status_dict.items():
                if status == Status.failed:
                    self._failed.add(trial_id)
                else:
                    self._failed.discard(trial_id)

        @property
        def num_trials_failed(self):
            return len(self._failed)

    class Silent(TunerLogger):
        pass

    for name in dir(TunerLogger):
        if name.startswith("print_"):
            setattr(Silent, name, lambda self, *a, **k: None)
    return TableBackend, Collect, Silent, SimulatedTuner, CountingStatus


def nondomination_layers(x: np.ndarray) -> np.ndarray:
    """The Pareto layer (0 = the front) of each row of `x` (n, 2), both columns minimised, as peeling fronts off
    with Syne Tune's `pareto_efficient` gives it (dominated: <= in both, < in one; equal rows do not dominate each
    other), in O(n log n): rows in lexicographic order, a row's layer is the number of layers whose smallest second
    coordinate so far is <= its own (that non-decreasing list is kept up to date)."""
    import bisect

    n = len(x)
    order = np.lexsort((x[:, 1], x[:, 0]))
    xs, ys = x[order, 0], x[order, 1]
    first = np.ones(n, dtype=bool)  # the first of each run of equal rows (one layer, found before any is added)
    first[1:] = (xs[1:] != xs[:-1]) | (ys[1:] != ys[:-1])
    starts = np.flatnonzero(first)
    lows: list[float] = []
    layer = []
    for y in ys[starts].tolist():
        c = bisect.bisect_right(lows, y)
        if c == len(lows):
            lows.append(y)
        else:
            lows[c] = y
        layer.append(c)
    out = np.empty(n, dtype=int)
    out[order] = np.repeat(layer, np.diff(np.append(starts, n)))
    return out


@functools.lru_cache(maxsize=None)
def _priorities():
    from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import NonDominatedPriority
    from syne_tune.optimizer.schedulers.multiobjective.non_dominated_priority import compute_epsilon_net

    class FastNonDominatedPriority(NonDominatedPriority):
        """Syne Tune's `NonDominatedPriority` (dim 0) as MOASHA's `Bracket` uses it, fast for two objectives.

        `Bracket.on_result` ranks `priority(recorded + [new])` and reads the last entry only; the stock priority is
        `nondominated_sort(...)`, a list of row indices in sorted order (not a rank per row), so what the bracket
        reads is the index of the row sorted *last*: the last of the deepest Pareto layer's epsilon-net order as
        Syne Tune composes it. This returns a permutation of the row indices with that same last entry (so every
        decision is the same), from `nondomination_layers` and Syne Tune's `compute_epsilon_net` on the deepest
        layer only, instead of peeling every layer (quadratic per result, cubic per run)."""

        def priority_unsafe(self, objectives: np.ndarray) -> np.ndarray:
            n, d = objectives.shape
            if d != 2 or self.dim != 0 or self.max_num_samples is not None:
                return super().priority_unsafe(objectives)
            layers = nondomination_layers(objectives)
            front = np.flatnonzero(layers == layers.max())
            last = int(front[compute_epsilon_net(objectives[front], dim=0)[-1]])
            return np.append(np.delete(np.arange(n), last), last)

    class LayerPriority(NonDominatedPriority):
        """A row's priority is its Pareto layer: the bracket then ranks a new result by the number of recorded
        results in strictly better layers (ties in its favour) and continues it if that is within the top
        1 / reduction_factor. (Not Syne Tune's behaviour: see `FastNonDominatedPriority`.)"""

        def priority_unsafe(self, objectives: np.ndarray) -> np.ndarray:
            if objectives.shape[1] != 2:
                raise ValueError("LayerPriority: two objectives")
            return nondomination_layers(objectives)

    return FastNonDominatedPriority, LayerPriority


@functools.lru_cache(maxsize=None)
def _fast_bracket():
    from syne_tune.optimizer.scheduler import SchedulerDecision
    from syne_tune.optimizer.schedulers.asha import Bracket

    class FastBracket(Bracket):
        """Syne Tune's `Bracket` with the same decisions, keeping each rung's recorded metrics in a growing array
        (in recording order, as the stock `on_result` rebuilds it from the rung's dict at every result) and ranking
        only the new row (the stock code ranks every row and reads the last)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._rows = [np.empty((0, 0))] * len(self.rungs)

        def on_result(self, trial_id: int, cur_iter: int, metrics: dict | None) -> str:
            action = SchedulerDecision.CONTINUE
            for r, (milestone, recorded) in enumerate(self.rungs):
                if cur_iter < milestone or trial_id in recorded:
                    continue
                n, row = len(recorded), list(metrics.values())
                if len(self._rows[r]) <= n:
                    grown = np.empty((max(64, 2 * (n + 1)), len(row)))
                    if n:
                        grown[:n] = self._rows[r][:n]
                    self._rows[r] = grown
                self._rows[r][n] = row
                if recorded:
                    x = self._rows[r][: n + 1]
                    priorities = self.priority(x) if self.priority is not None else x.flatten()
                    rank = np.searchsorted(np.sort(priorities), priorities[-1]) / len(priorities)
                    if rank > 1 / self.rf:
                        action = SchedulerDecision.STOP
                recorded[trial_id] = metrics
                break
            return action

    return FastBracket


def _scheduler(problem: SyneProblem, arm: str, seed: int, grace_period: int, reduction_factor: int, fast: bool):
    if arm in ("st_moasha", "st_moasha_ranked"):
        from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA
        from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import NonDominatedPriority

        quick, ranked = _priorities()
        if arm == "st_moasha_ranked":
            priority = ranked()
        else:
            priority = quick(dim=0) if fast else NonDominatedPriority(dim=0)
        scheduler = MOASHA(config_space=problem.config_space, metrics=list(OBJECTIVES), do_minimize=True,
                           time_attr=RESOURCE, max_t=problem.epochs, grace_period=grace_period,
                           reduction_factor=reduction_factor, random_seed=seed, multiobjective_priority=priority)
        if fast:
            bracket = _fast_bracket()
            scheduler.brackets = [bracket(grace_period, problem.epochs, reduction_factor, s, priority)
                                  for s in range(len(scheduler.brackets))]
        return scheduler
    if arm == "st_random":
        from syne_tune.optimizer.baselines import RandomSearch

        return RandomSearch(config_space=problem.config_space, metrics=[OBJECTIVES[0]], do_minimize=True,
                            random_seed=seed)
    raise ValueError(f"arm {arm!r}: one of {', '.join(ARMS)}")


@contextlib.contextmanager
def _quiet():
    log = logging.getLogger("syne_tune")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def run_syne(table, arm: str, seed: int, workers: int, budget_s: float, grace_period: int = 1,
             reduction_factor: int = 3, poll_s: float = 0.05, fast: bool = True, startup_s: float = 0.0) -> list[dict]:
    """arm in ARMS ("st_moasha", "st_random", "st_moasha_ranked"). Returns every result Syne Tune's simulated run produced up to `budget_s`,
    in simulated-time order: dicts {"time": simulated seconds since start when the result arrived, "trial": Syne
    Tune trial id, "i": training config index, "k": calibrator index, "epoch": int}. `table` is a `curves.Table`
    (or a `SyneProblem` from `build_problem`); `poll_s` is the tuner's simulated polling step. `fast=False` runs
    Syne Tune's own `Bracket`, `NonDominatedPriority` and `TuningStatus` instead of this module's equivalents (the
    same results, slower: the reference the tests compare with)."""
    from syne_tune import StoppingCriterion

    problem = table if isinstance(table, SyneProblem) else problem_for(table, startup_s)
    TableBackend, Collect, Silent, Tuner, CountingStatus = _classes()
    state = np.random.get_state()
    folder = tempfile.mkdtemp(prefix="syne_arms_")
    env = os.environ.get("SYNETUNE_FOLDER")
    try:
        np.random.seed(seed)
        scheduler = _scheduler(problem, arm, seed, grace_period, reduction_factor, fast)
        callback = Collect()
        os.environ["SYNETUNE_FOLDER"] = folder
        with _quiet():
            tuner = Tuner(trial_backend=TableBackend(problem, poll_s), scheduler=scheduler,
                          stop_criterion=StoppingCriterion(max_wallclock_time=budget_s), n_workers=workers,
                          sleep_time=0, results_update_interval=1e12, print_update_interval=1e12,
                          tuner_name=arm.replace("_", "-"), suffix_tuner_name=False, save_tuner=False,
                          callbacks=[callback], trial_backend_path=folder, output_logger=Silent())
            if fast:
                tuner.tuning_status = CountingStatus(metric_names=scheduler.metric_names())
            tuner.run()
    finally:
        if env is None:
            os.environ.pop("SYNETUNE_FOLDER", None)
        else:
            os.environ["SYNETUNE_FOLDER"] = env
        shutil.rmtree(folder, ignore_errors=True)
        np.random.set_state(state)
    out = []
    for time_s, trial, config, epoch in callback.rows:
        if time_s > budget_s:
            continue
        i, k = problem.lookup(config)
        out.append({"time": time_s, "trial": trial, "i": i, "k": k, "epoch": epoch})
    out.sort(key=lambda r: r["time"])  # stable: results of one poll keep the tuner's order
    return out
