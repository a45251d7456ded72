"""Metrics against torchmetrics, against plain NumPy loops written here, and against hand-computed cases."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from gce_search.trainables import metrics


# ---------------------------------------------------------------------------------------------------------------
# Independent reference implementations: one sample at a time, no vectorisation, float64.

def loop_bins(confidence, n_bins):
    """Bin index of each confidence under ((m-1)/M, m/M], by explicit comparison with each edge."""
    out = []
    for c in confidence:
        for m in range(n_bins):
            lower, upper = m / n_bins, (m + 1) / n_bins
            if (lower < c <= upper) or (m == 0 and c == 0.0):
                out.append(m)
                break
    return out


def loop_ece(probs, labels, n_bins, reduce="sum"):
    probs = np.asarray(probs, dtype=np.float64)
    n = len(labels)
    confidence = probs.max(axis=1)
    correct = [float(np.argmax(probs[i]) == labels[i]) for i in range(n)]
    bins = loop_bins(confidence, n_bins)
    total, worst = 0.0, 0.0
    for m in range(n_bins):
        members = [i for i in range(n) if bins[i] == m]
        if not members:
            continue
        acc = sum(correct[i] for i in members) / len(members)
        conf = sum(confidence[i] for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
        worst = max(worst, abs(acc - conf))
    return total if reduce == "sum" else worst


def loop_adaptive_ece(probs, labels, n_bins):
    probs = np.asarray(probs, dtype=np.float64)
    n = len(labels)
    confidence = probs.max(axis=1)
    order = np.argsort(confidence, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, n_bins):
        if len(chunk) == 0:
            continue
        acc = np.mean([float(np.argmax(probs[i]) == labels[i]) for i in chunk])
        conf = np.mean([confidence[i] for i in chunk])
        total += len(chunk) / n * abs(acc - conf)
    return total


def loop_classwise_ece(probs, labels, n_bins):
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    total = 0.0
    for cls in range(k):
        bins = loop_bins(probs[:, cls], n_bins)
        for m in range(n_bins):
            members = [i for i in range(n) if bins[i] == m]
            if not members:
                continue
            freq = sum(float(labels[i] == cls) for i in members) / len(members)
            mean_p = sum(probs[i, cls] for i in members) / len(members)
            total += len(members) / n * abs(freq - mean_p)
    return total / k


def random_probs(n, k, n_bins, seed, margin=1e-4):
    """Softmax rows whose confidences (and, for classwise, all entries) keep `margin` from every bin edge."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(4 * n, k, generator=g, dtype=torch.float64) * torch.rand(4 * n, 1, generator=g,
                                                                                dtype=torch.float64) * 4
    p = torch.softmax(z, dim=1)
    y = torch.randint(0, k, (4 * n,), generator=g)
    # Labels agree with the argmax ~70% of the time so the ECE is neither ~0 nor ~1.
    agree = torch.rand(4 * n, generator=g) < 0.7
    y = torch.where(agree, p.argmax(1), y)
    scaled = p * n_bins
    keep = ((scaled - scaled.round()).abs() > margin * n_bins).all(dim=1)
    return p[keep][:n], y[keep][:n]


# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_bins", [15, 20])
@pytest.mark.parametrize("seed", [0, 1])
def test_ece_and_mce_match_torchmetrics_and_numpy_loop(n_bins, seed):
    p, y = random_probs(600, 5, n_bins, seed)
    ours_ece = metrics.ece(p, y, n_bins=n_bins)
    ours_mce = metrics.mce(p, y, n_bins=n_bins)
    tm_ece = multiclass_calibration_error(p, y, num_classes=5, n_bins=n_bins, norm="l1").item()
    tm_mce = multiclass_calibration_error(p, y, num_classes=5, n_bins=n_bins, norm="max").item()
    assert ours_ece == pytest.approx(loop_ece(p.numpy(), y.numpy(), n_bins), abs=1e-6)
    assert ours_mce == pytest.approx(loop_ece(p.numpy(), y.numpy(), n_bins, reduce="max"), abs=1e-6)
    # torchmetrics works in float32
    assert ours_ece == pytest.approx(tm_ece, abs=1e-6)
    assert ours_mce == pytest.approx(tm_mce, abs=1e-6)
    assert 0.01 < ours_ece < 0.9  # a non-trivial case


@pytest.mark.parametrize("n_bins", [15, 20])
def test_adaptive_and_classwise_match_numpy_loop(n_bins):
    p, y = random_probs(500, 4, n_bins, seed=3)
    assert metrics.adaptive_ece(p, y, n_bins) == pytest.approx(loop_adaptive_ece(p.numpy(), y.numpy(), n_bins),
                                                              abs=1e-6)
    assert metrics.classwise_ece(p, y, num_classes=4, n_bins=n_bins) == pytest.approx(
        loop_classwise_ece(p.numpy(), y.numpy(), n_bins), abs=1e-6)


def test_adaptive_ece_with_uneven_and_fewer_samples_than_bins():
    p, y = random_probs(37, 3, 15, seed=5)  # 37 = 2*15 + 7: sizes 3 (x7) and 2 (x8)
    assert metrics.adaptive_ece(p, y, 15) == pytest.approx(loop_adaptive_ece(p.numpy(), y.numpy(), 15), abs=1e-12)
    p, y = p[:6], y[:6]  # 9 empty bins
    assert metrics.adaptive_ece(p, y, 15) == pytest.approx(loop_adaptive_ece(p.numpy(), y.numpy(), 15), abs=1e-12)


def test_perfectly_calibrated_bins_give_zero():
    # Confidence 0.7 with 7 of 10 right, 0.9 with 9 of 10 right: every bin's accuracy equals its confidence.
    probs = [[0.7, 0.3]] * 10 + [[0.1, 0.9]] * 10
    labels = [0] * 7 + [1] * 3 + [1] * 9 + [0]
    for n_bins in (15, 20):
        assert metrics.ece(probs, labels, n_bins) == pytest.approx(0.0, abs=1e-12)
        assert metrics.mce(probs, labels, n_bins) == pytest.approx(0.0, abs=1e-12)
    assert metrics.adaptive_ece(probs, labels, 2) == pytest.approx(0.0, abs=1e-12)


def test_all_wrong_confident_gives_the_confidence():
    probs = torch.tensor([[0.9, 0.05, 0.05]] * 8)
    labels = torch.ones(8, dtype=torch.long)
    assert metrics.ece(probs, labels) == pytest.approx(0.9, abs=1e-7)
    assert metrics.mce(probs, labels) == pytest.approx(0.9, abs=1e-7)
    assert metrics.accuracy(probs, labels) == 0.0


def test_hand_computed_nll_brier_accuracy_classwise():
    probs = [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]]
    labels = [0, 2]
    assert metrics.nll(probs, labels) == pytest.approx((-math.log(0.7) - math.log(0.1)) / 2, abs=1e-12)
    # (0.09 + 0.04 + 0.01 + 0.09 + 0.36 + 0.81) / 2
    assert metrics.brier(probs, labels) == pytest.approx(1.40 / 2, abs=1e-12)
    assert metrics.accuracy(probs, labels) == 0.5
    # Classwise, 2 bins (0,.5], (.5,1]. Class 0: bin0 {s2: p .3, freq 0} -> .3/2, bin1 {s1: .7, freq 1} -> .3/2.
    # Class 1: bin0 {s1: .2, 0} -> .2/2, bin1 {s2: .6, 0} -> .6/2. Class 2: bin0 {both: mean .1, freq .5} -> .4.
    expected = ((0.15 + 0.15) + (0.1 + 0.3) + 0.4) / 3
    assert metrics.classwise_ece(probs, labels, num_classes=3, n_bins=2) == pytest.approx(expected, abs=1e-12)


def test_bins_are_left_open_right_closed():
    # 0.75 is exactly representable and is the upper edge of bin 3 of 4: it belongs to (0.5, 0.75].
    bins = metrics.reliability_bins([[0.75, 0.25], [0.5, 0.5], [0.76, 0.24]], [0, 0, 0], n_bins=4)
    assert bins["count"].tolist() == [0, 1, 1, 1]  # 0.5 -> (0.25, 0.5], 0.75 -> (0.5, 0.75], 0.76 -> last
    assert bins["edges"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert np.isnan(bins["confidence"][0]) and np.isnan(bins["accuracy"][0])
    assert bins["confidence"][2] == pytest.approx(0.75)


@pytest.mark.parametrize("n_bins", [10, 15, 20])
def test_a_confidence_on_every_edge_m_over_m_lands_in_the_bin_it_closes(n_bins):
    # m / M as a float64 belongs to ((m-1)/M, m/M] for every m and both usual bin counts (0.55 of 20 bins and
    # 0.7333... of 15 are not exact in binary, so the edges must be computed the same way as the value).
    edges = [m / n_bins for m in range(1, n_bins)]
    probs = [[c, 1.0 - c] if c >= 0.5 else [1.0 - c, c] for c in edges]
    conf = [max(row) for row in probs]
    bins = metrics.reliability_bins(probs, [0] * len(probs), n_bins=n_bins)
    expected = np.bincount(loop_bins(conf, n_bins), minlength=n_bins)
    assert bins["count"].tolist() == expected.tolist()
    # A sample on the edge and one just inside the same bin share it: one gap, not two.
    p = [[0.55, 0.45], [0.52, 0.48]]
    assert metrics.ece(p, [0, 1], n_bins=20) == pytest.approx(abs(1 - (0.55 + 0.52)) / 2, abs=1e-12)


def test_reliability_bins_reproduce_ece():
    p, y = random_probs(400, 6, 15, seed=7)
    bins = metrics.reliability_bins(p, y)
    filled = bins["count"] > 0
    from_bins = (bins["count"][filled] * np.abs(bins["accuracy"][filled] - bins["confidence"][filled])).sum() / 400
    assert bins["count"].sum() == 400
    assert from_bins == pytest.approx(metrics.ece(p, y), abs=1e-12)


def test_summary_from_logits_matches_the_functions():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(300, 7, generator=g) * 3
    labels = torch.randint(0, 7, (300,), generator=g)
    s = metrics.summary(logits, labels, n_bins=20, num_classes=7)
    p = torch.softmax(logits.double(), dim=1)
    assert set(s) == {"acc", "ece", "adaece", "cece", "mce", "nll", "brier", "smece", "debiased_ece", "aurc", "augrc",
                      "n"}
    assert s["n"] == 300
    assert s["debiased_ece"] == pytest.approx(metrics.debiased_ece(p, labels, 20), abs=1e-12)
    assert s["acc"] == pytest.approx((logits.argmax(1) == labels).double().mean().item())
    assert s["ece"] == pytest.approx(metrics.ece(p, labels, 20), abs=1e-12)
    assert s["adaece"] == pytest.approx(metrics.adaptive_ece(p, labels, 20), abs=1e-12)
    assert s["cece"] == pytest.approx(metrics.classwise_ece(p, labels, 7, 20), abs=1e-12)
    assert s["mce"] == pytest.approx(metrics.mce(p, labels, 20), abs=1e-12)
    assert s["brier"] == pytest.approx(metrics.brier(p, labels), abs=1e-12)
    assert s["nll"] == pytest.approx(torch.nn.functional.cross_entropy(logits.double(), labels).item(), abs=1e-12)


def test_summary_keeps_confident_mistakes_finite_and_exact():
    logits = torch.tensor([[0.0, 800.0], [0.0, 1.0]])
    s = metrics.summary(logits, torch.tensor([0, 1]))
    assert s["nll"] == pytest.approx((800.0 + math.log1p(math.exp(-1.0))) / 2)


def test_fp16_probabilities_are_accepted():
    p, y = random_probs(200, 10, 15, seed=2)
    assert metrics.ece(p.half(), y) == pytest.approx(metrics.ece(p, y), abs=5e-3)


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.ece(torch.rand(5), torch.zeros(5, dtype=torch.long)), r"probs: expected shape \[N, K\]"),
    (lambda: metrics.ece(torch.full((3, 2), 0.7), torch.zeros(3, dtype=torch.long)), "probs: rows must sum to 1"),
    (lambda: metrics.ece(torch.randn(3, 2) * 5, torch.zeros(3, dtype=torch.long)), "probs: values in"),
    (lambda: metrics.ece(torch.full((3, 2), 0.5), torch.tensor([0, 1, 2])), r"labels: .*valid: integers in \[0, 1\]"),
    (lambda: metrics.ece(torch.full((3, 2), 0.5), torch.tensor([0, 1])), r"labels: expected shape \[3\]"),
    (lambda: metrics.ece(torch.full((3, 2), 0.5), torch.tensor([0.5, 1, 0])), "labels: expected integer"),
    (lambda: metrics.ece(torch.empty(0, 2), torch.empty(0, dtype=torch.long)), "probs: no samples"),
    (lambda: metrics.ece(torch.full((3, 2), 0.5), torch.tensor([0, 1, 0]), n_bins=0), "n_bins"),
    (lambda: metrics.ece(torch.tensor([[math.nan, 1.0]]), torch.tensor([0])), "probs: contains NaN"),
    (lambda: metrics.classwise_ece(torch.full((3, 2), 0.5), [0, 1, 0], num_classes=3), "num_classes"),
    (lambda: metrics.summary(torch.tensor([[0.0, math.inf]]), torch.tensor([0])), "logits: contains NaN"),
    (lambda: metrics.summary(torch.zeros(4), torch.zeros(4, dtype=torch.long)), r"logits: expected shape"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_reliability_diagram_overlay_writes_a_png(tmp_path):
    p, y = random_probs(300, 5, 15, seed=9)
    calibrated = torch.softmax(torch.log(p) / 1.5, dim=1)
    path = tmp_path / "reliability.png"
    fig = metrics.reliability_diagram(p, y, n_bins=10, calibrated_probs=calibrated, path=str(path))
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("uncalibrated (ECE") for t in legend)
    assert any(t.startswith("calibrated (ECE") for t in legend)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_metrics_does_not_import_matplotlib():
    code = "import sys, trainables.metrics; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------------------------------------------
# smECE, debiased ECE, AURC/AUGRC and the bootstrap intervals, against their reference packages and by hand.

def _random_probs(seed, n, k=10, sharpness=3.0, calibrated=False):
    """Softmax outputs and labels; with `calibrated`, labels drawn from the probabilities themselves."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * sharpness
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if calibrated:
        labels = np.array([rng.choice(k, p=row) for row in p])
    else:
        labels = np.where(rng.uniform(size=n) < 0.6, p.argmax(axis=1), rng.integers(0, k, n))
    return p, labels


@pytest.mark.parametrize("seed,n,calibrated", [(0, 40, False), (1, 1000, False), (2, 3000, True), (3, 5000, False)])
def test_smooth_ece_equals_relplot(seed, n, calibrated):
    import relplot

    p, y = _random_probs(seed, n, calibrated=calibrated)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    assert metrics.smooth_ece(p, y) == pytest.approx(relplot.smECE(confidence, correct), rel=1e-12, abs=1e-15)


def test_smooth_ece_sits_at_its_own_bandwidth():
    """smECE's definition: at sigma*, the smoothed error equals sigma* (within the 10 bisection steps)."""
    import relplot

    p, y = _random_probs(4, 2000)
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    value, sigma = relplot.smECE(confidence, correct, return_width=True)
    assert metrics.smooth_ece(p, y) == pytest.approx(value)
    assert abs(value - sigma) < 2 ** -10 + 1e-9


@pytest.mark.parametrize("seed,n,calibrated", [(0, 60, False), (1, 1000, False), (2, 4000, True), (5, 4999, False)])
@pytest.mark.parametrize("n_bins", [15, 10])
def test_debiased_ece_equals_uncertainty_calibration(seed, n, calibrated, n_bins):
    import calibration

    p, y = _random_probs(seed, n, calibrated=calibrated)
    want = calibration.lower_bound_scaling_top_ce(p, y, p=2, debias=True, num_bins=n_bins)
    assert metrics.debiased_ece(p, y, n_bins=n_bins) == pytest.approx(want, rel=1e-9, abs=1e-12)
    if n_bins == 15:  # the package's entry point picks the same estimator for continuous probabilities
        assert metrics.debiased_ece(p, y) == pytest.approx(
            calibration.get_calibration_error(p, y, p=2, debias=True, mode="top-label"), rel=1e-9, abs=1e-12)


def test_debiased_ece_of_a_calibrated_model_is_near_zero_where_the_plugin_is_not():
    """The plug-in L2 error of a calibrated model is biased upwards at small n; the debiased one, averaged over
    draws, is close to 0 in its square."""
    import calibration

    debiased, plugin = [], []
    for seed in range(10):
        p, y = _random_probs(100 + seed, 500, calibrated=True)
        debiased.append(metrics.debiased_ece(p, y) ** 2)
        plugin.append(calibration.lower_bound_scaling_top_ce(p, y, p=2, debias=False) ** 2)
    assert np.mean(debiased) < 0.25 * np.mean(plugin)


def test_aurc_and_augrc_by_hand():
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (wrong): E = 0, 1, 1, 2
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 0])
    assert metrics.aurc(probs, labels) == pytest.approx((0 / 1 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert metrics.augrc(probs, labels) == pytest.approx((0 + 1 + 1 + 2) / 4 / 4)
    # a tie between the right 0.9 and the wrong 0.8 made 0.85 each: every order of the pair, averaged
    probs[0], probs[1] = [0.85, 0.15], [0.15, 0.85]
    orders = [(0 / 1 + 1 / 2 + 1 / 3 + 2 / 4) / 4, (1 / 1 + 1 / 2 + 1 / 3 + 2 / 4) / 4]
    assert metrics.aurc(probs, labels) == pytest.approx(sum(orders) / 2)
    assert metrics.augrc(probs, labels) == pytest.approx(((0 + 1 + 1 + 2) + (1 + 1 + 1 + 2)) / 2 / 16)


@pytest.mark.parametrize("seed,n", [(0, 30), (1, 2000), (2, 5000)])
def test_augrc_matches_the_auroc_identity(seed, n):
    """AUGRC = (1 - AUROC) acc (1 - acc) + (1 - acc)^2 / 2 + (1 - acc) / (2N), AUROC from scikit-learn: an independent
    computation through the ranking of right against wrong predictions (ties counted one half)."""
    from sklearn.metrics import roc_auc_score

    p, y = _random_probs(seed, n)
    confidence = np.round(p.max(axis=1), 2)  # ties, so their handling is checked too
    k = p.shape[1]
    # column 0 holds the confidence, the rest share 1 - confidence: class 0 is predicted, right when the label is 0
    p2 = np.concatenate([confidence[:, None], np.repeat(((1 - confidence) / (k - 1))[:, None], k - 1, axis=1)], 1)
    correct = (p.argmax(axis=1) == y)
    labels = np.where(correct, 0, 1)
    acc = correct.mean()
    auroc = roc_auc_score(correct, confidence)
    want = (1 - auroc) * acc * (1 - acc) + (1 - acc) ** 2 / 2 + (1 - acc) / (2 * n)
    assert metrics.augrc(p2, labels) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aurc_matches_a_loop_over_every_coverage(seed):
    p, y = _random_probs(seed, 300)
    confidence = p.max(axis=1)
    wrong = (p.argmax(axis=1) != y).astype(float)
    order = sorted(range(len(y)), key=lambda i: -confidence[i])
    risks = [sum(wrong[j] for j in order[:i]) / i for i in range(1, len(y) + 1)]
    assert metrics.aurc(p, y) == pytest.approx(sum(risks) / len(risks), rel=1e-12)


def test_bootstrap_intervals_equal_a_loop_over_the_same_resamples():
    p, y = _random_probs(7, 800)
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    got = metrics.bootstrap_intervals(confidence, correct, n_bins=15, resamples=200, seed=3)
    idx = np.random.default_rng(3).integers(0, len(y), size=(200, len(y)))
    edges = metrics.equal_mass_edges(confidence, 15)  # the full sample's bins, kept in every resample
    eces, debiased = [], []
    for row in idx:
        c, k = confidence[row], correct[row]
        eces.append(sum(abs(k[b].sum() - c[b].sum()) for b in
                        (metrics.equal_width_bins(c, 15) == m for m in range(15))) / len(row))
        bins = np.searchsorted(edges, c, side="left")
        total = 0.0
        for m in range(len(edges)):
            members = bins == m
            size = members.sum()
            if size >= 2:
                acc = k[members].mean()
                total += size / len(row) * ((c[members].mean() - acc) ** 2 - acc * (1 - acc) / (size - 1))
        debiased.append(math.sqrt(max(total, 0.0)))
    for name, values, full in (("ece", eces, metrics.ece(p, y)), ("debiased_ece", debiased, metrics.debiased_ece(p, y))):
        q_lo, q_hi = np.percentile(values, [2.5, 97.5])  # the basic bootstrap interval, clipped at 0
        assert got[name] == pytest.approx((max(2 * full - q_hi, 0), max(2 * full - q_lo, 0)), rel=1e-12, abs=1e-15)
        assert 0 <= got[name][0] <= got[name][1]


def test_bootstrap_intervals_cover_the_true_ece_of_a_known_model():
    """Models whose true top-label calibration error is known (confidence c ~ U(0.5, 1), right with probability
    c - gap): the interval covers gap = 0.05 at n = 5000 in at least 85% of 40 draws (measured 94% over 100 draws,
    bench/bench_ece_intervals.py), and a calibrated model's error 0 in at least a third (measured 60% at n = 2000),
    which a percentile interval of the plug-in ECE never does (its lower end is above 0)."""
    rng = np.random.default_rng(11)

    def covered(gap, n, draws=40):
        hits = 0
        for _ in range(draws):
            confidence = rng.uniform(0.5, 1.0, n)
            correct = (rng.uniform(size=n) < confidence - gap).astype(float)
            lo, hi = metrics.bootstrap_intervals(confidence, correct, seed=int(rng.integers(1 << 30)))["ece"]
            hits += lo <= gap <= hi
        return hits

    assert covered(0.05, 5000) >= 34
    assert covered(0.0, 2000) >= 14


def test_summary_reports_the_new_measures_and_intervals():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(600, 5, generator=g) * 2, torch.randint(0, 5, (600,), generator=g)
    out = metrics.summary(logits, labels, intervals=True)
    probs = torch.softmax(logits.double(), dim=1)
    assert out["smece"] == pytest.approx(metrics.smooth_ece(probs, labels))
    assert out["debiased_ece"] == pytest.approx(metrics.debiased_ece(probs, labels))
    assert out["aurc"] == pytest.approx(metrics.aurc(probs, labels))
    assert out["augrc"] == pytest.approx(metrics.augrc(probs, labels))
    assert 0 <= out["ece_lo"] <= out["ece_hi"] and out["ece_lo"] <= out["ece"]
    assert out["debiased_ece_lo"] <= out["debiased_ece_hi"]
    assert "ece_lo" not in metrics.summary(logits, labels)
