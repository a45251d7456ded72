"""Every space shipped in spaces/ validates, round-trips, says what it is for, and samples valid trial configs."""
from __future__ import annotations

import optuna
import pytest
import yaml

from gce_search.search.space import define_by_run, make_sampler
from gce_search.spaces.loading import SPACES_DIR, load_spec, shipped_spaces
from gce_search.spaces.records import SearchSettings
from gce_search.trainables.config import check_breakpoints, problems_of

optuna.logging.set_verbosity(optuna.logging.WARNING)

EXPECTED = {"quickstart", "fashion_mnist", "fashion_mnist_cpu", "fashion_mnist_lt", "cifar10", "cifar100",
            "cifar10_lt", "cifar100_lt", "tiny_imagenet", "medmnist"}
CPU_SPACES = {"quickstart", "fashion_mnist_cpu"}
GPU_SPACES = sorted(EXPECTED - CPU_SPACES)


def test_the_expected_spaces_are_shipped():
    assert EXPECTED <= set(shipped_spaces())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_space_validates_round_trips_and_is_documented(name, tmp_path):
    text = (SPACES_DIR / f"{name}.yaml").read_text()
    first = text.splitlines()[0]
    assert first.startswith(f"# {name}: "), "each shipped space opens with a comment saying what it is for"
    spec = load_spec(name)
    assert spec.name == name and spec.description
    again_path = tmp_path / f"{name}.yaml"
    again_path.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    assert load_spec(again_path) == spec
    # the searched loss parameters belong to searched losses, so none is dead weight
    losses = set(spec.param("loss.name").choices)
    for p in spec.params:
        if p.entry is not None and p.entry[0] == "loss":
            assert p.entry[1] in losses
    assert "gce" in losses and "cross_entropy" in losses
    assert spec.param("calibration.breakpoints").kind == "breakpoints"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_space_samples_resolve(name):
    spec = load_spec(name)
    for sampler_name in ("random", "tpe"):
        settings = SearchSettings(sampler=sampler_name, num_samples=6, seed=1)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(settings))
        space = define_by_run(spec)
        for i in range(6):
            trial = study.ask()
            cfg = space(trial)["trial_config"]
            assert problems_of(cfg) == []
            assert check_breakpoints(cfg["calibration"]["breakpoints"]) is None
            assert cfg["data"] == spec.base_config["data"]
            study.tell(trial, [0.5 + 0.01 * i, 0.1 - 0.005 * i])


def test_quickstart_is_the_small_cpu_default():
    spec = load_spec("quickstart")
    cfg = spec.base_config
    assert cfg["data"]["name"] == "digits" and cfg["model"]["name"] == "mlp"
    assert cfg["train"]["device"] == "cpu" and spec.resources.gpus_per_trial == 0
    assert 8 <= cfg["train"]["epochs"] <= 10 and cfg["train"]["batch_size"] == 64
    assert spec.search.num_samples == 16 and spec.scheduler.name == "asha"
    assert spec.param("loss.name").choices == ["cross_entropy", "gce", "focal", "label_smoothing"]
    assert {p.key for p in spec.params} == {"loss.name", "gce.lam", "focal.gamma", "train.lr",
                                            "calibration.breakpoints"}


def test_fashion_mnist_cpu_is_sized_for_a_laptop():
    spec = load_spec("fashion_mnist_cpu")
    cfg = spec.base_config
    assert cfg["data"]["name"] == "fashion_mnist" and cfg["model"]["name"] == "mlp"
    assert spec.resources.gpus_per_trial == 0 and spec.resources.cpus_per_trial == 1
    assert cfg["data"]["max_train"] <= 12000 and cfg["train"]["epochs"] <= 6 and spec.search.num_samples <= 12
    assert spec.scheduler.params["grace_period"] < cfg["train"]["epochs"]
    assert cfg["data"]["val"] >= 5000 and cfg["data"]["calib"] >= 5000  # the GPU space's ECE resolution


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_spaces_leave_precision_to_the_device(name):
    train = load_spec(name).base_config["train"]
    assert train["bf16"] == "auto" and train["channels_last"] == "auto"


@pytest.mark.parametrize("name", GPU_SPACES)
def test_gpu_spaces_ask_for_gpus_and_a_real_budget(name):
    spec = load_spec(name)
    gpus = spec.resources.gpus_per_trial
    assert 0.25 <= gpus <= 1
    assert spec.base_config["train"]["device"] == "auto"  # runs on CPU too, with --set resources.gpus_per_trial=0
    assert spec.base_config["train"]["epochs"] >= 30 and spec.search.num_samples >= 32
    # the scheduler's first rung leaves room for at least two promotions before the full budget
    eta = spec.scheduler.params["reduction_factor"]
    assert spec.scheduler.params["grace_period"] * eta ** 2 <= spec.base_config["train"]["epochs"]
    if name.endswith("_lt"):
        assert spec.base_config["data"]["imbalance"] == 100
    # evaluation splits large enough to resolve ECE differences of ~0.004 (docs/design.md: ECE is noisy at small n)
    assert spec.base_config["data"]["val"] >= 5000 and spec.base_config["data"]["calib"] >= 5000


def test_gce_lambda_range_stays_where_the_loss_is_bounded():
    # Why every shipped space searches gce.lam in [0, 1]: for lam > 1 the batch GCE is unbounded below. With logits
    # (s, 0, ..., 0) for every input (all mass on class 0), the batch mean is -(lam - 1) * (log(e^s + K - 1) - s/K).
    import math

    import torch

    from gce_search.trainables.losses import gce

    K, B = 10, 100
    targets = torch.arange(B) % K
    for lam in (0.5, 1.0, 1.5, 1.85):
        for s in (5.0, 20.0, 50.0):
            logits = torch.zeros(B, K, dtype=torch.float64)
            logits[:, 0] = s
            expected = -(lam - 1) * (math.log(math.exp(s) + K - 1) - s / K)
            assert gce(logits, targets, lam=lam).mean().item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    for name in sorted(EXPECTED):
        assert load_spec(name).param("gce.lam").high <= 1.0, name
