"""The console of a search: one line per trial event, an estimate of the time it takes, a live view on a
terminal, and the closing summary.

Ray's own progress table is switched off (RunConfig(verbose=0)): it redraws every few seconds, cannot show the loss
parameters of a conditional space, and hides the events that matter here (stopped early, diverged). Ray's log
messages that read as failures after a run that went well are taken off the console into a file of the experiment
(RAY_NOISE).
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from ray.tune import Callback

from gce_search.search.pareto import OBJECTIVES, objective_front, objectives_for
from gce_search.search.records import describe_counts, trial_outcome


def _num(value: Any, fmt: str = ".4f") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return "nan" if not math.isfinite(value) else format(value, fmt)


def _ece_text(row: dict) -> str:
    """'0.0312 [0.0268, 0.0371]': val/ece with its bootstrap 95% interval when the result carries one."""
    text = _num(row.get("val/ece"))
    lo, hi = row.get("val/ece_lo"), row.get("val/ece_hi")
    if text not in ("-", "nan") and _num(lo) not in ("-", "nan") and _num(hi) not in ("-", "nan"):
        text += f" [{_num(lo)}, {_num(hi)}]"
    return text


def describe_loss(trial_config: dict) -> str:
    """'gce λ=0.80', 'focal gamma=3', 'cross_entropy': the loss and its searched or fixed parameters."""
    loss = dict(trial_config.get("loss") or {})
    name = loss.pop("name", "?")
    parts = [str(name)]
    for key, value in sorted(loss.items()):
        label = "λ" if key == "lam" else key
        parts.append(f"{label}={_num(value, '.3g') if isinstance(value, (int, float)) else value}")
    return " ".join(parts)


def expected_epochs(scheduler: dict | None, max_t: int) -> float:
    """Epochs an average trial runs under the scheduler: ASHA keeps the top 1/eta of each rung, so a trial reaches
    rung k (Ray's milestones grace_period * eta**k below max_t) with probability eta**-k. FIFO runs every trial to
    max_t. Asynchronous ASHA promotes more than that early in a search (a rung with one result promotes it), so
    this is the low end; ProgressPrinter blends in the epochs finished trials ran."""
    settings = dict(scheduler or {})
    if settings.get("name", "asha") not in ("asha", "moasha") or max_t <= 1:
        return float(max_t)
    grace, eta = int(settings.get("grace_period") or 1), int(settings.get("reduction_factor") or 3)
    if grace >= max_t or eta < 2:
        return float(max_t)
    rungs = int(math.log(max_t / grace) / math.log(eta) + 1)  # as ray.tune.schedulers.async_hyperband
    milestones = sorted(m for m in (grace * eta ** k for k in range(rungs)) if m < max_t)
    expected, reached, previous = 0.0, 1.0, 0
    for milestone in [*milestones, max_t]:
        expected += (milestone - previous) * reached
        reached /= eta
        previous = milestone
    return expected


def format_duration(seconds: float) -> str:
    """'45 s', '3 min', '2 h 05 min': a duration as a person reads it."""
    seconds = max(0.0, float(seconds))
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(round(seconds / 60))
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def about(seconds: float) -> str:
    """'about 3 min', 'under 1 s': an estimated duration."""
    return format_duration(seconds) if seconds < 1 else "about " + format_duration(seconds)


def estimate_minutes(seconds: float) -> int:
    return max(1, int(round(seconds / 60)))


def step_words(step: dict) -> str:
    """A report from inside an epoch (trainables.step_progress) in words, for a search's or a study's console."""
    pct = 100.0 * step["step"] / max(1, step["steps"])
    return (f"epoch {step['epoch']}/{step['epochs']}: step {step['step']}/{step['steps']} ({pct:.0f}%), "
            f"{step['images_per_s']:.0f} img/s, epoch ends in {about(step['eta_s'])}")


@dataclass
class TrialView:
    """What the console knows of one trial."""

    trial_id: str
    loss: str
    started: float
    epoch: int = 0
    result: dict | None = None  # the last result
    outcome: str | None = None  # trial_outcome() once it has ended
    first_result_s: float | None = None  # start -> first result
    first_iter_s: float | None = None  # Ray's time_this_iter_s of the first result: set-up in the trial + an epoch
    ended: float | None = None
    step: dict | None = None  # the latest report from inside an epoch (trainables.step_progress)
    step_line_at: float = 0.0  # when an off-terminal step line was last printed for it


# Prior weight (in trials) of the scheduler's expected epochs against the epochs finished trials actually ran.
_PRIOR_TRIALS = 4
# Seconds between polls of the progress board (at most; a smaller step-progress threshold polls faster), and
# between two off-terminal step lines of one trial.
_BOARD_POLL_S = 2.0
_STEP_LINE_S = 30.0
# Slot-seconds Ray Tune spends on a trial besides running it (README, "search overhead": 0.35 measured).
_TUNE_TRIAL_S = 0.35
_FRONT_ROWS = 5


class ProgressPrinter(Callback):
    """The console of a search (a ray.tune.Callback).

    Off a terminal (`ray job logs`, a pipe, a file): one line per trial event, `HH:MM:SS [done/total done] trial
    <id> <event> <loss> ...` for started, completed, stopped (by the scheduler), failed (diverged) and error, an
    estimate of the search's time after its first epoch, and, from an epoch longer than about 20 s
    (trainables.step_progress), an occasional line with its steps, images/s and time left.

    On a terminal the same event lines scroll above a live view (rich): trials done / running / stopped / errored
    of the total, elapsed and time left, the running trials with their progress inside the epoch, and the best
    front so far.
    """

    def __init__(self, max_t: int | None = None, stream: TextIO | None = None, total: int | None = None,
                 slots: int = 1, expected: float | None = None, timeout_s: float | None = None,
                 experiment: str | None = None, live: bool | None = None,
                 objectives: tuple[str, str] | list[str] = OBJECTIVES):
        self.max_t = max_t
        self.objectives = tuple(objectives)  # the front's axes (search.pareto.objectives_for)
        self._stream = stream
        self.total = total
        self.slots = max(1, int(slots))
        self.expected = float(expected) if expected is not None else (float(max_t) if max_t else None)
        self.timeout_s = timeout_s
        self.experiment = experiment
        self.live = live  # None: a live view when the stream is a terminal
        self.counts = {"started": 0, "complete": 0, "degenerate": 0, "stopped": 0, "diverged": 0, "error": 0}
        self.trials: dict[str, TrialView] = {}
        self._reset_run_state()

    @classmethod
    def for_spec(cls, spec, experiment: str, slots: int, max_t: int, stream: TextIO | None = None):
        concurrent = min(int(spec.search.get("max_concurrent") or slots), slots)
        return cls(max_t=max_t, stream=stream, total=int(spec.search.get("num_samples") or 0) or None,
                   slots=concurrent, expected=expected_epochs(dict(spec.scheduler), max_t),
                   timeout_s=spec.search.get("timeout_s"), experiment=experiment,
                   objectives=objectives_for(spec.base_config.get("objective")))

    def _reset_run_state(self) -> None:
        """What belongs to one process's fit(): timings, the live view, the board handle (not pickled)."""
        self.fit_started = time.time()
        self.epoch_s_sum, self.epoch_n = 0.0, 0
        self.estimate_printed = False
        self._view = None
        self._live = None
        self._board = None  # a BoardReader once a poll has needed one
        self._board_polled = 0.0

    def __getstate__(self) -> dict:
        # Pickled into Ray's tuner.pkl for resume: the settings and the counts as plain data. The stream stays out
        # (the new driver has its own stdout), and so does everything of one process's fit().
        return {"settings": {"max_t": self.max_t, "total": self.total, "slots": self.slots, "expected": self.expected,
                             "timeout_s": self.timeout_s, "experiment": self.experiment, "live": self.live,
                             "objectives": list(self.objectives)},
                **self.get_state()}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state["settings"])
        self.set_state(state)

    # Ray saves these with each experiment checkpoint: a resumed search goes on counting from where it was.
    def get_state(self) -> dict:
        return {"counts": dict(self.counts),
                "trials": {k: {**v.__dict__, "step": None} for k, v in self.trials.items()}}

    def set_state(self, state: dict) -> None:
        self.counts.update(state.get("counts") or {})
        self.trials = {k: TrialView(**v) for k, v in (state.get("trials") or {}).items()}

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    # ---- derived numbers

    @property
    def done(self) -> int:
        return sum(self.counts[k] for k in ("complete", "degenerate", "stopped", "diverged", "error"))

    def running(self) -> list[TrialView]:
        return [t for t in self.trials.values() if t.outcome is None]

    def epochs_per_trial(self) -> float | None:
        finished = [t.epoch for t in self.trials.values() if t.outcome is not None]
        if self.expected is None:
            return None
        return (self.expected * _PRIOR_TRIALS + sum(finished)) / (_PRIOR_TRIALS + len(finished))

    def time_left(self, now: float | None = None) -> float | None:
        """Seconds until the search ends: the work left (trials not started yet, the rest of the running ones) at
        the measured epoch time and set-up time per trial, spread over the concurrent slots; None before the
        first epoch."""
        if not self.epoch_n or self.total is None:
            return None
        now = time.time() if now is None else now
        epoch_s = self.epoch_s_sum / self.epoch_n
        # A trial's fixed cost (set-up, and Tune's scheduling between one trial and the next): from the trials that
        # ended, else from their first results.
        # The lower median, since the first trial on each slot also pays for starting a process and importing torch.
        costs = sorted(max(0.0, t.ended - t.started - t.epoch * epoch_s) + _TUNE_TRIAL_S
                       for t in self.trials.values() if t.ended is not None)
        if not costs:
            # Before any trial ended: the set-up inside the trial (a reused trial process has imported torch
            # already, so start-up is paid once per slot) and Tune's own cost of a trial.
            costs = sorted(max(0.0, t.first_iter_s - epoch_s) + _TUNE_TRIAL_S for t in self.trials.values()
                           if t.first_iter_s is not None)
        setup_s = costs[(len(costs) - 1) // 2] if costs else 0.0
        epochs = self.epochs_per_trial() or 0.0
        not_started = max(0, self.total - len(self.trials))
        work = not_started * (setup_s + epochs * epoch_s)
        for trial in self.running():
            work += max(0.0, epochs - trial.epoch) * epoch_s + (setup_s if trial.first_result_s is None else 0.0)
        left = work / max(1, min(self.slots, self.total - self.done))
        if self.timeout_s:
            left = min(left, max(0.0, float(self.timeout_s) - (now - self.fit_started)))
        return left

    def front(self) -> list[TrialView]:
        """The trials whose latest results are not dominated on (val/acc max, val/ece min), by val/ece."""
        scored = [t for t in self.trials.values()
                  if t.result and t.outcome not in ("error", "diverged", "degenerate")
                  and all(isinstance(t.result.get(k), (int, float)) and math.isfinite(t.result[k])
                          for k in self.objectives)]
        if not scored:
            return []
        key = self.objectives[1]
        return sorted((scored[i] for i in objective_front([t.result for t in scored], self.objectives)),
                      key=lambda t: t.result[key])

    # ---- output

    def _live_wanted(self) -> bool:
        if self.live is not None:
            return self.live
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"

    def _emit(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def _counter(self) -> str:
        return f"[{self.done}/{self.total if self.total else '?'} done]"

    def _line(self, trial, event: str, result: dict | None = None, tail: str = "") -> None:
        cfg = (trial.config or {}).get("trial_config") or {}
        fields = [time.strftime("%H:%M:%S"), self._counter(), f"trial {trial.trial_id}", f"{event:<9}",
                  describe_loss(cfg)]
        if result:
            epoch = result.get("epoch")
            budget = f"/{self.max_t}" if self.max_t else ""
            fields += [f"epoch {epoch if epoch is not None else '-'}{budget}",
                       f"val/acc {_num(result.get('val/acc'))}", f"val/ece {_ece_text(result)}",
                       f"score {_num(result.get('score'))}"]
            if "train/loss" in result:
                fields.append(f"train/loss {_num(result.get('train/loss'))}")
        if tail:
            fields.append(tail)
        self._emit("  ".join(fields))

    def _left_words(self) -> str:
        left = self.time_left()
        if left is None:
            return ""
        if self.done >= (self.total or 0):
            return ""
        return f"{about(left)} left"

    def _print_estimate(self) -> None:
        left = self.time_left()
        if left is None:
            return
        self.estimate_printed = True
        whole = time.time() - self.fit_started + left
        epoch_s = self.epoch_s_sum / self.epoch_n
        epochs = self.epochs_per_trial() or 0.0
        scheduler = "" if self.max_t is None or epochs >= self.max_t else " (early stopping)"
        per_epoch = format_duration(epoch_s) if epoch_s >= 1 else f"{epoch_s:.2f} s"
        self._emit(f"gce-search: about {estimate_minutes(whole)} min for this search on this cluster (an "
                   f"estimate from the first epoch: {per_epoch} per epoch, about {epochs:.1f} of {self.max_t} "
                   f"epochs per trial{scheduler}, {self.total} trials, {min(self.slots, self.total or 1)} at a "
                   f"time; the time left is updated as trials end)")

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    # ---- Tune's callback hooks

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self.fit_started = time.time()
        if self._live_wanted():
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream)
            self._view = LiveView(self)
            self._live = Live(self._view, console=console, refresh_per_second=2, transient=False,
                              redirect_stdout=self._stream is None, redirect_stderr=False)
            self._live.start()
        self._emit("gce-search: first trials starting (a trial process imports torch first: seconds)...")

    def on_trial_start(self, iteration, trials, trial, **info):
        known = self.trials.get(trial.trial_id)
        if known is not None and known.outcome is None:
            known.started, known.step = time.time(), None
            self._line(trial, "resumed")  # a trial restarted (resume, node failure) is the same trial
            return
        self.counts["started"] += 1
        cfg = (trial.config or {}).get("trial_config") or {}
        self.trials[trial.trial_id] = TrialView(trial.trial_id, describe_loss(cfg), time.time())
        self._line(trial, "started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        view = self.trials.get(trial.trial_id)
        if view is None:
            view = self.trials[trial.trial_id] = TrialView(trial.trial_id, describe_loss(
                (trial.config or {}).get("trial_config") or {}), time.time())
        epoch_s = _epoch_seconds(result)
        if epoch_s is not None:
            self.epoch_s_sum += epoch_s
            self.epoch_n += 1
        if view.first_result_s is None:
            view.first_result_s = time.time() - view.started
            first_iter = result.get("time_this_iter_s")
            view.first_iter_s = float(first_iter) if isinstance(first_iter, (int, float)) else view.first_result_s
        view.epoch = int(result.get("epoch") or view.epoch)
        view.result = dict(result)
        view.step = None
        if not self.estimate_printed:
            self._print_estimate()
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._trial_ended(trial, trial_outcome(trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info):
        # the one rule: an error after the trial's full-budget result leaves it complete, as in the result files
        self._trial_ended(trial, trial_outcome(trial.last_result, errored=True))

    def _trial_ended(self, trial, outcome: str) -> None:
        self.counts[outcome] += 1
        self._ended(trial, outcome)
        self._line(trial, EVENT_WORDS[outcome], trial.last_result, self._left_words())

    def _ended(self, trial, outcome: str) -> None:
        view = self.trials.get(trial.trial_id)
        if view is None:
            view = self.trials[trial.trial_id] = TrialView(trial.trial_id, describe_loss(
                (trial.config or {}).get("trial_config") or {}), time.time())
        view.outcome = outcome
        view.ended = time.time()
        view.step = None
        if trial.last_result:
            view.result = dict(trial.last_result)
            view.epoch = int(trial.last_result.get("epoch") or view.epoch)

    def on_step_begin(self, iteration, trials, **info):
        now = time.time()
        from gce_search.trainables.step_progress import threshold_s

        if self.experiment is None or now - self._board_polled < min(_BOARD_POLL_S, threshold_s() / 2):
            return
        self._board_polled = now
        for trial_id, step in self._poll_board().items():
            view = self.trials.get(trial_id)
            if view is None or view.outcome is not None or step["epoch"] <= view.epoch:
                continue  # a report that the epoch's result has already overtaken
            view.step = step
            if self._live is None and now - view.step_line_at >= _STEP_LINE_S:
                view.step_line_at = now
                self._emit("  ".join([time.strftime("%H:%M:%S"), self._counter(), f"trial {trial_id}",
                                      "training ", view.loss, step_words(step)]))
        self._refresh()

    def _poll_board(self) -> dict[str, dict]:
        """The reports the board has collected since the last poll; never waits (Tune's loop runs this)."""
        from gce_search.search.step_board import BoardReader

        if self._board is None:
            self._board = BoardReader(self.experiment)
        return self._board.take()

    def on_experiment_end(self, trials, **info):
        self.close()

    def close(self) -> None:
        """Stop the live view and the progress board (idempotent; the driver calls it after fit() too)."""
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None
        if self.experiment is not None:
            from gce_search.search.step_board import BoardReader

            (self._board or BoardReader(self.experiment)).close()
            self._board = None


def _epoch_seconds(result: dict) -> float | None:
    train_s, eval_s = result.get("time/train_s"), result.get("time/eval_s")
    if isinstance(train_s, (int, float)) and isinstance(eval_s, (int, float)):
        return float(train_s) + float(eval_s)
    value = result.get("time_this_iter_s")
    return float(value) if isinstance(value, (int, float)) else None


class LiveView:
    """The live view of a ProgressPrinter on a terminal, redrawn by rich.live.Live from the printer's state."""

    def __init__(self, printer: ProgressPrinter):
        self.printer = printer

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        p = self.printer
        c = p.counts
        running = p.running()
        left = p.time_left()
        head = Text()
        head.append(f"trials {p.done}/{p.total if p.total else '?'} done", style="bold")
        words = (("complete", "complete"), ("degenerate", "degenerate"), ("stopped", "stopped"),
                 ("diverged", "diverged"), ("error", "errored"))
        ended = [f"{c.get(key, 0)} {word}" for key, word in words if key != "degenerate" or c.get(key)]
        head.append(f" ({', '.join(ended)}), {len(running)} running")
        head.append(f"   elapsed {format_duration(time.time() - p.fit_started)}")
        if p.total and p.done >= p.total:
            head.append("   all trials ended", style="bold")
        else:
            head.append("   time left " + (about(left) if left is not None else "(after the first epoch)"),
                        style="bold")
        parts: list = [head]
        if running:
            table = Table(box=None, show_header=False, padding=(0, 1), pad_edge=False)
            for trial in sorted(running, key=lambda t: t.started):
                if trial.step is not None:
                    where = step_words(trial.step)
                elif trial.epoch:
                    where = f"epoch {trial.epoch}/{p.max_t or '?'} done"
                else:
                    where = "starting"
                table.add_row(f"  {trial.trial_id}", trial.loss, where)
            parts.append(table)
        front = p.front()
        if front:
            table = Table(box=None, padding=(0, 1), pad_edge=False, title_justify="left",
                          title=f"best front so far (val/acc max, {p.objectives[1]} min)", title_style="bold")
            extra = (p.objectives[1],) if p.objectives[1] != "val/ece" else ()
            for column in ("trial", "loss", "epoch", "val/acc", "val/ece", *extra):
                table.add_column(column, justify="left" if column in ("trial", "loss") else "right")
            for trial in front[:_FRONT_ROWS]:
                r = trial.result or {}
                table.add_row(trial.trial_id, trial.loss, f"{trial.epoch}/{p.max_t or '?'}", _num(r.get("val/acc")),
                              _ece_text(r), *(_num(r.get(k)) for k in extra))
            if len(front) > _FRONT_ROWS:
                table.caption = f"(+{len(front) - _FRONT_ROWS} more)"
            parts.append(table)
        return Group(*parts)


# Ray's messages that read as failures or point elsewhere than gce-search, kept out of the console and written to
# the experiment's RAY_NOTICES_FILE instead: (logger, how the message starts); each with why it is not for the
# console.
RAY_NOTICES_FILE = "ray-notices.log"
# how a trial ended (search.records.trial_outcome) -> the word of its console line
EVENT_WORDS = {"complete": "completed", "degenerate": "degenerate", "stopped": "stopped", "diverged": "failed",
               "error": "error"}
RAY_NOISE = (
    # token authentication is on (a notice, not a problem); the warning when it is off stays on the console
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for this Ray"),
    # `gce-search resume` is the way to go on; Ray's Tuner.restore(...) hint is for its own Python API
    ("ray.tune.tune", "Experiment has been interrupted, but the most recent state was saved"),
    # Ray's result grid looking for result.json files that a run does not write (a study's runs report once)
    ("ray.tune.analysis.experiment_analysis", "Failed to fetch metrics"),
    # Ray's 0.5 s "slow operation" notices: on busy cores any callback can take that long, and a trial's own time
    # is measured and printed by the progress lines anyway
    ("ray.tune.utils.util", "The `"),
)


class RayNotices(logging.Filter):
    """Takes RAY_NOISE's messages off the console and appends them to a log file (held until it has one)."""

    def __init__(self):
        super().__init__()
        self.path: str | None = None
        self.pending: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not any(record.name == name and message.startswith(start) for name, start in RAY_NOISE):
            return True
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {record.levelname} {record.name}: {message}\n"
        if self.path is None:
            self.pending.append(line)
        else:
            self._write([line])
        return False

    def log_in(self, directory: str | None) -> None:
        """Write to `directory`'s RAY_NOTICES_FILE from now on (None: hold them again)."""
        self.path = os.path.join(directory, RAY_NOTICES_FILE) if directory is not None else None
        if self.path is not None and self.pending:
            self._write(self.pending)
            self.pending = []

    def _write(self, lines: list[str]) -> None:
        try:
            with open(self.path, "a") as f:
                f.writelines(lines)
        except OSError:  # the experiment directory went away: the notice is not worth failing for
            pass


_RAY_NOTICES = RayNotices()


def quiet_ray_notices(log_dir: str | None = None) -> RayNotices:
    """Install the filter on RAY_NOISE's loggers (once per process) and, given a directory, write the held and
    later notices to its RAY_NOTICES_FILE."""
    for name, _ in RAY_NOISE:
        logger = logging.getLogger(name)
        if _RAY_NOTICES not in logger.filters:
            logger.addFilter(_RAY_NOTICES)
    if log_dir is not None:
        _RAY_NOTICES.log_in(log_dir)
    return _RAY_NOTICES


def print_summary(exp_dir: str, outcomes: dict[str, int], front: list[dict] | None, stream: TextIO | None = None,
                  wall_s: float | None = None) -> bool:
    """The closing lines: counts, the Pareto front (full-budget trials only), where things are, what to run next.

    Returns whether the search produced a usable result (a complete trial). Without one, a one-line reason goes
    to stderr instead of the pareto/export/tensorboard hints, which would only refuse."""
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
        axis = next((k for k in ("val/smece", "val/debiased_ece") if any(k in r for r in front)), "val/ece")
        print(f"Pareto front (val/acc max, {axis} min; full-budget trials; [val/ece's bootstrap 95% interval]):",
              file=out)
        for row in front:
            label = row.get("trial_id", "?")
            loss = row.get("loss") or ""
            other = "".join(f"  {k} {_num(v)}" for k, v in row.items()
                            if k in ("val/smece", "val/debiased_ece"))  # the axis of objective.ece_metric
            print(f"  {label}  {loss}  val/acc {_num(row.get('val/acc'))}  val/ece {_ece_text(row)}{other}"
                  f"  score {_num(row.get('score'))}", file=out)
    elif front is not None:
        print("Pareto front: empty (no trial reached the full budget).", file=out)
    print(f"Results: {exp_dir}", file=out)
    print(f"  gce-search tensorboard {exp_dir}", file=out)
    print(f"  gce-search export {exp_dir}", file=out, flush=True)
    return True
