"""The Ray Tune trainable: a thin adapter around trainables.trial.run_trial.

Inside a Tune function trainable the session API is `ray.tune.report / get_checkpoint / Checkpoint`;
`ray.train.report` errors there (docs/design.md, "Ray and Optuna facts").

`Trainable` is the function trainable with one change: where a restarted trial goes on from. Ray keeps one
checkpoint per trial (CheckpointConfig(num_to_keep=1)) and deletes the previous one as soon as it registers a new
one, but the experiment state that `gce-search resume` restores from is written, and copied to the storage, a
little later. A driver killed in between leaves a state naming a checkpoint that no longer exists, and Ray would
fail that trial on every restart ("Could not recover from checkpoint as it does not exist on storage anymore").
The other way round, a trial persists its checkpoint before the driver has its result, so a node dying in between
leaves a checkpoint one epoch ahead of what the driver logged. So a trial restarts from the newest *complete*
checkpoint in its own folder (each holds a small manifest: the epoch it ends and the size of checkpoint.pt, which
tells a finished copy from an interrupted one), first reports again, from the checkpoint's history, the epochs
the driver has not logged (the later of Ray's record and the trial's result.json), and keeps Ray's iteration
counter equal to the epoch.
"""
from __future__ import annotations

import os
import shutil

from ray.tune.trainable import wrap_function

from gce_search.trainables.checkpoints import last_logged_epoch, newest_checkpoint, write_manifest
from gce_search.search.step_board import tune_sink
from gce_search.trainables.step_progress import reporting_to
from gce_search.trainables.trial import run_trial

LOGGED_EPOCH_KEY = "logged_epoch"  # set by Trainable on a restart: epochs after it are reported again


def _replay(restore_from: str, logged_epoch: int) -> None:
    """Report again the epochs after `logged_epoch` that the checkpoint in `restore_from` already holds."""
    from gce_search.trainables.trial import load_checkpoint

    for metrics in load_checkpoint(restore_from).get("history", []):
        if metrics["epoch"] > logged_epoch:
            _reporter(metrics, None)


def _reporter(metrics: dict, checkpoint_dir: str | None) -> None:
    import ray
    from ray import tune

    metrics = dict(metrics)
    # Where the trial ran, for the cluster tests and for finding a trial's node in a multi-node search.
    metrics["node_id"] = ray.get_runtime_context().get_node_id()
    metrics["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if checkpoint_dir is None:
        tune.report(metrics)
        return
    try:
        write_manifest(checkpoint_dir, metrics["epoch"])
        # tune.report persists the checkpoint into the trial's storage before it returns.
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
    finally:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def trainable(config: dict) -> None:
    """Run the resolved trial config `config["trial_config"]`, resuming from Tune's checkpoint when there is one.

    Returns None: a function trainable's returned dict would be reported to Tune once more, as an extra result.
    """
    from ray import tune

    if "trial_config" not in config:
        raise ValueError(f"trainable: config has no 'trial_config' key (got keys {sorted(config)}); valid: "
                         f"{{'trial_config': <resolved trial config>}} as search.driver builds it")
    trial_config = config["trial_config"]
    checkpoint = tune.get_checkpoint()
    with reporting_to(tune_sink()):  # progress from inside a long epoch, to the driver's console
        if checkpoint is None:
            run_trial(trial_config, _reporter)
            return
        with checkpoint.as_directory() as restore_from:
            if config.get(LOGGED_EPOCH_KEY) is not None:
                _replay(restore_from, config[LOGGED_EPOCH_KEY])
            run_trial(trial_config, _reporter, restore_from=restore_from)


class Trainable(wrap_function(trainable)):
    """`trainable` as a Tune Trainable that restarts from the newest complete checkpoint in its trial folder
    (module docstring): on a restore, and on a start where Ray's saved state knows no checkpoint yet."""

    _logged_epoch: int | None = None

    def setup(self, config):
        super().setup(config)
        self._restore_newest(known_epoch=0)

    def reset(self, new_config, storage=None):
        if not super().reset(new_config, storage):
            return False
        self._logged_epoch = None
        self._restore_newest(known_epoch=0)
        return True

    def restore(self, checkpoint_path):
        from ray.tune.result import TIME_TOTAL_S, TRAINING_ITERATION

        # Ray's record: the epoch its checkpoint ends, and the run time up to it
        metrics = getattr(checkpoint_path, "metrics", None) or {}
        if not self._restore_newest(metrics.get(TRAINING_ITERATION, 0), metrics.get(TIME_TOTAL_S, 0.0)):
            super().restore(checkpoint_path)

    def _trainable_func(self, config):
        if self._logged_epoch is not None:
            config = {**config, LOGGED_EPOCH_KEY: self._logged_epoch}
        return super()._trainable_func(config)

    def _restore_newest(self, known_epoch: int, time_total: float = 0.0) -> bool:
        from ray import tune
        from ray.tune.result import TIME_TOTAL_S, TRAINING_ITERATION

        from gce_search.search.compat import skip_checkpoint_folders, trial_checkpoint_location, training_result

        location = trial_checkpoint_location(self)
        if location is None:
            return False
        fs, trial_path = location
        found = newest_checkpoint(fs, trial_path)
        if found is None:
            return False
        path, epoch, index = found
        # What the driver has logged: Ray's record, or the result.json it restored (fresher after a driver kill)
        logged = min(epoch, max(int(known_epoch), last_logged_epoch(fs, trial_path)))
        checkpoint = tune.Checkpoint(path, filesystem=fs)
        super().restore(training_result(checkpoint, {TRAINING_ITERATION: logged, TIME_TOTAL_S: time_total}))
        self._logged_epoch = logged
        # Ray numbers the next checkpoint folder from the index it last knew; never write into an existing one.
        skip_checkpoint_folders(self, index)
        return True
