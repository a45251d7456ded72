"""What `gce-search run/resume` checks when it joins a Ray cluster, beyond the resources (search.driver).

Storage. Since Ray 2.7 every Tune trial writes its results and checkpoints to `storage_path` from the node it runs
on, and a trial restarted after a node failure (or `gce-search resume`) reads its checkpoint back from there on
whatever node it lands ("Configuring Persistent Storage", Ray Tune user guide). A directory that exists only on the
driver's machine therefore splits the experiment over the nodes' local disks: results go missing and a trial moved
to another node restarts from scratch, silently. So on a cluster whose trials can run on another node than the
driver, a local directory is refused unless it is

- a URI (s3://, gs://, abfs://, hdfs://, …): pyarrow's filesystems, reachable from every node, or
- declared shared: the environment variable GCE_SEARCH_SHARED_STORAGE=1 in the driver's environment, or a file
  named `.gce-search-shared` in the storage directory (created once by whoever mounts it, e.g. an NFS export
  mounted at the same path on every node).

A declared directory is then verified: one zero-CPU task pinned to each node that may run trials looks for a fresh
probe file the driver wrote there, so a node that lacks the mount is named before any trial starts.

Bucket storage. With a URI, Ray Tune's files (trial folders, experiment state) are in the bucket, while the driver's
own files (spec.yaml, the Optuna journal, which needs a POSIX file lock, and what search.reports writes) are in a
local directory on the driver's machine. `pull_experiment` copies the trials' records (not their checkpoints) into
that directory so that pareto/export/tensorboard read one place; `push_driver_files` copies the driver's files into
the bucket so that it holds the whole experiment once the head is gone.

Node failures. A trial on a lost node is restarted by Ray from its checkpoint elsewhere; the driver's result loggers
here keep its result.json intact through that restart (`_KeepLocalResults`).

Inside `ray job submit` the entrypoint runs with RAY_ADDRESS set to the cluster's GCS, and an explicit `ray.init(
address="local")` would start a second, private Ray on the head instead: `job_address` gives the driver that
address when `--address` is left out.
"""
from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterable

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from gce_search.errors import UsageError

SHARED_ENV = "GCE_SEARCH_SHARED_STORAGE"
SHARED_MARKER = ".gce-search-shared"
PROBE_PREFIX = ".gce-search-probe-"
PROBE_TIMEOUT_S = 60.0
# Set by Ray's job supervisor for the entrypoint of `ray job submit` (ray/dashboard/modules/job/job_supervisor.py),
# together with RAY_ADDRESS pointing at the cluster's GCS.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
TRUE_WORDS = ("1", "true", "yes", "on")


def is_uri(storage: str) -> bool:
    return "://" in storage


def job_address(environ: dict | None = None) -> str | None:
    """The cluster address when this process is the entrypoint of a Ray job, else None."""
    environ = os.environ if environ is None else environ
    if RAY_JOB_ENV in environ and environ.get("RAY_ADDRESS"):
        return environ["RAY_ADDRESS"]
    return None


def _alive(nodes: Iterable[dict]) -> list[dict]:
    return [n for n in nodes if n.get("Alive", n.get("alive", True))]


def trial_nodes(nodes: Iterable[dict]) -> list[dict]:
    """Alive nodes that can run a trial: every trial reserves CPU, so nodes without CPUs (a head started with
    `--num-cpus=0`, as in cluster.yaml) only run the driver."""
    return [n for n in _alive(nodes) if n.get("Resources", {}).get("CPU", 0.0) > 0]


def is_multi_node(nodes: Iterable[dict], driver_node_id: str | None = None) -> bool:
    """True when trials may run on a node other than the driver's: more than one node with CPUs, or (when the
    driver's node is known) one that is not the driver's, or none yet (an autoscaler will add them)."""
    runners = trial_nodes(nodes)
    if len(runners) > 1:
        return True
    if driver_node_id is None:
        return False
    return not runners or runners[0].get("NodeID") != driver_node_id


def declared_shared(storage: str, environ: dict | None = None) -> str | None:
    """How `storage` was declared shared (a phrase for messages), or None."""
    environ = os.environ if environ is None else environ
    if environ.get(SHARED_ENV, "").strip().lower() in TRUE_WORDS:
        return f"{SHARED_ENV}={environ[SHARED_ENV]}"
    if os.path.isfile(os.path.join(storage, SHARED_MARKER)):
        return f"{os.path.join(storage, SHARED_MARKER)} exists"
    return None


def _node_words(node: dict) -> str:
    res = node.get("Resources", {})
    return (f"node {node.get('NodeManagerAddress', '?')} ({node.get('NodeID', '?')[:12]}, "
            f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU)")


def _sees_file(path: str) -> bool:
    return os.path.isfile(path)


def nodes_missing_file(path: str, nodes: list[dict], timeout_s: float = PROBE_TIMEOUT_S) -> list[dict]:
    """The nodes among `nodes` on which `path` is not a file, asked by one task pinned to each node.

    Zero CPUs: the check must not wait behind trials for a CPU, and runs on CPU-less nodes too. A node that does
    not answer within `timeout_s` counts as missing the file."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_sees_file)
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(path):
            n for n in nodes}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    missing = []
    for ref, node in refs.items():
        try:
            seen = ref in ready and ray.get(ref, timeout=0)
        except Exception:  # the node died between listing and probing
            seen = False
        if not seen:
            missing.append(node)
    return missing


def verify_shared(storage: str, nodes: list[dict], timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse when a node that may run trials does not see a file written into `storage` by the driver."""
    os.makedirs(storage, exist_ok=True)
    probe_path = os.path.join(storage, PROBE_PREFIX + secrets.token_hex(8))
    with open(probe_path, "w") as f:
        f.write("gce-search: shared-storage probe, safe to delete\n")
    try:
        missing = nodes_missing_file(probe_path, nodes, timeout_s)
    finally:
        os.remove(probe_path)
    if missing:
        lines = [f"--storage {storage}: declared shared, but a file the driver wrote there is not visible on:"]
        lines += [f"  {_node_words(n)}" for n in missing]
        lines.append("valid: mount the shared directory at the same path on every node (check with `ray exec` or "
                     "ssh), or use a bucket URI such as s3://BUCKET/gce-search")
        raise UsageError("\n".join(lines))


def check_storage(storage: str, nodes: list[dict], driver_node_id: str | None = None,
                  environ: dict | None = None, verify: bool = True) -> None:
    """Refuse a node-local storage directory for a search whose trials may run on other nodes (module docstring).

    `nodes` is `ray.nodes()`; `driver_node_id` the driver's node (`ray.get_runtime_context().get_node_id()`);
    `storage` the resolved --storage (absolute path or URI). Raises search.cli.UsageError with what to do."""
    if is_uri(storage) or not is_multi_node(nodes, driver_node_id):
        return
    how = declared_shared(storage, environ)
    if how is not None:
        if verify:
            verify_shared(storage, trial_nodes(nodes))
        return
    runners = trial_nodes(nodes)
    where = ", ".join(n.get("NodeManagerAddress", "?") for n in runners) or "nodes the autoscaler has yet to start"
    raise UsageError(
        f"--storage {storage}: a local directory, but this cluster runs trials on other nodes than the driver "
        f"({len(runners)} node(s) with CPUs: {where}). Ray Tune writes each trial's results and checkpoints on the "
        f"node that runs it, so they would be scattered over local disks, and a trial moved off a failed node would "
        f"restart from scratch. valid: a bucket URI (--storage s3://BUCKET/gce-search, gs://…), or a directory "
        f"shared by every node at the same path (NFS), declared with {SHARED_ENV}=1 or by creating "
        f"{os.path.join(storage, SHARED_MARKER)}")


# The driver's files that exist only in its local directory when the storage is a URI.
DRIVER_FILES = ("spec.yaml", "optuna.journal", "pareto.csv", "pareto.png", "summary.json", "tensorboard")


def _uri_filesystem(storage: str, name: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(storage.rstrip("/") + "/" + name)


def _reported(copy):
    """A copy after the search: a failure (credentials, network) is reported, not raised over a finished search."""
    def wrapper(*args) -> int:
        try:
            return copy(*args)
        except OSError as err:  # pyarrow's IO errors are OSErrors
            print(f"(gce-search: {copy.__name__}{args}: {type(err).__name__}: {err}; copy it with your storage's "
                  f"own tool, e.g. `aws s3 sync`)", file=sys.stderr, flush=True)
            return 0
    wrapper.__name__, wrapper.__doc__ = copy.__name__, copy.__doc__
    return wrapper


@_reported
def pull_experiment(storage: str, name: str, exp_dir: str) -> int:
    """Copy `<storage>/<name>` (a URI) into `exp_dir`, without checkpoints: the trials' result files and Ray's
    experiment state. Returns the number of files copied."""
    import pyarrow.fs

    fs, root = _uri_filesystem(storage, name)
    root = root.rstrip("/")
    copied = 0
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)):
        relative = info.path[len(root):].lstrip("/")
        # Model weights stay in the bucket: one per trial, up to hundreds of MB each for the larger models.
        if info.type != pyarrow.fs.FileType.File or any(p.startswith("checkpoint_") for p in relative.split("/")):
            continue
        target = os.path.join(exp_dir, *relative.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
            dst.write(src.read())
        copied += 1
    return copied


@_reported
def push_driver_files(exp_dir: str, storage: str, name: str) -> int:
    """Copy the driver's own files (DRIVER_FILES, where present) from `exp_dir` into `<storage>/<name>`; returns
    the number of files copied."""
    fs, root = _uri_filesystem(storage, name)
    root = root.rstrip("/")
    copied = 0
    for entry in DRIVER_FILES:
        local = os.path.join(exp_dir, entry)
        paths = [local] if os.path.isfile(local) else [
            os.path.join(d, f) for d, _, files in os.walk(local) for f in files]
        for path in paths:
            target = root + "/" + os.path.relpath(path, exp_dir).replace(os.sep, "/")
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            with open(path, "rb") as src, fs.open_output_stream(target) as dst:
                dst.write(src.read())
            copied += 1
    return copied



class _KeepLocalResults:
    """Keeps the driver's own result file when a trial restarts (mixed into Ray's JSON and CSV loggers).

    On a trial restart Ray copies the file from the storage over the driver's local one (`_restore_from_remote`,
    ray/tune/logger/logger.py). The storage copy is synced from the driver's staging directory in the background
    (at each experiment-state save, here each second), so after a node failure it can lack the results reported
    just before: seen as a result.json starting at epoch 3 for a trial whose node died after epoch 2. The local
    file is the fresher one whenever it exists; it does not after the driver itself restarted (`gce-search
    resume`), and then the storage copy is all there is."""

    def _restore_from_remote(self, file_name: str, trial) -> None:
        if os.path.exists(os.path.join(trial.local_path, file_name)):
            return
        super()._restore_from_remote(file_name, trial)


class JsonLoggerKeepingLocal(_KeepLocalResults, JsonLoggerCallback):
    pass


class CSVLoggerKeepingLocal(_KeepLocalResults, CSVLoggerCallback):
    pass
