"""`gce-search run` and `gce-search resume`: assemble the Ray Tune search and run it.

Order of work in `run`: everything the user can get wrong is checked before anything is started or written (spec,
overrides, storage and experiment name, the Ray address, the per-trial resources against the cluster's nodes); then
the experiment directory gets `spec.yaml`, and Ray Tune runs Optuna's define-by-run space under the scheduler.
"""
from __future__ import annotations

import os
import re
import time
from typing import Any

from ray.tune import Callback

from gce_search.errors import UsageError
from gce_search.search.compat import (asha_brackets, asha_counters, asha_rng, asha_trial_brackets, bracket_rungs,
                                      local_tuner_configs, relocatable_search_generator, relocate_search,
                                      result_grid_trials, set_asha_counters)
from gce_search.search.cluster import (CSVLoggerKeepingLocal, JsonLoggerKeepingLocal, check_storage, job_address,
                            pull_experiment, push_driver_files)
from gce_search.errors import ConfigError

DEFAULT_SPACE = "quickstart"
DEFAULT_STORAGE = "./gce-search-results"
SPEC_FILE = "spec.yaml"
JOURNAL_FILE = "optuna.journal"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # whole name (fullmatch: `$` would allow a final newline)
MAX_NAME_BYTES = 255  # one directory name on every common filesystem
# URI schemes of the filesystems pyarrow (hence Ray Tune's storage_path) opens.
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
# host:port, ray://host:port, or the two keywords ray.init understands.
ADDRESS_PATTERN = re.compile(r"^(auto|local|(ray|ray\+tls)://[^\s/:]+:\d{1,5}|[^\s/:]+:\d{1,5})$")


# --------------------------------------------------------------------------------------------------------------
# Checks that run before anything starts


def check_overrides(overrides: list[str]) -> None:
    from gce_search.spaces.overrides import parse_override

    for text in overrides:
        try:
            parse_override(text)
        except ValueError as err:
            raise UsageError(str(err)) from None


def load_and_validate(space: str, overrides: list[str]):
    """The SearchSpec; ConfigError (every problem, YAML paths; an unknown space name or a missing file too) or
    UsageError, with nothing started."""
    check_overrides(overrides)
    from gce_search.spaces.loading import load_spec

    try:
        return load_spec(space, list(overrides))
    except ConfigError:
        raise
    except (ValueError, OSError) as err:
        raise UsageError(f"space {space!r}: {err}") from None


def is_uri(storage: str) -> bool:
    return "://" in storage


def resolve_storage(storage: str | None) -> str:
    storage = storage or DEFAULT_STORAGE
    return storage if is_uri(storage) else os.path.abspath(os.path.expanduser(storage))


def experiment_exists(storage: str, name: str) -> bool:
    if not is_uri(storage):
        return os.path.exists(os.path.join(storage, name))
    import pyarrow.fs

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(storage.rstrip("/") + "/" + name)
        return fs.get_file_info(root).type != pyarrow.fs.FileType.NotFound
    except (OSError, ValueError, pyarrow.ArrowException) as err:
        raise UsageError(f"--storage {storage!r}: cannot be opened ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); valid: a local directory or a URI "
                         f"this machine can reach with its credentials") from None


def check_storage_arg(storage: str) -> None:
    """A resolved --storage that Ray Tune can write to: a URI of a filesystem pyarrow opens, or a local path
    that is (or can be created as) a writable directory."""
    if is_uri(storage):
        scheme = storage.split("://", 1)[0].lower()
        if scheme not in STORAGE_SCHEMES:
            raise UsageError(f"--storage {storage!r}: unsupported URI scheme {scheme!r}; valid: a local directory "
                             f"or a URI with one of {', '.join(s + '://' for s in STORAGE_SCHEMES)}")
        return
    existing = storage
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is a file" if existing == storage else f"is inside {existing}, which is a file"
        raise UsageError(f"--storage {storage!r}: {what}; valid: a directory (created if missing) or a URI")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--storage {storage!r}: {existing} is not writable by this user; valid: a directory you "
                         f"can write to")


def check_name(name: str, what: str | None = None) -> None:
    """Refuse an experiment name that is not one portable directory name. `what` names where it came from
    (default: --name)."""
    what = what or f"--name {name!r}"
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"{what}: not a usable experiment name; valid: letters, digits and . _ + - "
                         f"(no path separators), starting with a letter or digit")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise UsageError(f"{what}: {len(name.encode())} bytes; valid: at most {MAX_NAME_BYTES} bytes (one directory "
                         f"name)")


def claim_experiment_dir(exp_dir: str) -> list[str]:
    """Create the experiment directory, atomically: of two runs given one name, the second is refused here,
    before it starts Ray. Returns the directories created (the experiment's, and any missing parents), for
    release_experiment_dir should a later check refuse the run."""
    created = []
    parent = os.path.dirname(exp_dir)
    while not os.path.isdir(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    os.makedirs(os.path.dirname(exp_dir), exist_ok=True)
    try:
        os.mkdir(exp_dir)
    except FileExistsError:
        raise UsageError(f"experiment {os.path.basename(exp_dir)!r} already exists in {os.path.dirname(exp_dir)} "
                         f"(another run may have just taken the name); valid: another --name, or `gce-search "
                         f"resume {exp_dir}` to finish it") from None
    return [exp_dir, *created]


def release_experiment_dir(created: list[str]) -> None:
    """Remove what claim_experiment_dir created, where nothing has been written into it since."""
    for path in created:
        try:
            os.rmdir(path)
        except OSError:
            return


def check_address(address: str) -> None:
    if not ADDRESS_PATTERN.match(address):
        raise UsageError(f"--address {address!r}: not a Ray address; valid: HOST:PORT (e.g. 10.0.0.1:6379), "
                         f"ray://HOST:PORT (Ray Client, e.g. ray://head:10001), or auto")
    port = address.rsplit(":", 1)[-1]
    if port.isdigit() and not 0 < int(port) < 65536:
        raise UsageError(f"--address {address!r}: port {port} out of range; valid: 1-65535")


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at HOST:PORT: ray.init would wait minutes for the GCS before giving up."""
    import socket

    if address in ("auto", "local"):
        return
    host, port = address.split("://", 1)[-1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise UsageError(f"--address {address!r}: nothing answers at {host}:{port} ({err.strerror or err}); valid: "
                         f"the address of a running cluster's head (see `ray status` on it), or leave --address "
                         f"out for a local instance") from None


_GPU_NOTICE_GIVEN: set[int] = set()  # id() of the specs whose GPU request was dropped (one notice per run)


def trial_resources(spec) -> dict[str, float]:
    """The per-trial resource bundle. `resources.gpus_per_trial` takes effect only where GPUs exist: on a cluster
    without any (once Ray is connected) a trial that may run on a CPU (`train.device: auto`) asks for CPUs only, so
    a GPU-sized space runs on a laptop instead of waiting forever; one notice says so."""
    res = spec.resources
    bundle = {"CPU": float(res.get("cpus_per_trial", 1))}
    gpus = float(res.get("gpus_per_trial", 0) or 0)
    if gpus > 0:
        bundle["GPU"] = gpus
        import ray

        device = spec.base_config.get("train", {}).get("device", "auto")
        searched_device = any(p.path == "train.device" for p in spec.params)
        if (ray.is_initialized() and device == "auto" and not searched_device
                and not ray.cluster_resources().get("GPU", 0)):
            del bundle["GPU"]
            if id(spec) not in _GPU_NOTICE_GIVEN:
                _GPU_NOTICE_GIVEN.add(id(spec))
                print(f"gce-search: no GPU in this cluster: resources.gpus_per_trial {gpus:g} ignored, each trial "
                      f"runs on {bundle['CPU']:g} CPU(s) (train.device: auto); a GPU-sized space can take hours "
                      f"on CPUs: --set train.epochs=, data.max_train=, search.num_samples= size it down (or use "
                      f"a CPU-sized space such as fashion_mnist_cpu)", flush=True)
    return bundle


def check_resources(bundle: dict[str, float], nodes: list[dict]) -> None:
    """Refuse a per-trial request no alive node can hold (Ray would leave the trial PENDING forever)."""
    alive = [n for n in nodes if n.get("Alive", n.get("alive", True))]
    for node in alive:
        have = node.get("Resources", {})
        if all(have.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()):
            return
    wanted = ", ".join(f"{v:g} {k}" for k, v in bundle.items())
    lines = [f"no node can run a trial that needs {wanted} (resources.cpus_per_trial / resources.gpus_per_trial); "
             f"the cluster has:"]
    for node in alive:
        have = node.get("Resources", {})
        lines.append(f"  node {node.get('NodeManagerAddress', '?')}: {have.get('CPU', 0):g} CPU, "
                     f"{have.get('GPU', 0):g} GPU")
    if not alive:
        lines.append("  (no alive node)")
    lines.append("valid: a request that fits one node, e.g. --set resources.gpus_per_trial=0 on a CPU-only cluster")
    raise UsageError("\n".join(lines))


def start_loopback_ray() -> None:
    """A local Ray instance whose every socket is on 127.0.0.1 (docs/architecture.md, "Local Ray").

    Ray binds its gRPC servers (GCS, raylet, object manager, each worker) to all interfaces unless the node's
    address is loopback, and turns a requested 127.0.0.1 into the machine's routable address except where its
    single-machine mode is on (search.compat.init_loopback_ray). With the node on 127.0.0.1 the autoscaler
    monitor, dashboard and agent metrics endpoints bind 127.0.0.1 too. The dashboard web UI is not started at
    all."""
    from gce_search.search.compat import init_loopback_ray

    init_loopback_ray(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                      configure_logging=True, logging_level="WARNING")


def connect_ray(address: str | None) -> bool:
    """Start or join Ray; True when this call started it (and so shuts it down at the end)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or job_address()  # inside `ray job submit`: the cluster, not a second local Ray
    if address is None:
        start_loopback_ray()
        return True
    probe_address(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    except Exception as err:  # ConnectionError, RuntimeError, ValueError depending on the address form
        raise UsageError(f"--address {address!r}: could not connect to a Ray cluster ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); valid: the address of a running "
                         f"cluster's head (see `ray status` on it), or leave --address out for a local instance") from None
    return True


# --------------------------------------------------------------------------------------------------------------
# Tuner assembly


def max_epochs(spec) -> int:
    """ASHA's max_t: the fixed epochs, or the largest value the space may give `train.epochs`.

    A searched `train.epochs` replaces the base value (the default, since a path cannot be both fixed and
    searched) in every trial, unless a `when:` condition can leave it inactive: only then can a trial run the
    base value."""
    epochs = int(spec.base_config["train"]["epochs"])
    for param in spec.params:
        if param.path == "train.epochs":
            candidates = [param.high] if param.high is not None else list(param.choices or [])
            searched = max(int(c) for c in candidates)
            epochs = max(epochs, searched) if param.conditions() else searched
    return epochs


def build_searcher(spec, exp_dir: str, study_name: str):
    from gce_search.search.searcher import CalibratedSearcher
    from gce_search.search.space import define_by_run, make_sampler

    from gce_search.search.pareto import objectives_for

    return CalibratedSearcher(
        space=define_by_run(spec), journal_path=os.path.join(exp_dir, JOURNAL_FILE),
        sampler=make_sampler(spec.search), study_name=study_name,
        metric=list(objectives_for(spec.base_config.get("objective"))))


def build_trainable(spec):
    from ray import tune
    from ray.tune import PlacementGroupFactory

    from gce_search.search.trainable import Trainable

    # One bundle per trial: DDP processes are spawned from inside the trial on what it reserved, because a
    # TorchTrainer inside a Tune trial leaks its workers when ASHA stops the trial (ray#54305).
    return tune.with_resources(Trainable, PlacementGroupFactory([trial_resources(spec)]))


def tensorboard_callbacks(exp_dir: str, spec) -> list:
    from gce_search.search.tensorboard import TensorBoardCallback  # tensorboard's protobufs: loaded for a run only

    return [TensorBoardCallback(exp_dir, spec)]


class SchedulerState(Callback):
    """Carries the scheduler's state (ASHA's rungs) through Ray's experiment checkpoints, as plain JSON.

    Ray saves the searcher's and the callbacks' state with the experiment, not the scheduler's (ray 2.60): after
    `Tuner.restore` ASHA would start with empty rungs and let every resumed trial run to the full budget. This
    callback and the scheduler are pickled together into Ray's tuner.pkl, so after a restore it still holds the
    scheduler the Tuner uses, and `set_state` refills it. Only what changes during a search is carried (each
    bracket's rungs, which bracket each trial is in, the counters, MO-ASHA's generator); the settings come back
    with the scheduler itself.
    """

    FORMAT = 2

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def __getstate__(self) -> dict:
        # Pickled with the Tuner: the scheduler (pickled once, shared with the TuneConfig) and nothing else.
        return {"scheduler": self.scheduler}

    def __setstate__(self, state: dict) -> None:
        self.scheduler = state["scheduler"]

    def get_state(self) -> dict:
        import json

        brackets = asha_brackets(self.scheduler)
        state = {
            "format": self.FORMAT,
            "rungs": [[[milestone, {tid: [float(x) for x in v] if isinstance(v, tuple) else float(v)
                                   for tid, v in rec.items()}]
                       for milestone, rec in bracket_rungs(b)] for b in brackets],
            "trial_bracket": {tid: next(i for i, b in enumerate(brackets) if b is bracket)
                              for tid, bracket in (asha_trial_brackets(self.scheduler) or {}).items()
                              if any(b is bracket for b in brackets)},
            "counters": asha_counters(self.scheduler),
        }
        rng = asha_rng(self.scheduler)
        if rng is not None:
            state["rng"] = rng.bit_generator.state
        return {"scheduler_json": json.dumps(state)}

    def set_state(self, state: dict) -> None:
        import json

        if "scheduler_json" not in state:
            print("gce-search: the scheduler state was saved by an older version (a pickle, not read); the "
                  "rungs start empty", flush=True)
            return
        saved = json.loads(state["scheduler_json"])
        brackets = asha_brackets(self.scheduler)
        if saved.get("format") != self.FORMAT or len(saved["rungs"]) != len(brackets):
            print("gce-search: the saved scheduler state does not fit this scheduler; the rungs start empty",
                  flush=True)
            return
        for bracket, rungs in zip(brackets, saved["rungs"]):
            mine = bracket_rungs(bracket)
            by_milestone = {float(m): rec for m, rec in mine}
            for milestone, recorded in rungs:
                target = by_milestone.get(float(milestone))
                if target is not None:
                    target.clear()
                    target.update({tid: tuple(v) if isinstance(v, list) else v for tid, v in recorded.items()})
        trial_brackets = asha_trial_brackets(self.scheduler)
        if trial_brackets is not None:
            trial_brackets.clear()
            trial_brackets.update({tid: brackets[i] for tid, i in saved["trial_bracket"].items()})
        set_asha_counters(self.scheduler, saved.get("counters", {}))
        rng = asha_rng(self.scheduler)
        if "rng" in saved and rng is not None:
            rng.bit_generator.state = saved["rng"]
        recorded = sum(len(rec) for bracket in brackets for _, rec in bracket_rungs(bracket))
        print(f"gce-search: scheduler state restored ({recorded} result(s) recorded at rungs)", flush=True)


class TimeBudget(Callback):
    """Keeps the time left of `search.timeout_s` as Ray's own time-budget stopper does (loop time, counted per
    step) and through the same experiment checkpoint: Ray carries the *remaining* budget through `Tuner.restore`,
    so after fit() only this record tells whether the budget ended the search (the trials it cut off are told as
    stopped) or the user interrupted it (they are left to `gce-search resume`)."""

    # Ray's stopper checks once per loop step (~0.1 s) after this callback; a margin covers the last step.
    MARGIN_S = 1.0

    def __init__(self, timeout_s: float):
        self.timeout_s = float(timeout_s)
        self.remaining = self.timeout_s
        self._last: float | None = None

    def __getstate__(self) -> dict:
        # a restored run starts counting at its first step, as Ray's
        return {"timeout_s": self.timeout_s, "remaining": self.remaining}

    def __setstate__(self, state: dict) -> None:
        self.timeout_s = float(state["timeout_s"])
        self.remaining = float(state["remaining"])
        self._last = None

    def on_step_begin(self, iteration, trials, **info):
        now = time.time()
        if self._last is not None:
            self.remaining -= now - self._last
        self._last = now

    def get_state(self) -> dict:
        return {"remaining": self.remaining}

    def set_state(self, state: dict) -> None:
        self.remaining = float(state["remaining"])
        self._last = None

    @property
    def spent(self) -> bool:
        return self.remaining <= self.MARGIN_S


def time_budget_of(callbacks) -> TimeBudget | None:
    return next((c for c in callbacks or [] if isinstance(c, TimeBudget)), None)


def trial_dirname(trial) -> str:
    # Ray's default folder name lists every parameter and overflows path limits with breakpoint vectors.
    return f"trial_{trial.trial_id}"


def cluster_slots(bundle: dict[str, float], nodes: list[dict]) -> int:
    """How many trials of `bundle` the alive nodes hold at once (at least 1)."""
    slots = 0
    for node in nodes:
        if not node.get("Alive", True):
            continue
        have = node.get("Resources", {})
        slots += int(min(have.get(k, 0.0) // v for k, v in bundle.items() if v > 0))
    return max(1, slots)


def build_tuner(spec, storage: str, name: str, exp_dir: str, progress, slots: int = 1, trainable=None):
    """The Tuner of a search and its CalibratedSearcher. `trainable` replaces the training trainable (the
    overhead benchmark runs the same assembly on a synthetic one)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from gce_search.search.schedulers import build_scheduler

    searcher = build_searcher(spec, exp_dir, study_name=name)
    # Ray lets a custom searcher have a single PENDING trial unless it is wrapped in a ConcurrencyLimiter, whose
    # limit then sets the pending count: without it, trial actors start one after another and a cold start
    # (importing torch, ~5-10 s) idles every other slot. So the limiter is always there, at the slot count.
    max_concurrent = int(spec.search.get("max_concurrent") or slots)
    # in a generator whose new trials follow the experiment when it is copied or moved (search.compat)
    search_alg = relocatable_search_generator(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))
    scheduler = build_scheduler(dict(spec.scheduler), max_t=max_epochs(spec),
                                objective=spec.base_config["objective"])
    tune_config = tune.TuneConfig(
        metric="score", mode="max", search_alg=search_alg, scheduler=scheduler,
        num_samples=int(spec.search.num_samples),
        reuse_actors=bool(spec.resources.get("reuse_actors", True)),
        time_budget_s=spec.search.get("timeout_s"),
        trial_dirname_creator=trial_dirname,
    )
    run_config = tune.RunConfig(
        storage_path=storage, name=name, verbose=0,
        # result.json (JSON lines) is what search.records reads; progress.csv is for users' own tools.
        # (Ray's JSON/CSV loggers, keeping the driver's file when a trial restarts after a node failure)
        callbacks=[progress, JsonLoggerKeepingLocal(), CSVLoggerKeepingLocal(), SchedulerState(scheduler),
                   *tensorboard_callbacks(exp_dir, spec)],
        # The latest checkpoint is what resume needs; older ones only fill the disk.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        # A trial whose node died restarts from its checkpoint, once; a deterministic bug fails twice, not forever.
        failure_config=tune.FailureConfig(max_failures=1),
    )
    if spec.search.get("timeout_s"):
        run_config.callbacks.append(TimeBudget(spec.search["timeout_s"]))
    from gce_search.search.state import StateBackup

    run_config.callbacks.append(StateBackup())
    if trainable is None:
        trainable = build_trainable(spec)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config), searcher


def inner_searcher(tuner_or_alg):
    alg = tuner_or_alg
    while hasattr(alg, "searcher"):
        alg = alg.searcher
    return alg


# Process-wide settings for the Tune run of one `gce-search run/resume`; set for the run, restored after it (a
# library user's own Tuner in the same process keeps Ray's defaults). Values: (value, override an existing one?)
TUNE_ENVIRONMENT = {
    # Ray saves the experiment state (trials + searcher) at most every 10 s by default; after a kill -9 everything
    # since then is replayed or, for trials suggested in that window, lost from Ray's record. Saving every second
    # keeps that window small; the journal covers the rest (see search.searcher).
    "TUNE_GLOBAL_CHECKPOINT_S": ("1", False),
    # With CheckpointConfig(num_to_keep=1) Ray also snapshots whenever a trial checkpoints (so that the state never
    # names a deleted checkpoint), and warns each time: here that frequency is wanted, the warning is noise.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": ("0", False),
    # Ray's default TensorBoard logger declares the hparams of one run only (docs/design.md); search.tensorboard writes
    # the experiment-level record instead. The JSON/CSV loggers are added explicitly in build_tuner.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": ("1", True),
    # The progress lines replace Ray's output; Ray's newer console output prints its own header even at verbose=0.
    "RAY_AIR_NEW_OUTPUT": ("0", False),
}


def configure_tune_environment() -> dict[str, str | None]:
    """Apply TUNE_ENVIRONMENT; returns the previous values for restore_environment."""
    previous = {key: os.environ.get(key) for key in TUNE_ENVIRONMENT}
    for key, (value, override) in TUNE_ENVIRONMENT.items():
        if override:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return previous


def restore_environment(previous: dict[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# --------------------------------------------------------------------------------------------------------------
# After the search


def finish(exp_dir: str, grid, searcher, started: float, timeout_s: float | None = None,
           budget: TimeBudget | None = None) -> int:
    """Close a fit(): the summary when the search is done; how to continue when it was interrupted.

    `budget` (the run's TimeBudget callback) says whether the time budget ended the search; without it, whether
    `timeout_s` has passed since `started`."""
    cut_off = searcher.unfinished() if searcher is not None and hasattr(searcher, "unfinished") else []
    if budget is not None:
        budget_spent = budget.spent
    else:
        budget_spent = timeout_s is not None and time.time() - started >= float(timeout_s)
    if cut_off and not budget_spent:
        # Ray does not tell the searcher about trials it leaves on Ctrl+C: their Optuna trials stay RUNNING, and
        # resume continues exactly those Ray trials.
        print(f"\nSearch interrupted with {len(cut_off)} trial(s) unfinished; the state is saved. Continue with:\n"
              f"  gce-search resume {exp_dir}", flush=True)
        return 130
    for trial_id in cut_off:  # the time budget ended them: stopped before the full budget
        searcher.on_trial_complete(trial_id, result=None)
    if searcher is not None and hasattr(searcher, "fail_orphans"):
        searcher.fail_orphans()
    return summarize(exp_dir, grid, started)


def summarize(exp_dir: str, grid, started: float) -> int:
    """Write the result files and print the closing summary; 0 when a trial produced a usable result, else 1.

    The counts come from the same trial records as the front and the files (search.records), so what is printed
    agrees with pareto.csv and summary.json; Ray's grid only fills in trials without a record there."""
    from gce_search.search.progress import print_summary
    from gce_search.search.records import STATUSES, load_experiment, trial_outcome
    from gce_search.search.reports import write_results

    outcomes = {status: 0 for status in STATUSES}
    front = None
    try:
        exp = load_experiment(exp_dir)
    except Exception as err:  # an unreadable directory: Ray's own view of the trials still tells what happened
        print(f"(results not read: {type(err).__name__}: {err}; run `gce-search pareto {exp_dir}`)")
        exp = None
    recorded = {t.trial_id for t in exp.trials} if exp is not None else set()
    for trial in exp.trials if exp is not None else []:
        outcomes[trial.status] = outcomes.get(trial.status, 0) + 1
    for result in grid:
        folder = os.path.basename(str(getattr(result, "path", "") or ""))
        trial_id = (result.metrics or {}).get("trial_id") or folder[len("trial_"):]
        if trial_id not in recorded:
            outcome = trial_outcome(result.metrics, errored=result.error is not None)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if exp is not None and exp.complete():
        try:
            write_results(exp_dir, experiment=exp)
            front = [{"trial_id": t.trial_id, "loss": t.loss, "val/acc": t.metric("val/acc"),
                      "val/ece": t.metric("val/ece"), "val/ece_lo": t.metric("val/ece_lo"),
                      "val/ece_hi": t.metric("val/ece_hi"), exp.ece_key: t.metric(exp.ece_key),
                      "score": t.metric("score")} for t in exp.front()]
        except Exception as err:  # the search itself succeeded; say why the files are missing instead of failing
            print(f"(results files not written: {type(err).__name__}: {err}; run `gce-search pareto {exp_dir}`)")
    if front is None:
        front = grid_front(grid)
    usable = print_summary(exp_dir, outcomes, front, wall_s=time.time() - started)
    return 0 if usable else 1


def grid_front(grid) -> list[dict]:
    """The front from Ray's grid, when the trial records could not be read: the trials that count toward a front
    (search.records.counts_toward_front of trial_outcome)."""
    from gce_search.search.pareto import OBJECTIVES, objective_front, objectives_for
    from gce_search.search.records import counts_toward_front, trial_outcome

    rows = []
    objectives = OBJECTIVES
    for result in grid:
        m = result.metrics or {}
        trial_config = (result.config or {}).get("trial_config") or {}
        try:  # one objective section for the whole search (it cannot be searched)
            objectives = objectives_for(trial_config.get("objective"))
        except KeyError:
            pass
        key = objectives[1]
        if counts_toward_front(trial_outcome(m, errored=result.error is not None), m, objectives):
            rows.append({"trial_id": m.get("trial_id"), "loss": trial_config.get("loss", {}).get("name"),
                         "val/acc": m.get("val/acc"), "val/ece": m.get("val/ece"), "val/ece_lo": m.get("val/ece_lo"),
                         "val/ece_hi": m.get("val/ece_hi"), key: m.get(key), "score": m.get("score")})
    if not rows:
        return []
    return sorted((rows[i] for i in objective_front(rows, objectives)), key=lambda r: r[objectives[1]])


def write_spec(exp_dir: str, spec) -> None:
    from gce_search.yamlio import dump_yaml

    with open(os.path.join(exp_dir, SPEC_FILE), "x") as f:
        dump_yaml(spec.to_dict(), f, sort_keys=False)


# --------------------------------------------------------------------------------------------------------------
# Commands


def cmd_run(args) -> int:
    started = time.time()
    space = args.space or DEFAULT_SPACE
    spec = load_and_validate(space, list(args.overrides or []))
    code, _ = run(spec, args.storage, args.name, args.address, space=space, started=started)
    return code


def run(spec, storage: str | None = None, name: str | None = None, address: str | None = None, *,
        space: str | None = None, started: float | None = None) -> tuple[int, str]:
    """Run the search of a validated SearchSpec as `gce-search run` does: (exit code, experiment directory).

    `storage`, `name` and `address` are `--storage`, `--name` and `--address` (None: their defaults); `space` is
    what the spec was read from, for messages. Bad input raises UsageError/ConfigError before Ray starts; exit 0
    when the search ended with a usable trial, 1 otherwise."""
    started = time.time() if started is None else started
    space = space or spec.source or spec.name
    if address is not None:
        check_address(address)
    storage = resolve_storage(storage)
    check_storage_arg(storage)
    if name is None:
        check_name(spec.name, what=f"name: {spec.name!r} in {spec.source or space} (the default experiment name is "
                                   f"it plus a timestamp; or give --name)")
    name = name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_name(name)
    if address is None and job_address() is None:
        # A local search reads the data here; a cluster's nodes may hold data this machine has not.
        from gce_search.spaces.validation import data_problems_of

        problems = data_problems_of(spec)
        if problems:
            raise ConfigError(problems, spec.source)
    if experiment_exists(storage, name):
        where = storage if is_uri(storage) else os.path.join(storage, name)
        raise UsageError(f"experiment {name!r} already exists in {storage}; valid: another --name, or "
                         f"`gce-search resume {where}` to finish it")
    if is_uri(storage):
        # Ray writes trials to the URI; the driver's own files (spec.yaml, the Optuna journal, which needs a POSIX
        # file lock) live in a local mirror with the same name.
        exp_dir = os.path.join(os.path.abspath(DEFAULT_STORAGE), name)
    else:
        exp_dir = os.path.join(storage, name)
    claimed = claim_experiment_dir(exp_dir)

    import ray

    from gce_search.search.progress import ProgressPrinter, quiet_ray_notices

    notices = quiet_ray_notices()
    owns_ray = False
    try:
        say_starting_ray(address)
        owns_ray = connect_ray(address)
        check_resources(trial_resources(spec), ray.nodes())
        check_storage(storage, ray.nodes(), ray.get_runtime_context().get_node_id())
        write_spec(exp_dir, spec)
    except BaseException:
        release_experiment_dir(claimed)
        notices.log_in(None)
        if owns_ray:
            ray.shutdown()
        raise
    previous_environment: dict[str, str | None] = {}
    try:
        notices.log_in(exp_dir)
        previous_environment = configure_tune_environment()
        print(f"gce-search: space {spec.name!r}, {spec.search.get('num_samples')} trials, "
              f"{trial_resources(spec)} per trial, cluster {_cluster_words()}; experiment {exp_dir}", flush=True)
        slots = cluster_slots(trial_resources(spec), ray.nodes())
        progress = ProgressPrinter.for_spec(spec, name, slots, max_epochs(spec))
        tuner, searcher = build_tuner(spec, storage, name, exp_dir, progress, slots=slots)
        try:
            grid = tuner.fit()
        finally:
            progress.close()
        if is_uri(storage):  # trials in the bucket, the driver's files here: one complete copy in each (cluster.py)
            pull_experiment(storage, name, exp_dir)
        configs = local_tuner_configs(tuner)
        code = finish(exp_dir, grid, searcher, started, spec.search.get("timeout_s"),
                      time_budget_of(configs[1].callbacks) if configs is not None else None)
        if is_uri(storage):
            push_driver_files(exp_dir, storage, name)
        return code, exp_dir
    finally:
        notices.log_in(None)
        restore_environment(previous_environment)
        if owns_ray:
            ray.shutdown()


def cmd_resume(args) -> int:
    started = time.time()
    exp_dir = os.path.abspath(args.experiment_dir)
    from ray import tune

    problems = []
    if not os.path.isdir(exp_dir):
        problems.append("not a directory")
    else:
        for needed in (SPEC_FILE, JOURNAL_FILE):
            if not os.path.isfile(os.path.join(exp_dir, needed)):
                problems.append(f"no {needed}")
        if not tune.Tuner.can_restore(exp_dir):
            problems.append("no Ray Tune experiment state")
    if problems:
        raise UsageError(f"{args.experiment_dir!r} is not a gce-search experiment directory ({'; '.join(problems)});"
                         f" valid: a directory written by `gce-search run`, e.g. ./gce-search-results/<name>")
    spec = load_and_validate(os.path.join(exp_dir, SPEC_FILE), [])
    address = getattr(args, "address", None)
    if address is not None:
        check_address(address)
    journal = os.path.join(exp_dir, JOURNAL_FILE)
    notes, expected = recover_for_resume(exp_dir, journal)
    for note in notes:
        print(f"gce-search: {note}", flush=True)

    import ray

    from gce_search.search.progress import ProgressPrinter, quiet_ray_notices

    notices = quiet_ray_notices(exp_dir)
    say_starting_ray(address)
    owns_ray = connect_ray(address)
    previous_environment: dict[str, str | None] = {}
    progress = None
    try:
        check_resources(trial_resources(spec), ray.nodes())
        check_storage(os.path.dirname(exp_dir), ray.nodes(), ray.get_runtime_context().get_node_id())
        previous_environment = configure_tune_environment()
        print(f"gce-search: resuming {exp_dir}, cluster {_cluster_words()}", flush=True)
        # Searcher, scheduler and callbacks come back from Ray's tuner.pkl; the searcher's own restore() then
        # reconciles its saved state with the Optuna journal of this directory.
        try:
            tuner = tune.Tuner.restore(exp_dir, trainable=build_trainable(spec), resume_unfinished=True,
                                       resume_errored=True)
        except Exception as err:
            raise UsageError(f"{os.path.join(exp_dir, 'tuner.pkl')}: Ray could not restore the Tuner from it "
                             f"({type(err).__name__}: {err}); valid: a tuner.pkl written by `gce-search run` for "
                             f"this experiment (a copy from the original experiment)") from None
        configs = local_tuner_configs(tuner)
        if configs is None:
            raise UsageError(f"{exp_dir}: resume needs the Tuner in this process (not Ray Client)")
        tune_config, run_config = configs
        searcher = inner_searcher(tune_config.search_alg)
        if not hasattr(searcher, "attach_journal"):
            raise UsageError(f"{os.path.join(exp_dir, 'tuner.pkl')}: its searcher is {type(searcher).__name__}, "
                             f"not gce-search's; valid: an experiment written by `gce-search run`")
        searcher.attach_journal(journal)
        relocate_search(tune_config.search_alg, exp_dir)  # new trials go here, not where the experiment was first
        for callback in run_config.callbacks or []:  # the state goes into the scheduler this Tuner runs
            if isinstance(callback, SchedulerState):
                callback.scheduler = tune_config.scheduler
        progress = next((c for c in run_config.callbacks or [] if isinstance(c, ProgressPrinter)), None)
        guard = ResumeGuard(searcher, expected, exp_dir)
        run_config.callbacks = [*(run_config.callbacks or []), guard]
        try:
            grid = tuner.fit()
        except Exception:
            if guard.failure is None:
                raise
            grid = None
        if guard.failure is None:
            ran = {t.trial_id for t in result_grid_trials(grid)}
            if not expected <= ran:
                guard.failure = (f"Ray did not restore the run state of {exp_dir}: {len(expected - ran)} of its "
                                 f"{len(expected)} trial(s) are missing from the run (see Ray's message above)")
        if guard.failure is not None:
            print(f"gce-search: resume failed: {guard.failure}", flush=True)
            return 1
        # the time left of search.timeout_s comes back with Ray's state (TimeBudget)
        budget = time_budget_of(run_config.callbacks)
        return finish(exp_dir, grid, searcher, started, None, budget)
    finally:
        if progress is not None:
            progress.close()
        notices.log_in(None)
        restore_environment(previous_environment)
        if owns_ray:
            ray.shutdown()


def recover_for_resume(exp_dir: str, journal: str) -> tuple[list[str], set[str]]:
    """Before Ray starts: set aside a torn journal tail, make Ray's saved state readable (search.state); returns
    what was done and how many trials Ray's state lists. UsageError naming the file when it cannot be done."""
    from gce_search.search.state import StateError, expected_trials, recover_state, repair_journal

    notes = []
    try:
        torn = repair_journal(journal)
        if torn:
            notes.append(torn)
        notes += recover_state(exp_dir, journal, study_name=None)
        return notes, expected_trials(exp_dir)
    except StateError as err:
        raise UsageError(f"cannot resume: {err}") from None
    except OSError as err:
        raise UsageError(f"cannot resume {exp_dir}: {err.filename or ''}: {err.strerror or err}; valid: a "
                         f"readable, writable experiment directory") from None


class ResumeGuard(Callback):
    """Added by `resume` (not saved with the experiment): at the first step, before Ray asks for new trials,
    checks that Ray restored every trial of its saved state (Ray logs "Failed to restore the run state" and starts
    afresh otherwise) and aligns the searcher with Ray's trials (CalibratedSearcher.align_with_ray)."""

    def __init__(self, searcher, expected: set[str], exp_dir: str):
        self.searcher, self.expected, self.exp_dir = searcher, expected, exp_dir
        self.checked = False
        self.failure: str | None = None

    def _check(self, trials) -> bool:
        self.checked = True
        missing = self.expected - {t.trial_id for t in trials}
        if missing:
            self.failure = (f"Ray restored {len(self.expected) - len(missing)} of the {len(self.expected)} trial(s) "
                            f"in the experiment state of {self.exp_dir} (see Ray's message above); nothing new was "
                            f"run. Files set aside by earlier attempts are in "
                            f"{os.path.join(self.exp_dir, 'state-backup')}")
            return False
        for line in self.searcher.align_with_ray(trials):
            print(f"gce-search: {line}", flush=True)
        return True

    def on_step_begin(self, iteration, trials, **info):
        if not self.checked and not self._check(trials):
            raise RuntimeError(self.failure)

    def on_experiment_end(self, trials, **info):
        if not self.checked:  # every trial had ended before the interruption: Ray takes no step
            self._check(trials)


def say_starting_ray(address: str | None) -> None:
    """The first line of a run: Ray takes seconds to start or join, which would otherwise be silence."""
    import ray

    if ray.is_initialized():
        return
    address = address or job_address()
    print(f"gce-search: connecting to Ray at {address}..." if address else "gce-search: starting Ray...", flush=True)


def _cluster_words() -> str:
    import ray

    res: dict[str, Any] = ray.cluster_resources()
    alive = sum(1 for n in ray.nodes() if n["Alive"])
    return f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU on {alive} node(s)"
