"""The Ray Tune function trainable: a thin adapter around trainables.trial.run_trial.

Inside a Tune function trainable the session API is `ray.tune.report / get_checkpoint / Checkpoint`;
`ray.train.report` errors there (DESIGN.md, "Ray and Optuna facts").
"""
from __future__ import annotations

import os
import shutil

from trainables.trial import run_trial


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
    if checkpoint is None:
        run_trial(trial_config, _reporter)
        return
    with checkpoint.as_directory() as restore_from:
        run_trial(trial_config, _reporter, restore_from=restore_from)
