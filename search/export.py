"""`gce-search export`: one retraining YAML per chosen trial.

An export holds everything `gce-search train` needs to retrain the trial and get the same numbers (trials are
deterministic on CPU): `config:` the fully resolved trial config (data and split seeds, model, loss and its
parameters, optimiser and schedule with the full epoch budget, bf16 and channels_last as the trial ran them
rather than `auto`, calibration with its breakpoints, seed),
`calibrator:` the fitted temperatures (and the calibrator's state where the checkpoint has it), `source:` the
experiment and trial, and `metrics:` what the trial had when chosen. Written and read with safe YAML only.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from gce_search.errors import UsageError
from gce_search.yamlio import dump_yaml
from gce_search.search.records import (RESULT_FILE, chosen_metrics, load_experiment, rank_by_score, require_complete,
                                       warn)
from gce_search.search.uncertainty import latest_checkpoint
from gce_search.trainables.config import resolve

__all__ = ["parse_selector", "select_trials", "export_document", "write_exports", "cmd_export"]

SELECTOR_HELP = "pareto | pareto-robust | best | top:K (K an integer >= 1)"
_TOP = re.compile(r"^top:(\d+)$")


def parse_selector(text: str) -> tuple[str, int | None]:
    """'pareto' -> ('pareto', None); 'best' -> ('best', 1); 'top:K' -> ('top', K); anything else: UsageError."""
    text = str(text).strip()
    if text in ("pareto", "best", "pareto-robust"):
        return text, (1 if text == "best" else None)
    match = _TOP.match(text)
    if match and int(match.group(1)) >= 1:
        return "top", int(match.group(1))
    raise UsageError(f"--select {text!r}: unknown selector; valid: {SELECTOR_HELP}")


def select_trials(exp, selector: str) -> list:
    """The chosen complete trials: the Pareto front, the highest score, or the K highest scores.

    Only full-budget trials qualify: an early-stopped trial's score is from a shorter budget than its config's,
    so ranking it against complete ones (or retraining it for the full budget and expecting its numbers) is wrong.
    """
    kind, k = parse_selector(selector)
    complete = require_complete(exp)
    if kind == "pareto":
        return exp.front()
    if kind == "pareto-robust":  # the front plus every trial tied with it within noise (search.robust)
        from gce_search.search.robust import robust_front

        members = robust_front(exp)["members"]
        return [t for tid in members for t in complete if t.trial_id == tid]
    return rank_by_score(complete)[:k]  # finite scores only


def _calibrator_state(trial) -> dict | None:
    refitted = trial.path / "calibrator.json"  # a trial of `gce-search recalibrate`: its new calibrator
    if refitted.is_file():
        import json

        try:
            return _plain(json.loads(refitted.read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            message = f"{refitted}: unreadable ({type(err).__name__}: {err}); the export has no calibrator state"
            trial.notes.append(message)
            warn(message)
            return None
    ckpt = latest_checkpoint(trial)
    if ckpt is None:
        return None
    import torch  # imported when a checkpoint is read, not at start-up

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # the temperatures from the metrics still go out
        message = (f"{ckpt}: checkpoint unreadable ({type(err).__name__}: {err}); the export of trial "
                   f"{trial.trial_id} has the temperatures from its metrics but not the calibrator's state")
        trial.notes.append(message)
        warn(message)
        return None
    cal = state.get("calibrator")
    return _plain(cal) if isinstance(cal, dict) else None


def _plain(obj: Any) -> Any:
    """Builtin types only, so dump_yaml takes it."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    return str(obj)


def export_document(exp, trial, selector: str, rank: int) -> dict:
    """The export YAML of one trial (a plain dict)."""
    from gce_search.trainables.precision import pin_precision  # imports torch: not at start-up

    # resolve() re-validates and fills any default a trial config from an older version lacked.
    config = resolve(trial.config, source=f"{trial.path}/{RESULT_FILE} (config.trial_config)")
    pin_precision(config, trial.final)  # `auto` becomes what the trial ran with, so a retrain does the same
    calibration = config["calibration"]
    method = trial.calibration_method or calibration["method"]  # with refinement: the winner
    calibrator = {
        "method": method,
        "breakpoints": trial.breakpoints if method == "ats" else None,
        "temperatures": trial.temperatures,
    }
    if isinstance(calibration.get("breakpoints"), dict):  # a retrain refines again, with the same seed
        calibrator["refined_by"] = dict(calibration["breakpoints"])
    state = _calibrator_state(trial)
    if state is not None:
        calibrator["state"] = state
    return _plain({
        "config": config,
        "calibrator": calibrator,
        "source": {
            "experiment": str(exp.path.resolve()),
            "trial": trial.trial_id,
            "trial_dir": str(trial.path.resolve()),
            "selected_by": selector,
            "rank": rank,
            "status": trial.status,
        },
        "metrics": chosen_metrics(trial),
    })


def write_exports(exp_dir: str | os.PathLike, selector: str = "pareto", out: str | os.PathLike | None = None
                  ) -> list[Path]:
    """Write `<out>/<trial_id>.yaml` for each chosen trial; returns the paths.

    Refuses (UsageError, nothing written) when any target file already exists.
    """
    parse_selector(selector)  # an unknown selector fails before the experiment is read
    exp = load_experiment(exp_dir)
    chosen = select_trials(exp, selector)
    out_dir = Path(out) if out is not None else exp.path / "export"
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: exists and is not a directory; valid: a new or existing directory")
    targets = [out_dir / f"{t.trial_id}.yaml" for t in chosen]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise UsageError(f"--out {out_dir}: would overwrite {', '.join(existing)}; valid: a directory without "
                         f"these files (move them away or pass another --out)")
    docs = [export_document(exp, t, selector, rank) for rank, t in enumerate(chosen, 1)]
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, doc in zip(targets, docs):
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"# gce-search export of trial {doc['source']['trial']} ({selector}); retrain with:\n"
                     f"#   gce-search train {path.name}\n")
            dump_yaml(doc, fh, sort_keys=False)
        # exclusive: refuse a file that appeared since the check instead of overwriting it
        try:
            os.link(tmp, path)
        except FileExistsError:
            tmp.unlink()
            raise UsageError(f"--out {out_dir}: {path} appeared while exporting; not overwritten") from None
        except OSError:
            os.replace(tmp, path)  # a filesystem without hard links; checked just above
        else:
            tmp.unlink()
    return targets


def cmd_export(args) -> int:
    """`gce-search export EXPERIMENT_DIR [--select pareto|best|top:K] [--out DIR]`."""
    paths = write_exports(args.experiment_dir, args.select, args.out)
    for p in paths:
        print(p)
    print(f"exported {len(paths)} trial(s) ({args.select}); retrain one with: gce-search train <file>.yaml")
    return 0
