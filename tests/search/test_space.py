"""The Optuna define-by-run space: driven by hand with ask/tell on real studies (no Ray, no training)."""
from __future__ import annotations

import random

import numpy as np
import optuna
import pytest
import yaml

from gce_search.search.space import SAMPLERS, breakpoints_from_unit, define_by_run, make_sampler, sample_params
from gce_search.spaces.loading import load_spec
from gce_search.spaces.records import SearchSettings
from gce_search.trainables.config import check_breakpoints, problems_of

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "name": "unit",
    "data": {"name": "digits"},
    "model": {"name": "mlp"},
    "train": {"epochs": 3, "device": "cpu"},
    "search": {"num_samples": 12, "seed": 7},
    "space": {
        "loss.name": {"choices": ["cross_entropy", "gce", "focal", "label_smoothing"]},
        "gce.lam": {"low": 0.0, "high": 2.0},
        "focal.gamma": {"low": 0.5, "high": 5.0},
        "label_smoothing.alpha": {"low": 0.01, "high": 0.2, "log": True},
        "train.lr": {"low": 1.0e-3, "high": 0.3, "log": True},
        "train.batch_size": {"low": 32, "high": 128, "step": 32},
        "train.optimizer": {"choices": ["sgd", "adamw"]},
        "train.momentum": {"low": 0.5, "high": 0.95, "when": {"train.optimizer": "sgd"}},
        "train.milestones": {"choices": [[1], [1, 2]]},
        "calibration.method": {"choices": ["ts", "ats"]},
        "calibration.breakpoints": {"breakpoints": {"pieces": [2, 5], "low": 0.2, "high": 0.99, "min_gap": 0.02}},
    },
}

LOSS_PARAM = {"gce": "gce.lam", "focal": "focal.gamma", "label_smoothing": "label_smoothing.alpha"}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "unit.yaml"
    path.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return load_spec(path)


# --------------------------------------------------------------------------------------------- breakpoint mapping


def test_breakpoints_from_unit_hand_computed():
    # m = 3 pieces, no margins: gap 1 takes 1 - (1 - u1)^(1/2) of (0, 1), gap 2 takes u2 of what is left
    assert breakpoints_from_unit([0.75, 0.5], 0.0, 1.0, 0.0) == pytest.approx([0.5, 0.75])
    # with min_gap 0.1: free length 1 - 3 * 0.1 = 0.7; b1 = 0.1 + 0.5 * 0.7; b2 = b1 + 0.1 + 0.5 * 0.35
    assert breakpoints_from_unit([0.75, 0.5], 0.0, 1.0, 0.1) == pytest.approx([0.45, 0.725])
    # m = 2: the single breakpoint is linear in u inside (low + gap, high - gap)
    assert breakpoints_from_unit([0.0], 0.2, 0.9, 0.05) == pytest.approx([0.25])
    assert breakpoints_from_unit([1.0], 0.2, 0.9, 0.05) == pytest.approx([0.85])
    assert breakpoints_from_unit([], 0.0, 1.0, 0.01) == []


def test_breakpoints_from_unit_extremes_stay_strictly_inside():
    for units in ([0.0] * 4, [1.0] * 4, [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]):
        b = breakpoints_from_unit(units, 0.0, 1.0, 0.01)
        assert check_breakpoints(b) is None, b
        assert min(np.diff([0.0, *b, 1.0])) >= 0.01 - 1e-12


def test_breakpoints_from_unit_uniform_units_give_sorted_uniform_points():
    # Independent uniform u's must give the distribution of m-1 sorted uniform points on (low, high) (gaps uniform
    # on the simplex): compare mean and spread of each breakpoint with sorting uniform draws directly.
    rng = np.random.default_rng(0)
    pieces, n = 4, 40000
    mapped = np.array([breakpoints_from_unit(list(u), 0.0, 1.0, 0.0) for u in rng.random((n, pieces - 1))])
    direct = np.sort(rng.random((n, pieces - 1)), axis=1)
    # E[k-th of m-1 sorted uniforms] = k / m
    assert mapped.mean(axis=0) == pytest.approx([1 / 4, 2 / 4, 3 / 4], abs=0.01)
    assert mapped.mean(axis=0) == pytest.approx(direct.mean(axis=0), abs=0.01)
    assert mapped.std(axis=0) == pytest.approx(direct.std(axis=0), abs=0.01)


def test_breakpoints_from_unit_rejects_bad_input():
    with pytest.raises(ValueError, match=r"units\[1\]: got 1\.5; valid: a number in \[0, 1\]"):
        breakpoints_from_unit([0.5, 1.5])
    with pytest.raises(ValueError, match=r"min_gap: 3 pieces of at least 0\.5 do not fit"):
        breakpoints_from_unit([0.5, 0.5], 0.0, 1.0, 0.5)


# ------------------------------------------------------------------------------------------------ define-by-run


def run_study(spec, sampler_name: str, n: int, seed: int = 7):
    settings = SearchSettings(sampler=sampler_name, num_samples=n, seed=seed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(settings))
    space = define_by_run(spec)
    configs, params = [], []
    rng = random.Random(seed)
    for _ in range(n):
        trial = study.ask()
        out = space(trial)
        assert set(out) == {"trial_config"}
        configs.append(out["trial_config"])
        params.append(dict(trial.params))
        study.tell(trial, [rng.random(), rng.random()])
    return configs, params


@pytest.mark.parametrize("sampler_name", ["tpe", "random", "nsga2"])
def test_sampled_configs_resolve_and_respect_conditions(spec, sampler_name):
    configs, params = run_study(spec, sampler_name, 24)
    pieces_seen, losses_seen = set(), set()
    for cfg, p in zip(configs, params):
        assert problems_of(cfg) == []  # a complete, valid trial config
        loss = cfg["loss"]["name"]
        losses_seen.add(loss)
        # only the chosen loss's parameter is suggested, and it lands at loss.<param>
        for name, key in LOSS_PARAM.items():
            assert (key in p) == (loss == name), (loss, p)
        if loss in LOSS_PARAM:
            key = LOSS_PARAM[loss]
            assert cfg["loss"] == {"name": loss, key.split(".")[1]: p[key]}
        else:
            assert cfg["loss"] == {"name": loss}
        # momentum only under sgd
        assert ("train.momentum" in p) == (cfg["train"]["optimizer"] == "sgd")
        if "train.momentum" in p:
            assert cfg["train"]["momentum"] == p["train.momentum"]
        assert cfg["train"]["batch_size"] in (32, 64, 96, 128)
        assert 1e-3 <= cfg["train"]["lr"] <= 0.3
        assert cfg["train"]["milestones"] in ([1], [1, 2])
        # breakpoints only under ATS, strictly increasing inside (low, high), min_gap apart
        bp_keys = [k for k in p if k.startswith("calibration.breakpoints.")]
        if cfg["calibration"]["method"] == "ats":
            m = p["calibration.breakpoints.pieces"]
            pieces_seen.add(m)
            assert sorted(bp_keys) == sorted(["calibration.breakpoints.pieces",
                                              *(f"calibration.breakpoints.u{k}" for k in range(1, m))])
            b = cfg["calibration"]["breakpoints"]
            assert len(b) == m - 1 and check_breakpoints(b) is None
            assert min(np.diff([0.2, *b, 0.99])) >= 0.02 - 1e-12
        else:
            assert bp_keys == []
            assert cfg["calibration"]["breakpoints"] == spec.base_config["calibration"]["breakpoints"]
    assert len(losses_seen) >= 3 and len(pieces_seen) >= 2


@pytest.mark.parametrize("sampler_name", ["tpe", "random", "nsga2"])
def test_same_seed_reproduces_the_same_configs(spec, sampler_name):
    # 14 trials: past TPE's 10 random start-up trials, so its model-based proposals are compared too
    first, _ = run_study(spec, sampler_name, 14, seed=11)
    second, _ = run_study(spec, sampler_name, 14, seed=11)
    other, _ = run_study(spec, sampler_name, 14, seed=12)
    assert first == second
    assert first != other


def test_sample_params_names_are_the_space_keys(spec):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    chosen = sample_params(trial, spec)
    assert set(chosen) <= {p.key for p in spec.params}
    names = set(trial.params)
    # every Optuna name is a space key, or one of the documented breakpoint variables
    allowed = {p.key for p in spec.params} | set(spec.param("calibration.breakpoints").optuna_names())
    assert names <= allowed, names - allowed
    assert spec.param("calibration.breakpoints").optuna_names() == [
        "calibration.breakpoints.pieces", "calibration.breakpoints.u1", "calibration.breakpoints.u2",
        "calibration.breakpoints.u3", "calibration.breakpoints.u4"]


def test_make_sampler_kinds_and_seeding():
    assert set(SAMPLERS.names()) == {"tpe", "nsga2", "random"}
    assert isinstance(make_sampler({"sampler": "tpe", "seed": 1}), optuna.samplers.TPESampler)
    assert isinstance(make_sampler({"sampler": "random", "seed": 1}), optuna.samplers.RandomSampler)
    nsga = make_sampler({"sampler": "nsga2", "seed": 1, "num_samples": 64})
    assert isinstance(nsga, optuna.samplers.NSGAIISampler)
    assert nsga._population_size == 16
    with pytest.raises(ValueError, match=r"unknown sampler 'cmaes'; valid: nsga2, random, tpe"):
        make_sampler({"sampler": "cmaes"})


def test_quickstart_sampling_covers_its_losses():
    spec = load_spec("quickstart")
    configs, params = run_study(spec, "tpe", 16, seed=0)
    assert {c["loss"]["name"] for c in configs} == {"cross_entropy", "gce", "focal", "label_smoothing"}
    for c in configs:
        assert c["data"]["name"] == "digits" and c["train"]["device"] == "cpu"
        assert check_breakpoints(c["calibration"]["breakpoints"]) is None
