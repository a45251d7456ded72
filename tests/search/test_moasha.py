"""MultiObjectiveASHA driven by hand-built trials and results, compared with Ray's ASHAScheduler; one real Tune run."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from gce_search.search import pareto
from gce_search.search.moasha import MultiObjectiveASHA, NonDominatedRanking, ScalarizedRanking
from gce_search.search.schedulers import build_scheduler

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def make_trial(trial_id: str) -> Trial:
    return Trial("__fake", trial_id=trial_id, stub=True)


def result(epoch, acc, ece, **extra):
    return {"epoch": epoch, "val/acc": acc, "val/ece": ece, **extra}


def arrive(scheduler, trial_id, acc, ece, epoch=1):
    """Add a trial and report one result at `epoch`; returns the decision."""
    trial = make_trial(trial_id)
    scheduler.on_trial_add(None, trial)
    return scheduler.on_trial_result(None, trial, result(epoch, acc, ece))


# --- rung layout -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grace_period, max_t, eta, brackets", [(1, 9, 3, 1), (1, 10, 2, 1), (2, 27, 3, 2),
                                                                 (1, 81, 3, 3), (1, 100, 4, 1)])
def test_rungs_are_rays(grace_period, max_t, eta, brackets):
    ours = MultiObjectiveASHA(max_t=max_t, grace_period=grace_period, reduction_factor=eta, brackets=brackets)
    ray = ASHAScheduler(time_attr="epoch", metric="score", mode="max", max_t=max_t, grace_period=grace_period,
                        reduction_factor=eta, brackets=brackets)
    assert [[m for m, _ in b.rungs] for b in ours._brackets] == [[m for m, _ in b._rungs] for b in ray._brackets]


def test_rung_layout_hand_computed():
    scheduler = MultiObjectiveASHA(max_t=9, grace_period=1, reduction_factor=3)
    assert [m for m, _ in scheduler.rung_records()] == [1, 3, 9]


# --- promotion decisions on constructed fronts -------------------------------------------------------------------

def test_constructed_front_decisions_hand_computed():
    # η = 3: a trial continues iff fewer than ceil(N/3) trials at the rung (N includes it) rank strictly ahead.
    # Reference (acc 0, ece 1). Hypervolume contributions worked by hand in the comments.
    scheduler = MultiObjectiveASHA(max_t=9, grace_period=1, reduction_factor=3)
    # N=1: first trial at a rung continues (Ray's empty-rung rule)
    assert arrive(scheduler, "t0", 0.80, 0.10) == CONTINUE
    # N=2, ceil=1: dominated by t0 -> rank 1
    assert arrive(scheduler, "t1", 0.70, 0.20) == STOP
    # N=3, ceil=1: front {t0, t2}; contributions t2 = 0.1·0.85 = 0.085 > t0 = 0.8·0.05 = 0.04 -> rank 0
    assert arrive(scheduler, "t2", 0.90, 0.15) == CONTINUE
    # N=4, ceil=2: front {t2, t3, t0}; t2 = 0.05·0.85 = 0.0425, t3 = 0.05·0.03 = 0.0015, t0 = 0.8·0.02 = 0.016
    assert arrive(scheduler, "t3", 0.85, 0.12) == STOP
    # N=5, ceil=2: chance-level trial with ECE 0 is on the front, contribution 0.1·0.1 = 0.01 < t0 (0.014)
    # and t2 (0.0425) -> rank 2: stopped (crowding distance would call it an extreme and promote it)
    assert arrive(scheduler, "t4", 0.10, 0.00) == STOP
    # N=6, ceil=2: dominates everyone -> rank 0
    assert arrive(scheduler, "t5", 0.95, 0.01) == CONTINUE
    recorded = scheduler.rung_records()[0][1]
    assert list(recorded) == ["t0", "t1", "t2", "t3", "t4", "t5"]  # stopped trials are recorded, as in ASHA
    assert recorded["t2"] == pytest.approx((0.90, 0.15))  # reported back in the raw metric space


def test_crowding_tie_break_would_promote_the_degenerate_extreme():
    points = [(0.80, 0.10), (0.70, 0.20), (0.90, 0.15), (0.85, 0.12)]
    recorded = [tuple(pareto.to_minimization(p, pareto.MODES)) for p in points]
    degenerate = tuple(pareto.to_minimization((0.10, 0.00), pareto.MODES))
    by_hypervolume = NonDominatedRanking(pareto.to_minimization(pareto.REFERENCE_POINT, pareto.MODES))
    by_crowding = NonDominatedRanking(None)
    assert by_hypervolume.rank_of_candidate(degenerate, recorded) == 2
    assert by_crowding.rank_of_candidate(degenerate, recorded) == 0  # infinite distance, tie goes to candidate
    assert not by_hypervolume.promote(degenerate, recorded, 3)
    assert by_crowding.promote(degenerate, recorded, 3)


def test_exact_ties_go_to_the_candidate_as_in_ray():
    scheduler = MultiObjectiveASHA(max_t=8, grace_period=1, reduction_factor=2)
    ray = ASHAScheduler(time_attr="epoch", metric="score", mode="max", max_t=8, grace_period=1, reduction_factor=2)
    assert arrive(scheduler, "a", 0.8, 0.1) == CONTINUE
    # N=2, ceil(2/2)=1: an identical trial is not "strictly ahead"
    assert arrive(scheduler, "b", 0.8, 0.1) == CONTINUE
    for trial_id in "ab":
        trial = make_trial(trial_id)
        ray.on_trial_add(None, trial)
        assert ray.on_trial_result(None, trial, {"epoch": 1, "score": 0.7}) == CONTINUE  # Ray: equal passes
    # a third duplicate: N=3, ceil(3/2)=2, still rank 0
    assert arrive(scheduler, "c", 0.8, 0.1) == CONTINUE
    # a worse one: rank 3 >= 2
    assert arrive(scheduler, "d", 0.8, 0.2) == STOP


def _random_rung(rng, size):
    # few distinct values: ties, duplicates and dominance chains are common
    return [tuple(pareto.to_minimization((rng.integers(0, 5) / 4, rng.integers(0, 5) / 4), pareto.MODES))
            for _ in range(size)]


@pytest.mark.parametrize("eta", [2, 3, 4])
def test_dominated_trial_never_promoted_over_its_dominator(eta):
    rng = np.random.default_rng(eta)
    ranking = MultiObjectiveASHA(max_t=81, reduction_factor=eta).ranking
    checked = 0
    for _ in range(300):
        recorded = _random_rung(rng, int(rng.integers(0, 15)))
        a, b = _random_rung(rng, 2)
        if pareto.dominates(b, a):
            a, b = b, a
        if not pareto.dominates(a, b):
            continue
        checked += 1
        # against the same recorded trials, the dominator ranks ahead and is promoted whenever the other is
        assert ranking.rank_of_candidate(a, recorded) <= ranking.rank_of_candidate(b, recorded)
        if ranking.promote(b, recorded, eta):
            assert ranking.promote(a, recorded, eta)
        # with both at the rung, the dominator is always strictly ahead
        assert ranking.rank_of_candidate(a, recorded + [b]) < ranking.rank_of_candidate(b, recorded + [a])
        # in a stream: the dominator stopped on arrival -> the dominated one arriving next is stopped too
        if not ranking.promote(a, recorded, eta):
            assert not ranking.promote(b, recorded + [a], eta)
    assert checked > 50


@pytest.mark.parametrize("eta", [2, 3])
def test_rank_rule_is_rays_percentile_rule_on_ranks(eta):
    # Documented claim: for η = 2 and 3, "rank < ceil(N/η)" equals Ray's cutoff rule (reward >= nanpercentile of
    # the recorded rewards at 1 - 1/η) when the rewards are rank positions. Check against Ray's own _Bracket.
    from ray.tune.schedulers.async_hyperband import _Bracket

    ranking = NonDominatedRanking(None)
    bracket = _Bracket(1, 3, eta, 0)
    for total in range(1, 60):
        chain = [(-1.0 + s / 100, s / 100) for s in range(total)]  # s-th point dominates every later one
        for position in range(total):
            recorded = {str(s): -float(s) for s in range(total) if s != position}
            cutoff = bracket.cutoff(recorded)
            ray_continues = cutoff is None or not (-float(position) < cutoff)
            ours = ranking.promote(chain[position], [chain[s] for s in range(total) if s != position], eta)
            assert ours == ray_continues, (total, position)


# --- scalarised ranking equals Ray's ASHA ------------------------------------------------------------------------

def _stream(seed, n_trials, max_t):
    """Interleaved per-epoch results of trials with drifting (acc, ece); yields (trial_id, epoch, acc, ece)."""
    rng = np.random.default_rng(seed)
    quality = {f"t{i}": (rng.uniform(0.3, 0.9), rng.uniform(0.0, 0.3)) for i in range(n_trials)}
    epoch = {t: 0 for t in quality}
    live = list(quality)
    # trials start in waves, as with a few concurrent slots
    started = live[:3]
    waiting = live[3:]
    events = []
    while started:
        trial_id = started[int(rng.integers(len(started)))]
        epoch[trial_id] += 1
        acc0, ece0 = quality[trial_id]
        acc = float(np.clip(acc0 + 0.02 * epoch[trial_id] + rng.normal(0, 0.02), 0, 1))
        ece = float(np.clip(ece0 - 0.01 * epoch[trial_id] + rng.normal(0, 0.01), 0, 1))
        events.append((trial_id, epoch[trial_id], acc, ece))
        if epoch[trial_id] >= max_t:
            started.remove(trial_id)
            if waiting:
                started.append(waiting.pop(0))
        if rng.random() < 0.1 and waiting:
            started.append(waiting.pop(0))
    return events


def _replay(scheduler, events, score_fn=None, state=None):
    """Feed events like Tune does: results until a STOP, then on_trial_complete with the last result. With `state`,
    the trial objects and the stopped set survive across schedulers (as in a resumed run)."""
    state = {} if state is None else state
    trials = state.setdefault("trials", {})
    stopped = state.setdefault("stopped", set())
    decisions = []
    for trial_id, epoch, acc, ece in events:
        if trial_id in stopped:
            continue
        if trial_id not in trials:
            trials[trial_id] = make_trial(trial_id)
            scheduler.on_trial_add(None, trials[trial_id])
        res = result(epoch, acc, ece)
        if score_fn is not None:
            res["score"] = score_fn(acc, ece)
        decision = scheduler.on_trial_result(None, trials[trial_id], res)
        decisions.append((trial_id, epoch, decision))
        if decision == STOP:
            stopped.add(trial_id)
            scheduler.on_trial_complete(None, trials[trial_id], res)
    return decisions


@pytest.mark.parametrize("seed, eta, grace, max_t, weights", [
    (0, 3, 1, 9, (1.0, 1.0)), (1, 2, 1, 8, (1.0, 1.0)), (2, 4, 1, 16, (2.0, 0.5)), (3, 3, 2, 18, (1.0, 3.0)),
])
def test_scalarized_ranking_makes_rays_asha_decisions(seed, eta, grace, max_t, weights):
    events = _stream(seed, n_trials=40, max_t=max_t)
    w_acc, w_ece = weights
    ray = ASHAScheduler(time_attr="epoch", metric="score", mode="max", max_t=max_t, grace_period=grace,
                        reduction_factor=eta)
    ray_decisions = _replay(ray, events, score_fn=lambda acc, ece: w_acc * acc - w_ece * ece)
    ours = MultiObjectiveASHA(max_t=max_t, grace_period=grace, reduction_factor=eta,
                              ranking=ScalarizedRanking(weights))
    assert _replay(ours, events) == ray_decisions
    assert sum(d == STOP for *_, d in ray_decisions) > 10  # the stream exercises early stopping
    # and the registry's "scalarized" entry, built as the driver builds it (with the trial config's objective),
    # ranks by the same score: weights (1, 1) without an objective, the objective's weights with one
    settings = {"name": "moasha", "grace_period": grace, "reduction_factor": eta, "ranking": "scalarized"}
    built = build_scheduler(dict(settings), max_t, objective={"w_acc": w_acc, "w_ece": w_ece, "n_bins": 15})
    assert built.ranking.weights == weights
    assert _replay(built, events) == ray_decisions
    if weights == (1.0, 1.0):
        assert _replay(build_scheduler(dict(settings), max_t), events) == ray_decisions
    else:  # the old (1, 1) ranking decides differently on this stream: the weights matter
        assert _replay(build_scheduler(dict(settings), max_t), events) != ray_decisions


def test_nondominated_stream_stops_trials_at_rungs_only():
    events = _stream(7, n_trials=40, max_t=9)
    scheduler = build_scheduler({"name": "moasha", "grace_period": 1, "reduction_factor": 3}, 9)
    assert isinstance(scheduler, MultiObjectiveASHA) and isinstance(scheduler.ranking, NonDominatedRanking)
    decisions = _replay(scheduler, events)
    stop_epochs = {epoch for _, epoch, d in decisions if d == STOP}
    assert stop_epochs <= {1, 3, 9}
    assert {1, 9} <= stop_epochs


# --- errors, divergence, Tune's metric ---------------------------------------------------------------------------

def test_missing_metric_at_a_rung_is_an_error():
    scheduler = MultiObjectiveASHA(max_t=9, grace_period=1, reduction_factor=3)
    trial = make_trial("a")
    scheduler.on_trial_add(None, trial)
    with pytest.raises(ValueError, match=r"val/ece"):
        scheduler.on_trial_result(None, trial, {"epoch": 1, "val/acc": 0.5})
    with pytest.raises(ValueError, match=r"val/acc"):
        scheduler.on_trial_result(None, trial, {"epoch": 1, "val/acc": None, "val/ece": 0.1})
    with pytest.raises(ValueError, match=r"non-numeric"):
        scheduler.on_trial_result(None, trial, {"epoch": 1, "val/acc": "high", "val/ece": 0.1})
    # between rungs no decision is made, so no metric is needed; a result without the time attribute is skipped.
    # (A rung not yet recorded is decided at the next result past it, as in Ray, so record rung 1 first.)
    assert scheduler.on_trial_result(None, trial, result(1, 0.5, 0.1)) == CONTINUE
    assert scheduler.on_trial_result(None, trial, {"epoch": 2, "train/loss": 0.3}) == CONTINUE
    assert scheduler.on_trial_result(None, trial, {"train/loss": 0.3}) == CONTINUE


def test_custom_metric_names_and_modes():
    scheduler = MultiObjectiveASHA(max_t=4, grace_period=1, reduction_factor=2, metrics=["loss", "latency"],
                                   modes=["min", "min"])
    assert isinstance(scheduler.ranking, NonDominatedRanking) and scheduler.ranking.reference_point is None
    trials = [make_trial(t) for t in "abc"]
    for t in trials:
        scheduler.on_trial_add(None, t)
    assert scheduler.on_trial_result(None, trials[0], {"epoch": 1, "loss": 1.0, "latency": 5.0}) == CONTINUE
    assert scheduler.on_trial_result(None, trials[1], {"epoch": 1, "loss": 2.0, "latency": 6.0}) == STOP
    with pytest.raises(ValueError, match="latency"):
        scheduler.on_trial_result(None, trials[2], {"epoch": 1, "loss": 2.0, "val/ece": 6.0})


@pytest.mark.parametrize("kwargs, match", [
    ({"ranking": "weighted"}, "ranking"), ({"modes": ["max", "down"]}, "modes"), ({"modes": ["max"]}, "modes"),
    ({"reduction_factor": 1}, "reduction_factor"), ({"grace_period": 20}, "grace_period"),
    ({"brackets": 0}, "brackets"), ({"metrics": ["a", "a"], "modes": ["min", "min"]}, "metrics"),
])
def test_constructor_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiObjectiveASHA(max_t=9, **kwargs)


def test_scalarized_weights_are_checked():
    with pytest.raises(ValueError, match="weights"):
        ScalarizedRanking((1.0, -1.0))


@pytest.mark.parametrize("diverged", [
    {"val/acc": float("nan"), "val/ece": float("nan"), "status": "diverged"},
    {"val/acc": 0.5, "val/ece": float("inf")},
    {"val/acc": np.float32("nan"), "val/ece": 0.1},
    {"val/acc": 0.5, "val/ece": 0.1, "status": "diverged"},
])
def test_diverged_result_stops_and_is_not_recorded(diverged):
    scheduler = MultiObjectiveASHA(max_t=9, grace_period=1, reduction_factor=3)
    assert arrive(scheduler, "good", 0.8, 0.1) == CONTINUE
    trial = make_trial("bad")
    scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, trial, {"epoch": 2, **diverged}) == STOP  # not even at a rung
    assert scheduler.on_trial_result(None, trial, {"epoch": 1, **diverged}) == STOP
    scheduler.on_trial_complete(None, trial, {"epoch": 1, **diverged})
    assert list(scheduler.rung_records()[0][1]) == ["good"]
    # the next arrival is judged as if the diverged trial had never come: N=2, ceil(2/3)=1, rank 0
    assert arrive(scheduler, "next", 0.85, 0.05) == CONTINUE


def test_tune_metric_is_accepted_without_replacing_the_objectives():
    scheduler = MultiObjectiveASHA(max_t=9)
    assert scheduler.set_search_properties("score", "max") is True
    assert scheduler.metric == "score"  # Tune checks results for it
    assert scheduler.metrics == ("val/acc", "val/ece") and scheduler.modes == ("max", "min")
    assert isinstance(scheduler.ranking, NonDominatedRanking)
    assert scheduler.set_search_properties(None, None) is True


def test_complete_and_remove_bookkeeping():
    scheduler = MultiObjectiveASHA(max_t=3, grace_period=1, reduction_factor=3)
    trial = make_trial("a")
    scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, trial, result(1, 0.5, 0.1)) == CONTINUE
    # reaching max_t stops the trial; its result is recorded at the top rung when it completes, as in Ray
    assert scheduler.on_trial_result(None, trial, result(3, 0.6, 0.1)) == STOP
    assert scheduler.rung_records()[1][1] == {}
    scheduler.on_trial_complete(None, trial, result(3, 0.6, 0.1))
    assert scheduler.rung_records()[1][1] == {"a": pytest.approx((0.6, 0.1))}
    assert "a" not in scheduler._trial_info
    other = make_trial("b")
    scheduler.on_trial_add(None, other)
    scheduler.on_trial_remove(None, other)
    scheduler.on_trial_remove(None, other)  # removing twice is harmless
    assert scheduler._trial_info == {}
    assert "MultiObjectiveASHA" in scheduler.debug_string()


# --- the state through Ray's experiment checkpoint (search.driver.SchedulerState) -----------------------------------

@pytest.mark.parametrize("ranking, brackets", [("nondominated", 1), ("nondominated", 3), ("scalarized", 2)])
def test_restore_resumes_the_same_decisions(tmp_path, ranking, brackets):
    from gce_search.search.driver import SchedulerState

    events = _stream(11, n_trials=40, max_t=27)
    half = len(events) // 2

    def build(seed=0):
        return MultiObjectiveASHA(max_t=27, grace_period=1, reduction_factor=3, brackets=brackets,
                                  ranking=ranking, seed=seed)

    uninterrupted = build()
    expected = _replay(uninterrupted, events)

    first = build()
    state = {}
    decisions = _replay(first, events[:half], state=state)
    path = tmp_path / "callback-state.json"
    path.write_text(json.dumps(SchedulerState(first).get_state()))  # what the experiment checkpoint holds
    resumed = build(seed=123)  # a different generator: the restored state must replace it
    SchedulerState(resumed).set_state(json.loads(path.read_text()))
    decisions += _replay(resumed, events[half:], state=state)
    assert decisions == expected
    assert resumed.rung_records() == uninterrupted.rung_records()
    assert any(d == STOP for *_, d in expected)


# --- one real Ray Tune run ---------------------------------------------------------------------------------------

def _synthetic_trainable(config):
    from ray import tune

    final_acc, final_ece = config["quality"]
    for epoch in range(1, 10):
        acc = final_acc * (1 - 0.5 ** epoch)
        ece = final_ece + 0.1 * 0.5 ** epoch
        tune.report({"epoch": epoch, "val/acc": acc, "val/ece": ece, "score": acc - ece})


@pytest.mark.slow
def test_real_tune_run_stops_trials_at_rungs(tmp_path):
    import ray
    from ray import tune

    # the first trial dominates every other at every epoch; the others form a front of trade-offs
    qualities = [[0.95, 0.01]] + [[0.5 + 0.04 * i, 0.3 - 0.02 * i] for i in range(8)]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            _synthetic_trainable,
            param_space={"quality": tune.grid_search(qualities)},
            # Tune hands metric/mode to the scheduler: it must accept them and keep ranking on (acc, ece)
            tune_config=tune.TuneConfig(metric="score", mode="max",
                                        scheduler=MultiObjectiveASHA(max_t=9, grace_period=1, reduction_factor=3)),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="moasha", verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    assert not grid.errors
    last_epoch = {tuple(r.config["quality"]): r.metrics["epoch"] for r in grid}
    assert len(last_epoch) == len(qualities)
    assert last_epoch[(0.95, 0.01)] == 9
    stopped_early = [q for q, e in last_epoch.items() if e < 9]
    assert stopped_early, last_epoch
    assert {last_epoch[q] for q in stopped_early} <= {1, 3}


def test_result_of_an_unannounced_trial_assigns_it_a_bracket():
    scheduler = MultiObjectiveASHA(max_t=9, grace_period=1, reduction_factor=3)
    assert scheduler.on_trial_result(None, make_trial("restored"), result(1, 0.5, 0.1)) == CONTINUE
    assert list(scheduler.rung_records()[0][1]) == ["restored"]


def test_callbacks_pickle_explicit_state():
    import pickle

    from gce_search.search.driver import SchedulerState, TimeBudget

    scheduler = MultiObjectiveASHA(max_t=9, grace_period=1, reduction_factor=3)
    carrier = SchedulerState(scheduler)
    assert carrier.__getstate__() == {"scheduler": scheduler}
    assert type(pickle.loads(pickle.dumps(carrier)).scheduler) is MultiObjectiveASHA
    budget = TimeBudget(60)
    budget.on_step_begin(0, [])
    assert budget.__getstate__() == {"timeout_s": 60.0, "remaining": budget.remaining}
    restored = pickle.loads(pickle.dumps(budget))
    assert restored.remaining == budget.remaining and restored._last is None  # counting restarts at its first step


# --- the ε-net ranking (Syne Tune's rule inside a front) -------------------------------------------------------------

def test_epsilon_net_order_by_hand():
    from gce_search.search.moasha import EpsilonNetRanking, epsilon_net_order

    # one front in minimisation space (-acc, ece): 0.9/0.09, 0.8/0.05, 0.7/0.03, 0.6/0.01
    front = np.array([[-0.9, 0.09], [-0.8, 0.05], [-0.7, 0.03], [-0.6, 0.01]])
    # first the best accuracy; then the farthest from it (0.6/0.01, distance 0.310); then 0.8/0.05 (0.108 from
    # the chosen, against 0.102 for 0.7/0.03); last 0.7/0.03
    assert epsilon_net_order(front) == [0, 3, 1, 2]
    ranking = EpsilonNetRanking()
    assert ranking.rank_of_candidate(front[2], front[[0, 1, 3]]) == 3
    assert not ranking.promote(front[2], front[[0, 1, 3]], 3)  # rank 3 >= ceil(4 / 3)
    assert ranking.promote(front[3], front[:3], 3)             # rank 1 < 2
    # a candidate that dominates every recorded point is first, whatever the order of the others
    assert ranking.rank_of_candidate([-0.95, 0.005], front[:3]) == 0
    assert ranking.promote([-0.95, 0.005], front[:3], 3)
    # a point behind a front counts the whole front ahead of it
    assert ranking.rank_of_candidate([-0.5, 0.2], front) == 4


def test_epsnet_is_a_scheduler_option():
    from gce_search.search.moasha import EpsilonNetRanking
    from gce_search.search.schedulers import build_scheduler

    scheduler = build_scheduler({"name": "moasha", "ranking": "epsnet", "grace_period": 1, "reduction_factor": 3},
                                max_t=9)
    assert isinstance(scheduler.ranking, EpsilonNetRanking)


# --- the noise-aware ranking ------------------------------------------------------------------------------------------

def test_robust_ranking_with_zero_noise_is_the_nondominated_ranking():
    from gce_search.search.moasha import RobustRanking

    rng = np.random.default_rng(5)
    plain = NonDominatedRanking(pareto.to_minimization(pareto.REFERENCE_POINT, pareto.MODES))
    robust = RobustRanking(plain.reference_point)
    for _ in range(300):
        recorded = _random_rung(rng, int(rng.integers(0, 12)))
        (candidate,) = _random_rung(rng, 1)
        assert robust.rank_of_candidate(candidate + (0.0, 0.0), [r + (0.0, 0.0) for r in recorded]) == \
            plain.rank_of_candidate(candidate, recorded)


def test_robust_ranking_by_hand():
    """A = (acc 0.80, ECE 0.0300), F = (0.60, 0.0295): F is on the exact front (a better ECE by 0.0005) but A
    is better beyond the noise in accuracy and not worse beyond it in ECE, so F is robustly dominated. A candidate
    C = (0.70, 0.0400) behind both exactly is ahead of F once F drops a level."""
    from gce_search.search.moasha import RobustRanking

    ref = pareto.to_minimization(pareto.REFERENCE_POINT, pareto.MODES)
    a, f, c = ((0.80, 0.0300), (0.60, 0.0295), (0.70, 0.0400))
    mins = [tuple(pareto.to_minimization(p, pareto.MODES)) for p in (a, f, c)]
    noise = (0.011, 0.004)  # acc at n = 5000; a +-0.004 ECE interval
    plain = NonDominatedRanking(ref)
    robust = RobustRanking(ref)
    assert plain.rank_of_candidate(mins[2], mins[:2]) == 2
    assert robust.rank_of_candidate(mins[2] + noise, [m + noise for m in mins[:2]]) == 1


def test_noise_half_width_from_a_result():
    from gce_search.search.moasha import noise_half_width

    assert noise_half_width({"val/ece": 0.03, "val/ece_lo": 0.02, "val/ece_hi": 0.036}, "val/ece") == \
        pytest.approx(0.008)
    assert noise_half_width({"val/acc": 0.8, "val/n": 5000}, "val/acc") == pytest.approx(1.96 * (0.16 / 5000) ** 0.5)
    assert noise_half_width({"val/ece": 0.03, "val/n": 5000}, "val/ece") == pytest.approx(1.96 * 0.13 / 5000 ** 0.5)
    assert noise_half_width({"val/acc": 0.8}, "val/acc") == 0.0


def test_robust_is_a_scheduler_option_whose_points_carry_the_noise():
    from gce_search.search.moasha import RobustRanking

    scheduler = build_scheduler({"name": "moasha", "ranking": "robust", "grace_period": 1, "reduction_factor": 3},
                                max_t=9, objective={"w_acc": 1.0, "w_ece": 1.0})
    assert isinstance(scheduler.ranking, RobustRanking)
    trial = make_trial("t1")
    scheduler.on_trial_add(None, trial)
    out = scheduler.on_trial_result(None, trial, result(1, 0.8, 0.03, **{"val/n": 5000, "val/ece_lo": 0.02,
                                                                          "val/ece_hi": 0.036}))
    assert out == CONTINUE
    assert scheduler.rung_records()[0][1]["t1"] == pytest.approx((0.8, 0.03))  # the objectives, raw space
    stored = next(recorded for _, recorded in scheduler._brackets[0].rungs if recorded)["t1"]
    assert stored == pytest.approx((-0.8, 0.03, 1.96 * (0.16 / 5000) ** 0.5, 0.008))  # + the noise widths
