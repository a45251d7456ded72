"""Every place gce-search relies on something of Ray Tune's that is not its public API, in one module.

Ray's public API does not cover a few things the search needs: a driver whose sockets are all on 127.0.0.1, the
Tuner's own configs after `Tuner.restore`, the trials of a finished run, the state of Ray's ASHA (which Ray does
not carry through a restore), the layout of Ray's experiment-state file, and the hooks of Ray's function trainable
and result loggers that resuming from the newest checkpoint needs. Each function here says which Ray versions it
was checked on and what it relies on; a Ray upgrade is checked here first (pyproject.toml pins the tested range).
Callers import these names instead of reaching into Ray.

Two overrides of Ray's private hooks stay with their classes, since an override cannot live elsewhere; they are
checked on ray 2.60 as well:

- search.trainable.Trainable._trainable_func: Ray's function trainable calls it with the trial's config when the
  function starts (after a restore too); the override adds the epoch the driver has logged.
- search.cluster's result loggers' _restore_from_remote(file_name, trial): Ray's JSON/CSV loggers call it when a
  trial restarts, to copy the storage's result file over the driver's.

The Optuna side uses Optuna's public API only (search.searcher).
"""
from __future__ import annotations

import copy
import functools
import json
import os
from typing import Any, Iterator

CHECKED_RAY = "2.60"


# ------------------------------------------------------------------------------------------------- starting Ray


def init_loopback_ray(**init_kwargs) -> None:
    """`ray.init(address="local", ..., node ip 127.0.0.1)` with Ray's single-machine mode on while the node starts.

    Checked on ray 2.60. Relies on `ray._private.ray_constants.ENABLE_RAY_CLUSTER` (the switch that
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER sets, read once at import): while it is off, Ray keeps a requested
    127.0.0.1 instead of replacing it with the machine's routable address. And on `ray.init`'s private
    `_node_ip_address` argument. The switch is put back once the node has started (Ray then takes the address
    from the running node)."""
    import ray
    from ray._private import ray_constants

    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", **init_kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


# ------------------------------------------------------------------------------------------------- the Tuner


def local_tuner_configs(tuner) -> tuple[Any, Any] | None:
    """(TuneConfig, RunConfig) the Tuner runs with (after `Tuner.restore`, the ones unpickled from tuner.pkl), or
    None for a Tuner that runs elsewhere (Ray Client).

    Checked on ray 2.60. Relies on `Tuner._local_tuner` (a TunerInternal) and its `_tune_config` and `_run_config`
    attributes; both are the objects fit() uses, so a callback appended to `run_config.callbacks` before fit() is
    run."""
    local = getattr(tuner, "_local_tuner", None)
    if local is None:
        return None
    return local._tune_config, local._run_config


def result_grid_trials(grid) -> list:
    """The Trial objects of a finished fit() (every trial Ray ran, restored ones included); [] when unknown.

    Checked on ray 2.60. Relies on `ResultGrid._experiment_analysis.trials`."""
    analysis = getattr(grid, "_experiment_analysis", None)
    return list(getattr(analysis, "trials", None) or [])


# ------------------------------------------------------------------------------------------------- ASHA's state

# The counters of Ray's AsyncHyperBandScheduler (`_counter`, `_num_stopped`) and of search.moasha's
# MultiObjectiveASHA (`_num_stopped`, `_num_diverged`), by attribute name (the names are the saved state's keys).
ASHA_COUNTERS = ("_counter", "_num_stopped", "_num_diverged")


def asha_brackets(scheduler) -> list:
    """The scheduler's brackets, in order ([] for a scheduler without any, e.g. FIFO).

    Checked on ray 2.60 (AsyncHyperBandScheduler) and search.moasha.MultiObjectiveASHA: both keep them in
    `_brackets`."""
    return list(getattr(scheduler, "_brackets", []))


def bracket_rungs(bracket) -> list:
    """The bracket's rungs, [(milestone, {trial id: recorded value(s)})], highest milestone first; the dicts are
    the live ones (a caller may refill them).

    Checked on ray 2.60: Ray's `_Bracket` keeps them in `_rungs` (values: a float reward), MultiObjectiveASHA's in
    `rungs` (values: a tuple of objectives)."""
    return getattr(bracket, "_rungs", getattr(bracket, "rungs", []))


def asha_trial_brackets(scheduler) -> dict | None:
    """The scheduler's live {trial id: bracket} assignment, or None when it keeps none.

    Checked on ray 2.60 (AsyncHyperBandScheduler) and MultiObjectiveASHA: `_trial_info`."""
    return getattr(scheduler, "_trial_info", None)


def asha_counters(scheduler) -> dict[str, Any]:
    """{counter attribute: value} for the ASHA_COUNTERS the scheduler has. Checked on ray 2.60."""
    return {k: getattr(scheduler, k) for k in ASHA_COUNTERS if hasattr(scheduler, k)}


def set_asha_counters(scheduler, counters: dict[str, Any]) -> None:
    """Put back what asha_counters returned (unknown names are ignored). Checked on ray 2.60."""
    for key, value in counters.items():
        if key in ASHA_COUNTERS and hasattr(scheduler, key):
            setattr(scheduler, key, value)


def asha_rng(scheduler):
    """The scheduler's numpy Generator for bracket assignment, or None (Ray's ASHA draws from numpy's global
    generator). Checked on ray 2.60: MultiObjectiveASHA's `_rng`."""
    rng = getattr(scheduler, "_rng", None)
    return rng if rng is not None and hasattr(rng, "bit_generator") else None


# ------------------------------------------------------------------------------------------------- Ray's files


def experiment_state_problem(data: bytes) -> str | None:
    """Why `data` is not a readable Ray experiment state (`experiment_state-<session>.json`); None when it is.

    Checked on ray 2.60: a JSON object with a `trial_data` list and `runner_data`. Parsed as data only."""
    if not data:
        return "empty"
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        return f"cut short or not JSON ({err})"
    if not isinstance(state, dict) or not isinstance(state.get("trial_data"), list) or "runner_data" not in state:
        return "not a Ray Tune experiment state (no trial_data/runner_data)"
    return None


def experiment_state_trials(data: bytes) -> Iterator[tuple[dict, dict]]:
    """(trial, run metadata) of each trial in a Ray experiment state, as plain dicts.

    Checked on ray 2.60: `trial_data` is a list of [trial JSON, run-metadata JSON] pairs, each a JSON text (or
    already an object); the trial's `trial_id` and `status` are plain fields, the metadata's `last_result` a dict.
    The cloudpickled fields Ray embeds stay hex strings: nothing is unpickled."""
    for trial_json, metadata_json in json.loads(data.decode("utf-8"))["trial_data"]:
        trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        metadata = json.loads(metadata_json) if isinstance(metadata_json, str) else (metadata_json or {})
        yield trial, metadata


# ------------------------------------------------------------------------------------------------- trainable hooks


def training_result(checkpoint, metrics: dict):
    """What Ray's function trainable's `restore` takes besides a path: a checkpoint with the metrics it ends.

    Checked on ray 2.60: `ray.train._internal.session._TrainingResult(checkpoint=, metrics=)`."""
    from ray.train._internal.session import _TrainingResult

    return _TrainingResult(checkpoint=checkpoint, metrics=metrics)


def trainable_storage(trainable):
    """The trial's StorageContext inside a Ray Trainable, or None.

    Checked on ray 2.60: `Trainable._storage`, a `ray.train._internal.storage.StorageContext`."""
    return getattr(trainable, "_storage", None)


def trial_checkpoint_location(trainable) -> tuple[Any, str] | None:
    """(pyarrow filesystem, the trial's folder on it) inside a Ray Trainable, or None outside a Tune run.

    Checked on ray 2.60: StorageContext.storage_filesystem and .trial_fs_path."""
    storage = trainable_storage(trainable)
    return None if storage is None else (storage.storage_filesystem, storage.trial_fs_path)


def skip_checkpoint_folders(trainable, index: int) -> None:
    """Make Ray number the trial's next checkpoint folder after `index` (never write into an existing one).

    Checked on ray 2.60: StorageContext.current_checkpoint_index is the index of the next checkpoint folder."""
    storage = trainable_storage(trainable)
    if storage is not None:
        storage.current_checkpoint_index = max(storage.current_checkpoint_index, index)


def experiment_state_folders(trial) -> tuple[str, str] | None:
    """(the driver's staging folder of the experiment state, the experiment folder) for a local storage, or None
    for a bucket.

    Checked on ray 2.60: Trial.storage is a StorageContext; its experiment_driver_staging_path is where Ray writes
    each experiment checkpoint before copying it to experiment_fs_path; storage_filesystem.type_name is "local"
    for a directory."""
    storage = trial.storage
    if getattr(storage.storage_filesystem, "type_name", None) != "local":
        return None
    return storage.experiment_driver_staging_path, storage.experiment_fs_path


# ------------------------------------------------------------------------------------------------- search generator


@functools.lru_cache(maxsize=None)
def _relocatable_class() -> type:
    from ray.tune.search import SearchGenerator

    class RelocatableSearchGenerator(SearchGenerator):
        """Ray's SearchGenerator whose new trials go where the experiment is now (relocatable_search_generator)."""

        _relocate_to: str | None = None

        def relocate(self, exp_dir: str) -> None:
            self._relocate_to = os.path.abspath(exp_dir)

        def set_state(self, state: dict) -> None:
            super().set_state(state)
            target = self._relocate_to
            spec = getattr(self._experiment, "spec", None)
            storage = spec.get("storage") if isinstance(spec, dict) else None
            if target is None or storage is None or getattr(storage.storage_filesystem, "type_name", "") != "local":
                return
            if os.path.abspath(storage.experiment_fs_path) == target:
                return
            import pyarrow.fs

            moved = copy.copy(storage)
            moved.storage_filesystem = pyarrow.fs.LocalFileSystem()
            moved.storage_fs_path = os.path.dirname(target)
            moved.experiment_dir_name = os.path.basename(target)
            spec["storage"] = moved

    # pickled by reference (Ray's tuner.pkl): found again through this module's __getattr__
    RelocatableSearchGenerator.__module__ = __name__
    RelocatableSearchGenerator.__qualname__ = "RelocatableSearchGenerator"
    return RelocatableSearchGenerator


def __getattr__(name: str) -> Any:
    if name == "RelocatableSearchGenerator":  # Ray imported only when the class is first needed
        return _relocatable_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def relocatable_search_generator(searcher):
    """Ray's SearchGenerator around `searcher`, whose new trials go where the experiment is *now*.

    Checked on ray 2.60: the SearchGenerator pickles the Experiment it was given (with its StorageContext) into
    search_gen_state-*.json, and `Tuner.restore` gives it back through `set_state`; new trials are created from
    that spec's `storage`, so after a copy or a move the new trials of a resumed experiment were written to the
    experiment's first location. Ray re-points restored trials itself (TuneController._restore_trials: a copy of
    the trial's StorageContext with the controller's filesystem, storage_fs_path and experiment_dir_name); this does
    the same for the spec, with the location `relocate` was given before `fit()` (local storage; a bucket keeps its
    URI)."""
    return _relocatable_class()(searcher)


def relocate_search(search_alg, exp_dir: str) -> bool:
    """Tell a restored search generator (relocatable_search_generator) where the experiment is now; False for a
    search algorithm without that (an experiment written before it)."""
    if hasattr(search_alg, "relocate"):
        search_alg.relocate(exp_dir)
        return True
    return False
