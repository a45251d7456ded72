"""`gce-search recalibrate EXPERIMENT_DIR [--calibration refine|ts|ats|none|FILE|'{...}'] [--name NAME]`: refit the
calibrator of every complete trial of a finished search on its checkpoint's calib logits, without retraining, and
write the result as an experiment directory of its own, `EXPERIMENT_DIR/recalibrated/<name>/`.

Each complete trial's last checkpoint gives its model; its calib, val and test logits are recomputed (the splits are
a pure function of data.split_seed), the new calibrator is fitted on calib and scored on val (the score, by the
trial's own objective) and on test, exactly as a trial scores itself (trainables.loop). The new directory holds
`spec.yaml`, one folder per trial with `result.json` (the trial's history, its last line replaced by the
recalibrated metrics) and `calibrator.json` (the fitted calibrator's state), and the usual pareto.csv, pareto.png,
summary.json and TensorBoard files, so `gce-search pareto|export|tensorboard` work on it as on any experiment.
Nothing in EXPERIMENT_DIR outside `recalibrated/` is touched.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

from gce_search.errors import ConfigError, UsageError
from gce_search.search.records import Experiment, load_experiment, require_complete
from gce_search.trainables.checkpoints import RESULT_FILE
from gce_search.trainables.config import REFINE_DEFAULTS
from gce_search.yamlio import dump_yaml, parse_yaml_value, read_yaml

__all__ = ["PRESETS", "parse_calibration", "recalibrate", "cmd_recalibrate", "CALIBRATOR_FILE"]

CALIBRATOR_FILE = "calibrator.json"
PRESETS: dict[str, dict] = {
    "refine": {"method": "ats", "breakpoints": {k: v for k, v in REFINE_DEFAULTS.items() if k != "seed"}},
    "ts": {"method": "ts"},
    "ats": {"method": "ats", "breakpoints": [0.5, 0.8, 0.95]},
    "none": {"method": "none"},
}
VALID = ("valid: refine | ts | ats | none, a YAML file with a `calibration:` section (an exported config works), or "
         "an inline mapping such as '{method: ats, breakpoints: [0.6, 0.85, 0.95]}'")


def parse_calibration(value: str) -> tuple[dict, str]:
    """(calibration section, default name) from --calibration; ConfigError naming the input when invalid."""
    from gce_search.trainables.config import problems_of, with_defaults

    if value in PRESETS:
        section, name = copy.deepcopy(PRESETS[value]), value
    elif os.path.isfile(value):
        doc = read_yaml(value)
        section = doc.get("calibration", doc) if isinstance(doc, dict) else doc
        if isinstance(doc, dict) and isinstance(doc.get("config"), dict):  # an export: its config's section
            section = doc["config"].get("calibration", section)
        name = Path(value).stem
    else:
        section = parse_yaml_value(value) if value.strip().startswith("{") else None
        name = "custom"
        if not isinstance(section, dict):
            raise ConfigError([f"--calibration {value!r}: not a preset, a file or a mapping; {VALID}"],
                              "--calibration")
    if not isinstance(section, dict):
        raise ConfigError([f"--calibration {value}: expected a mapping of calibration settings; {VALID}"],
                          "--calibration")
    problems = [p for p in problems_of(with_defaults({"calibration": section})) if p.startswith("calibration")]
    if problems:
        raise ConfigError(problems, f"--calibration {value}")
    return section, name


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def recalibrate(exp_dir: str | os.PathLike, calibration: str = "refine", name: str | None = None,
                quiet: bool = False) -> Path:
    """Recalibrate every complete trial of `exp_dir` (module docstring); returns the new experiment directory."""
    section, default_name = parse_calibration(calibration)
    name = name or default_name
    if not _NAME.match(name):
        raise UsageError(f"--name {name!r}: valid: letters, digits, '_', '-', '.' (at most 100), not starting "
                         "with '.'")
    exp = load_experiment(exp_dir)
    complete = require_complete(exp)
    out = exp.path / "recalibrated" / name
    if out.exists():
        raise UsageError(f"{out}: exists; valid: a --name not used yet (or move that directory away)")
    import torch

    from gce_search.search.uncertainty import latest_checkpoint
    from gce_search.trainables.config import resolve
    from gce_search.trainables.inference import split_logits
    from gce_search.trainables.loop import score_epoch, split_metrics

    # everything is computed before the first file is written
    records, states = [], {}
    started = time.perf_counter()
    for i, trial in enumerate(complete, 1):
        ckpt = latest_checkpoint(trial)
        if ckpt is None:
            raise UsageError(f"{trial.path}: trial {trial.trial_id} has no checkpoint to recalibrate from; valid: "
                             f"an experiment whose complete trials kept their last checkpoint")
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UsageError(f"{ckpt}: checkpoint unreadable ({type(err).__name__}: {err})") from None
        cfg = resolve({**trial.config, "calibration": {**trial.config.get("calibration", {}), **section}},
                      source=f"--calibration {calibration} on trial {trial.trial_id}")
        state["config"] = {**state.get("config", trial.config), "calibration": cfg["calibration"]}
        try:
            logits = split_logits(state, ("calib", "val", "test"))
        except (ValueError, OSError) as err:  # a checkpoint without some split's logits, data moved away
            raise UsageError(f"{ckpt}: trial {trial.trial_id}: {err}") from None
        num_classes = int(logits["val"][0].shape[1])
        metrics, calibrator = score_epoch(cfg, logits["calib"], logits["val"], num_classes)
        metrics.update(split_metrics("test", logits["test"][0], logits["test"][1], calibrator, num_classes,
                                     cfg["objective"]["n_bins"]))
        final = {k: v for k, v in trial.final.items()
                 if not k.startswith(("val/", "test/", "calibration/")) and k not in ("score",)}
        final.update(metrics)
        final["recalibrated_from"] = str(trial.path.resolve())
        record = dataclasses.replace(trial, path=out / trial.path.name, config=cfg,
                                     history=trial.history[:-1] + [final], notes=[])
        val_raw, val_y = logits["val"]
        record._val_predictions = {"raw": val_raw, "calibrated": calibrator.transform(val_raw), "labels": val_y}
        records.append(record)
        states[trial.trial_id] = calibrator.state_dict()
        if not quiet:
            chosen = metrics.get("calibration/method", cfg["calibration"]["method"])
            print(f"[{i}/{len(complete)}] trial {trial.trial_id}: {chosen}  val/ece {trial.metric('val/ece'):.4f} "
                  f"-> {metrics['val/ece']:.4f}  test/ece {trial.metric('test/ece'):.4f} -> "
                  f"{metrics['test/ece']:.4f}", flush=True)
    spec = copy.deepcopy(exp.spec) if isinstance(exp.spec, dict) else {}
    if spec:
        spec["calibration"] = {**(spec.get("calibration") or {}), **section}
        space = spec.get("space")
        if isinstance(space, dict):
            spec["space"] = {k: v for k, v in space.items() if not k.startswith("calibration.")}
    new = Experiment(path=out, spec=spec or exp.spec, trials=records, search_spec=exp.search_spec)
    tmp = out.with_name(f".{name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        (tmp / "spec.yaml").write_text(dump_yaml(spec, sort_keys=False), encoding="utf-8")
        for record in records:
            folder = tmp / record.path.name
            folder.mkdir()
            ray_config = {**record.tune_params, "trial_config": record.config}
            with open(folder / RESULT_FILE, "w", encoding="utf-8") as fh:
                for i, row in enumerate(record.history):
                    line = {**row, "trial_id": record.trial_id, "config": ray_config}
                    if i == 0 and math.isfinite(record.started_at):
                        line.update(timestamp=record.started_at, time_this_iter_s=0.0)
                    if i == len(record.history) - 1 and math.isfinite(record.finished_at):
                        line["timestamp"] = record.finished_at
                    fh.write(json.dumps(line, allow_nan=True) + "\n")
            (folder / CALIBRATOR_FILE).write_text(json.dumps(states[record.trial_id], indent=1) + "\n",
                                                  encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from gce_search.search.reports import write_results

    write_results(out, experiment=new)
    if not quiet:
        print(f"recalibrated {len(records)} trial(s) in {time.perf_counter() - started:.1f} s: hypervolume (val) "
              f"{exp.hypervolume():.4f} -> {new.hypervolume():.4f}\nResults: {out}\n  gce-search pareto {out}",
              flush=True)
    return out


def cmd_recalibrate(args) -> int:
    recalibrate(args.experiment_dir, args.calibration, args.name)
    return 0
