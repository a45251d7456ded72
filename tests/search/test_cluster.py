"""The submitting path on a multi-node Ray cluster simulated on this machine (ray.cluster_utils.Cluster): a head with
no CPUs for trials (as in cluster.yaml) and two worker nodes with 1 CPU and 1 declared fake GPU each. The real
driver runs as a subprocess with --address; faults are injected by removing a worker node and by SIGKILLing the
driver. The storage refusal and the multi-node decision are tested on plain node records too."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import psutil
import pytest
import ray
from optuna.trial import TrialState

from gce_search.search.cli import UsageError, main
from gce_search.search.cluster import (SHARED_ENV, SHARED_MARKER, check_storage, is_multi_node, job_address,
                            nodes_missing_file, pull_experiment, push_driver_files, trial_nodes)
from gce_search.search.searcher import optuna_records
from tests.search.test_resume import cli, completions_in_ray_state, result_lines
from tests.waiting import run_to_end, wait_until

# Fake GPU ids: a raylet takes its GPU ids from the CUDA_VISIBLE_DEVICES it starts with, so two distinct ids tell
# which node's GPU a trial was given.
GPU_IDS = ("3", "5")
SPACE = """\
name: NAME
description: tiny digits trials for the simulated cluster
data: {name: digits, max_train: 400}
model: {name: mlp}
train: {epochs: EPOCHS, batch_size: BATCH, device: cpu, grad_clip: 2.0}  # no divergence at batch 8
calibration: {method: ats}
search: {sampler: random, num_samples: NUM_SAMPLES, seed: 0}
scheduler: {name: fifo}
resources: {cpus_per_trial: FRACTION, gpus_per_trial: FRACTION}
space:
  loss.name: {choices: [cross_entropy, gce]}
  gce.lam: {low: 0.0, high: 1.0}
  train.lr: {low: 0.01, high: 0.1, log: true}
"""


def write_space(folder: Path, name: str, num_samples: int, epochs: int, fraction: float,
                batch_size: int = 64) -> str:
    """A space whose trials each take `fraction` of a CPU and of a GPU (the fake GPU; training runs on CPU).
    An epoch takes ~0.03 s at batch size 64; small batches make it longer where a fault must land mid-trial."""
    path = folder / f"{name}.yaml"
    path.write_text(SPACE.replace("NAME", name).replace("NUM_SAMPLES", str(num_samples))
                    .replace("BATCH", str(batch_size)).replace("EPOCHS", str(epochs))
                    .replace("FRACTION", str(fraction)))
    return str(path)


@dataclass
class SimulatedCluster:
    cluster: object  # ray.cluster_utils.Cluster
    token: str
    workers: dict = field(default_factory=dict)  # fake GPU id -> ray._private.node.Node

    @property
    def address(self) -> str:
        return self.cluster.address

    def gpu_of(self) -> dict[str, str]:
        """node id -> its fake GPU id."""
        return {node.node_id: gpu for gpu, node in self.workers.items()}

    def add_worker(self, gpu_id: str):
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
        try:
            node = self.cluster.add_node(num_cpus=1, num_gpus=1)
        finally:
            _restore_env("CUDA_VISIBLE_DEVICES", saved)
        self.workers[gpu_id] = node
        return node


def _restore_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _refresh_ray_auth() -> None:
    # RayConfig and the token are cached per process; other test modules' ray.init may have loaded others.
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def token_cluster(**head_args):
    """A ray.cluster_utils.Cluster (head only) with token authentication on for every process of the cluster and its
    drivers, with a token of its own (Ray >= 2.59 turns it on by itself only for ray.init()'s local instances, not
    for `ray start`). Yields (cluster, token); shuts everything down and restores the environment."""
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    token = secrets.token_hex(32)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = token
    _refresh_ray_auth()
    try:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args=head_args)
        try:
            yield cluster, token
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
    finally:
        for key, value in saved.items():
            _restore_env(key, value)
        _refresh_ray_auth()


@pytest.fixture(scope="module")
def sim():
    with token_cluster(num_cpus=0, include_dashboard=False) as (cluster, token):
        sim = SimulatedCluster(cluster, token)
        for gpu in GPU_IDS:
            sim.add_worker(gpu)
        cluster.wait_for_nodes()
        yield sim


def driver_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def trial_rows(exp: Path) -> dict[str, list[dict]]:
    """trial id -> its result.json lines."""
    rows = {}
    for folder in sorted(exp.glob("trial_*")):
        lines = result_lines(folder)
        if lines:
            rows[lines[0]["trial_id"]] = lines
    return rows


def last_lines(rows: dict[str, list[dict]]) -> str:
    """trial id: node, epoch and final flag of its last result line, for assertion messages."""
    return "; ".join(f"{tid}: node {lines[-1]['node_id'][:8]} epoch {lines[-1]['epoch']} final "
                     f"{lines[-1].get('final')}" for tid, lines in rows.items())


def trial_errors(exp: Path) -> list[str]:
    """The error files Ray wrote into the trial folders (why a trial ended in ERROR), for assertion messages."""
    return [f"{path.relative_to(exp)}:\n{path.read_text()[-3000:]}" for path in sorted(exp.glob("trial_*/error.txt"))]


def read_study(exp: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))))


def assert_every_trial_accounted_for(exp: Path, name: str, num_samples: int, epochs: int) -> dict[str, list[dict]]:
    """Every trial ran its full budget exactly once (one final line), Ray's and Optuna's records name the same
    trials, and Optuna holds one COMPLETE trial per Ray trial with the values of its final result."""
    from ray.tune import ExperimentAnalysis

    rows = trial_rows(exp)
    ray_trials = ExperimentAnalysis(str(exp)).trials
    assert len(ray_trials) == num_samples == len(rows), (len(ray_trials), sorted(rows))
    assert all(t.status == "TERMINATED" for t in ray_trials), \
        [(t.trial_id, t.status) for t in ray_trials] + trial_errors(exp)
    assert {t.trial_id for t in ray_trials} == set(rows)
    for trial_id, lines in rows.items():
        assert sum(r.get("final") is True for r in lines) == 1, (trial_id, [r["epoch"] for r in lines])
        assert lines[-1]["final"] is True and lines[-1]["epoch"] == epochs
        seen = [r["epoch"] for r in lines]
        assert seen == sorted(seen) and sorted(set(seen)) == list(range(1, epochs + 1)), (trial_id, seen)
        # Ray's own iteration count continues with the epochs (it is restored with the checkpoint too)
        assert all(r["training_iteration"] == r["epoch"] for r in lines), trial_id
    study = read_study(exp, name)
    assert len(study.trials) == num_samples, [t.user_attrs for t in study.trials]
    records = optuna_records(study)
    assert set(records) == set(rows)
    for trial_id, record in records.items():
        assert record.state == TrialState.COMPLETE, (trial_id, record.state)
        assert record.values == pytest.approx([rows[trial_id][-1]["val/acc"], rows[trial_id][-1]["val/ece"]])
    return rows


# --------------------------------------------------------------------------------------------- no cluster needed


def node(node_id: str, ip: str, cpus: float, gpus: float = 0.0, alive: bool = True) -> dict:
    """A `ray.nodes()` record (the keys gce-search reads); a node without CPUs may lack the CPU key."""
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": ip,
            "Resources": {"CPU": cpus, "GPU": gpus} if cpus else {"GPU": gpus}}


LAPTOP = [node("a", "10.0.0.1", 8)]
HEAD_PLUS_TWO = [node("head", "10.0.0.1", 0), node("w1", "10.0.0.2", 8, 1), node("w2", "10.0.0.3", 8, 1)]
HEAD_PLUS_ONE = [node("head", "10.0.0.1", 0), node("w1", "10.0.0.2", 8, 1)]
HEAD_ONLY = [node("head", "10.0.0.1", 0)]  # an autoscaling cluster before its first worker starts
ONE_DEAD = [node("a", "10.0.0.1", 8), node("b", "10.0.0.2", 8, alive=False)]


@pytest.mark.parametrize("nodes, driver, expected", [
    (LAPTOP, "a", False),
    (LAPTOP, None, False),
    (ONE_DEAD, "a", False),                # a dead node runs nothing
    (HEAD_PLUS_TWO, "head", True),
    (HEAD_PLUS_TWO, None, True),
    (HEAD_PLUS_ONE, "head", True),         # one node with CPUs, but not the driver's: its disk is not the driver's
    (HEAD_PLUS_ONE, None, False),          # (without the driver's node id only the node count can tell)
    (HEAD_ONLY, "head", True),             # trials will run on nodes yet to come
])
def test_multi_node_decision(nodes, driver, expected):
    assert is_multi_node(nodes, driver) is expected


def test_trial_nodes_are_alive_nodes_with_cpus():
    assert [n["NodeID"] for n in trial_nodes(HEAD_PLUS_TWO + [node("w3", "10.0.0.4", 4, alive=False)])] == ["w1", "w2"]


def test_storage_check_without_a_cluster(tmp_path):
    local = str(tmp_path / "results")
    check_storage(local, LAPTOP, "a", environ={})  # one machine: any directory
    check_storage("s3://bucket/gce-search", HEAD_PLUS_TWO, "head", environ={})  # a URI reaches every node
    check_storage("gs://bucket/x", HEAD_ONLY, "head", environ={})
    with pytest.raises(UsageError) as err:
        check_storage(local, HEAD_PLUS_TWO, "head", environ={})
    message = str(err.value)
    assert f"--storage {local}: a local directory" in message
    assert "2 node(s) with CPUs: 10.0.0.2, 10.0.0.3" in message
    assert "s3://" in message and f"{SHARED_ENV}=1" in message and SHARED_MARKER in message
    with pytest.raises(UsageError, match="nodes the autoscaler has yet to start"):
        check_storage(local, HEAD_ONLY, "head", environ={})
    # declared shared (verification off: it needs a running cluster, tested below)
    check_storage(local, HEAD_PLUS_TWO, "head", environ={SHARED_ENV: "1"}, verify=False)
    for no in ("0", "", "false"):
        with pytest.raises(UsageError):
            check_storage(local, HEAD_PLUS_TWO, "head", environ={SHARED_ENV: no}, verify=False)
    os.makedirs(local)
    Path(local, SHARED_MARKER).touch()
    check_storage(local, HEAD_PLUS_TWO, "head", environ={}, verify=False)


def test_job_address_only_inside_a_ray_job():
    job_env = {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}", "RAY_ADDRESS": "10.0.0.1:6379"}
    assert job_address(job_env) == "10.0.0.1:6379"
    # A user's shell often exports RAY_ADDRESS=http://127.0.0.1:8265 for `ray job submit`: not a driver address.
    assert job_address({"RAY_ADDRESS": "http://127.0.0.1:8265"}) is None
    assert job_address({"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}) is None


def test_bucket_experiment_pulled_without_checkpoints_and_driver_files_pushed(tmp_path):
    # pyarrow's local filesystem behind a file:// URI stands in for s3:// (the same pyarrow.fs interface)
    bucket = tmp_path / "bucket"
    trial = bucket / "exp1" / "trial_abc"
    (trial / "checkpoint_000003").mkdir(parents=True)
    (trial / "checkpoint_000003" / "checkpoint.pt").write_bytes(b"weights")
    (trial / "result.json").write_text('{"epoch": 1}\n')
    (bucket / "exp1" / "tuner.pkl").write_bytes(b"state")
    mirror = tmp_path / "mirror" / "exp1"
    (mirror / "tensorboard" / "experiment").mkdir(parents=True)
    (mirror / "spec.yaml").write_text("name: x\n")
    (mirror / "optuna.journal").write_text("{}\n")
    (mirror / "tensorboard" / "experiment" / "events.out.tfevents.1").write_bytes(b"tb")
    storage = f"file://{bucket}"

    assert pull_experiment(storage, "exp1", str(mirror)) == 2
    assert (mirror / "trial_abc" / "result.json").read_text() == '{"epoch": 1}\n'
    assert (mirror / "tuner.pkl").read_bytes() == b"state"
    assert not (mirror / "trial_abc" / "checkpoint_000003").exists()

    assert push_driver_files(str(mirror), storage, "exp1") == 3
    assert (bucket / "exp1" / "spec.yaml").read_text() == "name: x\n"
    assert (bucket / "exp1" / "optuna.journal").read_text() == "{}\n"
    assert (bucket / "exp1" / "tensorboard" / "experiment" / "events.out.tfevents.1").read_bytes() == b"tb"
    assert (bucket / "exp1" / "trial_abc" / "checkpoint_000003" / "checkpoint.pt").read_bytes() == b"weights"


# --------------------------------------------------------------------------------------- on the simulated cluster


def test_local_storage_refused_on_multi_node_cluster(sim, tmp_path, capsys):
    storage = tmp_path / "results"
    space = write_space(tmp_path, "refused", num_samples=2, epochs=2, fraction=0.5)
    code = main(["run", space, "--address", sim.address, "--storage", str(storage), "--name", "refused"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"gce-search run: --storage {storage}: a local directory, but this cluster runs trials on other nodes" \
        in err
    assert "2 node(s) with CPUs" in err and f"{SHARED_ENV}=1" in err and "Traceback" not in err
    assert not storage.exists(), "the refused search wrote into its storage"
    assert not ray.is_initialized()


def test_declared_shared_storage_is_verified_on_every_node(sim, tmp_path):
    ray.init(address=sim.address, log_to_driver=False, logging_level="WARNING")
    try:
        nodes = trial_nodes(ray.nodes())
        assert sorted(n["NodeID"] for n in nodes) == sorted(sim.gpu_of())
        seen = tmp_path / "seen"
        seen.write_text("x")
        assert nodes_missing_file(str(seen), nodes) == []
        missing = nodes_missing_file(str(tmp_path / "never-written"), nodes)
        assert sorted(n["NodeID"] for n in missing) == sorted(sim.gpu_of())
        # the whole check on the live cluster: declared, probed on both workers, accepted, probe file removed
        driver = ray.get_runtime_context().get_node_id()
        check_storage(str(tmp_path / "shared"), ray.nodes(), driver, environ={SHARED_ENV: "1"})
        assert list((tmp_path / "shared").iterdir()) == []
    finally:
        ray.shutdown()


def test_head_keeps_dashboard_on_loopback_and_token_auth_on(sim):
    head_params = sim.cluster.head_node._ray_params
    assert head_params.dashboard_host == "127.0.0.1"  # Ray's default, and cluster.yaml's --dashboard-host
    if sim.cluster.webui_url:  # the dashboard runs only where ray[default] is installed
        host, port = sim.cluster.webui_url.rsplit(":", 1)
        assert host == "127.0.0.1"
        listening = [c.laddr.ip for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == int(port)]
        assert listening and set(listening) <= {"127.0.0.1", "::1"}, listening
    # The GCS answers a client holding the cluster's token, and refuses one with another token or none at all.
    code = (f"import ray._raylet as r; g = r.GcsClient(address={sim.address!r}); "
            f"print('NODES', len(g.get_all_node_info(timeout=10)))")

    def ask(**env: str) -> subprocess.CompletedProcess:
        return run_to_end([sys.executable, "-c", code], env=driver_env(**env))

    assert "NODES 3" in ask().stdout
    for refused in (ask(RAY_AUTH_TOKEN="0" * 64), ask(RAY_AUTH_MODE="disabled", RAY_AUTH_TOKEN="")):
        assert refused.returncode != 0 and "NODES" not in refused.stdout
        assert "InvalidAuthToken" in refused.stderr, refused.stderr[-2000:]


@pytest.mark.slow
def test_fractional_gpu_trials_pack_four_per_gpu_across_both_workers(sim, tmp_path):
    storage = tmp_path / "results"
    space = write_space(tmp_path, "packed", num_samples=8, epochs=4, fraction=0.25)
    run = run_to_end(cli("run", space, "--address", sim.address, "--storage", str(storage), "--name", "packed"),
                     env=driver_env(**{SHARED_ENV: "1"}), cwd=tmp_path, watch=[storage])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 GPU on 3 node(s)" in run.stdout  # the driver saw the whole cluster
    rows = assert_every_trial_accounted_for(storage / "packed", "packed", num_samples=8, epochs=4)

    gpu_of = sim.gpu_of()
    by_node: dict[str, list[list[dict]]] = {}
    for trial_id, lines in rows.items():
        nodes = {r["node_id"] for r in lines}
        assert len(nodes) == 1, (trial_id, nodes)
        node_id = nodes.pop()
        assert node_id in gpu_of, f"trial {trial_id} ran on {node_id}, not a worker (the head has no CPUs)"
        # each trial is given its node's GPU (a quarter of it), as Ray's CUDA_VISIBLE_DEVICES
        assert {r["cuda_visible_devices"] for r in lines} == {gpu_of[node_id]}, trial_id
        by_node.setdefault(node_id, []).append(lines)
    assert sorted(len(trials) for trials in by_node.values()) == [4, 4], {n: len(t) for n, t in by_node.items()}
    for node_id, trials in by_node.items():
        # Ray's timestamps are whole seconds: a trial started at most 1 s after (first timestamp - its duration),
        # and ended no earlier than its last timestamp. All four overlap when the latest start precedes the
        # earliest end.
        starts = [t[0]["timestamp"] - t[0]["time_this_iter_s"] + 1 for t in trials]
        ends = [t[-1]["timestamp"] for t in trials]
        assert max(starts) < min(ends), (gpu_of[node_id], starts, ends)


def node_processes(node) -> list[psutil.Process]:
    """Every process a simulated worker node's raylet started (its trial actors and idle workers)."""
    found = []
    for info in node.all_processes.get("raylet", []):
        try:
            found += psutil.Process(info.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    return found


def trial_processes(sim: SimulatedCluster) -> list[psutil.Process]:
    """Trial actors alive on the simulated workers (children of their raylets; other Ray instances on this
    machine are not ours to watch). Their process titles read `ray::ResourceTrainable.<method>`."""
    found = []
    for worker in sim.workers.values():
        for child in node_processes(worker):
            try:
                if "Trainable." in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                pass
    return found


def kill_worker_node(sim: SimulatedCluster, gpu_id: str) -> None:
    """A worker machine dies: every process on it stops at once. `Cluster.remove_node` kills only the node's Ray
    system processes and returns at once; the trial actors it started go on training and reporting to the driver
    over their own connections for seconds (long enough to finish a short trial on a "dead" node). So they are
    frozen first (SIGSTOP: nothing more leaves the node), the node is removed, then they are killed."""
    node = sim.workers.pop(gpu_id)
    processes = node_processes(node)
    for process in processes:
        try:
            process.suspend()
        except psutil.NoSuchProcess:
            pass
    sim.cluster.remove_node(node, allow_graceful=False)
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def assert_resumed_not_restarted(lines: list[dict]) -> None:
    """Epochs run 1, 2, ... with no gap; a resumed attempt starts at its checkpoint's next epoch, or repeats the
    one epoch whose result arrived before its checkpoint was registered (seen when a node dies), never epoch 1."""
    epochs = [r["epoch"] for r in lines]
    assert epochs[0] == 1 and all(b - a in (0, 1) for a, b in zip(epochs, epochs[1:])), epochs


@pytest.mark.slow
def test_worker_node_then_driver_killed_search_resumes_and_accounts_for_every_trial(sim, tmp_path):
    """A bad day on one search: a worker node dies (its trials go on from their checkpoints on the other node, with
    no intervention), then the driver dies (`gce-search resume --address` finishes the search). One search for both
    faults keeps the file's time down: a driver start and the trials' cold starts are most of each test."""
    storage = tmp_path / "results"
    exp = storage / "faults"
    num_samples, epochs = 4, 60
    # 2 trials per worker at once; an epoch at batch size 8 takes ~0.05-0.1 s, so a trial hit early (by epoch
    # epochs // 3) still has seconds to run after it resumes: the driver kill below lands before it finishes
    space = write_space(tmp_path, "faults", num_samples=num_samples, epochs=epochs, fraction=0.5, batch_size=8)
    env = driver_env(**{SHARED_ENV: "1"})
    gpu_of = sim.gpu_of()
    log_path = tmp_path / "run.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cli("run", space, "--address", sim.address, "--storage", str(storage), "--name",
                                "faults"), env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    victim = moved = None
    try:
        # 1. remove a worker node (SIGKILL, no goodbye) while one of its trials is past its first checkpoints, and
        # every unfinished trial it reports is past epoch 2 (on a loaded machine the node's second trial can start
        # late: removing the node while that one is at epoch 1 would move a trial with nothing to resume from)
        def running_on_a_worker():
            last = [lines[-1] for lines in trial_rows(exp).values() if not lines[-1].get("final")]
            for node in gpu_of:
                on_node = [r["epoch"] for r in last if r["node_id"] == node]
                if on_node and min(on_node) >= 2 and any(e <= epochs // 3 for e in on_node):
                    return node
            return None

        # polled every 0.1 s at most: the window (epochs 2 to epochs // 3) lasts about a second
        victim = wait_until(running_on_a_worker, what="a worker whose trials are past epoch 2, one of them before "
                            f"epoch {epochs // 3}", proc=proc, output=log_path, watch=[exp], max_poll_s=0.1)
        kill_worker_node(sim, gpu_of[victim])
        before_node_kill = trial_rows(exp)
        moved = [tid for tid, lines in before_node_kill.items()
                 if lines[-1]["node_id"] == victim and not lines[-1].get("final")]
        assert moved, "no unfinished trial was on the removed node: " + last_lines(before_node_kill)
        survivor = next(n for n in gpu_of if n != victim)

        # 2. once a trial has finished and a moved trial has resumed on the survivor, SIGKILL the driver
        def resumed_on_survivor():
            rows = trial_rows(exp)
            done = [t for t, lines in rows.items() if lines[-1].get("final")]
            resumed = [t for t in moved if rows.get(t) and rows[t][-1]["node_id"] == survivor
                       and not rows[t][-1].get("final")]
            return (done, resumed) if done and resumed else None

        wait_until(resumed_on_survivor, what="a finished trial and a moved trial resumed on the surviving node",
                   proc=proc, output=log_path, watch=[exp], max_poll_s=0.1)
        # Ray's record holds the completions (its state is saved every second, later on a loaded machine)
        done_before = wait_until(lambda: completions_in_ray_state(exp), what="Ray's saved state to list the "
                                 "completed trials", proc=proc, output=log_path, watch=[exp])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()  # SIGKILL cannot be ignored: no guard needed
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        if victim is not None and gpu_of[victim] not in sim.workers:
            sim.add_worker(gpu_of[victim])  # a replacement node, which the resumed search may use too
            sim.cluster.wait_for_nodes()
    assert len(done_before) < num_samples, "every trial finished before the driver was killed"
    # Ray ends a dead driver's trial actors itself: they run under the worker nodes' raylets, not under the driver
    wait_until(lambda: not trial_processes(sim), what="Ray to end the killed driver's trials",
               watch=[lambda: len(trial_processes(sim))])

    # 3. resume by address
    resumed = run_to_end(cli("resume", str(exp), "--address", sim.address), env=env, cwd=tmp_path, watch=[exp])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Search finished" in resumed.stdout and "on 3 node(s)" in resumed.stdout

    # every trial accounted for; none restarted from scratch; the completions before the kill not run again
    rows = assert_every_trial_accounted_for(exp, "faults", num_samples=num_samples, epochs=epochs)
    for lines in rows.values():
        assert_resumed_not_restarted(lines)
    for trial_id, finals in done_before.items():
        assert finals == 1 and sum(r.get("final") is True for r in rows[trial_id]) == 1
    # the trials moved off the removed node: victim lines (past a checkpoint), then the survivor's, continuing
    past_a_checkpoint = 0
    for trial_id in moved:
        lines = rows[trial_id]
        switch = next(i for i, r in enumerate(lines) if r["node_id"] != victim)
        # The survivor, or, when the driver was killed before the trial restarted, the replacement node that
        # joined before the resume (it carries the victim's GPU id, so the device check below still holds).
        replacement = {n for n in sim.gpu_of() if n not in (victim, survivor)}
        assert lines[switch]["node_id"] in {survivor} | replacement
        assert all(r["node_id"] == victim for r in lines[:switch])
        assert victim not in {r["node_id"] for r in lines[switch:]}, "a trial went back to the removed node"
        if lines[switch - 1]["epoch"] >= 2:  # past its first checkpoints: it goes on from one of them
            past_a_checkpoint += 1
            assert lines[switch]["epoch"] >= lines[switch - 1]["epoch"]
        else:
            # Its first result can reach the file between the poll that chose the node and the kill (a trial that
            # started late on a loaded machine is not in the poll's rows at all): it resumes from its one
            # checkpoint or starts again, never beyond
            assert lines[switch]["epoch"] in (1, 2)
        assert lines[switch]["cuda_visible_devices"] == sim.gpu_of()[lines[switch]["node_id"]]
    assert past_a_checkpoint >= 1, "no moved trial was past its first checkpoints when its node died"
