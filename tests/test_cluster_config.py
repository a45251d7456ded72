"""cluster.yaml and cluster-onprem.yaml against the schema shipped in the installed ray wheel, and Ray's own
offline preparation/validation (the same code `ray up` runs before it contacts any cloud)."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["cluster.yaml", "cluster-onprem.yaml"]


def _schema() -> dict:
    import ray

    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def _prepare_and_validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", CONFIGS)
def test_config_matches_ray_schema(name):
    jsonschema.validate(_load(name), _schema())


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_prepares_and_validates_config(name):
    prepared = _prepare_and_validate(_load(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=0),  # typo of min_workers
        lambda c: c.update(max_worker=4),  # top-level typo
        lambda c: c.update(head_start_ray_command=[]),
        lambda c: c["auth"].update(ssh_usr="ubuntu"),
    ],
    ids=["node-type-key", "top-level-key", "start-commands-key", "auth-key"],
)
def test_a_typo_in_a_key_fails(mutate):
    config = _load("cluster.yaml")
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _schema())
        _prepare_and_validate(config)  # the schema is what Ray checks too


def test_aws_cluster_declares_cpu_head_and_gpu_workers():
    config = _load("cluster.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [t for n, t in types.items() if n != config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert any(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] >= 1 for t in workers)
    assert any("pip install" in cmd and "gce-search" in cmd for cmd in config["setup_commands"])


@pytest.mark.parametrize("name", CONFIGS)
def test_nodes_install_the_job_server_with_the_ray_of_the_submitting_machine(name):
    """`ray job submit` and the dashboard need ray[default] on the head (the package itself only pulls ray[tune]),
    and the launcher needs the same Ray on the nodes as on the machine that runs `ray up` (README, docs/cluster.md)."""
    laptop = re.search(r'pip install "ray\[default\]==([0-9.]+)"', (ROOT / "README.md").read_text())
    assert laptop, "README: the cluster section's pip install line of ray[default]"
    assert laptop.group(1) in (ROOT / "docs" / "cluster.md").read_text()
    setup = " ".join(_load(name)["setup_commands"])
    assert f'"ray[default]=={laptop.group(1)}"' in setup, setup


@pytest.mark.parametrize("name", CONFIGS)
def test_nothing_binds_beyond_loopback(name):
    config = _load(name)
    starts = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in starts
    assert "0.0.0.0" not in (ROOT / name).read_text()


@pytest.mark.parametrize("name", CONFIGS)
def test_token_authentication_on_every_node(name):
    # `ray start` turns token authentication on only with RAY_AUTH_MODE=token (or a token file already on the
    # node; ray/scripts/scripts.py), unlike ray.init(): every start command sets it, every node gets the token.
    config = _load(name)
    starts = [cmd for key in ("head_start_ray_commands", "worker_start_ray_commands") for cmd in config[key]
              if "ray start" in cmd]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in cmd for cmd in starts), starts
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert "RAY_AUTH_MODE=disabled" not in (ROOT / name).read_text()
