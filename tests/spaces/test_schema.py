"""The space schema: loading, overrides, apply, round-trip, and every kind of bad input with its message."""
from __future__ import annotations

import copy
import os
import re
import shutil
import sys
import textwrap

import pytest
import yaml

from gce_search.spaces.loading import load_spec, shipped_spaces
from gce_search.spaces.records import SearchSpec
from gce_search.spaces.validation import spec_from_dict
from gce_search.trainables.config import DEFAULTS
from tests.waiting import run_to_end
from gce_search.trainables.registry import ConfigError

BASE = {
    "name": "unit",
    "description": "a small space for the tests",
    "data": {"name": "digits"},
    "model": {"name": "mlp", "width": 32},
    "train": {"epochs": 4, "batch_size": 64, "device": "cpu"},
    "calibration": {"method": "ats"},
    "search": {"sampler": "tpe", "num_samples": 8, "seed": 3},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    "space": {
        "loss.name": {"choices": ["cross_entropy", "gce", "focal"]},
        "gce.lam": {"low": 0.0, "high": 2.0},
        "focal.gamma": {"low": 1.0, "high": 4.0},
        "train.lr": {"low": 1.0e-3, "high": 0.3, "log": True},
        "calibration.breakpoints": {"breakpoints": {"pieces": [2, 4]}},
    },
}


def write(tmp_path, doc, name="space.yaml"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def with_changes(*changes):
    """BASE with (dotted path into the document, value) changes; value DELETE removes the key."""
    doc = copy.deepcopy(BASE)
    for path, value in changes:
        parts = path.split("/")
        node = doc
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return doc


DELETE = object()


def problems(tmp_path, doc, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_spec(write(tmp_path, doc), overrides)
    return info.value.problems


# ---------------------------------------------------------------------------------------------------- valid input


def test_base_space_loads_into_typed_records(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    assert isinstance(spec, SearchSpec)
    assert spec.name == "unit"
    assert [p.key for p in spec.params] == ["loss.name", "gce.lam", "focal.gamma", "train.lr",
                                            "calibration.breakpoints"]
    lam = spec.param("gce.lam")
    assert (lam.kind, lam.path, lam.entry, lam.low, lam.high) == ("float", "loss.lam", ("loss", "gce"), 0.0, 2.0)
    bp = spec.param("calibration.breakpoints").breakpoints
    assert (bp.pieces_min, bp.pieces_max, bp.low, bp.high, bp.min_gap) == (2, 4, 0.0, 1.0, 0.01)
    # settings read as attributes and as mappings (build_scheduler takes a dict)
    assert spec.search.sampler == "tpe" and spec.search["num_samples"] == 8 and spec.search.get("seed") == 3
    assert dict(spec.scheduler) == {"name": "asha", "grace_period": 1, "reduction_factor": 2, "brackets": 1}
    assert spec.resources.reuse_actors is True  # default filled in
    # base config is a resolved trial config: every default key present, fixed settings in place
    assert set(spec.base_config) == set(DEFAULTS)
    assert spec.base_config["model"] == {"name": "mlp", "width": 32}
    assert spec.base_config["train"]["batch_size"] == 64
    assert spec.base_config["train"]["momentum"] == DEFAULTS["train"]["momentum"]


def test_apply_places_values_and_keeps_only_the_chosen_losss_params(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    values = {"loss.name": "gce", "gce.lam": 0.7, "focal.gamma": 2.0, "train.lr": 0.05,
              "calibration.breakpoints": [0.4, 0.9]}
    cfg = spec.apply(values)
    assert cfg["loss"] == {"name": "gce", "lam": 0.7}  # focal.gamma is inactive: not in the config
    assert cfg["train"]["lr"] == 0.05 and cfg["train"]["batch_size"] == 64
    assert cfg["calibration"]["breakpoints"] == [0.4, 0.9]
    cfg = spec.apply({"loss.name": "cross_entropy", "train.lr": 0.01, "calibration.breakpoints": [0.5]})
    assert cfg["loss"] == {"name": "cross_entropy"}
    # the base config is not modified by apply
    assert spec.base_config["train"]["lr"] == DEFAULTS["train"]["lr"]


def test_apply_refuses_unknown_and_missing_values(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    with pytest.raises(ValueError, match=r"not searched parameters .*'train\.momentum'"):
        spec.apply({"loss.name": "gce", "gce.lam": 1.0, "train.lr": 0.1, "calibration.breakpoints": [0.5],
                    "train.momentum": 0.5})
    with pytest.raises(ValueError, match=r"gce\.lam: active .* no value"):
        spec.apply({"loss.name": "gce", "train.lr": 0.1, "calibration.breakpoints": [0.5]})
    with pytest.raises(ConfigError, match=r"calibration\.breakpoints: .*strictly increasing"):
        spec.apply({"loss.name": "cross_entropy", "train.lr": 0.1, "calibration.breakpoints": [0.9, 0.5]})


def test_fixed_loss_params_follow_the_chosen_loss(tmp_path):
    # lam is fixed: taken by gce and mmce, not by focal
    doc = with_changes(("loss", {"lam": 0.5}),
                       ("space/loss.name", {"choices": ["gce", "mmce", "focal"]}),
                       ("space/gce.lam", DELETE))
    spec = load_spec(write(tmp_path, doc))
    common = {"train.lr": 0.1, "calibration.breakpoints": [0.5]}
    assert spec.apply({"loss.name": "gce", **common})["loss"] == {"name": "gce", "lam": 0.5}
    assert spec.apply({"loss.name": "mmce", **common})["loss"] == {"name": "mmce", "lam": 0.5}
    assert spec.apply({"loss.name": "focal", "focal.gamma": 2.0, **common})["loss"] == {"name": "focal",
                                                                                         "gamma": 2.0}


def test_loss_params_with_a_fixed_loss(tmp_path):
    doc = with_changes(("loss", {"name": "gce"}), ("space/loss.name", DELETE), ("space/focal.gamma", DELETE))
    spec = load_spec(write(tmp_path, doc))
    cfg = spec.apply({"gce.lam": 1.5, "train.lr": 0.1, "calibration.breakpoints": [0.5]})
    assert cfg["loss"] == {"name": "gce", "lam": 1.5}


def test_breakpoints_inactive_unless_ats(tmp_path):
    doc = with_changes(("calibration", DELETE),
                       ("space/calibration.method", {"choices": ["ts", "ats"]}))
    spec = load_spec(write(tmp_path, doc))
    order = [p.key for p in spec.params]
    assert order.index("calibration.method") < order.index("calibration.breakpoints")
    bp = spec.param("calibration.breakpoints")
    assert not spec.is_active(bp, {"calibration.method": "ts"})
    assert spec.is_active(bp, {"calibration.method": "ats"})
    cfg = spec.apply({"loss.name": "cross_entropy", "train.lr": 0.1, "calibration.method": "ts",
                      "calibration.breakpoints": [0.2, 0.3]})
    assert cfg["calibration"]["method"] == "ts"
    assert cfg["calibration"]["breakpoints"] == DEFAULTS["calibration"]["breakpoints"]  # untouched


def test_when_conditions_and_their_ordering(tmp_path):
    # momentum is searched only for sgd; it is declared before the optimizer, and is ordered after it
    doc = with_changes(("space/train.momentum", {"low": 0.5, "high": 0.99, "when": {"train.optimizer": "sgd"}}),
                       ("space/train.optimizer", {"choices": ["sgd", "adamw"]}))
    spec = load_spec(write(tmp_path, doc))
    keys = [p.key for p in spec.params]
    assert keys.index("train.optimizer") < keys.index("train.momentum")
    assert spec.param("train.momentum").when == {"train.optimizer": ["sgd"]}
    base = {"loss.name": "cross_entropy", "train.lr": 0.1, "calibration.breakpoints": [0.5]}
    cfg = spec.apply({**base, "train.optimizer": "adamw", "train.momentum": 0.6})
    assert cfg["train"]["optimizer"] == "adamw" and cfg["train"]["momentum"] == DEFAULTS["train"]["momentum"]
    cfg = spec.apply({**base, "train.optimizer": "sgd", "train.momentum": 0.6})
    assert cfg["train"]["momentum"] == 0.6


def test_int_kind_from_the_config_schema_and_categorical_lists(tmp_path):
    doc = with_changes(("train/batch_size", DELETE), ("space/train.batch_size", {"low": 32, "high": 256, "log": True}),
                       ("space/model.name", {"choices": ["mlp"]}),
                       ("model", {"width": 32}),
                       ("space/mlp.depth", {"low": 1, "high": 3}),
                       ("space/train.milestones", {"choices": [[2], [2, 3]]}),
                       ("space/mmce.lam", DELETE))
    spec = load_spec(write(tmp_path, doc))
    assert spec.param("train.batch_size").kind == "int"
    assert spec.param("mlp.depth").kind == "int" and spec.param("mlp.depth").path == "model.depth"
    cfg = spec.apply({"loss.name": "cross_entropy", "train.lr": 0.1, "calibration.breakpoints": [0.5],
                      "train.batch_size": 100, "model.name": "mlp", "mlp.depth": 3, "train.milestones": [2, 3]})
    assert cfg["model"] == {"name": "mlp", "width": 32, "depth": 3}
    assert cfg["train"]["milestones"] == [2, 3] and cfg["train"]["batch_size"] == 100


def test_to_dict_round_trips_through_load(tmp_path):
    doc = with_changes(("loss", {"lam": 0.5}),
                       ("space/loss.name", {"choices": ["gce", "mmce", "focal"]}),
                       ("space/gce.lam", DELETE),
                       ("space/train.optimizer", {"choices": ["sgd", "adamw"]}),
                       ("space/train.momentum", {"low": 0.5, "high": 0.99, "when": {"train.optimizer": "sgd"}}),
                       ("space/train.weight_decay", {"low": 1.0e-5, "high": 1.0e-3, "log": True}),
                       ("train/batch_size", DELETE), ("space/train.batch_size", {"low": 32, "high": 256, "step": 32}))
    spec = load_spec(write(tmp_path, doc))
    again = load_spec(write(tmp_path, spec.to_dict(), "again.yaml"))
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    # and through spec_from_dict (how results read spec.yaml back)
    assert spec_from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False))) == spec


def test_overrides_apply_to_any_fixed_setting(tmp_path):
    path = write(tmp_path, BASE)
    spec = load_spec(path, ["train.epochs=2", "search.num_samples=3", "scheduler.grace_period=2",
                            "resources.gpus_per_trial=0.5", "search.sampler=random", "train.weight_decay=1e-4",
                            "name=renamed"])
    assert spec.base_config["train"]["epochs"] == 2
    assert spec.search.num_samples == 3 and spec.search.sampler == "random"
    assert spec.scheduler.params["grace_period"] == 2
    assert spec.resources.gpus_per_trial == 0.5
    assert spec.base_config["train"]["weight_decay"] == 1e-4  # '1e-4' read as a number, not a string
    assert spec.name == "renamed"
    # inside a list too, as a space file reads it
    spec = load_spec(write(tmp_path, with_changes(("space/calibration.breakpoints", DELETE))),
                     ["calibration.breakpoints=[1e-1, 5e-1]", "train.milestones=[2, 3]"])
    assert spec.base_config["calibration"]["breakpoints"] == [0.1, 0.5]


def test_yaml_reads_exponent_floats_without_a_dot(tmp_path):
    text = yaml.safe_dump(with_changes(("space/train.lr", DELETE)), sort_keys=False)
    text = text.replace("space:\n", "space:\n  train.lr: {low: 1e-3, high: 3e-1, log: true}\n")
    spec = load_spec(write(tmp_path, text))
    assert (spec.param("train.lr").low, spec.param("train.lr").high) == (1e-3, 0.3)


def test_shipped_space_by_name_and_by_path():
    assert "quickstart" in shipped_spaces()
    by_name = load_spec("quickstart")
    assert by_name.name == "quickstart"
    assert load_spec(by_name.source) == by_name


# ------------------------------------------------------------------------------------------------------ bad input

BAD_INPUTS = [
    # (id, changes, overrides, pattern of one problem line)
    ("unknown top-level key", [("serach", {"sampler": "tpe"})], (),
     r"^serach: unknown top-level key \(did you mean 'search'\?\); valid: "),
    ("typo in a trial section", [("train/lrr", 0.1)], (),
     r"^train\.lrr: unknown key \(did you mean 'lr'\?\); valid: "),
    ("wrong type of a fixed setting", [("train/epochs", "ten")], (),
     r"^train\.epochs: got 'ten'; valid: a int in \[1, inf\]"),
    ("unknown dataset", [("data/name", "cifar11")], (),
     r"^data\.name: unknown dataset 'cifar11' \(did you mean 'cifar10'\?\); valid: .*digits"),
    ("unknown sampler", [("search/sampler", "tpee")], (),
     r"^search\.sampler: unknown sampler 'tpee' \(did you mean 'tpe'\?\); valid: tpe, nsga2, random$"),
    ("num_samples zero", [("search/num_samples", 0)], (), r"^search\.num_samples: got 0; valid: a int in \[1, inf\]"),
    ("negative timeout", [("search/timeout_s", -5)], (),
     r"^search\.timeout_s: got -5; valid: a float in \(0, inf\] or null"),
    ("unknown search key", [("search/num_sample", 4)], (),
     r"^search\.num_sample: unknown key \(did you mean 'num_samples'\?\)"),
    ("unknown scheduler", [("scheduler/name", "hyperband")], (),
     r"^scheduler\.name: unknown scheduler 'hyperband'; valid: fifo, asha, moasha$"),
    ("scheduler parameter of another scheduler", [("scheduler/ranking", "nondominated")], (),
     r"^scheduler\.ranking: not a parameter of scheduler 'asha'; valid: name, grace_period, reduction_factor"),
    ("reduction factor 1", [("scheduler/reduction_factor", 1)], (),
     r"^scheduler\.reduction_factor: got 1; valid: a int in \[2, inf\]"),
    ("grace period beyond the budget", [("scheduler/grace_period", 9)], (),
     r"^scheduler\.grace_period: 9 is more than train\.epochs \(4\); valid: 1 \.\. 4, e\.g\. --set "
     r"scheduler\.grace_period=1 \(ASHA's first rung, at most the budget\)$"),
    ("zero cpus", [("resources/cpus_per_trial", 0)], (),
     r"^resources\.cpus_per_trial: got 0; valid: a float in \(0, inf\]"),
    ("fractional gpus above one", [("resources/gpus_per_trial", 1.5)], (),
     r"^resources\.gpus_per_trial: got 1\.5; valid: a fraction <= 1 or a whole number of GPUs$"),
    ("reuse_actors not a bool", [("resources/reuse_actors", "yes please")], (),
     r"^resources\.reuse_actors: got 'yes please'; valid: true or false$"),
    ("cuda device without gpus", [("train/device", "cuda")], (),
     r"^resources\.gpus_per_trial: 0 but train\.device is 'cuda'"),
    ("space key for a loss not searched", [("space/dual_focal.gamma", {"low": 1.0, "high": 5.0})], (),
     r"^space\.dual_focal\.gamma: loss 'dual_focal' is not among the searched loss\.name choices "
     r"\['cross_entropy', 'gce', 'focal'\]; valid: add 'dual_focal' to the choices, or remove dual_focal\.gamma$"),
    ("loss param under a fixed other loss",
     [("loss", {"name": "focal"}), ("space/loss.name", DELETE)], (),
     r"^space\.gce\.lam: loss 'gce' is not the fixed loss \('focal'\); valid: a parameter of 'focal', or search "
     r"loss\.name with 'gce' among its choices$"),
    ("loss param under the default loss", [("space/loss.name", DELETE), ("space/focal.gamma", DELETE)], (),
     r"^space\.gce\.lam: loss 'gce' is not the fixed loss \('cross_entropy'\)"),
    ("not a parameter of the loss", [("space/gce.gamma", {"low": 0.0, "high": 1.0})], (),
     r"^space\.gce\.gamma: not a parameter of loss 'gce'; valid: gce\.lam$"),
    ("unknown space key with a suggestion", [("space/train.lrate", {"low": 0.01, "high": 0.1})], (),
     r"^space\.train\.lrate: unknown config path \(did you mean 'train\.rate'|'train\.lr'\?\)"),
    ("objective weight searched", [("space/objective.w_ece", {"low": 0.5, "high": 2.0})], (),
     r"^space\.objective\.w_ece: the objective cannot be searched: every trial's score .*; valid: set it once in "
     r"the file's 'objective' section"),
    ("objective bins searched", [("space/objective.n_bins", {"choices": [10, 15]})], (),
     r"^space\.objective\.n_bins: the objective cannot be searched"),
    ("loss param at the loss path", [("space/loss.lam", {"low": 0.0, "high": 1.0})], (),
     r"^space\.loss\.lam: loss parameters are searched as '<loss name>\.lam'"),
    ("low >= high", [("space/gce.lam", {"low": 2.0, "high": 2.0})], (),
     r"^space\.gce\.lam: low 2 >= high 2; valid: low < high$"),
    ("log with low <= 0", [("space/train.lr", {"low": 0.0, "high": 0.3, "log": True})], (),
     r"^space\.train\.lr\.low: got 0 with log: true; valid: low > 0 for a log scale$"),
    ("range outside the loss parameter", [("space/gce.lam", {"low": -1.0, "high": 2.0})], (),
     r"^space\.gce\.lam\.low: got -1\.0 outside what loss\.lam accepts; valid: a float in \[0, inf\]$"),
    ("range outside the config parameter", [("space/train.momentum", {"low": 0.5, "high": 1.0})], (),
     r"^space\.train\.momentum\.high: got 1\.0 outside what train\.momentum accepts; valid: a float in \[0, 1\)$"),
    ("empty choices", [("space/loss.name", {"choices": []})], (),
     r"^space\.loss\.name\.choices: got \[\]; valid: a non-empty list of values$"),
    ("unknown choice name", [("space/loss.name", {"choices": ["cross_entropy", "gcee"]})], (),
     r"^space\.loss\.name\.choices\[1\]: unknown loss 'gcee' \(did you mean 'gce'\?\); valid: .*cross_entropy"),
    ("duplicate choice", [("space/loss.name", {"choices": ["gce", "gce", "focal"]})], (),
     r"^space\.loss\.name\.choices\[1\]: 'gce' is listed twice; valid: distinct values$"),
    ("invalid choice of a fixed-schema path", [("space/train.optimizer", {"choices": ["sgd", "adam"]})], (),
     r"^space\.train\.optimizer\.choices\[1\]: got 'adam'; valid: one of 'sgd', 'adamw'$"),
    ("breakpoints pieces < 2", [("space/calibration.breakpoints", {"breakpoints": {"pieces": 1}})], (),
     r"^space\.calibration\.breakpoints\.breakpoints\.pieces: got 1; valid: an integer >= 2"),
    ("breakpoints pieces range reversed",
     [("space/calibration.breakpoints", {"breakpoints": {"pieces": [5, 3]}})], (),
     r"^space\.calibration\.breakpoints\.breakpoints\.pieces: got \[5, 3\]"),
    ("breakpoints do not fit",
     [("space/calibration.breakpoints", {"breakpoints": {"pieces": 5, "low": 0.9, "high": 0.95, "min_gap": 0.02}})],
     (), r"^space\.calibration\.breakpoints\.breakpoints: 5 pieces at least 0\.02 wide do not fit in \(0\.9, 0\.95\)"),
    ("breakpoints gap below float rounding",
     [("space/calibration.breakpoints", {"breakpoints": {"pieces": 3, "min_gap": 1e-17}})], (),
     r"^space\.calibration\.breakpoints\.breakpoints\.min_gap: got 1e-17; valid: a number >= 1e-06"),
    ("breakpoints high above one",
     [("space/calibration.breakpoints", {"breakpoints": {"pieces": 3, "high": 1.5}})], (),
     r"^space\.calibration\.breakpoints\.breakpoints\.high: got 1\.5; valid: a number in \(0, 1\]$"),
    ("breakpoints under a non-ATS calibrator", [("calibration/method", "ts")], (),
     r"^space\.calibration\.breakpoints: never active: calibration\.method is 'ts' and only ats uses breakpoints"),
    ("breakpoints at another path", [("space/train.lr", {"breakpoints": {"pieces": 3}})], (),
     r"^space\.train\.lr: a breakpoint vector is searched only at calibration\.breakpoints"),
    ("searched key also fixed", [("train/lr", 0.1)], (),
     r"^space\.train\.lr: train\.lr is also set as a fixed setting; valid: search it or fix it, not both"),
    ("searched loss param also fixed", [("loss", {"lam": 1.0})], (),
     r"^space\.gce\.lam: loss\.lam is also set as a fixed setting"),
    ("searched loss name also fixed", [("loss", {"name": "gce"})], (),
     r"^space\.loss\.name: loss\.name is also set as a fixed setting"),
    ("fixed loss param no candidate takes", [("loss", {"alpha": 0.1})], (),
     r"^loss\.alpha: not a parameter of any searched loss \(cross_entropy, gce, focal\)"),
    ("unknown key in a space entry", [("space/gce.lam", {"low": 0.0, "hihg": 2.0})], (),
     r"^space\.gce\.lam\.hihg: unknown key \(did you mean 'high'\?\); valid: low, high, log, step, type"),
    ("range and choices together", [("space/gce.lam", {"low": 0.0, "high": 2.0, "choices": [1.0]})], (),
     r"^space\.gce\.lam: got range and choices; valid: exactly one of"),
    ("space entry not a mapping", [("space/gce.lam", 1.0)], (),
     r"^space\.gce\.lam: got 1\.0; valid: a mapping with low/high, choices or breakpoints"),
    ("float range on an int setting", [("space/train.epochs", {"low": 2.5, "high": 4})], (),
     r"^space\.train\.epochs\.low: got 2\.5; valid: an integer \(train\.epochs is searched as int\)$"),
    ("step with log", [("space/train.lr", {"low": 0.01, "high": 0.3, "log": True, "step": 0.01})], (),
     r"^space\.train\.lr\.step: cannot be combined with log: true"),
    ("range on a categorical setting", [("space/train.optimizer", {"low": 0, "high": 1})], (),
     r"^space\.train\.optimizer: train\.optimizer is not numeric; valid: choices: \[\.\.\.\]"),
    ("when on an unknown path", [("space/gce.lam", {"low": 0.0, "high": 2.0, "when": {"train.optimiser": "sgd"}})],
     (), r"^space\.gce\.lam\.when\.train\.optimiser: unknown config path \(did you mean 'train\.optimizer'\?\)"),
    ("when never met by the fixed value",
     [("space/gce.lam", {"low": 0.0, "high": 2.0, "when": {"train.optimizer": "adamw"}})], (),
     r"^space\.gce\.lam: never active: it needs train\.optimizer in \['adamw'\] but train\.optimizer is fixed to "
     r"'sgd'"),
    ("when value outside the searched choices",
     [("space/focal.gamma", {"low": 1.0, "high": 4.0, "when": {"loss.name": "gce"}})], (),
     r"^space\.focal\.gamma: never active \(its conditions on loss\.name contradict each other\)"),
    ("conditions in a cycle",
     [("space/train.optimizer", {"choices": ["sgd", "adamw"], "when": {"train.nesterov": True}}),
      ("space/train.nesterov", {"choices": [True, False], "when": {"train.optimizer": "sgd"}})], (),
     r"^space: the conditions of train\.optimizer -> train\.nesterov depend on each other in a cycle"),
    ("override of a searched parameter", [], ("space.gce.lam.high=3",),
     r"^--set 'space\.gce\.lam\.high=3': searched parameters cannot be overridden"),
    ("override without '='", [], ("train.epochs",), r"^--set 'train\.epochs': expected KEY=VALUE"),
    ("override into a scalar", [], ("train.epochs.max=3",),
     r"^--set 'train\.epochs\.max=3': train\.epochs is 4, not a mapping; valid: a dotted path to a setting$"),
    ("override with an invalid value", [], ("search.max_concurrent=0",),
     r"^search\.max_concurrent: got 0; valid: a int in \[1, inf\] or null$"),
    ("override typo", [], ("train.epoch=3",), r"^train\.epoch: unknown key \(did you mean 'epochs'\?\)"),
    ("grace period beyond the searched epochs",
     [("train/epochs", DELETE), ("space/train.epochs", {"low": 2, "high": 3}), ("scheduler/grace_period", 4)], (),
     r"^scheduler\.grace_period: 4 is more than the largest searched train\.epochs \(3\); valid: 1 \.\. 3$"),
]


@pytest.mark.parametrize("changes,overrides,pattern", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_reported_with_its_path(tmp_path, changes, overrides, pattern):
    found = problems(tmp_path, with_changes(*changes), overrides)
    assert any(re.search(pattern, line) for line in found), "\n".join(found)
    assert all(re.match(r"^[^\s:]+[^:]*: .+", line) for line in found)  # "<path>: <what>" on each line


def test_every_problem_is_listed_at_once(tmp_path):
    doc = with_changes(("serach", {}), ("train/epochs", 0), ("search/sampler", "grid"),
                       ("space/gce.lam", {"low": 3.0, "high": 1.0}), ("space/loss.name", {"choices": []}),
                       ("resources/gpus_per_trial", -1))
    found = problems(tmp_path, doc)
    for prefix in ("serach:", "train.epochs:", "search.sampler:", "space.gce.lam:", "space.loss.name.choices:",
                   "resources.gpus_per_trial:"):
        assert any(line.startswith(prefix) for line in found), (prefix, found)
    # a failed loss.name choice does not cascade into "gce is not the fixed loss" noise
    assert not any("is not the fixed loss" in line for line in found), found


def test_yaml_syntax_error_names_the_line(tmp_path):
    text = "name: broken\nsearch:\n  sampler: tpe\n  num_samples: [8\nspace: {}\n"
    with pytest.raises(ConfigError) as info:
        load_spec(write(tmp_path, text))
    assert re.match(r"^line \d+, column \d+: YAML syntax error: ", info.value.problems[0]), info.value.problems
    assert str(tmp_path) in info.value.source


def test_bad_indentation_names_the_line(tmp_path):
    text = "name: broken\ntrain:\n  epochs: 3\n   lr: 0.1\n"
    with pytest.raises(ConfigError, match=r"line 4, column \d+: YAML syntax error"):
        load_spec(write(tmp_path, text))


def test_duplicate_keys_are_reported(tmp_path):
    text = textwrap.dedent("""\
        name: dup
        space:
          gce.lam: {low: 0.0, high: 1.0}
          loss.name: {choices: [gce]}
          gce.lam: {low: 0.0, high: 2.0}
        """)
    with pytest.raises(ConfigError, match=r"line 5: key 'gce\.lam' appears twice \(first on line 3\)"):
        load_spec(write(tmp_path, text))


def test_top_level_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"\(top level\): expected a mapping of sections, got list"):
        load_spec(write(tmp_path, "- a\n- b\n"))


def test_missing_space_names_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"quickstrat: no such file, and not a shipped space \(did you mean "
                                          r"'quickstart'\?\); valid: .*quickstart"):
        load_spec("quickstrat")


# ------------------------------------------------------------------------------------------------------------- CLI


def run_cli(*args, cwd=None):
    """The installed `gce-search` console script (the module entry point where the script is not on PATH)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    script = shutil.which("gce-search")
    command = [script] if script else [sys.executable, "-m", "gce_search"]
    return run_to_end([*command, *args], cwd=cwd, env=env)


def test_cli_validate_ok_without_importing_ray(tmp_path):
    code = ("import sys; from gce_search.search.cli import main; rc = main(['validate', 'quickstart']); "
            "print('RAY' if 'ray' in sys.modules else 'NORAY', 'OPTUNA' if 'optuna' in sys.modules else 'NOOPTUNA');"
            "sys.exit(rc)")
    out = run_to_end([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK: quickstart (5 searched parameters")
    assert "NORAY NOOPTUNA" in out.stdout


def test_cli_validate_lists_every_problem_without_traceback(tmp_path):
    path = write(tmp_path, with_changes(("train/lrr", 0.1), ("space/loss.name", {"choices": ["gcee"]}),
                                        ("search/num_samples", 0)))
    out = run_cli("validate", str(path))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("INVALID: ") and lines[0].endswith("3 problem(s)")
    assert any(line.startswith("train.lrr: unknown key (did you mean 'lr'?)") for line in lines)
    assert any(line.startswith("space.loss.name.choices[0]: unknown loss 'gcee'") for line in lines)
    assert any(line.startswith("search.num_samples: got 0") for line in lines)


def test_cli_validate_with_overrides(tmp_path):
    path = write(tmp_path, BASE)
    out = run_cli("validate", str(path), "--set", "search.num_samples=5", "--set", "scheduler.name=moasha")
    assert out.returncode == 0, out.stderr
    assert "5 trials, scheduler moasha" in out.stdout
    out = run_cli("validate", str(path), "--set", "train.epochs=-1")
    assert out.returncode == 2 and "train.epochs: got -1" in out.stderr


def test_cli_validate_syntax_error_and_missing_file(tmp_path):
    path = write(tmp_path, "name: x\nspace: {gce.lam: {low: 0, high: 1}\n")
    out = run_cli("validate", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert re.search(r"line \d+, column \d+: YAML syntax error", out.stderr)
    out = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "no such file, and not a shipped space" in out.stderr
