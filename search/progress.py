"""One line per trial event while a search runs, and the closing summary.

Ray's own progress table is switched off (RunConfig(verbose=0)): it redraws every few seconds, cannot show the loss
parameters of a conditional space, and hides the events that matter here (stopped early, diverged).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ray.tune import Callback


def _num(value: Any, fmt: str = ".4f") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return "nan" if not math.isfinite(value) else format(value, fmt)


def describe_loss(trial_config: dict) -> str:
    """'gce λ=0.80', 'focal gamma=3', 'cross_entropy': the loss and its searched or fixed parameters."""
    loss = dict(trial_config.get("loss") or {})
    name = loss.pop("name", "?")
    parts = [str(name)]
    for key, value in sorted(loss.items()):
        label = "λ" if key == "lam" else key
        parts.append(f"{label}={_num(value, '.3g') if isinstance(value, (int, float)) else value}")
    return " ".join(parts)


def trial_outcome(last_result: dict | None, errored: bool = False) -> str:
    """How a trial ended (complete | degenerate | stopped | diverged | error): search.results.trial_outcome, the
    one rule for the console, the result files and TensorBoard."""
    from search.results import trial_outcome as outcome_rule

    return outcome_rule(last_result, errored=errored)


class ProgressPrinter(Callback):
    """A ray.tune.Callback printing `HH:MM:SS trial <id> <event> <loss> epoch .. val/acc .. val/ece .. score ..`."""

    def __init__(self, max_t: int | None = None, stream: TextIO | None = None):
        self.max_t = max_t
        self._stream = stream
        self.counts = {"started": 0, "complete": 0, "degenerate": 0, "stopped": 0, "diverged": 0, "error": 0}

    def __getstate__(self) -> dict:
        # Pickled into Ray's tuner.pkl for resume; a stream does not pickle, and the new driver has its own stdout.
        state = self.__dict__.copy()
        state["_stream"] = None
        return state

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def _line(self, trial, event: str, result: dict | None = None) -> None:
        cfg = (trial.config or {}).get("trial_config") or {}
        fields = [time.strftime("%H:%M:%S"), f"trial {trial.trial_id}", f"{event:<9}", describe_loss(cfg)]
        if result:
            epoch = result.get("epoch")
            budget = f"/{self.max_t}" if self.max_t else ""
            fields += [f"epoch {epoch if epoch is not None else '-'}{budget}",
                       f"val/acc {_num(result.get('val/acc'))}", f"val/ece {_num(result.get('val/ece'))}",
                       f"score {_num(result.get('score'))}"]
            if "train/loss" in result:
                fields.append(f"train/loss {_num(result.get('train/loss'))}")
        print("  ".join(fields), file=self.stream, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.counts["started"] += 1
        self._line(trial, "started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        event = "diverged" if result.get("status") == "diverged" else "result"
        self._line(trial, event, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        outcome = trial_outcome(trial.last_result)
        self.counts[outcome] += 1
        event = {"complete": "completed", "degenerate": "degenerate", "stopped": "stopped", "diverged": "failed",
                 "error": "error"}[outcome]
        self._line(trial, event, trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.counts["error"] += 1
        self._line(trial, "error", trial.last_result)


def print_summary(exp_dir: str, outcomes: dict[str, int], front: list[dict] | None, stream: TextIO | None = None,
                  wall_s: float | None = None) -> bool:
    """The closing lines: counts, the Pareto front (full-budget trials only), where things are, what to run next.

    Returns whether the search produced a usable result (a complete trial). Without one, a one-line reason goes
    to stderr instead of the pareto/export/tensorboard hints, which would only refuse."""
    from search.results import describe_counts

    out = stream or sys.stdout
    total = sum(outcomes.values())
    counts = ", ".join(f"{v} {k}" for k, v in outcomes.items() if v)
    took = f" in {wall_s:.0f} s" if wall_s is not None else ""
    print(f"\nSearch finished{took}: {total} trial(s) ({counts or 'none'}).", file=out)
    if not outcomes.get("complete"):
        print(f"Results: {exp_dir}", file=out, flush=True)
        why = {"error": "error.txt in a trial folder holds its traceback",
               "diverged": "a diverged trial's loss became non-finite (a smaller train.lr usually helps)",
               "degenerate": "a degenerate trial ended at chance-level val/acc",
               "stopped": "a stopped trial did not reach its full budget"}
        hints = "; ".join(text for status, text in why.items() if outcomes.get(status))
        print(f"gce-search: no trial produced a usable result ({describe_counts(outcomes)}), so there is nothing "
              f"to rank or export" + (f"; {hints}" if hints else ""), file=stream or sys.stderr, flush=True)
        return False
    if front:
        print("Pareto front (val/acc max, val/ece min; full-budget trials):", file=out)
        for row in front:
            label = row.get("trial_id", "?")
            loss = row.get("loss") or ""
            print(f"  {label}  {loss}  val/acc {_num(row.get('val/acc'))}  val/ece {_num(row.get('val/ece'))}"
                  f"  score {_num(row.get('score'))}", file=out)
    elif front is not None:
        print("Pareto front: empty (no trial reached the full budget).", file=out)
    print(f"Results: {exp_dir}", file=out)
    print(f"  gce-search tensorboard {exp_dir}", file=out)
    print(f"  gce-search export {exp_dir}", file=out, flush=True)
    return True
