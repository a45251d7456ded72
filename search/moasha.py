"""Multi-objective asynchronous successive halving (MO-ASHA) as a Ray Tune scheduler.

Ray Tune's schedulers take one metric (ray#8018) and Optuna's pruners refuse multi-objective studies
(optuna#3450). `MultiObjectiveASHA` keeps the structure of Ray 2.60's `AsyncHyperBandScheduler`
(ray/tune/schedulers/async_hyperband.py): brackets, rungs at grace_period · η^k up to max_t, a decision when a
trial's result reaches a rung it has not been recorded at, bookkeeping on complete/remove. What changes is *how a trial is compared with the trials recorded at its rung*: a pluggable
`RankingStrategy` (the MO-ASHA paper, Schmucker et al. 2021, compares several such selection rules):

- `NonDominatedRanking`: non-dominated sorting on (val/acc ↑, val/ece ↓), ties inside a front broken by the
  exclusive hypervolume contribution (see its docstring for why not crowding distance).
- `ScalarizedRanking(weights)`: plain ASHA on w_acc·acc − w_ece·ece, bit-for-bit Ray's percentile cutoff.
- `EpsilonNetRanking`: non-dominated sorting with the ε-net order of Syne Tune's MOASHA inside a front.
- `RobustRanking`: noise-aware: two trials tie on an objective when their difference is within the noise of both
  results (the reported bootstrap interval of the ECE, the binomial interval of the accuracy); ties inside a level
  broken by hypervolume contribution.

Objective directions are normalised once, on arrival (`search.pareto.to_minimization`); strategies see points in
minimisation space only.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from gce_search.search import pareto

__all__ = [
    "RankingStrategy",
    "NonDominatedRanking",
    "ScalarizedRanking",
    "EpsilonNetRanking",
    "RobustRanking",
    "RANKINGS",
    "MultiObjectiveASHA",
]


class RankingStrategy:
    """Answers one question: does a trial arriving at a rung continue, given the results recorded there so far?

    `candidate` is the trial's objective vector and `recorded` those of the trials already recorded at the rung
    (not including the candidate), all in minimisation space. Subclasses must be picklable (the scheduler's state
    is pickled by Tune's experiment checkpoint).
    """

    name = "base"

    def promote(self, candidate: Sequence[float], recorded: Sequence[Sequence[float]],
                reduction_factor: float) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NonDominatedRanking(RankingStrategy):
    """Rank by non-dominated sorting; inside a front, by exclusive hypervolume contribution (largest first).

    Promotion rule (decide on arrival, as Ray's ASHA does): let N be the number of trials recorded at the rung
    *including* the candidate and r the number of them ranked strictly ahead of it. The candidate continues iff
    r < ceil(N / η). This is the ASHA paper's "top 1/η of the rung" (Li et al. 2020, Algorithm 2) applied to each
    arrival: the first trial at a rung always continues (Ray's empty-rung rule), and for η = 2 and 3 it coincides
    with Ray's rule (reward ≥ the (1 − 1/η) linear-interpolation percentile of the recorded rewards) applied to
    rank positions. A trial ahead of the candidate is one in a better front, or one in the same front with a
    strictly larger tie-break value; equal values go to the candidate, as Ray's ASHA continues a trial whose
    reward equals the cutoff.

    Tie-break inside a front: hypervolume contribution with the fixed reference point, for two objectives.
    Why not crowding distance: crowding gives both extremes of a front infinite priority, and on accuracy vs ECE
    the low-ECE extreme is often a degenerate near-uniform classifier (chance accuracy, ECE ≈ 0 because its
    confidence equals its accuracy). Hypervolume contribution weighs that trial by the accuracy it brings (the
    reference is acc 0), and it is the quantity the search is scored on (`search.pareto.REFERENCE_POINT`), exact
    and O(n log n) in 2-D. With more than two objectives, or when no reference point is given, the tie-break falls
    back to NSGA-II crowding distance.

    `reference_point` is in minimisation space (the scheduler converts it); None means crowding distance.
    """

    name = "nondominated"

    def __init__(self, reference_point: Sequence[float] | None = None):
        self.reference_point = None if reference_point is None else tuple(float(v) for v in reference_point)

    def tie_break_values(self, front_points: np.ndarray) -> np.ndarray:
        """Larger is better; computed on the points of one front."""
        if self.reference_point is not None and front_points.shape[1] == 2:
            return pareto.hypervolume_contributions_2d(front_points, self.reference_point)
        return pareto.crowding_distance(front_points)

    def rank_of_candidate(self, candidate, recorded) -> int:
        """Number of recorded points ranked strictly ahead of the candidate (the candidate's 0-based rank)."""
        points = np.vstack([np.asarray(recorded, dtype=float).reshape(-1, len(candidate)),
                            np.asarray(candidate, dtype=float)[None, :]])
        candidate_index = points.shape[0] - 1
        ahead = 0
        for front in pareto.non_dominated_sort(points):
            if candidate_index not in front:
                ahead += len(front)
                continue
            return ahead + self.ahead_in_front(points[front], front.index(candidate_index))
        raise AssertionError("candidate missing from every front")

    def ahead_in_front(self, front_points: np.ndarray, position: int) -> int:
        """How many members of the candidate's front (the candidate at `position`) are ranked ahead of it."""
        values = self.tie_break_values(front_points)
        return int(np.sum(values > values[position]))

    def promote(self, candidate, recorded, reduction_factor) -> bool:
        total = len(recorded) + 1
        return self.rank_of_candidate(candidate, recorded) < math.ceil(total / reduction_factor)

    def __repr__(self) -> str:
        return f"NonDominatedRanking(reference_point={self.reference_point})"


class EpsilonNetRanking(NonDominatedRanking):
    """Non-dominated sorting with an ε-net order inside each front (Salinas et al. 2021, the rule of Syne Tune's
    MOASHA): the front's first member is its best on the first objective (the highest val/acc), each next one the
    member farthest (Euclidean, raw objective units) from those already picked. A candidate's rank is the number of
    points in better fronts plus its position in its front's order; it continues iff that rank < ceil(N / η).

    Syne Tune 0.16 ranks by the *order* array where it means each point's *position* in it
    (`ranks = searchsorted(sorted(order), order)`), so its decision depends on which point is ordered last, not on
    the candidate's own rank: a candidate that dominates three recorded points is stopped at η = 3. This class
    applies the rule as the paper describes it.
    """

    name = "epsnet"

    def __init__(self):
        super().__init__(None)

    def ahead_in_front(self, front_points: np.ndarray, position: int) -> int:
        return epsilon_net_order(front_points).index(position)

    def __repr__(self) -> str:
        return "EpsilonNetRanking()"


def epsilon_net_order(points: np.ndarray) -> list[int]:
    """Indices of `points` (minimisation space) in ε-net order: first the best on objective 0 (lowest index on
    ties), then repeatedly the point farthest from those chosen (lowest index on ties)."""
    n = points.shape[0]
    first = int(np.argmin(points[:, 0]))
    order = [first]
    dist = np.linalg.norm(points - points[first], axis=1)
    dist[first] = -1.0
    for _ in range(n - 1):
        nxt = int(np.argmax(dist))
        order.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
        dist[order] = -1.0
    return order


class RobustRanking(NonDominatedRanking):
    """Noise-aware promotion. Each point carries its objectives and then one noise half-width per objective
    (MultiObjectiveASHA appends them from the result: the 95% interval of the ECE, `<ece>_lo`/`<ece>_hi`, and
    1.96·sqrt(acc (1 − acc) / n) for the accuracy). Point i *robustly dominates* j when it is better than j beyond
    sqrt(w_i² + w_j²) on some objective and worse beyond it on none: a difference within the noise of both results
    is a tie. The points are sorted into levels by that relation (level 0: robustly dominated by none; a cycle, which
    the tolerance allows, puts the remaining points in one level); inside the candidate's level the tie-break is the
    exclusive hypervolume contribution, as NonDominatedRanking's. With zero widths this is NonDominatedRanking.

    The widths are those of each result on its own; two trials scored on the same val samples have correlated
    errors, so the paired interval of their difference (search.robust) is narrower, and this rule ties more often.
    """

    name = "robust"

    def rank_of_candidate(self, candidate, recorded) -> int:
        m = len(candidate) // 2
        points = np.vstack([np.asarray(recorded, dtype=float).reshape(-1, 2 * m),
                            np.asarray(candidate, dtype=float)[None, :]])
        values, widths = points[:, :m], np.abs(points[:, m:])
        diff = values[:, None, :] - values[None, :, :]  # i minus j, minimisation space
        threshold = np.sqrt(widths[:, None, :] ** 2 + widths[None, :, :] ** 2)
        dominates = (diff < -threshold).any(axis=2) & ~(diff > threshold).any(axis=2)  # [i, j]: i over j
        remaining = list(range(points.shape[0]))
        candidate_index = points.shape[0] - 1
        ahead = 0
        while remaining:
            sub = dominates[np.ix_(remaining, remaining)]
            level = [remaining[i] for i in np.flatnonzero(~sub.any(axis=0))] or list(remaining)
            if candidate_index in level:
                return ahead + self.ahead_in_front(values[level], level.index(candidate_index))
            ahead += len(level)
            remaining = [i for i in remaining if i not in level]
        raise AssertionError("candidate missing from every level")

    def __repr__(self) -> str:
        return f"RobustRanking(reference_point={self.reference_point})"


class ScalarizedRanking(RankingStrategy):
    """Plain ASHA on the weighted score Σ_i w_i·(±metric_i), '+' for a 'max' objective, '−' for a 'min' one.

    With the default objectives and weights (1, 1) this is `score = w_acc·acc − w_ece·ece` (the trial config's
    `objective` section). The cutoff is Ray's exactly: `np.nanpercentile(recorded, (1 − 1/η)·100)`, and the trial
    stops iff its score is below it, so decisions equal `ASHAScheduler(metric="score", mode="max")` fed the score.
    """

    name = "scalarized"

    def __init__(self, weights: Sequence[float] = (1.0, 1.0)):
        weights = tuple(float(w) for w in weights)
        if not weights or any(not math.isfinite(w) or w < 0 for w in weights):
            raise ValueError(f"weights: {weights!r} is not valid; valid: one finite weight >= 0 per objective")
        self.weights = weights

    def score(self, point) -> float:
        if len(point) != len(self.weights):
            raise ValueError(f"weights: {len(self.weights)} weights given for {len(point)} objectives")
        # In minimisation space a 'max' metric m appears as -m, so -(Σ w·p) = Σ ±w·m; summed in objective order
        # so that 2-objective scores are bit-identical to w_acc*acc - w_ece*ece.
        total = 0.0
        for weight, value in zip(self.weights, point):
            total = total + weight * value
        return -total

    def promote(self, candidate, recorded, reduction_factor) -> bool:
        if not recorded:
            return True
        cutoff = np.nanpercentile([self.score(p) for p in recorded], (1 - 1 / reduction_factor) * 100)
        return not self.score(candidate) < cutoff

    def __repr__(self) -> str:
        return f"ScalarizedRanking(weights={self.weights})"


RANKINGS = {"nondominated": NonDominatedRanking, "scalarized": ScalarizedRanking,
            "epsnet": EpsilonNetRanking, "robust": RobustRanking}


def noise_half_width(result: dict, metric: str) -> float:
    """The 95% noise half-width of one result's metric for RobustRanking: half its bootstrap interval
    (`<metric>_lo`, `<metric>_hi`) when the result has one; for an accuracy, 1.96·sqrt(acc (1 − acc) / n) with
    `<split>/n`; for an ECE without an interval, 1.96·0.13/sqrt(n) (the std of a 15-bin ECE at n samples); else 0."""
    lo, hi = result.get(f"{metric}_lo"), result.get(f"{metric}_hi")
    if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi)):
        return abs(float(hi) - float(lo)) / 2
    split = metric.split("/")[0]
    n = result.get(f"{split}/n")
    value = result.get(metric)
    if not (isinstance(n, (int, float)) and n > 0 and isinstance(value, (int, float)) and math.isfinite(value)):
        return 0.0
    if metric.endswith("/acc"):
        return 1.96 * math.sqrt(max(value * (1 - value), 0.0) / n)
    if "ece" in metric:
        return 1.96 * 0.13 / math.sqrt(n)
    return 0.0


class _Bracket:
    """Rungs of one bracket, highest milestone first, each {trial_id: objective vector (minimisation)}.

    The rung layout is Ray's `_Bracket` (same formula, including its float rounding), so a trial meets the same
    milestones under both schedulers.
    """

    def __init__(self, min_t: float, max_t: float, reduction_factor: float, s: int, stop_last_trials: bool):
        self.rf = reduction_factor
        max_rungs = int(np.log(max_t / min_t) / np.log(self.rf) - s + 1)
        self.rungs: list[tuple[float, dict[str, tuple[float, ...]]]] = [
            (min_t * self.rf ** (k + s), {}) for k in reversed(range(max_rungs))
        ]
        self.stop_last_trials = stop_last_trials

    def rung_for(self, trial_id: str, cur_iter: float) -> dict | None:
        """The rung this result is decided at (the highest reached milestone not yet recorded), or None."""
        for milestone, recorded in self.rungs:
            if cur_iter >= milestone and trial_id in recorded and not self.stop_last_trials:
                return None
            if cur_iter < milestone or trial_id in recorded:
                continue
            return recorded
        return None

    def on_result(self, trial_id: str, cur_iter: float, point: tuple[float, ...], ranking: RankingStrategy) -> str:
        recorded = self.rung_for(trial_id, cur_iter)
        if recorded is None:
            return TrialScheduler.CONTINUE
        keep = ranking.promote(point, list(recorded.values()), self.rf)
        recorded[trial_id] = point
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP

    def debug_str(self) -> str:
        return "Bracket: " + " | ".join(f"Iter {milestone:.3f}: {len(recorded)} recorded"
                                        for milestone, recorded in self.rungs)


class MultiObjectiveASHA(FIFOScheduler):
    """Asynchronous successive halving that promotes by a multi-objective ranking (default: Pareto rank).

    Args:
        time_attr: monotonic progress key in each result (the trial reports `epoch`).
        max_t: full budget in `time_attr` units; a trial reaching it is stopped (Ray's `stop_last_trials`).
        grace_period: first rung; rungs sit at grace_period · η^k (k ≥ 0) up to max_t.
        reduction_factor: η; the top 1/η of a rung continues.
        brackets: number of brackets; a new trial joins one at random with softmax weights on the bracket sizes,
            as in Ray (drawn from this scheduler's own generator, seeded by `seed`, so a restored scheduler
            continues the same sequence).
        ranking: "nondominated", "scalarized", "epsnet", "robust", or a `RankingStrategy` instance.
        metrics / modes: the objectives and their directions; default ("val/acc", "val/ece"), ("max", "min").
        reference_point: hypervolume reference in the raw metric space, for the non-dominated tie-break; None
            uses `search.pareto.REFERENCE_POINT` for the default objectives and crowding distance otherwise.
        weights: weights of the scalarised ranking (ignored by the others); default 1 per objective.
        stop_last_trials: stop trials at max_t (as Ray's ASHA).
        seed: seed of the bracket assignment.

    A result reaching a rung must carry every metric (ValueError otherwise: a missing metric is a spelling error
    in the space or the trainable, and a silent CONTINUE would turn the search into FIFO). A result with a
    non-finite objective (a diverged trial) stops the trial and is not recorded at the rung, so it neither
    blocks nor helps the trials that arrive later (Ray's ASHA ignores NaN rewards in its percentile too).

    `TuneConfig(metric="score", mode="max")` is accepted through `set_search_properties`: it is kept for Tune's
    own result checks and does not replace this scheduler's objectives.

    Ray 2.60 never saves or restores a scheduler's state (`Tuner.restore` unpickles it as it was when the Tuner
    was built): the rungs, bracket assignments, counters and generator go through Ray's experiment checkpoints as
    JSON in search.driver.SchedulerState, as Ray's own ASHAScheduler's rungs do.
    """

    def __init__(
        self,
        time_attr: str = "epoch",
        max_t: int = 100,
        grace_period: int = 1,
        reduction_factor: float = 3,
        brackets: int = 1,
        ranking: str | RankingStrategy = "nondominated",
        metrics: Sequence[str] = pareto.OBJECTIVES,
        modes: Sequence[str] = pareto.MODES,
        reference_point: Sequence[float] | None = None,
        weights: Sequence[float] | None = None,
        stop_last_trials: bool = True,
        seed: int | None = 0,
    ):
        if not (isinstance(max_t, (int, float)) and max_t > 0):
            raise ValueError(f"max_t: {max_t!r} is not valid; valid: a number > 0")
        if not (isinstance(grace_period, (int, float)) and 0 < grace_period <= max_t):
            raise ValueError(f"grace_period: {grace_period!r} is not valid; valid: 0 < grace_period <= max_t "
                             f"({max_t})")
        if not (isinstance(reduction_factor, (int, float)) and reduction_factor > 1):
            raise ValueError(f"reduction_factor: {reduction_factor!r} is not valid; valid: a number > 1")
        if not (isinstance(brackets, int) and brackets >= 1):
            raise ValueError(f"brackets: {brackets!r} is not valid; valid: an integer >= 1")
        metrics = tuple(metrics)
        modes = tuple(modes)
        if not metrics or len(set(metrics)) != len(metrics):
            raise ValueError(f"metrics: {metrics!r} is not valid; valid: distinct result keys, at least one")
        if len(modes) != len(metrics) or any(m not in ("min", "max") for m in modes):
            raise ValueError(f"modes: {modes!r} is not valid; valid: 'min' or 'max' for each of {metrics!r}")
        super().__init__()
        self._time_attr = time_attr
        self._max_t = max_t
        self._reduction_factor = reduction_factor
        self._stop_last_trials = stop_last_trials
        self._metrics = metrics
        self._modes = modes
        self._ranking = self._build_ranking(ranking, reference_point, weights)
        self._brackets = [_Bracket(grace_period, max_t, reduction_factor, s, stop_last_trials)
                          for s in range(brackets)]
        self._rng = np.random.default_rng(seed)
        self._trial_info: dict[str, _Bracket] = {}
        self._num_stopped = 0
        self._num_diverged = 0
        self._tune_mode: str | None = None

    def _build_ranking(self, ranking, reference_point, weights) -> RankingStrategy:
        if isinstance(ranking, RankingStrategy):
            return ranking
        if ranking not in RANKINGS:
            raise ValueError(f"ranking: {ranking!r} is not valid; valid: {sorted(RANKINGS)} or a RankingStrategy")
        if ranking == "scalarized":
            return ScalarizedRanking(weights if weights is not None else (1.0,) * len(self._metrics))
        if ranking == "epsnet":
            return EpsilonNetRanking()
        if reference_point is None and self._metrics == pareto.OBJECTIVES and self._modes == pareto.MODES:
            reference_point = pareto.REFERENCE_POINT
        if reference_point is not None:
            if len(reference_point) != len(self._metrics):
                raise ValueError(f"reference_point: {reference_point!r} is not valid; valid: one value per "
                                 f"metric of {self._metrics!r}")
            reference_point = tuple(pareto.to_minimization(reference_point, self._modes))
        if ranking == "robust":
            return RobustRanking(reference_point)
        return NonDominatedRanking(reference_point)

    @property
    def metrics(self) -> tuple[str, ...]:
        return self._metrics

    @property
    def modes(self) -> tuple[str, ...]:
        return self._modes

    @property
    def ranking(self) -> RankingStrategy:
        return self._ranking

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        # Tune hands TuneConfig's metric/mode to every scheduler and fails the run if we refuse them. Keep them
        # (Tune checks results for `self.metric`) but rank on our own objectives.
        if metric:
            self._metric = metric
        if mode:
            self._tune_mode = mode
        return True

    def on_trial_add(self, tune_controller, trial):
        sizes = np.array([len(b.rungs) for b in self._brackets])
        probs = np.e ** (sizes - sizes.max())
        index = int(self._rng.choice(len(self._brackets), p=probs / probs.sum()))
        self._trial_info[trial.trial_id] = self._brackets[index]

    def _objective_point(self, trial, result: dict) -> tuple[float, ...] | None:
        """The result's objectives in minimisation space; None if any is non-finite (diverged)."""
        missing = [m for m in self._metrics if result.get(m) is None]
        if missing:
            raise ValueError(
                f"metrics: trial {trial.trial_id} reported {self._time_attr}={result.get(self._time_attr)} "
                f"without {missing} (result keys: {sorted(result)}); MultiObjectiveASHA ranks on "
                f"{list(self._metrics)}: report them at every rung or pass metrics=[...] naming keys it reports")
        try:
            values = [float(result[m]) for m in self._metrics]
        except (TypeError, ValueError) as error:
            raise ValueError(f"metrics: trial {trial.trial_id} reported a non-numeric value for one of "
                             f"{list(self._metrics)}: {error}") from None
        if not all(math.isfinite(v) for v in values):
            return None
        point = tuple(float(v) for v in pareto.to_minimization(values, self._modes))
        if isinstance(self._ranking, RobustRanking):
            point += tuple(noise_half_width(result, m) for m in self._metrics)
        return point

    def _diverged(self, result: dict) -> bool:
        if result.get("status") == "diverged":
            return True
        for m in self._metrics:
            try:
                if not math.isfinite(float(result.get(m))):
                    return True
            except (TypeError, ValueError):
                pass  # missing or non-numeric: reported by _objective_point when the result reaches a rung
        return False

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._diverged(result):
            self._num_stopped += 1
            self._num_diverged += 1
            return TrialScheduler.STOP
        if self._time_attr not in result:
            return TrialScheduler.CONTINUE
        if trial.trial_id not in self._trial_info:
            self.on_trial_add(tune_controller, trial)  # a trial Tune restored without announcing it again
        bracket = self._trial_info[trial.trial_id]
        cur_iter = result[self._time_attr]
        at_rung = bracket.rung_for(trial.trial_id, cur_iter) is not None
        point = self._objective_point(trial, result) if at_rung else None
        if cur_iter >= self._max_t and self._stop_last_trials:
            action = TrialScheduler.STOP  # recorded at its last rung by on_trial_complete, as in Ray
        elif at_rung:
            action = bracket.on_result(trial.trial_id, cur_iter, point, self._ranking)
        else:
            action = TrialScheduler.CONTINUE
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict):
        bracket = self._trial_info.pop(trial.trial_id, None)
        if bracket is None or self._time_attr not in result or self._diverged(result):
            return
        if any(result.get(m) is None for m in self._metrics):
            return  # a trial that ended without a full result (errors surface in on_trial_result)
        if bracket.rung_for(trial.trial_id, result[self._time_attr]) is None:
            return
        bracket.on_result(trial.trial_id, result[self._time_attr], self._objective_point(trial, result),
                          self._ranking)

    def on_trial_remove(self, tune_controller, trial):
        self._trial_info.pop(trial.trial_id, None)

    def rung_records(self, bracket: int = 0) -> list[tuple[float, dict[str, tuple[float, ...]]]]:
        """(milestone, {trial_id: objectives in the raw metric space}) per rung, lowest milestone first."""
        signs = pareto.to_minimization([1.0] * len(self._metrics), self._modes)
        return [(milestone, {tid: tuple(float(v * s) for v, s in zip(point, signs))
                             for tid, point in recorded.items()})
                for milestone, recorded in reversed(self._brackets[bracket].rungs)]

    def debug_string(self) -> str:
        out = (f"Using MultiObjectiveASHA ({self._ranking!r} on {list(self._metrics)} {list(self._modes)}): "
               f"num_stopped={self._num_stopped} (diverged {self._num_diverged})")
        return out + "\n" + "\n".join(b.debug_str() for b in self._brackets)
