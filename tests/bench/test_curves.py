"""bench/curves.py: the recorded grid, its design order, and a recording that equals the trial loop, bit for bit."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import curves  # noqa: E402

from gce_search.spaces.loading import load_spec  # noqa: E402

TINY_SPACE = """
name: tiny_curves
seed: 0
data: {name: digits, split_seed: 0}
model: {name: mlp, width: 16, depth: 1}
train: {epochs: 3, batch_size: 64, optimizer: sgd, momentum: 0.9, schedule: cosine, bf16: false,
        channels_last: false, device: cpu, threads: 1}
calibration: {method: ats, min_samples: 20}
objective: {w_acc: 1.0, w_ece: 1.0, n_bins: 15}
search: {sampler: tpe, num_samples: 8, seed: 0}
scheduler: {name: moasha, grace_period: 1, reduction_factor: 3}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
space:
  loss.name: {choices: [cross_entropy, gce]}
  gce.lam: {choices: [0.2, 1.0]}
  train.lr: {choices: [0.05, 0.2]}
  calibration.breakpoints: {choices: [[0.8], [0.6, 0.9]]}
"""


def test_shipped_space_grid_is_the_full_product_and_the_design_spreads():
    spec = load_spec(REPO / "bench" / "tables" / "fmlt100_mlp.yaml")
    grid = curves.full_grid(spec)
    # losses: cross_entropy, gce x 4 lambdas, focal x 4 gammas, flsd53, label smoothing x 2 = 12; x 6 lr x 4 wd
    assert len(grid) == 12 * 6 * 4 == 288
    assert len({json.dumps(c, sort_keys=True) for c in grid}) == 288
    assert all("gce.lam" in c for c in grid if c["loss.name"] == "gce")
    assert not any("gce.lam" in c for c in grid if c["loss.name"] != "gce")
    assert len(curves.calibration_options(spec)) == 6
    order = curves.design_order(spec, grid, seed=0)
    assert sorted(order) == list(range(288))
    assert order == curves.design_order(spec, grid, seed=0) != curves.design_order(spec, grid, seed=1)
    first = [grid[i] for i in order[:12]]
    # any prefix is spread: the first 12 already hold every loss family and the extreme learning rates
    assert {c["loss.name"] for c in first} == {"cross_entropy", "gce", "focal", "flsd53", "label_smoothing"}
    assert {0.005, 0.2} <= {c["train.lr"] for c in first}


def test_rung_epochs():
    assert curves.rung_epochs(27) == [1, 3, 9, 27]
    assert curves.rung_epochs(10) == [1, 3, 9, 10]
    assert curves.rung_epochs(1) == [1]


def test_recording_equals_the_trial_loop_and_reproduces_bit_for_bit(tmp_path):
    from gce_search.trainables.trial import run_trial

    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    out = tmp_path / "rec"
    assert curves.main(["record", "--space", str(space), "--out", str(out), "--procs", "1"]) == 0
    table = curves.load_table(out / "table.npz")
    # (cross_entropy + gce x 2) x 2 lr = 6 trained models, each with 2 calibrators, 3 epochs
    assert table.values.shape == (6, 3, 2, len(curves.METRICS))
    assert np.isfinite(table.values).all()
    assert table.meta["data_info"]["sizes"]["val"] > 0
    assert (table.per_epoch[:, :, 1] > 0).all()  # the loop's measured training time of every epoch
    # Each row is what the tool's own trial reports for that configuration and calibrator.
    spec = load_spec(space)
    for i in (0, 3):
        for k in (0, 1):
            flat = {**table.configs[i], curves.CAL_KEY: table.options[k]}
            reported: list = []
            run_trial(spec.apply(flat), reporter=lambda m, _ckpt, into=reported: into.append(m))
            for e, metrics in enumerate(reported, start=1):
                row = table.result(i, k, e)
                for key in ("val/acc", "val/ece", "val/nll", "score"):
                    assert row[key] == metrics[key], (i, k, e, key)
            assert row["final"] and row["test/ece"] == reported[-1]["test/ece"]
            assert row["test/acc"] == reported[-1]["test/acc"]
    samples = np.load(out / "samples" / f"{table.meta['grid_index'][0]}.npz")
    n_val = table.meta["data_info"]["sizes"]["val"]
    assert samples["val_conf"].shape == (3, n_val) and samples["val_conf"].dtype == np.float16
    correct = np.unpackbits(samples["val_correct"][-1])[:n_val]
    assert correct.mean() == pytest.approx(table.values[0, -1, 0, table.metric("val/acc")])
    assert samples["calib_logits"].shape[0] == len(table.meta["rungs"]) == 2  # rungs 1 and 3 (the last epoch)
    # A rerun of the command skips what is recorded; verify retrains and finds every value identical.
    assert curves.main(["record", "--space", str(space), "--out", str(out), "--procs", "1"]) == 0
    assert curves.main(["verify", "--table", str(out / "table.npz"), "--space", str(space),
                        "--configs", "0", "5"]) == 0


def test_subset_keeps_a_full_product(tmp_path):
    small = curves.load_table(REPO / "tests" / "data" / "curves_small.npz")
    out = tmp_path / "sub.npz"
    assert curves.main(["subset", "--table", str(REPO / "tests" / "data" / "curves_small.npz"), "--out", str(out),
                        "--keep", "loss.name=\"cross_entropy\"", "--options", "0", "--epochs", "3"]) == 0
    sub = curves.load_table(out)
    assert all(c["loss.name"] == "cross_entropy" for c in sub.configs)
    assert sub.values.shape[1:3] == (3, 1) and sub.epochs == 3
    spec = sub.spec()
    assert len(curves.full_grid(spec)) == len(sub.configs)
    assert len(sub.configs) < len(small.configs)
