"""Trial schedulers (early stopping): the builders of the entries declared in spaces.catalog.SCHEDULERS (one registry
for YAML validation, the CLI and the tests)."""
from __future__ import annotations

from gce_search.spaces.catalog import SCHEDULERS


@SCHEDULERS.implements("fifo")
def _fifo(settings: dict, max_t: int):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


@SCHEDULERS.implements("asha")
def _asha(settings: dict, max_t: int):
    # metric/mode come from TuneConfig(metric="score", mode="max"); Ray refuses them in both places.
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", max_t=max_t, **settings)


@SCHEDULERS.implements("moasha")
def _moasha(settings: dict, max_t: int):
    from gce_search.search.moasha import MultiObjectiveASHA

    return MultiObjectiveASHA(time_attr="epoch", max_t=max_t, **settings)


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
    if name == "moasha" and objective is not None:
        from gce_search.search.pareto import REFERENCE_POINT, objectives_for

        kwargs["metrics"] = objectives_for(objective)  # objective.ece_metric's key is the ECE axis
        kwargs["reference_point"] = REFERENCE_POINT
    return info.impl(kwargs, max_t)

