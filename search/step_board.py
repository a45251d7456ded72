"""The progress board: where a search's trials put their reports from inside a long epoch, for the console.

A Tune result is an epoch, so a report from inside an epoch goes through a side channel: a small detached Ray actor
per experiment that keeps each trial's latest report (trainables.step_progress decides when a step reports), which
the driver polls (search.progress for a search, search.study for a study; both read it through BoardReader). The
board is created by the first trial that has something to say, so a search whose epochs are short never starts it;
the driver kills it when the search ends.
"""
from __future__ import annotations

import sys

from gce_search.trainables.step_progress import Sink

BOARD_NAMESPACE = "gce-search"


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


class BoardReader:
    """The driver's side of one experiment's board: the reports put on it since the last read, never waiting (Tune's
    loop calls `take`): the answer to one request is picked up by the next call, when the next request goes out."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self._board = None
        self._request = None  # the board's answer still to come

    def __getstate__(self) -> dict:
        return {"experiment": self.experiment}  # the actor handle and the pending answer belong to one process

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["experiment"])

    def take(self) -> dict[str, dict]:
        import ray

        try:
            if self._board is None:
                self._board = get_board(self.experiment)
            if self._board is None:
                return {}
            reports = {}
            if self._request is not None:
                ready, _ = ray.wait([self._request], timeout=0)
                if not ready:
                    return {}  # the board is still starting, or busy
                reports = ray.get(self._request)
            self._request = self._board.take.remote()
            return reports
        except Exception:  # the console never stops a run: a lost board is looked up again
            self._board = self._request = None
            return {}

    def close(self) -> None:
        """Kill the board (idempotent; nothing to do once Ray has shut down)."""
        try:
            close_board(self.experiment)
        except Exception:  # Ray already shut down: the board went with it
            pass
        self._board = self._request = None


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
