"""`gce-search train CONFIG.yaml [--out DIR] [--set k=v]`: a full retrain of one trial config (an exported one or
your own) through the trial loop (trainables.trial.run_trial), written to DIR: config.yaml, checkpoint.pt after
every epoch (an interrupted run of the same config resumes from it) and metrics.json at the end."""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from typing import Iterable


from gce_search.errors import ConfigError, UsageError
from gce_search.search.reports import json_safe
from gce_search.spaces.overrides import apply_overrides
from gce_search.trainables.checkpoints import CHECKPOINT_FILE
from gce_search.trainables.config import anchor_paths, resolve, trial_problems
from gce_search.trainables.data import data_problems
from gce_search.trainables.external import config_problems as external_model_problems
from gce_search.trainables.trial import PER_RUN_KEYS, load_checkpoint, run_trial
from gce_search.trainables.user_code import trainable_problems
from gce_search.yamlio import dump_yaml, read_yaml


def read_config_file(path: str) -> dict:
    """A trial config from YAML: a bare trial config, or an exported file with a top-level `config:` key. Read
    with the one YAML reader (gce_search.yamlio.read_yaml): duplicate keys refused, `1e-3` a float."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file; valid: a trial config YAML (or one written by gce-search "
                         f"export)")
    doc = read_yaml(path)  # ConfigError naming the file and the line
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    if "config" in doc and isinstance(doc["config"], dict):
        doc = doc["config"]
    return copy.deepcopy(doc)


def _epoch_line(m: dict, epochs: int) -> str:
    if m.get("status") == "diverged":
        return f"epoch {m['epoch']}/{epochs}  train/loss {m['train/loss']:.4g}  diverged (non-finite loss or logits)"
    return (f"epoch {m['epoch']}/{epochs}  train/loss {m['train/loss']:.4f}  val/acc {m['val/acc']:.4f}  "
            f"val/ece {m['val/ece']:.4f} (raw {m['val/ece_raw']:.4f}, n={m['val/n']})  score {m['score']:.4f}  "
            f"{m['time/train_s'] + m['time/eval_s']:.1f}s")


def train(config: str | os.PathLike | dict, out: str | os.PathLike | None = None, overrides: Iterable[str] = ()
          ) -> dict:
    """A full retrain of one trial config through the trial loop, written to `out` as `gce-search train` writes it;
    returns the final metrics (what metrics.json holds: the last epoch's metrics, `history`, `wall_s`,
    `config_source`; `status` is "diverged" for a run that diverged).

    `config` is a YAML path (a trial config or an export) or a dict (a partial or resolved trial config);
    `overrides` are `KEY=VALUE` strings as given to `--set`. `out` defaults to ./train-<config file name>
    (./train-config for a dict). Bad input raises ConfigError/UsageError before anything is written.
    """
    if isinstance(config, dict):
        source, doc = "config", copy.deepcopy(config)
    elif isinstance(config, (str, os.PathLike)):
        source = os.fspath(config)
        doc = read_config_file(source)
    else:
        raise UsageError(f"config: got {type(config).__name__}; valid: a trial config YAML path or a dict")
    partial, problems = apply_overrides(doc, overrides or [])
    if problems:
        raise UsageError("\n".join(problems))
    partial = anchor_paths(partial)  # a relative data.root / data.path: from where gce-search runs
    cfg = resolve(partial, source=source)  # ConfigError lists every problem before anything runs
    problems = trial_problems(cfg)
    if problems:
        raise ConfigError(problems, source)
    stem = os.path.splitext(os.path.basename(source))[0]
    out = os.path.abspath(out or f"train-{stem}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: is a file; valid: a new or empty directory (or the directory of an "
                         f"interrupted run of the same config)")
    # missing or truncated files, splits that do not fit, a conv model on feature vectors: before any write
    problems = data_problems(cfg["data"], cfg.get("model")) + trainable_problems(cfg)  # and a loop that won't load
    problems += external_model_problems(cfg)  # and a torchvision/timm/factory model that does not exist
    if problems:
        raise ConfigError(problems, source)
    if os.path.isfile(os.path.join(out, "metrics.json")):
        raise UsageError(f"--out {out}: already holds a finished run (metrics.json); valid: a new or empty "
                         f"directory")
    restore_from, history = None, []
    if os.path.isfile(os.path.join(out, CHECKPOINT_FILE)):
        # An interrupted run of the same config continues from its last epoch; anything else is refused.
        saved = None
        if os.path.isfile(os.path.join(out, "config.yaml")):
            try:
                saved = read_yaml(os.path.join(out, "config.yaml"))
            except ConfigError as err:
                raise UsageError(f"--out {out}: its config.yaml cannot be read ({'; '.join(err.problems)}); valid: "
                                 f"a new directory, or remove {out} to start over") from None
        if saved != cfg:
            raise UsageError(f"--out {out}: holds the checkpoint of a run with a different config; valid: the "
                             f"same config (to resume it) or a new directory")
        restore_from = out
        try:
            state = load_checkpoint(out)
        except Exception as err:  # torch.load raises several types for a truncated or foreign file
            raise UsageError(f"--out {out}: {CHECKPOINT_FILE} cannot be read ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); valid: a checkpoint written by "
                             f"gce-search train, or remove {os.path.join(out, CHECKPOINT_FILE)} to start "
                             f"over") from None
        history = list(state.get("history", []))
        print(f"gce-search train: resuming {out} after epoch {state['epoch']}", flush=True)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.yaml"), "w") as fh:
        dump_yaml(cfg, fh, sort_keys=False)

    epochs = cfg["train"]["epochs"]
    started = time.perf_counter()

    def reporter(metrics: dict, checkpoint_dir: str | None) -> None:
        history.append({k: v for k, v in metrics.items() if k not in PER_RUN_KEYS})
        print(_epoch_line(metrics, epochs), flush=True)
        if checkpoint_dir is not None:
            # Copy then rename: an interrupted copy never replaces the last good checkpoint.
            tmp = os.path.join(out, CHECKPOINT_FILE + ".tmp")
            shutil.copyfile(os.path.join(checkpoint_dir, CHECKPOINT_FILE), tmp)
            os.replace(tmp, os.path.join(out, CHECKPOINT_FILE))
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    print(f"gce-search train: {source} -> {out} ({epochs} epochs, {cfg['data']['name']}, "
          f"{cfg['model'].get('name') or cfg['model'].get('factory')}, {cfg['loss']['name']})", flush=True)
    try:
        final = run_trial(cfg, reporter, restore_from=restore_from)
    except ConfigError:
        raise
    except (ValueError, OSError) as err:  # what the user can fix (missing data files, a model too big for the
        raise UsageError(str(err)) from None  # images, ...)
    result = dict(final)
    result["wall_s"] = time.perf_counter() - started
    result["history"] = history
    result["config_source"] = source if isinstance(config, dict) else os.path.abspath(source)
    tmp = os.path.join(out, "metrics.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(json_safe(result), fh, indent=2)
    os.replace(tmp, os.path.join(out, "metrics.json"))
    if final.get("status") == "diverged":
        print(f"gce-search train: diverged at epoch {final.get('diverged_epoch')}; metrics in {out}",
              file=sys.stderr)
    else:
        print(f"test/acc {final['test/acc']:.4f}  test/ece {final['test/ece']:.4f} (raw "
              f"{final['test/ece_raw']:.4f}, n={final['test/n']})  -> {os.path.join(out, 'metrics.json')}", flush=True)
    return result


def cmd_train(args) -> int:
    """`gce-search train CONFIG.yaml [--out DIR] [--set k=v ...]`: a full retrain, written to DIR; exit 0, or 1
    when the run diverged."""
    result = train(args.config, args.out, getattr(args, "overrides", None) or [])
    return 1 if result.get("status") == "diverged" else 0
