"""What optuna-dashboard shows of a trial beyond its sampled parameters: the user attributes the searcher sets on
each Optuna trial, from its resolved trial config when it is asked and from its last Ray result when it is told."""
from __future__ import annotations

import math
from typing import Any

from gce_search.search.progress import describe_loss
from gce_search.search.records import trial_outcome

__all__ = ["CONFIG_ATTR_KEYS", "config_user_attrs", "result_user_attrs"]

CONFIG_ATTR_KEYS = ("loss", "loss.name", "calibration.method", "calibration.breakpoints", "calibration.pieces")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def config_user_attrs(trial_config: dict | None) -> dict:
    """User attributes of an Optuna trial from its resolved trial config, set when the trial is asked: `loss`
    ("gce λ=0.8"), `loss.name`, `calibration.method`, and with ATS `calibration.breakpoints` (the confidence
    breakpoints, not the sampler's u-coordinates) and `calibration.pieces`."""
    config = trial_config or {}
    attrs: dict[str, Any] = {}
    loss = config.get("loss") or {}
    if loss:
        attrs["loss"] = describe_loss(config)
        attrs["loss.name"] = str(loss.get("name"))
    calibration = config.get("calibration") or {}
    if calibration.get("method"):
        attrs["calibration.method"] = str(calibration["method"])
    breakpoints = calibration.get("breakpoints")
    if calibration.get("method") == "ats" and isinstance(breakpoints, (list, tuple)):
        attrs["calibration.breakpoints"] = [round(float(b), 6) for b in breakpoints]
        attrs["calibration.pieces"] = len(breakpoints) + 1
    return attrs


def _nest(result: dict, key: str) -> dict:
    """`result` with the mapping `key` rebuilt from its flattened `key/...` entries: a searcher gets Ray's result
    flattened ("data/info/sizes/val"), while the status rule reads the nested "data/info" the trial reported."""
    prefix = key + "/"
    if key in result or not any(k.startswith(prefix) for k in result):
        return result
    nested: dict = {}
    for k, v in result.items():
        if k.startswith(prefix):
            node = nested
            *parents, leaf = k[len(prefix):].split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = v
    return {**result, key: nested}


def result_user_attrs(result: dict | None, errored: bool = False) -> dict:
    """User attributes of an Optuna trial from its last Ray result, set when it is told: `status`
    (search.records.trial_outcome), `calibration.temperatures` (fitted at the last epoch) and `train.loss`.
    Only JSON values; missing ones are left out."""
    result = _nest(result or {}, "data/info")
    attrs: dict[str, Any] = {"status": trial_outcome(result, errored=errored)}
    temperatures = result.get("calibration/temperatures")
    if isinstance(temperatures, (list, tuple)) and all(_number(t) for t in temperatures):
        attrs["calibration.temperatures"] = [round(float(t), 6) for t in temperatures]
    if _number(result.get("train/loss")):
        attrs["train.loss"] = float(result["train/loss"])
    return attrs
