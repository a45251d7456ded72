"""Progress inside a long epoch: steps done, images/s and the epoch's time left, for the search's console.

A Tune result is an epoch (ASHA's time unit), so a report from inside an epoch cannot go through `tune.report`: it
would count as an epoch. It goes through a side channel instead: a small Ray actor per experiment (the progress
board) that keeps each trial's latest report, which the driver polls (search.progress). The board is created by
the first trial that has something to say, so a search whose epochs are short never starts it; the driver kills
it when the search ends.

An epoch reports only when it is predicted to take longer than `threshold_s()` (20 s, or the environment variable
GCE_SEARCH_STEP_PROGRESS_S), and then every half of that.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

THRESHOLD_ENV = "GCE_SEARCH_STEP_PROGRESS_S"
DEFAULT_THRESHOLD_S = 20.0
BOARD_NAMESPACE = "gce-search"

Sink = Callable[[dict], None]


def threshold_s() -> float:
    try:
        value = float(os.environ.get(THRESHOLD_ENV, DEFAULT_THRESHOLD_S))
    except ValueError:
        return DEFAULT_THRESHOLD_S
    return value if value > 0 else DEFAULT_THRESHOLD_S


def board_name(experiment: str) -> str:
    return f"progress:{experiment}"


class ProgressBoard:
    """The latest intra-epoch report of each trial of one experiment (run as a Ray actor)."""

    def __init__(self):
        self.latest: dict[str, dict] = {}

    def put(self, trial_id: str, report: dict) -> None:
        self.latest[trial_id] = report

    def take(self) -> dict[str, dict]:
        latest, self.latest = self.latest, {}
        return latest


def get_board(experiment: str):
    """The experiment's board if a trial has created it, else None (never creates one)."""
    import ray

    try:
        return ray.get_actor(board_name(experiment), namespace=BOARD_NAMESPACE)
    except ValueError:
        return None


def close_board(experiment: str) -> None:
    import ray

    if not ray.is_initialized():
        return  # a local Ray took its actors with it
    board = get_board(experiment)
    if board is not None:
        ray.kill(board)


def tune_sink() -> Sink | None:
    """A sink to the experiment's board when this process runs a Ray Tune trial; None elsewhere."""
    if "ray" not in sys.modules:  # `gce-search train`, a plain run_trial: no Ray, no board
        return None
    try:
        from ray import tune

        context = tune.get_context()
        trial_id, experiment = context.get_trial_id(), context.get_experiment_name()
    except Exception:  # outside a Tune session the context has nothing to give
        return None
    if not trial_id or not experiment:
        return None
    board = []

    def send(report: dict) -> None:
        import ray

        if not board:
            # Detached: a board owned by the first trial's actor would die with it; the driver kills it instead.
            board.append(ray.remote(ProgressBoard).options(
                name=board_name(experiment), namespace=BOARD_NAMESPACE, lifetime="detached", get_if_exists=True,
                num_cpus=0).remote())
        board[0].put.remote(trial_id, report)  # fire and forget: training never waits for the console

    return send


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
