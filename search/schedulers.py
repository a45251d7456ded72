"""Trial schedulers (early stopping), one registry for YAML validation, the CLI and the tests."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from gce_search.trainables.registry import Param, Registry


@dataclass(frozen=True)
class SchedulerInfo:
    name: str
    build: Callable[[dict, int], Any]  # (scheduler settings without 'name', max_t in epochs) -> TrialScheduler
    params: dict[str, Param] = field(default_factory=dict)
    description: str = ""


SCHEDULERS: Registry[SchedulerInfo] = Registry("scheduler")

_ASHA_PARAMS = {
    "grace_period": Param(1, low=1, kind="int", doc="epochs every trial runs before its first rung"),
    "reduction_factor": Param(3, low=2, kind="int", doc="eta: the top 1/eta of a rung is promoted"),
    "brackets": Param(1, low=1, kind="int", doc="number of ASHA brackets"),
}


def _fifo(settings: dict, max_t: int):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _asha(settings: dict, max_t: int):
    # metric/mode come from TuneConfig(metric="score", mode="max"); Ray refuses them in both places.
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", max_t=max_t, **settings)


def _moasha(settings: dict, max_t: int):
    from gce_search.search.moasha import MultiObjectiveASHA

    return MultiObjectiveASHA(time_attr="epoch", max_t=max_t, **settings)


SCHEDULERS.register("fifo", SchedulerInfo("fifo", _fifo, {}, "no early stopping: every trial runs its full budget"))
SCHEDULERS.register("asha", SchedulerInfo("asha", _asha, dict(_ASHA_PARAMS),
                                          "asynchronous successive halving on the scalar score"))
SCHEDULERS.register("moasha", SchedulerInfo(
    "moasha", _moasha,
    {**_ASHA_PARAMS, "ranking": Param("nondominated", choices=("nondominated", "scalarized"),
                                      doc="how trials at a rung are ranked")},
    "multi-objective ASHA: promotes by Pareto rank on (val/acc max, val/ece min)"))


def build_scheduler(settings: dict, max_t: int, objective: dict | None = None):
    """Build the scheduler named by settings['name'] with the remaining keys (already validated).

    objective: the trial config's `objective` section. MO-ASHA's scalarised ranking takes its weights from it, so
    that it ranks by the same `w_acc * val/acc - w_ece * val/ece` as the score ASHA and the best-trial choice use.
    """
    name = settings.get("name", "asha")
    info = SCHEDULERS.get(name)
    kwargs = {k: v for k, v in settings.items() if k != "name"}
    if name == "moasha" and kwargs.get("ranking") == "scalarized" and objective is not None:
        kwargs["weights"] = (float(objective["w_acc"]), float(objective["w_ece"]))
    return info.build(kwargs, max_t)

