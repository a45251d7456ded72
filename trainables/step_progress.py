"""Progress inside a long epoch: steps done, images/s and the epoch's time left, for the search's console.

A Tune result is an epoch (ASHA's time unit), so a report from inside an epoch cannot go through `tune.report`: it
would count as an epoch. It goes to a sink instead, set by whoever runs the trial (`reporting_to`): in a search, a
small Ray actor per experiment that the driver polls (search.step_board). Without a sink nothing is measured.

An epoch reports only when it is predicted to take longer than `threshold_s()` (20 s, or the environment variable
GCE_SEARCH_STEP_PROGRESS_S), and then every half of that.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Callable, Iterator

THRESHOLD_ENV = "GCE_SEARCH_STEP_PROGRESS_S"
DEFAULT_THRESHOLD_S = 20.0

Sink = Callable[[dict], None]


def threshold_s() -> float:
    try:
        value = float(os.environ.get(THRESHOLD_ENV, DEFAULT_THRESHOLD_S))
    except ValueError:
        return DEFAULT_THRESHOLD_S
    return value if value > 0 else DEFAULT_THRESHOLD_S


_sink: list[Sink | None] = [None]


@contextmanager
def reporting_to(sink: Sink | None) -> Iterator[None]:
    """Trials run in this block (in this process) report their progress inside long epochs to `sink`: the search's
    Ray trainable passes one to the driver's console (search.step_board); elsewhere there is none."""
    previous, _sink[0] = _sink[0], sink
    try:
        yield
    finally:
        _sink[0] = previous


def current_sink() -> Sink | None:
    return _sink[0]


class StepProgress:
    """Decides, step by step, when an epoch reports its progress to `sink`."""

    def __init__(self, sink: Sink, epochs: int, steps_per_epoch: int, batch_size: int,
                 threshold: float | None = None):
        self.sink = sink
        self.epochs, self.steps, self.batch_size = epochs, steps_per_epoch, batch_size
        self.threshold = threshold if threshold is not None else threshold_s()

    def epoch(self, epoch: int) -> Callable[[int], None]:
        """The per-step callback of epoch `epoch` (1-based): call it with the steps done so far."""
        started = time.perf_counter()
        # The first look at the rate is early enough for the first report to come well before the threshold.
        next_look = [self.threshold / 10]

        def step(done: int) -> None:
            elapsed = time.perf_counter() - started
            if elapsed < next_look[0] or done >= self.steps:
                return
            predicted = elapsed * self.steps / done
            if predicted <= self.threshold:
                next_look[0] = elapsed + self.threshold / 10
                return
            next_look[0] = elapsed + self.threshold / 2
            self.sink({"epoch": epoch, "epochs": self.epochs, "step": done, "steps": self.steps,
                       "images_per_s": done * self.batch_size / elapsed, "eta_s": predicted - elapsed,
                       "time": time.time()})

        return step
