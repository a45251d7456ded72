"""Bad input at the command line: every case is refused with exit status 2 and a message naming the input, no
traceback, before Ray starts, and nothing is left behind in the working directory or the storage directory.

Each case runs `gce-search ...` in this process (search.cli.main) in an empty working directory. `connect_ray` is
wrapped to record a call (and then run as usual), so a case that would start Ray fails on that record.
"""
from __future__ import annotations

import os
import time

import pytest
import yaml

from gce_search.search.cli import main

TINY = {
    "name": "tiny",
    "data": {"name": "digits"},
    "model": {"name": "mlp", "width": 8, "depth": 1},
    "train": {"epochs": 1, "batch_size": 64, "device": "cpu"},
    "search": {"num_samples": 2},
    "resources": {"cpus_per_trial": 1},
    "space": {"train.lr": {"low": 0.01, "high": 0.3, "log": True}},
}
TRAIN = {"data": {"name": "digits"}, "model": {"name": "mlp", "width": 8, "depth": 1},
         "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}}


def merged(base: dict, **changes) -> dict:
    """`base` with dotted-path changes (`train__workers=3` sets train.workers; a None value removes the key)."""
    out = yaml.safe_load(yaml.safe_dump(base))
    for dotted, value in changes.items():
        parts = dotted.split("__")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return out


def space(**changes) -> str:
    return yaml.safe_dump(merged(TINY, **changes), sort_keys=False)


def laughs(levels: int, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ",".join(["x"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


IDX_HEADER = b"\0\0\x08\x03" + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2

# id -> (files to create {relative path: text or bytes; a path ending in / is a directory}, argv, words the message
# must contain). In argv, {d} is the working directory.
CASES = {
    # -- YAML that cannot be read, or that would expand without bound
    "billion laughs": ({"s.yaml": laughs(12)}, ["validate", "s.yaml"], ["expands to more than"]),
    "aliased 10^8 choices": ({"s.yaml": laughs(8) + "space:\n  train.lr: {choices: *a7}\n"}, ["validate", "s.yaml"],
                             ["expands to more than"]),
    "1001 choices": ({"s.yaml": space(space={"train.lr": {"choices": [0.001 * (i + 1) for i in range(1001)]}})},
                     ["validate", "s.yaml"], ["space.train.lr.choices", "at most 1000"]),
    "recursive alias": ({"s.yaml": "a: &a [1, *a]\n"}, ["validate", "s.yaml"], ["recursive"]),
    "20000-deep nesting": ({"s.yaml": "[" * 20000 + "]" * 20000 + "\n"}, ["validate", "s.yaml"],
                           ["nested more than"]),
    "binary file": ({"s.yaml": bytes(range(128, 256))}, ["validate", "s.yaml"], ["s.yaml", "not UTF-8"]),
    "UTF-16 file": ({"s.yaml": space().encode("utf-16")}, ["validate", "s.yaml"], ["s.yaml", "UTF-16"]),
    "NUL byte": ({"s.yaml": b"name: x\0\n"}, ["validate", "s.yaml"], ["s.yaml", "NUL byte"]),
    "directory as space": ({"sub/": None}, ["validate", "sub"], ["sub", "is a directory"]),
    "empty space file": ({"s.yaml": ""}, ["validate", "s.yaml"], ["space: no searched parameters"]),
    "comments-only space file": ({"s.yaml": "# nothing yet\n"}, ["validate", "s.yaml"],
                                 ["space: no searched parameters"]),
    "duplicate key": ({"s.yaml": space() + "seed: 1\nseed: 2\n"}, ["validate", "s.yaml"], ["'seed' appears twice"]),
    # -- values that fail only inside a trial
    "seed 2^64": ({"s.yaml": space(seed=2**64)}, ["validate", "s.yaml"], ["seed: got 18446744073709551616"]),
    "seed of 400 digits": ({"s.yaml": space(seed=10**400)}, ["validate", "s.yaml"], ["seed: got 1000"]),
    "search.seed above 2^32-1": ({"s.yaml": space(search__seed=2**32)}, ["validate", "s.yaml"],
                                 ["search.seed: got 4294967296"]),
    "searched seed up to 1e30": ({"s.yaml": space(space={"seed": {"low": 0, "high": 1e30}})}, ["validate", "s.yaml"],
                                 ["space.seed.high"]),
    "split_seed negative": ({"s.yaml": space(data__split_seed=-1)}, ["validate", "s.yaml"], ["data.split_seed"]),
    "calib + val >= pool": ({"s.yaml": space(data__calib=0.5, data__val=0.5)}, ["validate", "s.yaml"],
                            ["data.calib + data.val"]),
    "calib count above the data": ({"s.yaml": space(data__calib=5000)}, ["validate", "s.yaml"],
                                   ["data.calib: 5000"]),
    "test count above the data": ({"s.yaml": space(data__test=5000)}, ["validate", "s.yaml"], ["data.test"]),
    "searched calib reaching the pool": ({"s.yaml": space(space={"data.calib": {"low": 0.1, "high": 0.9}})},
                                         ["validate", "s.yaml"], ["space.data.calib at 0.9", "data.calib + data.val"]),
    "missing data root": ({"s.yaml": space(data={"name": "fashion_mnist", "root": "/nonexistent/fm"})},
                          ["validate", "s.yaml"], ["data.root '/nonexistent/fm'", "does not exist"]),
    "truncated idx file": ({"s.yaml": space(data={"name": "fashion_mnist", "root": "{d}/fm"}),
                            "fm/train-images-idx3-ubyte": IDX_HEADER + b"x" * 100,
                            "fm/train-labels-idx1-ubyte": b"\0\0\x08\x01" + (60000).to_bytes(4, "big") + b"\0" * 60000},
                           ["validate", "s.yaml"], ["train-images-idx3-ubyte", "truncated"]),
    "imbalance 1e300": ({"s.yaml": space(data__imbalance=1e300)}, ["validate", "s.yaml"],
                        ["data.imbalance", "without a training sample"]),
    "workers not dividing batch_size": ({"s.yaml": space(train__workers=3)}, ["validate", "s.yaml"],
                                        ["train.batch_size: got 64 with train.workers 3"]),
    "searched batch_size not divisible": ({"s.yaml": space(train__workers=2, train__batch_size=None,
                                                           space={"train.batch_size": {"choices": [64, 65]}})},
                                          ["validate", "s.yaml"], ["space.train.batch_size at 65"]),
    "nesterov with momentum 0": ({"s.yaml": space(train__nesterov=True, train__momentum=0.0)},
                                 ["validate", "s.yaml"], ["train.nesterov"]),
    "nesterov with searched momentum from 0": ({"s.yaml": space(train__nesterov=True, space={
        "train.momentum": {"low": 0.0, "high": 0.9}})}, ["validate", "s.yaml"], ["space.train.momentum at 0"]),
    "min_gap nan": ({"s.yaml": space().replace("space:\n", "space:\n  calibration.breakpoints: {breakpoints: "
                                                           "{pieces: 3, min_gap: .nan}}\n")},
                    ["validate", "s.yaml"], ["space.calibration.breakpoints.breakpoints.min_gap: got nan"]),
    "nan in a list choice": ({"s.yaml": space().replace("space:\n", "space:\n  train.weight_decay: "
                                                                    "{choices: [0.0, .nan]}\n")},
                             ["validate", "s.yaml"], ["space.train.weight_decay.choices[1]: got nan"]),
    "range low inf": ({"s.yaml": space().replace("space:\n", "space:\n  train.weight_decay: "
                                                             "{low: -.inf, high: 0.1}\n")},
                      ["validate", "s.yaml"], ["space.train.weight_decay.low"]),
    "cpus_per_trial below 1e-4": ({"s.yaml": space(resources__cpus_per_trial=1e-5)}, ["validate", "s.yaml"],
                                  ["resources.cpus_per_trial: got 1e-05"]),
    "gpus_per_trial below 1e-4": ({"s.yaml": space(resources__gpus_per_trial=1e-5)}, ["validate", "s.yaml"],
                                  ["resources.gpus_per_trial: got 1e-05"]),
    "n_bins 1e9": ({"s.yaml": space(objective={"n_bins": 1000000000})}, ["validate", "s.yaml"],
                   ["objective.n_bins", "1000]"]),
    "threads 100000": ({"s.yaml": space(train__threads=100000)}, ["validate", "s.yaml"],
                       ["train.threads: got 100000"]),
    "when on a continuous value": ({"s.yaml": space(space={
        "train.lr": {"low": 0.01, "high": 0.3}, "train.weight_decay": {"low": 0.0, "high": 0.01,
                                                                       "when": {"train.lr": 0.1}}})},
        ["validate", "s.yaml"], ["space.train.weight_decay.when: never active"]),
    # -- run: refused before Ray starts, nothing written
    "run: name with a trailing newline": ({"s.yaml": space()}, ["run", "s.yaml", "--storage", "res", "--name",
                                                                "okname\n"], ["--name 'okname\\n'"]),
    "run: name of 300 bytes": ({"s.yaml": space()}, ["run", "s.yaml", "--storage", "res", "--name", "n" * 300],
                               ["300 bytes", "at most 255"]),
    "run: storage is a file": ({"s.yaml": space(), "res": "x"}, ["run", "s.yaml", "--storage", "res"],
                               ["--storage", "is a file"]),
    "run: storage inside a file": ({"s.yaml": space(), "res": "x"}, ["run", "s.yaml", "--storage", "res/sub"],
                                   ["--storage", "which is a file"]),
    "run: unsupported storage scheme": ({"s.yaml": space()}, ["run", "s.yaml", "--storage", "foo://bar"],
                                        ["--storage 'foo://bar'", "unsupported URI scheme"]),
    "run: space name unusable": ({"s.yaml": space(name="my space")}, ["run", "s.yaml", "--storage", "res"],
                                 ["name: 'my space' in", "or give --name"]),
    "run: search.seed above 2^32-1": ({"s.yaml": space(search__seed=2**32)}, ["run", "s.yaml", "--storage", "res"],
                                      ["search.seed"]),
    "run: missing data root": ({"s.yaml": space(data={"name": "fashion_mnist", "root": "/nonexistent/fm"})},
                               ["run", "s.yaml", "--storage", "res"], ["does not exist"]),
    "run: experiment exists": ({"s.yaml": space(), "res/taken/spec.yaml": "kept: true\n"},
                               ["run", "s.yaml", "--storage", "res", "--name", "taken"], ["already exists"]),
    "run: bad --set": ({"s.yaml": space()}, ["run", "s.yaml", "--storage", "res", "--set", "train.epochs"],
                       ["expected KEY=VALUE"]),
    "run: cpus_per_trial below 1e-4": ({"s.yaml": space(resources__cpus_per_trial=5e-5)},
                                       ["run", "s.yaml", "--storage", "res"], ["resources.cpus_per_trial"]),
    # -- train
    "train: a directory": ({"sub/": None}, ["train", "sub", "--out", "out"], ["sub", "is a directory"]),
    "train: a binary file": ({"c.yaml": bytes(range(128, 256))}, ["train", "c.yaml", "--out", "out"],
                             ["not UTF-8"]),
    "train: missing file": ({}, ["train", "nope.yaml", "--out", "out"], ["no such file"]),
    "train: --out is a file": ({"c.yaml": yaml.safe_dump(TRAIN), "out": "x"}, ["train", "c.yaml", "--out", "out"],
                               ["--out", "is a file"]),
    "train: missing data root": ({"c.yaml": yaml.safe_dump(merged(TRAIN, data={"name": "fashion_mnist",
                                                                             "root": "/nonexistent/fm"}))},
                                 ["train", "c.yaml", "--out", "out"], ["does not exist"]),
    "train: duplicate key": ({"c.yaml": yaml.safe_dump(TRAIN) + "seed: 1\nseed: 2\n"},
                             ["train", "c.yaml", "--out", "out"], ["'seed' appears twice"]),
    "train: n_bins 1e9": ({"c.yaml": yaml.safe_dump(merged(TRAIN, objective={"n_bins": 10**9}))},
                          ["train", "c.yaml", "--out", "out"], ["objective.n_bins"]),
    "train: imbalance 1e300": ({"c.yaml": yaml.safe_dump(merged(TRAIN, data__imbalance=1e300))},
                               ["train", "c.yaml", "--out", "out"], ["data.imbalance"]),
    "train: a list": ({"c.yaml": "[1, 2]\n"}, ["train", "c.yaml", "--out", "out"], ["expected a mapping"]),
    "train: billion laughs": ({"c.yaml": laughs(12)}, ["train", "c.yaml", "--out", "out"], ["expands to more than"]),
    # -- experiment directories
    "pareto: not a directory": ({"f": "x"}, ["pareto", "f"], ["f"]),
    "pareto: missing": ({}, ["pareto", "nope"], ["nope"]),
    "export: empty directory": ({"e/": None}, ["export", "e"], ["e"]),
    "export: bad --select": ({"e/": None}, ["export", "e", "--select", "bogus"], ["e"]),
    "tensorboard: a file": ({"f": "x"}, ["tensorboard", "f"], ["f"]),
    "study: duplicate key": ({"st.yaml": "name: s\nname: t\n"}, ["study", "st.yaml", "--out", "o"],
                             ["'name' appears twice"]),
}


def _make(root, files: dict) -> None:
    for rel, content in files.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content.replace("{d}", str(root)))
        else:
            path.write_bytes(content)


def _listing(root) -> dict[str, bytes | None]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = None
        for f in filenames:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


@pytest.fixture
def ray_starts(monkeypatch):
    """The addresses connect_ray was called with in this test (it still runs)."""
    import gce_search.search.driver as driver

    calls: list = []
    real = driver.connect_ray

    def recording(address):
        calls.append(address)
        return real(address)

    monkeypatch.setattr(driver, "connect_ray", recording)
    return calls


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_refused_cleanly_before_ray(case, tmp_path, monkeypatch, capsys, ray_starts):
    files, argv, words = CASES[case]
    monkeypatch.chdir(tmp_path)
    _make(tmp_path, files)
    before = _listing(tmp_path)
    started = time.perf_counter()
    code = main([a.replace("{d}", str(tmp_path)) for a in argv])
    elapsed = time.perf_counter() - started
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, f"exit {code}\nstdout: {captured.out}\nstderr: {err}"
    assert "Traceback" not in err + captured.out
    for word in words:
        assert word in err, f"{word!r} not in:\n{err}"
    assert ray_starts == [], "Ray was started before the input was refused"
    assert _listing(tmp_path) == before, "files were written or changed"
    assert elapsed < 30, f"took {elapsed:.1f} s"


def test_alias_bomb_is_refused_fast_and_small(tmp_path):
    """A 1 KB file that would expand to 10^12 values: refused in well under a second."""
    import tracemalloc

    from gce_search.yamlio import read_yaml
    from gce_search.trainables.registry import ConfigError

    path = tmp_path / "s.yaml"
    path.write_text(laughs(12))
    assert path.stat().st_size < 1024
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than"):
        read_yaml(path)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 50 * 2**20, (elapsed, peak)


def test_a_taken_name_is_refused_and_a_claim_is_released_when_a_later_check_fails(tmp_path, monkeypatch, capsys):
    """Two runs with one --name: the directory is claimed with one mkdir, so the second run is refused before it
    starts Ray; a claim is given back when a check after it (here: nothing answers at --address) refuses the run."""
    from gce_search.search.cli import UsageError
    from gce_search.search.driver import claim_experiment_dir, release_experiment_dir

    exp_dir = str(tmp_path / "res" / "same")
    created = claim_experiment_dir(exp_dir)
    with pytest.raises(UsageError, match="already exists"):
        claim_experiment_dir(exp_dir)
    release_experiment_dir(created)
    assert not (tmp_path / "res").exists()

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(space())
    code = main(["run", "s.yaml", "--storage", "res", "--name", "x", "--address", "127.0.0.1:1"])
    assert code == 2 and "nothing answers" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["s.yaml"]


def test_train_refuses_an_unreadable_checkpoint_in_out(tmp_path, monkeypatch, capsys):
    from gce_search.trainables.config import resolve

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TRAIN))
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(resolve(TRAIN), sort_keys=False))
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    before = _listing(out)
    assert main(["train", "c.yaml", "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt cannot be read" in err and "Traceback" not in err
    assert _listing(out) == before


def test_one_yaml_loader_for_train_configs(tmp_path):
    """A train config reads `1e-3` as a float, like a space file."""
    from gce_search.search.train_command import read_config_file

    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n")
    assert read_config_file(str(path))["train"]["lr"] == 0.001


def test_validate_does_not_import_ray_or_optuna_with_the_data_check():
    import sys

    from tests.waiting import run_to_end

    code = ("import sys; from gce_search.search.cli import main; rc = main(['validate', 'quickstart']); "
            "print(rc, 'ray' in sys.modules, 'optuna' in sys.modules)")
    out = run_to_end([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.split()[-3:] == ["0", "False", "False"], out.stdout + out.stderr


def test_written_yaml_reads_back_unchanged(tmp_path):
    """What gce-search writes (exports, spec.yaml, config.yaml) reads back as the same values. Ray's trial ids are 8
    hex digits, and one such as `12e45678` is a float to the reader (it reads `1e-3` as a float), so the writer
    quotes it; plain yaml.safe_dump leaves it bare."""
    import random

    from gce_search.yamlio import dump_yaml, read_yaml

    rng = random.Random(0)
    ids = ["12e45678", "0e000000", "1E5", "12345678", "1e-3", "1.5e+3", "abc", "1_0e2"]
    ids += [f"{rng.getrandbits(32):08x}" for _ in range(2000)]
    doc = {"source": {"trial": ids}, "train": {"lr": 1e-3, "epochs": 2}, "ids": {i: i for i in ids[:8]}}
    path = tmp_path / "d.yaml"
    path.write_text(dump_yaml(doc, sort_keys=False))
    assert read_yaml(path) == doc
    path.write_text(yaml.safe_dump({"t": "12e45678"}))
    assert read_yaml(path) == {"t": float("inf")}  # why the writer is not plain safe_dump


def test_objective_ece_metric_is_checked_and_drives_the_score():
    import torch

    from gce_search.trainables.config import resolve
    from gce_search.trainables.loop import score_epoch
    from gce_search.trainables.registry import ConfigError

    with pytest.raises(ConfigError) as err:
        resolve({"objective": {"ece_metric": "smooth"}})
    assert "objective.ece_metric" in str(err.value) and "smece" in str(err.value)
    g = torch.Generator().manual_seed(0)
    calib = (torch.randn(400, 4, generator=g) * 2, torch.randint(0, 4, (400,), generator=g))
    val = (torch.randn(300, 4, generator=g) * 2, torch.randint(0, 4, (300,), generator=g))
    for name, key in (("ece", "val/ece"), ("smece", "val/smece"), ("debiased", "val/debiased_ece")):
        cfg = resolve({"objective": {"ece_metric": name, "w_ece": 3.0}, "calibration": {"method": "ts"}})
        metrics, _ = score_epoch(cfg, calib, val, 4)
        assert metrics["score"] == pytest.approx(metrics["val/acc"] - 3.0 * metrics[key])
