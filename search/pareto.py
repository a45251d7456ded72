"""Pareto machinery shared by the scheduler and the results: non-dominated sorting, crowding, hypervolume.

Every function below works in *minimisation* space. Objective directions are normalised once, at the edge, by
`to_minimization` (a "max" column is negated), so nothing inside has to remember which way is better.

`OBJECTIVES` and `MODES` are the one definition of the search's objectives and their directions (the searcher, the
scheduler, the results and the console use them); `as_minimization` puts (val/acc, val/ece) rows into
minimisation space. Accuracy and ECE are scored against one fixed reference point, `REFERENCE_POINT`
= (val/acc 0, val/ece 1): the hypervolume of a set of (acc, ece) results is then the area it dominates inside the
unit square [0, 1] x [0, 1], so numbers are comparable across experiments, datasets and schedulers (a reference
derived from the observed points would move with every experiment). `hypervolume_acc_ece` applies it.

Pure Python/NumPy; no Ray, no Optuna.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "OBJECTIVES",
    "MODES",
    "REFERENCE_POINT",
    "to_minimization",
    "as_minimization",
    "dominates",
    "non_dominated_sort",
    "pareto_front",
    "crowding_distance",
    "hypervolume_2d",
    "hypervolume_contributions_2d",
    "hypervolume_acc_ece",
    "objectives_for",
]

# The search's objectives and their directions: Optuna's study, the scheduler, the front and every report use these.
OBJECTIVES: tuple[str, str] = ("val/acc", "val/ece")
MODES: tuple[str, str] = ("max", "min")
# In the raw metric space, aligned with OBJECTIVES: the worst accuracy (0) and the worst ECE (1).
REFERENCE_POINT: tuple[float, float] = (0.0, 1.0)


def objectives_for(objective: dict | None) -> tuple[str, str]:
    """The objectives of a search whose trial config has this `objective` section: val/acc and the key of its
    `ece_metric` (OBJECTIVES by default). Every calibration error it names lies in [0, 1], so REFERENCE_POINT
    and MODES hold for each."""
    from gce_search.trainables.config import objective_ece_key

    return ("val/acc", objective_ece_key(objective))


def _as_points(points, name: str = "points") -> np.ndarray:
    array = np.asarray(points, dtype=float)
    if array.ndim == 1 and array.size == 0:
        return array.reshape(0, 0)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n_points, n_objectives); got shape {array.shape}")
    return array


def to_minimization(values, modes: Sequence[str]) -> np.ndarray:
    """Return `values` (n_points, n_objectives) with every 'max' column negated, as float64.

    `modes` holds one of 'min'/'max' per column. A single point (1-D) is accepted and returned 1-D.
    """
    array = np.asarray(values, dtype=float)
    bad = [m for m in modes if m not in ("min", "max")]
    if bad:
        raise ValueError(f"modes: {bad!r} is not a direction; valid: 'min' or 'max' per objective")
    if array.shape[-1:] != (len(modes),) and array.size:
        raise ValueError(f"modes: {len(modes)} directions given for {array.shape[-1]} objectives")
    signs = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    return array * signs


def objective_front(results, objectives: tuple[str, str] = OBJECTIVES) -> list[int]:
    """Indices of the non-dominated ones among `results`, mappings with a value for each key of `objectives` (a
    trial's last result, a pareto.csv row), compared in minimisation space."""
    rows = [[r[k] for k in objectives] for r in results]
    return pareto_front(as_minimization(np.asarray(rows, dtype=float).reshape(-1, len(objectives)))) if rows else []


def as_minimization(values) -> np.ndarray:
    """`values` with one column per objective of OBJECTIVES ((val/acc, val/ece) rows, or one such pair) in
    minimisation space: to_minimization with MODES."""
    return to_minimization(values, MODES)


def dominates(a, b) -> bool:
    """True when a Pareto-dominates b (minimisation): a <= b everywhere and a < b somewhere."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    return bool(np.all(a <= b) and np.any(a < b))


def non_dominated_sort(points) -> list[list[int]]:
    """Split the points into fronts (lists of row indices, each ascending); front 0 is the Pareto front.

    Identical points do not dominate each other, so duplicates share a front. Points with NaN are not comparable
    and must be removed by the caller (ValueError). O(n^2 · d) — Deb et al. (2002), fast non-dominated sort.
    """
    array = _as_points(points)
    n = array.shape[0]
    if n == 0:
        return []
    if np.isnan(array).any():
        raise ValueError("points: contain NaN; drop diverged results before sorting")
    # pairwise: le[i, j] = all(p_i <= p_j), lt[i, j] = any(p_i < p_j)
    le = np.all(array[:, None, :] <= array[None, :, :], axis=2)
    lt = np.any(array[:, None, :] < array[None, :, :], axis=2)
    dominance = le & lt  # dominance[i, j]: i dominates j
    dominated_count = dominance.sum(axis=0)
    fronts: list[list[int]] = []
    current = np.flatnonzero(dominated_count == 0)
    while current.size:
        fronts.append(current.tolist())
        # peel the front: its members no longer count against the points they dominate
        dominated_count = dominated_count - dominance[current].sum(axis=0)
        dominated_count[current] = -1
        current = np.flatnonzero(dominated_count == 0)
    return fronts


def pareto_front(points) -> list[int]:
    """Row indices (ascending) of the non-dominated points; duplicates of a front point are all included."""
    fronts = non_dominated_sort(points)
    return fronts[0] if fronts else []


def crowding_distance(front_points) -> np.ndarray:
    """NSGA-II crowding distance (Deb et al. 2002) of each point of one front.

    Per objective the points are sorted, both extremes get +inf, and an interior point adds the gap between its
    neighbours divided by the objective's range. Identical points get the same distance: the distance is computed
    on the distinct points and copied to their duplicates (otherwise the order of duplicates would decide which
    copy is an "extreme").
    """
    array = _as_points(front_points, "front_points")
    n = array.shape[0]
    if n == 0:
        return np.zeros(0)
    unique, inverse = np.unique(array, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    m = unique.shape[0]
    distance = np.zeros(m)
    if m <= 2:
        distance[:] = np.inf
        return distance[inverse]
    for k in range(unique.shape[1]):
        order = np.argsort(unique[:, k], kind="stable")
        column = unique[order, k]
        span = column[-1] - column[0]
        distance[order[0]] = np.inf
        distance[order[-1]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance[inverse]


def _staircase(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Distinct non-dominated points strictly better than the reference, sorted by objective 0 ascending."""
    inside = points[np.all(points < reference, axis=1)]
    if inside.shape[0] == 0:
        return inside.reshape(0, 2)
    inside = np.unique(inside, axis=0)  # lexicographic: objective 0 ascending, then objective 1 ascending
    kept = []
    best_second = np.inf
    for x, y in inside:
        if y < best_second:  # not dominated by (or equal to) an earlier point
            kept.append((x, y))
            best_second = y
    return np.array(kept, dtype=float)


def _check_2d(points, reference) -> tuple[np.ndarray, np.ndarray]:
    array = _as_points(points)
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if ref.shape != (2,) or not np.all(np.isfinite(ref)):
        raise ValueError(f"reference: expected 2 finite numbers; got {reference!r}")
    if array.size == 0:
        return array.reshape(0, 2), ref
    if array.shape[1] != 2:
        raise ValueError(f"points: hypervolume_2d needs 2 objectives; got {array.shape[1]}")
    if np.isnan(array).any():
        raise ValueError("points: contain NaN; drop diverged results before computing a hypervolume")
    return array, ref


def hypervolume_2d(points, reference) -> float:
    """Exact area dominated by the points and bounded by the reference point (both in minimisation space).

    Points not strictly better than the reference in both objectives add nothing. Sweep over the staircase of
    non-dominated points sorted by the first objective: O(n log n).
    """
    array, ref = _check_2d(points, reference)
    stairs = _staircase(array, ref)
    if stairs.shape[0] == 0:
        return 0.0
    next_x = np.append(stairs[1:, 0], ref[0])
    return float(np.sum((next_x - stairs[:, 0]) * (ref[1] - stairs[:, 1])))


def hypervolume_contributions_2d(points, reference) -> np.ndarray:
    """Exclusive hypervolume contribution of each point: hypervolume(all) - hypervolume(all without the point).

    Identical points share their area: every copy gets what removing all copies would lose (removing a single
    copy changes nothing, which would rank duplicates last). Only points of the non-dominated staircase can
    contribute; what they lose is measured against the remaining points, dominated ones included. Within one
    front (how the scheduler uses it) this is the staircase area (x_next - x) * (y_previous - y).
    """
    array, ref = _check_2d(points, reference)
    result = np.zeros(array.shape[0])
    stairs = _staircase(array, ref)
    if stairs.shape[0] == 0:
        return result
    distinct = np.unique(array, axis=0)
    total = hypervolume_2d(distinct, ref)
    for x, y in stairs:
        same = (distinct[:, 0] == x) & (distinct[:, 1] == y)
        result[(array[:, 0] == x) & (array[:, 1] == y)] = total - hypervolume_2d(distinct[~same], ref)
    return result


def hypervolume_acc_ece(acc_ece) -> float:
    """Hypervolume of (val/acc, val/ece) pairs against `REFERENCE_POINT`: area dominated in the unit square.

    Rows with a non-finite value (diverged trials) are dropped: a NaN ECE must never count as a perfect one.
    """
    array = _as_points(acc_ece, "acc_ece")
    if array.size == 0:
        return 0.0
    array = array[np.all(np.isfinite(array), axis=1)]
    return hypervolume_2d(as_minimization(array), as_minimization(REFERENCE_POINT))
