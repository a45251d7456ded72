"""search.pareto against brute force, hand-computed values and Optuna's independent hypervolume."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from gce_search.search import pareto


def brute_force_fronts(points: np.ndarray) -> list[list[int]]:
    """Peel the set: each front is every remaining point that no remaining point dominates."""
    remaining = list(range(len(points)))
    fronts = []
    while remaining:
        front = [i for i in remaining
                 if not any(pareto.dominates(points[j], points[i]) for j in remaining if j != i)]
        fronts.append(sorted(front))
        remaining = [i for i in remaining if i not in front]
    return fronts


def inclusion_exclusion_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Volume of the union of boxes [p, reference] by inclusion-exclusion (exponential; small n only)."""
    boxes = [p for p in points if np.all(p < reference)]
    total = 0.0
    for size in range(1, len(boxes) + 1):
        for subset in itertools.combinations(boxes, size):
            corner = np.max(subset, axis=0)
            total += (-1) ** (size + 1) * float(np.prod(reference - corner))
    return total


def random_points(rng, n, d, integer):
    if integer:  # few distinct values: many ties and duplicates
        return rng.integers(0, 4, size=(n, d)).astype(float)
    return rng.random((n, d))


@pytest.mark.parametrize("seed", range(30))
def test_non_dominated_sort_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    points = random_points(rng, n=int(rng.integers(1, 25)), d=int(rng.integers(2, 4)), integer=seed % 2 == 0)
    fronts = pareto.non_dominated_sort(points)
    assert fronts == brute_force_fronts(points)
    assert pareto.pareto_front(points) == brute_force_fronts(points)[0]


def test_non_dominated_sort_constructed_fronts_ties_and_duplicates():
    points = np.array([
        [1.0, 4.0],  # 0 front 0
        [2.0, 2.0],  # 1 front 0
        [2.0, 2.0],  # 2 duplicate of 1: same front
        [4.0, 1.0],  # 3 front 0
        [2.0, 3.0],  # 4 dominated by 1 only (tie in objective 0): front 1
        [4.0, 4.0],  # 5 dominated by 4: front 2
        [1.0, 5.0],  # 6 dominated by 0 (tie in objective 0): front 1
    ])
    assert pareto.non_dominated_sort(points) == [[0, 1, 2, 3], [4, 6], [5]]
    assert pareto.pareto_front(points) == [0, 1, 2, 3]
    assert pareto.non_dominated_sort(np.zeros((0, 2))) == []
    assert pareto.non_dominated_sort([[3.0, 3.0]]) == [[0]]


def test_non_dominated_sort_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        pareto.non_dominated_sort([[0.1, np.nan], [0.2, 0.3]])


def test_dominates():
    assert pareto.dominates([1, 2], [1, 3])
    assert not pareto.dominates([1, 2], [1, 2])  # equal points do not dominate each other
    assert not pareto.dominates([1, 3], [2, 2])


def test_to_minimization_negates_max_columns_only():
    values = np.array([[0.9, 0.05], [0.7, 0.2]])
    np.testing.assert_array_equal(pareto.to_minimization(values, ("max", "min")), [[-0.9, 0.05], [-0.7, 0.2]])
    np.testing.assert_array_equal(pareto.to_minimization([0.9, 0.05], ("min", "max")), [0.9, -0.05])
    with pytest.raises(ValueError, match="modes"):
        pareto.to_minimization(values, ("max", "down"))
    with pytest.raises(ValueError, match="modes"):
        pareto.to_minimization(values, ("max",))


def test_crowding_distance_hand_computed():
    # objective 0 spans 4, objective 1 spans 5; interior points add neighbour gaps / span per objective
    front = np.array([[0.0, 5.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]])
    distance = pareto.crowding_distance(front)
    assert np.isinf(distance[0]) and np.isinf(distance[3])
    assert distance[1] == pytest.approx((3 - 0) / 4 + (5 - 1) / 5)  # 1.55
    assert distance[2] == pytest.approx((4 - 1) / 4 + (2 - 0) / 5)  # 1.15


def test_crowding_distance_duplicates_share_a_value_and_small_fronts_are_infinite():
    front = np.array([[0.0, 5.0], [1.0, 2.0], [3.0, 1.0], [1.0, 2.0], [4.0, 0.0]])
    distance = pareto.crowding_distance(front)
    assert distance[1] == distance[3] == pytest.approx(1.55)
    assert np.all(np.isinf(pareto.crowding_distance([[1.0, 2.0], [2.0, 1.0]])))
    assert np.all(np.isinf(pareto.crowding_distance([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0]])))
    assert pareto.crowding_distance(np.zeros((0, 2))).shape == (0,)


def test_hypervolume_2d_hand_computed():
    # staircase (1,3), (2,2), (3,1) under reference (4,4): 1·1 + 1·2 + 1·3 = 6 unit cells
    points = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert pareto.hypervolume_2d(points, (4.0, 4.0)) == pytest.approx(6.0)
    # a dominated point, a duplicate and a point outside the box change nothing
    more = np.vstack([points, [[3.0, 3.0], [2.0, 2.0], [5.0, 0.0], [0.0, 4.0]]])
    assert pareto.hypervolume_2d(more, (4.0, 4.0)) == pytest.approx(6.0)
    assert pareto.hypervolume_2d(np.zeros((0, 2)), (1.0, 1.0)) == 0.0
    assert pareto.hypervolume_2d([[0.0, 0.0]], (2.0, 3.0)) == pytest.approx(6.0)


@pytest.mark.parametrize("seed", range(20))
def test_hypervolume_2d_matches_inclusion_exclusion_and_optuna(seed):
    from optuna._hypervolume import compute_hypervolume  # independent implementation (WFG)

    rng = np.random.default_rng(100 + seed)
    points = random_points(rng, n=int(rng.integers(1, 9)), d=2, integer=seed % 2 == 0)
    reference = np.array([3.5, 3.5]) if seed % 2 == 0 else np.array([1.1, 1.1])
    expected = inclusion_exclusion_hypervolume(points, reference)
    assert pareto.hypervolume_2d(points, reference) == pytest.approx(expected, abs=1e-12)
    assert pareto.hypervolume_2d(points, reference) == pytest.approx(
        float(compute_hypervolume(points, reference)), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_hypervolume_contributions_match_leave_one_out(seed):
    rng = np.random.default_rng(200 + seed)
    points = random_points(rng, n=int(rng.integers(1, 12)), d=2, integer=seed % 2 == 0)
    reference = np.array([3.5, 3.5]) if seed % 2 == 0 else np.array([1.0, 1.0])
    contributions = pareto.hypervolume_contributions_2d(points, reference)
    total = inclusion_exclusion_hypervolume(points, reference)
    for i, point in enumerate(points):
        # leave out every copy of the point: duplicates share the distinct point's contribution
        others = points[~np.all(points == point, axis=1)]
        assert contributions[i] == pytest.approx(total - inclusion_exclusion_hypervolume(others, reference),
                                                 abs=1e-12)


def test_hypervolume_contributions_hand_computed():
    points = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    contributions = pareto.hypervolume_contributions_2d(points, (4.0, 4.0))
    # (1,3): x to 2, y from 4 → 1·1; (2,2): x to 3, y from 3 → 1·1; (3,1): x to 4, y from 2 → 1·1
    np.testing.assert_allclose(contributions, [1.0, 1.0, 1.0, 1.0, 0.0])


def test_reference_point_and_acc_ece_hypervolume_hand_computed():
    assert pareto.OBJECTIVES == ("val/acc", "val/ece") and pareto.MODES == ("max", "min")
    assert pareto.REFERENCE_POINT == (0.0, 1.0)
    assert pareto.hypervolume_acc_ece([[0.8, 0.1]]) == pytest.approx(0.8 * 0.9)
    # union of [0,0.9]x[0.2,1] and [0,0.8]x[0.05,1]: 0.72 + 0.76 - 0.64
    two = [[0.9, 0.2], [0.8, 0.05]]
    assert pareto.hypervolume_acc_ece(two) == pytest.approx(0.84)
    # a diverged trial (NaN ECE) must not count as ECE 0; accuracy 0 adds nothing
    assert pareto.hypervolume_acc_ece(two + [[0.95, float("nan")], [0.0, 0.0]]) == pytest.approx(0.84)
    assert pareto.hypervolume_acc_ece([[1.0, 0.0]]) == pytest.approx(1.0)
    assert pareto.hypervolume_acc_ece(np.zeros((0, 2))) == 0.0


def test_hypervolume_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="2 objectives"):
        pareto.hypervolume_2d([[1.0, 2.0, 3.0]], (4.0, 4.0))
    with pytest.raises(ValueError, match="reference"):
        pareto.hypervolume_2d([[1.0, 2.0]], (4.0,))
    with pytest.raises(ValueError, match="NaN"):
        pareto.hypervolume_2d([[1.0, np.nan]], (4.0, 4.0))


def test_objective_front_reads_the_objectives_by_name_and_direction():
    rows = [{"val/acc": 0.9, "val/ece": 0.05, "x": 1}, {"val/ece": 0.01, "val/acc": 0.8},
            {"val/acc": 0.7, "val/ece": 0.06}, {"val/acc": 0.9, "val/ece": 0.05}]
    # (0.7, 0.06) is dominated by both others; the duplicate of a front member is on the front too
    assert pareto.objective_front(rows) == [0, 1, 3]
    assert pareto.objective_front([]) == []
