"""Losses: hand-computed values, independent loop implementations, gradients, GCE properness, AdaFocal, registry."""
from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from gce_search.trainables import losses as L
from gce_search.trainables.losses import LOSSES, AdaFocal, build_loss

# Two rows with probabilities that make hand computation easy:
# row 0: p = [1/6, 1/3, 1/2] (target 2, predicted 2: correct, confidence 1/2)
# row 1: p = [0.7, 0.2, 0.1] (target 1, predicted 0: wrong, confidence 0.7)
P0 = (1 / 6, 1 / 3, 1 / 2)
P1 = (0.7, 0.2, 0.1)


def tiny_batch(dtype=torch.float64):
    logits = torch.tensor([P0, P1], dtype=dtype).log()
    targets = torch.tensor([2, 1])
    return logits, targets


def random_batch(batch=9, classes=4, seed=0, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(batch, classes, generator=g, dtype=dtype)
    targets = torch.randint(0, classes, (batch,), generator=g)
    return logits, targets


# ------------------------------------------------------------------------------------------- hand-computed values

def test_cross_entropy_by_hand():
    logits, targets = tiny_batch()
    expected = [-math.log(0.5), -math.log(0.2)]
    torch.testing.assert_close(L.cross_entropy(logits, targets), torch.tensor(expected, dtype=torch.float64))


def test_gce_by_hand():
    logits, targets = tiny_batch()
    # row 0 (y=2): mean_j p(2|x_j) = (1/2 + 0.1)/2 = 0.3; row 1 (y=1): (1/3 + 0.2)/2 = 4/15
    expected = [-math.log(0.5) + math.log(0.3), -math.log(0.2) + math.log(4 / 15)]
    torch.testing.assert_close(L.gce(logits, targets, lam=1.0), torch.tensor(expected, dtype=torch.float64))
    half = [-math.log(0.5) + 0.5 * math.log(0.3), -math.log(0.2) + 0.5 * math.log(4 / 15)]
    torch.testing.assert_close(L.gce(logits, targets, lam=0.5), torch.tensor(half, dtype=torch.float64))


def test_label_smoothing_by_hand():
    logits, targets = tiny_batch()
    a, k = 0.1, 3
    q0 = [a / k, a / k, 1 - a + a / k]
    q1 = [a / k, 1 - a + a / k, a / k]
    expected = [-sum(q * math.log(p) for q, p in zip(q0, P0)), -sum(q * math.log(p) for q, p in zip(q1, P1))]
    torch.testing.assert_close(L.label_smoothing(logits, targets, alpha=a),
                               torch.tensor(expected, dtype=torch.float64))


def test_brier_by_hand_sums_over_classes():
    logits, targets = tiny_batch()
    expected = [(1 / 6) ** 2 + (1 / 3) ** 2 + (1 / 2 - 1) ** 2, 0.7 ** 2 + (0.2 - 1) ** 2 + 0.1 ** 2]
    torch.testing.assert_close(L.brier(logits, targets), torch.tensor(expected, dtype=torch.float64))


def test_mmce_by_hand():
    logits, targets = tiny_batch()
    ce = [-math.log(0.5), -math.log(0.2)]
    # r = [0.5, 0.7], c = [1, 0]; c - r = [0.5, -0.7]; k(r0, r1) = exp(-0.2 / 0.4)
    k01 = math.exp(-0.2 / 0.4)
    unweighted_sq = (0.5 ** 2 + 0.7 ** 2 + 2 * 0.5 * (-0.7) * k01) / 4
    # weighted: one correct (weight 1 - r = 0.5, m = 1) and one wrong (weight r = 0.7, n = 1)
    weighted_sq = 0.5 ** 2 + 0.7 ** 2 - 2 * 0.5 * 0.7 * k01
    lam = 2.0
    torch.testing.assert_close(L.mmce(logits, targets, lam=lam, weighted=False),
                               torch.tensor(ce, dtype=torch.float64) + lam * math.sqrt(unweighted_sq))
    torch.testing.assert_close(L.mmce(logits, targets, lam=lam, weighted=True),
                               torch.tensor(ce, dtype=torch.float64) + lam * math.sqrt(weighted_sq))


def test_mmce_weighted_is_zero_when_every_prediction_is_right():
    logits, _ = tiny_batch()
    targets = torch.tensor([2, 0])  # both correct
    torch.testing.assert_close(L.mmce(logits, targets, lam=3.0, weighted=True), L.cross_entropy(logits, targets),
                               atol=1e-5, rtol=0)  # only the 1e-12 floor under the square root remains


def test_focal_by_hand():
    logits, targets = tiny_batch()
    expected = [-(0.5 ** 2) * math.log(0.5), -(0.8 ** 2) * math.log(0.2)]
    torch.testing.assert_close(L.focal(logits, targets, gamma=2.0), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(L.focal(logits, targets, gamma=0.0), L.cross_entropy(logits, targets))


def test_flsd53_by_hand():
    logits, targets = tiny_batch()
    # p_t = 0.5 >= 0.2: gamma 3; p_t = 0.2 is the switch point itself: gamma 3 (interval [0.2, 1])
    logits = torch.stack([logits[0], logits[0]])
    targets = torch.tensor([2, 0])  # second row: p_t = 1/6 < 0.2: gamma 5
    expected = [-(0.5 ** 3) * math.log(0.5), -((5 / 6) ** 5) * math.log(1 / 6)]
    torch.testing.assert_close(L.flsd53(logits, targets), torch.tensor(expected, dtype=torch.float64))


def test_dual_focal_by_hand():
    logits, targets = tiny_batch()
    g = 2.0
    # row 0: target is the argmax: p_j = 1/3 (largest non-target) under both readings
    # row 1: target p_t = 0.2; largest probability below it is 0.1, largest non-target is 0.7
    below = [-(1 - 0.5 + 1 / 3) ** g * math.log(0.5), -(1 - 0.2 + 0.1) ** g * math.log(0.2)]
    largest = [-(1 - 0.5 + 1 / 3) ** g * math.log(0.5), -(1 - 0.2 + 0.7) ** g * math.log(0.2)]
    torch.testing.assert_close(L.dual_focal(logits, targets, gamma=g),
                               torch.tensor(below, dtype=torch.float64))
    torch.testing.assert_close(L.dual_focal(logits, targets, gamma=g, other="largest"),
                               torch.tensor(largest, dtype=torch.float64))


def test_dual_focal_uses_the_largest_non_target_probability_not_another_one():
    # Target is the argmax; the non-target probabilities are 0.25, 0.15, 0.1. Only p_j = 0.25 gives this value.
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1]], dtype=torch.float64)
    targets = torch.tensor([0])
    for other in ("below_target", "largest"):
        got = L.dual_focal(probs.log(), targets, gamma=3.0, other=other)
        expected = -(1 - 0.5 + 0.25) ** 3 * math.log(0.5)
        assert got.item() == pytest.approx(expected, rel=1e-12)
        for wrong in (0.15, 0.1, 0.0):
            assert got.item() != pytest.approx(-(1 - 0.5 + wrong) ** 3 * math.log(0.5), rel=1e-6)
    # The smallest class as target: nothing lies below p_t, so p_j = 0 ("below_target"); "largest" takes 0.5.
    last = torch.tensor([3])
    assert L.dual_focal(probs.log(), last, gamma=3.0).item() == pytest.approx(-(0.9 ** 3) * math.log(0.1))
    assert L.dual_focal(probs.log(), last, gamma=3.0, other="largest").item() == pytest.approx(
        -(1.4 ** 3) * math.log(0.1))


def test_dual_focal_gradient_flows_through_the_runner_up():
    logits = torch.tensor([[2.0, 1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    L.dual_focal(logits, torch.tensor([0]), gamma=5.0).sum().backward()
    p = F.softmax(logits.detach(), dim=1)[0]
    pt, pj = p[0].item(), p[1].item()
    # d/dz of -(1 - p_t + p_j)^g log p_t, with dp_k/dz_m = p_k (1[k=m] - p_m)
    g = 5.0
    base = 1 - pt + pj

    def dp(k, m):
        return p[k].item() * ((k == m) - p[m].item())

    expected = [-(g * base ** (g - 1) * (-dp(0, m) + dp(1, m)) * math.log(pt) + base ** g * dp(0, m) / pt)
                for m in range(3)]
    torch.testing.assert_close(logits.grad[0], torch.tensor(expected, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------------ GCE

def gce_double_loop(logits: torch.Tensor, targets: torch.Tensor, lam: float) -> list[float]:
    """GCE straight from the definition, one Python float at a time (stable log-sum-exp by hand)."""
    rows = logits.tolist()
    probs = []
    for row in rows:
        top = max(row)
        norm = sum(math.exp(v - top) for v in row)
        probs.append([math.exp(v - top) / norm for v in row])
    out = []
    for i, y in enumerate(targets.tolist()):
        mean_y = sum(probs[j][y] for j in range(len(rows))) / len(rows)
        out.append(-math.log(probs[i][y]) + lam * math.log(mean_y))
    return out


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 2.5])
def test_gce_equals_the_explicit_double_loop(lam):
    logits, targets = random_batch(batch=11, classes=5, seed=3)
    torch.testing.assert_close(L.gce(logits, targets, lam=lam),
                               torch.tensor(gce_double_loop(logits, targets, lam), dtype=torch.float64))


def test_gce_with_lambda_zero_is_cross_entropy_values_and_gradients():
    logits, targets = random_batch(batch=16, classes=6, seed=1, dtype=torch.float32)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    weights = torch.rand(16, generator=torch.Generator().manual_seed(2))
    (L.gce(a, targets, lam=0.0) * weights).sum().backward()
    (F.cross_entropy(b, targets, reduction="none") * weights).sum().backward()
    torch.testing.assert_close(L.gce(logits, targets, lam=0.0), F.cross_entropy(logits, targets, reduction="none"))
    torch.testing.assert_close(a.grad, b.grad)


def gce_autograd_reference(logits, targets, lam):
    log_probs = F.log_softmax(logits, dim=1)
    class_term = torch.logsumexp(log_probs, dim=0) - math.log(logits.shape[0])
    return -log_probs.gather(1, targets[:, None]).squeeze(1) + lam * class_term[targets]


def test_gce_hand_written_gradient_matches_autograd_of_the_formula():
    logits, targets = random_batch(batch=32, classes=7, seed=4, dtype=torch.float32)
    weights = torch.rand(32, generator=torch.Generator().manual_seed(5))
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    (L.gce(a, targets, lam=0.8) * weights).sum().backward()
    (gce_autograd_reference(b, targets, 0.8) * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 30.0, 60.0, 200.0])
def test_gce_values_and_gradients_on_every_forward_path(scale):
    """Logits up to ~40 take the unshifted row sums; larger ones log-softmax; the values and gradients agree with
    autograd through the formula in float64 either way."""
    logits, targets = random_batch(batch=64, classes=9, seed=31, dtype=torch.float64)
    logits = logits * scale / logits.abs().max()
    weights = torch.rand(64, generator=torch.Generator().manual_seed(32), dtype=torch.float64)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        a = logits.to(dtype).clone().requires_grad_(True)
        b = logits.clone().requires_grad_(True)
        values = L.gce(a, targets, lam=0.6)
        (values * weights.to(dtype)).sum().backward()
        expected = gce_autograd_reference(b, targets, 0.6)
        (expected * weights).sum().backward()
        torch.testing.assert_close(values.double(), expected.detach(), atol=tol * (1.0 + scale), rtol=0.0)
        torch.testing.assert_close(a.grad.double(), b.grad, atol=tol, rtol=0.0)


def test_gce_shifted_column_path_equals_the_direct_one():
    """Accelerators always take the max-shifted column sums (CPU only when a column underflows): same result."""
    logits, targets = random_batch(batch=40, classes=6, seed=23, dtype=torch.float32)
    weights = torch.rand(40, generator=torch.Generator().manual_seed(24))
    results = []
    for always_shift in (False, True):
        x = logits.clone().requires_grad_(True)
        values = L._GCEFunction.apply(x, targets, 0.7, always_shift)
        (values * weights).sum().backward()
        results.append((values.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    torch.testing.assert_close(results[1][0], gce_autograd_reference(logits, targets, 0.7))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gce_is_finite_and_exact_at_logit_magnitude_1e4(dtype):
    g = torch.Generator().manual_seed(6)
    logits = (1e4 * torch.randn(8, 5, generator=g, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, 5, (8,), generator=g)
    x = logits.clone().requires_grad_(True)
    values = L.gce(x, targets, lam=1.0)
    values.mean().backward()
    assert torch.isfinite(values).all() and torch.isfinite(x.grad).all()
    # Reference in float64 through logsumexp (a plain mean of softmax columns would give log 0 = -inf here).
    expected = gce_autograd_reference(logits.double(), targets, 1.0)
    torch.testing.assert_close(values.double(), expected, rtol=1e-6, atol=1e-2 if dtype == torch.float32 else 1e-9)
    ref = logits.double().clone().requires_grad_(True)
    gce_autograd_reference(ref, targets, 1.0).mean().backward()
    torch.testing.assert_close(x.grad.double(), ref.grad, atol=1e-6, rtol=1e-5)


def test_gce_accepts_bfloat16_logits_and_returns_a_bfloat16_gradient():
    logits, targets = random_batch(batch=8, classes=4, seed=7, dtype=torch.float32)
    x = logits.to(torch.bfloat16).requires_grad_(True)
    values = L.gce(x, targets)
    values.mean().backward()
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(values.float(), L.gce(logits.to(torch.bfloat16).float(), targets))


def test_gce_through_a_process_group_of_one_equals_the_single_process_loss(tmp_path):
    """The all-gather path (used under DDP) on a real one-rank gloo group: same values and gradients."""
    import torch.distributed as dist

    if dist.is_initialized():  # pragma: no cover - only when another test leaked a group
        pytest.skip("a default process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        logits, targets = random_batch(batch=10, classes=4, seed=8)
        for name in ("gce", "mmce"):
            a = logits.clone().requires_grad_(True)
            b = logits.clone().requires_grad_(True)
            grouped = getattr(L, name)(a, targets, lam=0.9, process_group=dist.group.WORLD)
            plain = getattr(L, name)(b, targets, lam=0.9)
            grouped.mean().backward()
            plain.mean().backward()
            torch.testing.assert_close(grouped, plain)
            torch.testing.assert_close(a.grad, b.grad)
        built = build_loss({"name": "gce", "lam": 0.9}, 4, process_group=dist.group.WORLD)
        torch.testing.assert_close(built(logits, targets), L.gce(logits, targets, lam=0.9))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------- gradcheck

GRADCHECK_CASES = [
    ("gce", {"lam": 1.0}),
    ("gce", {"lam": 0.35}),
    ("focal", {"gamma": 2.0}),
    ("focal", {"gamma": 0.5}),
    ("flsd53", {}),
    ("dual_focal", {"gamma": 5.0}),
    ("dual_focal", {"gamma": 2.0, "other": "largest"}),
    ("mmce", {"lam": 2.0, "weighted": True}),
    ("mmce", {"lam": 2.0, "weighted": False}),
    ("label_smoothing", {"alpha": 0.1}),
    ("brier", {}),
]


@pytest.mark.parametrize("name,hp", GRADCHECK_CASES, ids=[f"{n}-{h}" for n, h in GRADCHECK_CASES])
def test_float64_gradcheck(name, hp):
    logits, targets = random_batch(batch=7, classes=4, seed=9, scale=1.5)
    # Keep every p_t away from FLSD-53's switch (a step in gamma is not differentiable).
    p_t = F.softmax(logits, 1).gather(1, targets[:, None])
    assert ((p_t - L.FLSD53_SWITCH).abs() > 1e-3).all()
    # MMCE needs a mix of correct and wrong predictions for the weighted variant to be non-trivial.
    correct = (logits.argmax(1) == targets)
    assert 0 < int(correct.sum()) < 7
    fn = getattr(L, name)
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: fn(z, targets, **hp), (x,), eps=1e-6, atol=1e-6)


def test_adafocal_gradcheck_with_mixed_focal_and_inverse_focal_gammas():
    logits, targets = random_batch(batch=6, classes=3, seed=10)
    gamma = torch.tensor([2.0, -1.5, 0.2, -0.2, 5.0, 1.0], dtype=torch.float64)
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: L.adafocal(z, targets, gamma), (x,), eps=1e-6, atol=1e-6)


# -------------------------------------------------------------------------------------------------- FLSD-53

def logits_with_target_prob(p_t: float, classes: int = 3) -> torch.Tensor:
    """One row whose target (class 0) has probability p_t, the rest spread evenly."""
    rest = (1 - p_t) / (classes - 1)
    return torch.tensor([[p_t] + [rest] * (classes - 1)], dtype=torch.float64).log()


def test_flsd53_switches_gamma_at_target_probability_0_2():
    target = torch.tensor([0])
    for p_t, gamma in ((0.2 - 1e-6, 5.0), (0.2 + 1e-6, 3.0), (0.05, 5.0), (0.9, 3.0)):
        got = L.flsd53(logits_with_target_prob(p_t), target).item()
        assert got == pytest.approx(-((1 - p_t) ** gamma) * math.log(p_t), rel=1e-9), p_t
        assert got == pytest.approx(L.focal(logits_with_target_prob(p_t), target, gamma=gamma).item(), rel=1e-12)
    # The loss jumps at the switch: (0.8^3 - 0.8^5) * log(5) apart across it.
    below = L.flsd53(logits_with_target_prob(0.2 - 1e-9), target).item()
    above = L.flsd53(logits_with_target_prob(0.2 + 1e-9), target).item()
    assert above - below == pytest.approx((0.8 ** 3 - 0.8 ** 5) * math.log(5), rel=1e-6)


# ---------------------------------------------------------------------------------------------- properness

def gce_population_risk(logits_per_x, counts, posteriors, lam):
    """Population GCE risk through `gce` itself.

    With x drawn from p(x) = counts / N, the batch that *is* the population holds counts[x] copies of each x, so the
    batch mean (1/|B|) sum_j p(y|x_j) is the p(x)-weighted mean sum_x p(x) q(y|x), the model's class marginal.
    The risk sum_x p(x) sum_y p(y|x) gce(x, y) is then the batch mean, weighted by p(y|x_j), of the loss of every
    row under every label; the class term depends only on the rows, not on their labels, so one call per label
    evaluates it.
    """
    rows = logits_per_x.repeat_interleave(counts, dim=0)
    row_posteriors = posteriors.repeat_interleave(counts, dim=0)
    risk = 0.0
    for y in range(posteriors.shape[1]):
        per_row = L.gce(rows, torch.full((rows.shape[0],), y), lam=lam)
        risk = risk + (row_posteriors[:, y] * per_row).mean()
    return risk


def gce_population_risk_closed_form(logits_per_x, weights, posteriors, lam):
    """The same risk written with p(x) weights directly (no replication)."""
    log_q = F.log_softmax(logits_per_x, dim=1)
    log_marginal = torch.logsumexp(log_q + weights.log()[:, None], dim=0)  # log sum_x p(x) q(y|x)
    per_xy = -log_q + lam * log_marginal[None, :]
    return (weights[:, None] * posteriors * per_xy).sum()


def minimise_risk(counts, posteriors, lam, init):
    z = init.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        risk = gce_population_risk(z, counts, posteriors, lam)
        risk.backward()
        return risk

    for _ in range(3):
        opt.step(closure)
    return z.detach(), float(gce_population_risk(z.detach(), counts, posteriors, lam))


GENERIC_COUNTS = torch.tensor([3, 1, 4, 2, 5])  # p(x) = counts / 15
GENERIC_POSTERIORS = torch.tensor([  # p(y|x): rows are x, generic (the three columns are linearly independent)
    [0.70, 0.20, 0.10],
    [0.15, 0.60, 0.25],
    [0.30, 0.30, 0.40],
    [0.05, 0.15, 0.80],
    [0.45, 0.45, 0.10],
], dtype=torch.float64)


def test_population_risk_through_gce_equals_its_closed_form():
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    weights = GENERIC_COUNTS.double() / GENERIC_COUNTS.sum()
    for lam in (1.0, 0.4):
        a = gce_population_risk(z, GENERIC_COUNTS, GENERIC_POSTERIORS, lam)
        b = gce_population_risk_closed_form(z, weights, GENERIC_POSTERIORS, lam)
        assert float(a) == pytest.approx(float(b), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_gce_population_risk_is_minimised_by_the_true_posterior(lam):
    """Strict properness: minimising the population GCE risk over free per-x logits recovers p(y|x)."""
    assert torch.linalg.matrix_rank(GENERIC_POSTERIORS) == 3
    z, risk = minimise_risk(GENERIC_COUNTS, GENERIC_POSTERIORS, lam, torch.zeros(5, 3, dtype=torch.float64))
    recovered = F.softmax(z, dim=1)
    torch.testing.assert_close(recovered, GENERIC_POSTERIORS, atol=1e-3, rtol=0)
    truth_risk = float(gce_population_risk(GENERIC_POSTERIORS.log(), GENERIC_COUNTS, GENERIC_POSTERIORS, lam))
    assert risk == pytest.approx(truth_risk, abs=1e-9)
    # and the truth is strictly better than a nearby distribution
    nudged = GENERIC_POSTERIORS.log() + 0.05 * torch.randn(5, 3, generator=torch.Generator().manual_seed(12),
                                                           dtype=torch.float64)
    assert float(gce_population_risk(nudged, GENERIC_COUNTS, GENERIC_POSTERIORS, lam)) > truth_risk + 1e-6


# Two classes with the same class-conditional p(x|y): their posteriors are proportional (p(y0|x)/p(y1|x) is the
# constant prior ratio), so the three posterior columns are linearly dependent and properness fails.
SHARED_COUNTS = torch.tensor([8, 9, 16, 17])  # p(x) = 0.8 p(x|y0) + 0.2 p(x|y2), times 50
SHARED_PRIORS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


def shared_posteriors():
    f = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)  # p(x|y0) = p(x|y1)
    g = torch.tensor([0.4, 0.1, 0.4, 0.1], dtype=torch.float64)  # p(x|y2)
    joint = torch.stack([SHARED_PRIORS[0] * f, SHARED_PRIORS[1] * f, SHARED_PRIORS[2] * g], dim=1)
    # This problem's p(x) is implied by the class-conditionals; give the batch that p(x) exactly (as counts).
    p_x = joint.sum(1)
    torch.testing.assert_close(p_x, SHARED_COUNTS.double() / SHARED_COUNTS.sum())
    return joint / p_x[:, None]


def flat_family(posteriors, t):
    """q_t(y0|x) = p(y0|x)(1 + t/pi0), q_t(y1|x) = p(y1|x)(1 - t/pi1), q_t(y2|x) = p(y2|x): still sums to 1 because
    p(y0|x)/pi0 = p(y1|x)/pi1 = p(x|y0)/p(x), and leaves every q(x|y) = p(x) q(y|x) / q(y) unchanged."""
    scale = torch.tensor([1 + t / SHARED_PRIORS[0], 1 - t / SHARED_PRIORS[1], 1.0], dtype=torch.float64)
    return posteriors * scale


def test_gce_risk_has_a_flat_direction_when_two_classes_share_p_x_given_y():
    posteriors = shared_posteriors()
    assert torch.linalg.matrix_rank(posteriors) == 2
    risks = []
    for t in (-0.1, 0.0, 0.05, 0.15):
        q = flat_family(posteriors, t)
        torch.testing.assert_close(q.sum(1), torch.ones(4, dtype=torch.float64))
        assert (q > 0).all()
        z = q.log().requires_grad_(True)
        risk = gce_population_risk(z, SHARED_COUNTS, posteriors, lam=1.0)
        (grad,) = torch.autograd.grad(risk, z)
        assert grad.abs().max() < 1e-10  # every member is a stationary point ...
        risks.append(float(risk.detach()))
    assert max(risks) - min(risks) < 1e-12  # ... with the same risk (the minimum: Gibbs, see docs/losses.md)
    assert (flat_family(posteriors, 0.15) - posteriors).abs().max() > 0.05  # yet the posteriors differ
    # Cross-entropy (lam = 0) has no such direction: it tells the members apart.
    ce_risks = [float(gce_population_risk(flat_family(posteriors, t).log(), SHARED_COUNTS, posteriors, lam=0.0))
                for t in (0.0, 0.15)]
    assert ce_risks[1] > ce_risks[0] + 1e-3


def test_gce_minimisers_differ_from_different_starts_when_two_classes_share_p_x_given_y():
    posteriors = shared_posteriors()
    g = torch.Generator().manual_seed(13)
    found = []
    for _ in range(2):
        z, risk = minimise_risk(SHARED_COUNTS, posteriors, 1.0, torch.randn(4, 3, generator=g, dtype=torch.float64))
        found.append((F.softmax(z, dim=1), risk))
    truth_risk = float(gce_population_risk(posteriors.log(), SHARED_COUNTS, posteriors, 1.0))
    for q, risk in found:
        assert risk == pytest.approx(truth_risk, abs=1e-9)
        # the identifiable part is recovered: class 2's posterior and the pooled posterior of classes 0 and 1
        torch.testing.assert_close(q[:, 2], posteriors[:, 2], atol=1e-4, rtol=0)
        torch.testing.assert_close(q[:, 0] + q[:, 1], posteriors[:, 0] + posteriors[:, 1], atol=1e-4, rtol=0)
        # and q(y0|x)/q(y1|x) is constant in x, as on the flat family
        ratio = q[:, 0] / q[:, 1]
        assert (ratio.max() - ratio.min()) / ratio.mean() < 1e-3
    assert (found[0][0] - found[1][0]).abs().max() > 1e-2
    assert max((q - posteriors).abs().max() for q, _ in found) > 1e-2


# ------------------------------------------------------------------------------------------------- AdaFocal

def validation_logits(confidences, correct):
    """Two-class validation logits whose top-1 confidence is each value (> 0.5); target = predicted iff correct."""
    c = torch.tensor(confidences, dtype=torch.float64)
    logits = torch.stack([torch.zeros_like(c), (c / (1 - c)).log()], dim=1)
    targets = torch.tensor([1 if ok else 0 for ok in correct])
    return logits, targets


VAL = validation_logits([0.6, 0.7, 0.9, 0.95], [1, 0, 1, 1])
# Two equal-mass bins: edge at the median 0.8; bin 0 has C = 0.65, A = 0.5 (gap +0.15), bin 1 C = 0.925, A = 1
# (gap -0.075).


def test_adafocal_update_by_hand():
    loss = AdaFocal(lam=1.0, gamma_init=1.0, n_bins=2)
    torch.testing.assert_close(loss.gammas, torch.tensor([1.0, 1.0], dtype=torch.float64))
    loss.on_epoch_end(*VAL)
    torch.testing.assert_close(loss.inner_edges, torch.tensor([0.8], dtype=torch.float64))
    torch.testing.assert_close(loss.gammas, torch.tensor([math.exp(0.15), math.exp(-0.075)], dtype=torch.float64))
    loss.on_epoch_end(*VAL)
    torch.testing.assert_close(loss.gammas, torch.tensor([math.exp(0.3), math.exp(-0.15)], dtype=torch.float64))
    assert loss.updates == 2


def test_adafocal_switches_to_inverse_focal_and_back_and_clips():
    # gamma 0.25 in the underconfident bin: 0.25 * exp(5 * -0.075) = 0.172 < 0.2 -> -0.2 (inverse focal);
    # the overconfident bin grows: 0.25 * exp(5 * 0.15).
    loss = AdaFocal(lam=5.0, gamma_init=0.25, n_bins=2)
    loss.on_epoch_end(*VAL)
    torch.testing.assert_close(loss.gammas, torch.tensor([0.25 * math.exp(0.75), -0.2], dtype=torch.float64))
    # still underconfident: |gamma| of the inverse-focal bin grows, -0.2 * exp(+5 * 0.075)
    loss.on_epoch_end(*VAL)
    torch.testing.assert_close(loss.gammas[1], torch.tensor(-0.2 * math.exp(0.375), dtype=torch.float64))
    # negative gamma in an overconfident bin shrinks in magnitude and switches to +0.2 below |0.2|
    # (-0.25 * exp(-2 * 0.15) = -0.185 -> +0.2), while the underconfident bin's grows: -0.25 * exp(2 * 0.075)
    back = AdaFocal(lam=2.0, gamma_init=-0.25, n_bins=2)
    back.on_epoch_end(*VAL)
    torch.testing.assert_close(back.gammas, torch.tensor([0.2, -0.25 * math.exp(0.15)], dtype=torch.float64))
    # clip at 20 and -2
    high = AdaFocal(lam=5.0, gamma_init=15.0, n_bins=2)
    high.on_epoch_end(*VAL)
    assert high.gammas[0].item() == 20.0
    low = AdaFocal(lam=5.0, gamma_init=-1.5, n_bins=2)
    low.on_epoch_end(*VAL)
    assert low.gammas[1].item() == -2.0
    assert low.gammas[0].item() == pytest.approx(-1.5 * math.exp(-0.75))


def test_adafocal_training_samples_take_the_gamma_of_their_validation_bin():
    loss = AdaFocal(lam=1.0, gamma_init=1.0, n_bins=2)
    loss.on_epoch_end(*VAL)
    g0, g1 = math.exp(0.15), math.exp(-0.075)
    # rows: p_t = 0.75 (bin 0), p_t = 0.85 (bin 1); two classes, target 1
    logits, targets = validation_logits([0.75, 0.85], [1, 1])
    expected = [-(0.25 ** g0) * math.log(0.75), -(0.15 ** g1) * math.log(0.85)]
    torch.testing.assert_close(loss(logits, targets), torch.tensor(expected, dtype=torch.float64))
    # a misclassified sample: p_t = 0.1, confidence 0.9; binned by p_t (official code) it takes bin 0's gamma
    wrong_logits, wrong_target = validation_logits([0.9], [0])
    by_target = loss(wrong_logits, wrong_target).item()
    assert by_target == pytest.approx(-(0.9 ** g0) * math.log(0.1))
    by_confidence = AdaFocal(lam=1.0, gamma_init=1.0, n_bins=2, bin_by="confidence")
    by_confidence.on_epoch_end(*VAL)
    assert by_confidence(wrong_logits, wrong_target).item() == pytest.approx(-(0.9 ** g1) * math.log(0.1))


def test_adafocal_inverse_focal_value():
    logits, targets = validation_logits([0.75], [1])
    got = L.adafocal(logits, targets, -1.5).item()
    assert got == pytest.approx(-(1.75 ** 1.5) * math.log(0.75))
    assert L.adafocal(logits, targets, 2.0).item() == pytest.approx(-(0.25 ** 2) * math.log(0.75))


def test_adafocal_before_any_update_is_focal_with_gamma_init():
    logits, targets = random_batch(batch=10, classes=5, seed=14)
    torch.testing.assert_close(AdaFocal(gamma_init=2.0)(logits, targets), L.focal(logits, targets, gamma=2.0))


def test_adafocal_state_dict_round_trip_through_torch_save(tmp_path):
    loss = AdaFocal(lam=2.0, gamma_init=1.0, n_bins=15)
    val_logits, val_targets = random_batch(batch=300, classes=5, seed=15, scale=3.0)
    loss.on_epoch_end(val_logits, val_targets)
    loss.on_epoch_end(val_logits[:200], val_targets[:200])
    assert not torch.allclose(loss.gammas, torch.ones(15, dtype=torch.float64))
    torch.save({"loss": loss.state_dict()}, tmp_path / "checkpoint.pt")
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["loss"]
    restored = build_loss({"name": "adafocal", "lam": 2.0, "gamma_init": 1.0}, 5)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.gammas, loss.gammas)
    torch.testing.assert_close(restored.inner_edges, loss.inner_edges)
    assert restored.updates == 2
    train_logits, train_targets = random_batch(batch=64, classes=5, seed=16, scale=3.0)
    torch.testing.assert_close(restored(train_logits, train_targets), loss(train_logits, train_targets))
    # and the next update continues identically
    loss.on_epoch_end(val_logits, val_targets)
    restored.on_epoch_end(val_logits, val_targets)
    torch.testing.assert_close(restored.gammas, loss.gammas)


def test_adafocal_state_with_the_wrong_number_of_bins_is_refused():
    state = AdaFocal(n_bins=15).state_dict()
    with pytest.raises(ValueError, match=r"gammas has shape \(15,\), expected \(10,\)"):
        AdaFocal(n_bins=10).load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys"):
        AdaFocal().load_state_dict({"gammas": torch.ones(15)})


# ---------------------------------------------------------------------------------------------- MMCE loops

def mmce_loops(logits, targets, weighted):
    """MMCE^2 from Kumar et al.'s definitions with Python loops over pairs."""
    probs = F.softmax(logits, 1).tolist()
    r = [max(row) for row in probs]
    c = [1.0 if row.index(max(row)) == y else 0.0 for row, y in zip(probs, targets.tolist())]
    n = len(r)

    def k(a, b):
        return math.exp(-abs(a - b) / 0.4)

    if not weighted:
        return sum((c[i] - r[i]) * (c[j] - r[j]) * k(r[i], r[j]) for i in range(n) for j in range(n)) / n ** 2
    right = [i for i in range(n) if c[i]]
    wrong = [i for i in range(n) if not c[i]]
    m, w = len(right), len(wrong)
    total = sum((1 - r[i]) * (1 - r[j]) * k(r[i], r[j]) for i in right for j in right) / m ** 2
    total += sum(r[i] * r[j] * k(r[i], r[j]) for i in wrong for j in wrong) / w ** 2
    total -= 2 * sum((1 - r[i]) * r[j] * k(r[i], r[j]) for i in right for j in wrong) / (m * w)
    return total


@pytest.mark.parametrize("weighted", [True, False])
def test_mmce_equals_pairwise_loops(weighted):
    logits, targets = random_batch(batch=20, classes=4, seed=17)
    expected = L.cross_entropy(logits, targets) + 1.7 * math.sqrt(mmce_loops(logits, targets, weighted))
    torch.testing.assert_close(L.mmce(logits, targets, lam=1.7, weighted=weighted), expected)


# -------------------------------------------------------------------------------------------------- registry

EXPECTED_PARAMS = {
    "cross_entropy": set(), "gce": {"lam"}, "label_smoothing": {"alpha"}, "brier": set(),
    "mmce": {"lam", "weighted"}, "focal": {"gamma"}, "flsd53": set(), "dual_focal": {"gamma", "other"},
    "adafocal": {"lam", "gamma_init", "n_bins", "bin_by"},
}


def test_registry_holds_every_loss_of_the_design():
    assert set(LOSSES.names()) == set(EXPECTED_PARAMS)
    for name, params in EXPECTED_PARAMS.items():
        assert set(LOSSES[name].params) == params, name
    assert [n for n in LOSSES if LOSSES[n].stateful] == ["adafocal"]
    assert {n for n in LOSSES if LOSSES[n].batch_coupled} == {"gce", "mmce"}


def invalid_values(param):
    """Values outside a Param's valid set."""
    if param.choices is not None:
        return ["no-such-choice", 3]
    if param.kind == "bool":
        return ["yes", 1.5]
    out = ["1.0", float("nan")]
    if param.low is not None:
        out.append(param.low - 1.0)
        if not param.low_inclusive:
            out.append(param.low)
    if param.high is not None:
        out.append(param.high + 1.0)
        if not param.high_inclusive:
            out.append(param.high)
    if param.kind == "int":
        out.append(param.default + 0.5)
    return out


@pytest.mark.parametrize("name", LOSSES.names())
def test_contract_every_registered_loss(name):
    info = LOSSES[name]
    assert info.name == name and info.description
    signature = inspect.signature(info.impl)
    for key, param in info.params.items():
        assert key in signature.parameters, f"{name}.{key} is not a keyword of {info.impl}"
        assert param.problem(param.default) is None
        assert signature.parameters[key].default == param.default, f"{name}.{key}: default differs"

    logits, targets = random_batch(batch=12, classes=5, seed=18, dtype=torch.float32, scale=3.0)
    loss = build_loss({"name": name}, 5)
    x = logits.clone().requires_grad_(True)
    values = loss(x, targets)
    assert values.shape == (12,) and values.dtype == torch.float32
    assert torch.isfinite(values).all()
    values.mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # per-sample losses are non-negative for every loss but GCE (its class term is a log-ratio)
    if name != "gce":
        assert (values >= 0).all()
    # the epoch hook and the state round-trip work for every loss
    loss.on_epoch_end(logits.detach(), targets)
    loss.load_state_dict(loss.state_dict())
    # extreme but finite logits stay finite
    big = (1e4 * torch.randn(12, 5, generator=torch.Generator().manual_seed(19))).requires_grad_(True)
    values = loss(big, targets)
    values.sum().backward()
    assert torch.isfinite(values).all() and torch.isfinite(big.grad).all()

    for key, param in info.params.items():
        for bad in invalid_values(param):
            with pytest.raises(ValueError, match=rf"loss\.{key}: got .*; valid: "):
                build_loss({"name": name, key: bad}, 5)
            if not info.stateful:
                with pytest.raises(ValueError, match=rf"^{key}: got .*; valid: "):
                    info.impl(logits, targets, **{key: bad})
    with pytest.raises(ValueError, match=rf"loss\.not_a_param: not a parameter of loss '{name}'"):
        build_loss({"name": name, "not_a_param": 1}, 5)


def test_config_validation_reads_loss_parameters_from_the_registry():
    from gce_search.trainables.config import ConfigError, resolve

    cfg = resolve({"loss": {"name": "gce", "lam": 0.5}})
    assert cfg["loss"] == {"name": "gce", "lam": 0.5}
    with pytest.raises(ConfigError, match=r"loss\.lam: got -1"):
        resolve({"loss": {"name": "gce", "lam": -1}})
    with pytest.raises(ConfigError, match=r"loss\.gamma: not a parameter of loss 'gce'"):
        resolve({"loss": {"name": "gce", "gamma": 2}})
    with pytest.raises(ConfigError, match=r"loss\.alpha: got 1\.0; valid: a float in \[0, 1\)"):
        resolve({"loss": {"name": "label_smoothing", "alpha": 1.0}})


def test_build_loss_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown loss 'gcee'; valid: .*gce"):
        build_loss({"name": "gcee"}, 3)
    with pytest.raises(ValueError, match="loss: expected a mapping"):
        build_loss("gce", 3)
    with pytest.raises(ValueError, match="num_classes: expected an integer >= 1"):
        build_loss({"name": "gce"}, 0)
    loss = build_loss({"name": "focal", "gamma": 1.0}, 3)
    with pytest.raises(ValueError, match=r"logits: expected 3 classes .*got shape \(2, 4\)"):
        loss(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_built_loss_equals_the_function_with_its_defaults_and_parameters():
    logits, targets = random_batch(batch=10, classes=4, seed=20)
    torch.testing.assert_close(build_loss({"name": "gce"}, 4)(logits, targets), L.gce(logits, targets, lam=1.0))
    torch.testing.assert_close(build_loss({"name": "label_smoothing"}, 4)(logits, targets),
                               L.label_smoothing(logits, targets, alpha=0.05))
    torch.testing.assert_close(build_loss({"name": "dual_focal", "gamma": 2.5}, 4)(logits, targets),
                               L.dual_focal(logits, targets, gamma=2.5))
    torch.testing.assert_close(build_loss({"name": "mmce"}, 4)(logits, targets),
                               L.mmce(logits, targets, lam=2.0, weighted=True))


# ------------------------------------------------------------------------------------------------- bad input

FUNCTIONS = [L.cross_entropy, L.gce, L.label_smoothing, L.brier, L.mmce, L.focal, L.flsd53, L.dual_focal]


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_bad_inputs_raise_value_errors_naming_the_argument(fn):
    logits, targets = random_batch(batch=4, classes=3, seed=21)
    with pytest.raises(ValueError, match=r"logits: expected a \[B, K\] tensor, got shape \(4, 3, 1\)"):
        fn(logits[..., None], targets)
    with pytest.raises(ValueError, match=r"targets: expected shape \[4\] .*got \(3,\)"):
        fn(logits, targets[:3])
    with pytest.raises(ValueError, match=r"targets: expected shape \[4\] .*got \(4, 1\)"):
        fn(logits, targets[:, None])
    with pytest.raises(ValueError, match="targets: expected integer class indices"):
        fn(logits, targets.double())
    with pytest.raises(ValueError, match=r"targets: class indices must be in \[0, 2\].*max 3"):
        fn(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"targets: class indices must be in \[0, 2\].*min -1"):
        fn(logits, torch.tensor([0, -1, 2, 1]))
    with pytest.raises(ValueError, match="logits: expected a floating-point tensor"):
        fn(torch.zeros(4, 3, dtype=torch.long), targets)
    with pytest.raises(ValueError, match="logits: expected at least one sample"):
        fn(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = logits.clone()
        broken[1, 2] = bad
        with pytest.raises(ValueError, match="logits: contain NaN or inf; valid: finite values"):
            fn(broken, targets)
    # validate=False skips the value checks (the trial loop checks the loss), not the shape checks
    broken = logits.clone()
    broken[0, 0] = float("nan")
    assert not torch.isfinite(fn(broken, targets, validate=False)).all()
    with pytest.raises(ValueError, match="targets: expected shape"):
        fn(logits, targets[:3], validate=False)


def test_out_of_range_hyperparameters_name_the_range():
    logits, targets = random_batch(batch=4, classes=3, seed=22)
    with pytest.raises(ValueError, match=r"lam: got -0\.5; valid: a float in \[0, inf\]"):
        L.gce(logits, targets, lam=-0.5)
    with pytest.raises(ValueError, match=r"alpha: got 1; valid: a float in \[0, 1\)"):
        L.label_smoothing(logits, targets, alpha=1)
    with pytest.raises(ValueError, match=r"gamma: got -1\.0; valid: a float in \[0, inf\]"):
        L.focal(logits, targets, gamma=-1.0)
    with pytest.raises(ValueError, match=r"gamma: got -2; valid"):
        L.dual_focal(logits, targets, gamma=-2)
    with pytest.raises(ValueError, match=r"lam: got -1; valid"):
        L.mmce(logits, targets, lam=-1)
    with pytest.raises(ValueError, match=r"gamma_init: got 25\.0; valid: a float in \[-2, 20\]"):
        AdaFocal(gamma_init=25.0)
    with pytest.raises(ValueError, match=r"n_bins: got 0; valid: a int in \[1, inf\]"):
        AdaFocal(n_bins=0)
    with pytest.raises(ValueError, match=r"gamma: expected a number or a tensor of shape \[4\]"):
        L.adafocal(logits, targets, torch.ones(3))
    with pytest.raises(ValueError, match="targets: class indices"):
        AdaFocal().on_epoch_end(logits, torch.tensor([0, 1, 2, 5]))
