"""`ray job submit` of a search, the README's way of starting one on a cluster, against a real Ray cluster with its
dashboard (job server) on 127.0.0.1 and token authentication on.

The cluster here is a single node (ray.cluster_utils.Cluster, head with CPUs). Nodes simulated on one machine share
one /tmp/ray/session_*/runtime_resources directory, so a second node's runtime-env agent, setting up the job's
`--working-dir` package for its trials, replaces the very directory the job's driver runs in on the head (the
driver then fails in os.getcwd()); on real machines every node has its own. The multi-node behaviour of a search
(trials spread, faults, storage) is tested by address in test_cluster.py.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request

import psutil
import pytest

from tests.search.test_cluster import token_cluster
from tests.search.test_resume import completed_trials, result_lines
from tests.waiting import hang_s, run_to_end, wait_until

SPACE = """\
name: jobs
description: tiny digits trials submitted as a Ray job
data: {name: digits, max_train: 300}
model: {name: mlp}
train: {epochs: 2, batch_size: 64, device: cpu}
search: {sampler: random, num_samples: 2, seed: 0}
scheduler: {name: fifo}
resources: {cpus_per_trial: 1}
space:
  train.lr: {low: 0.01, high: 0.1, log: true}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> list[str]:
    exe = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "ray.scripts.scripts"]


def _wait_for_dashboard(url: str, token: str) -> None:
    """Until the job server answers (the dashboard starts after the head node, later on a loaded machine)."""
    request = urllib.request.Request(url + "/api/version", headers={"Authorization": f"Bearer {token}"})

    def answered() -> bool:
        try:
            with urllib.request.urlopen(request, timeout=hang_s()) as response:
                json.load(response)
                return True
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):  # not up yet
            return False

    wait_until(answered, what=f"Ray's job server at {url} to answer")


def _wait_for_job_agent(url: str) -> None:
    """Until the job server takes a job: its head-node agent starts after the dashboard answers (seconds later on a
    loaded machine), and until then a submission is refused with 'No available agent ... try again later'."""
    def takes_a_job() -> bool:
        probe = run_to_end([*_ray_cli(), "job", "submit", "--address", url, "--", "true"])
        said = probe.stdout + probe.stderr
        if probe.returncode == 0:
            return True
        assert "No available agent" in said, f"the probe job was refused:\n{said[-3000:]}"
        return False

    wait_until(takes_a_job, what=f"Ray's job server at {url} to take a job")


@pytest.fixture
def job_cluster():
    port = _free_port()
    # the job agent on a free port too: Ray's fixed default (52365) is taken by any other Ray on this machine, and
    # a head whose agent cannot bind refuses every job ('No available agent')
    with token_cluster(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                       dashboard_agent_listen_port=_free_port()) as (cluster, token):
        cluster.wait_for_nodes()
        url = f"http://127.0.0.1:{port}"
        _wait_for_dashboard(url, token)
        _wait_for_job_agent(url)
        yield cluster, url, token


def _listeners(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


@pytest.mark.slow
def test_search_submitted_as_a_ray_job_runs_on_the_cluster(job_cluster, tmp_path):
    cluster, url, token = job_cluster
    port = int(url.rsplit(":", 1)[1])
    # the job server (dashboard) listens on 127.0.0.1 only: reached through an SSH tunnel, never an open port
    assert _listeners(port) == {"127.0.0.1"}, _listeners(port)

    work = tmp_path / "checkout"  # what `--working-dir .` ships: the user's space file
    work.mkdir()
    (work / "space.yaml").write_text(SPACE)
    storage = tmp_path / "results"
    head = cluster.head_node.node_id

    # 1. the README's command (`--address auto`); 2. without --address: the driver finds the job's cluster itself
    for name, address in (("readme", ["--address", "auto"]), ("implicit", [])):
        submitted = run_to_end(
            [*_ray_cli(), "job", "submit", "--address", url, "--working-dir", str(work), "--",
             "gce-search", "run", "space.yaml", *address, "--storage", str(storage), "--name", name],
            cwd=tmp_path, watch=[storage])
        output = submitted.stdout + submitted.stderr
        assert submitted.returncode == 0, output[-5000:]
        assert "succeeded" in output and "Search finished" in output, output[-5000:]
        # the driver joined this cluster (no private Ray of its own): it reports the cluster's node count, and
        # every trial ran on the cluster's node
        assert "on 1 node(s)" in output, output[-5000:]
        exp = storage / name
        assert (exp / "spec.yaml").exists() and (exp / "optuna.journal").exists()
        assert len(completed_trials(exp)) == 2
        for folder in exp.glob("trial_*"):
            rows = result_lines(folder)
            assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["final"] is True
            assert {r["node_id"] for r in rows} == {head}, folder.name

    # without the token, the job server refuses the submission
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    refused = run_to_end([*_ray_cli(), "job", "submit", "--address", url, "--", "echo", "hello"], cwd=tmp_path,
                         env=env)
    refusal = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "hello" not in refused.stdout, refusal[-3000:]
    assert "AuthenticationError" in refusal or "Unauthorized" in refusal, refusal[-3000:]
