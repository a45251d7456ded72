"""Layering: `gce-search validate` imports neither torch nor Ray nor Optuna; spaces never imports search; every
catalogued entry has its implementation; every YAML file (train config, study) reads `1e-3` as a float."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

HEAVY = ("torch", "ray", "optuna")


def _modules_after(code: str) -> dict:
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("skip_data", [True, False])
def test_validate_imports_no_torch_ray_or_optuna(skip_data):
    args = ["validate", "quickstart"] + (["--skip-data"] if skip_data else [])
    modules = _modules_after(f"from gce_search.search.cli import main\nassert main({args!r}) == 0")
    assert not [m for m in HEAVY if m in modules]
    if skip_data:
        assert "numpy" not in modules  # numpy only for the data checks


def test_spaces_never_imports_search():
    modules = _modules_after("import gce_search.spaces.loading, gce_search.spaces.validation, "
                             "gce_search.spaces.records, gce_search.spaces.catalog, gce_search.spaces.overrides")
    assert not [m for m in modules if m.startswith("gce_search.search")]
    assert not [m for m in HEAVY if m in modules]


def test_trainables_catalog_and_config_are_torch_free():
    modules = _modules_after("import gce_search.trainables.catalog, gce_search.trainables.config")
    assert not [m for m in (*HEAVY, "numpy") if m in modules]


def test_every_catalogued_entry_is_implemented():
    import gce_search.search.schedulers  # noqa: F401
    import gce_search.search.space  # noqa: F401
    import gce_search.trainables.calibration  # noqa: F401
    import gce_search.trainables.data  # noqa: F401
    import gce_search.trainables.losses  # noqa: F401
    import gce_search.trainables.models  # noqa: F401
    import gce_search.trainables.trial  # noqa: F401
    from gce_search.spaces import catalog as driver_catalog
    from gce_search.trainables import catalog

    registries = [catalog.LOSSES, catalog.MODELS, catalog.DATASETS, catalog.CALIBRATORS, catalog.OPTIMIZERS,
                  catalog.LR_SCHEDULES, driver_catalog.SAMPLERS, driver_catalog.SCHEDULERS]
    for reg in registries:
        for name, entry in reg.items():
            assert entry.name == name and entry.description, (reg.kind, name)
            assert entry.implemented, (reg.kind, name)


def test_a_float_without_a_dot_is_a_float_in_train_configs_and_study_files(tmp_path):
    from gce_search.search.study import load_study
    from gce_search.search.train_command import read_config_file

    config = tmp_path / "config.yaml"
    config.write_text("train:\n  lr: 1e-3\n")
    assert read_config_file(str(config))["train"]["lr"] == 0.001
    assert isinstance(read_config_file(str(config))["train"]["lr"], float)

    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"base": {"data": {"name": "digits"}, "train": {"epochs": 1}},
                                     "seeds": 1, "methods": {"ce": {"name": "cross_entropy"}}})
                     + "\n")
    text = study.read_text().replace("epochs: 1", "epochs: 1\n    lr: 1e-3")
    study.write_text(text)
    spec = load_study(str(study))
    assert spec.base["train"]["lr"] == 0.001 and isinstance(spec.base["train"]["lr"], float)


def test_a_relative_data_path_is_taken_from_where_gce_search_runs(tmp_path, monkeypatch):
    """A trial runs in a folder of its own: the space's relative data.path / data.root are made absolute on reading,
    against the current directory, and the spec (hence spec.yaml and every export) records the absolute path."""
    from gce_search.spaces.loading import load_spec
    from gce_search.trainables.config import anchor_paths

    monkeypatch.chdir(tmp_path)
    spec = load_spec("quickstart", ["data.root=sub/dir"])
    assert spec.base_config["data"]["root"] == str(tmp_path / "sub" / "dir")
    assert spec.to_dict()["data"]["root"] == str(tmp_path / "sub" / "dir")
    given = {"data": {"path": "x.npz", "root": "/abs"}}
    assert anchor_paths(given) == {"data": {"path": str(tmp_path / "x.npz"), "root": "/abs"}}
    assert given == {"data": {"path": "x.npz", "root": "/abs"}}  # the input is not changed
    assert anchor_paths({"data": {"root": "s3://bucket/d"}}) == {"data": {"root": "s3://bucket/d"}}
