"""The driver's components a space file names, as data: Optuna samplers (`search.sampler`) and trial schedulers
(`scheduler.name` and its parameters), with descriptions and `Param`s, importing neither Optuna nor Ray.

The space checker reads these registries; search.space attaches each sampler's builder
(`build(search settings) -> optuna sampler`) and search.schedulers each scheduler's
(`build(settings without 'name', max_t in epochs) -> TrialScheduler`).
"""
from __future__ import annotations

from gce_search.trainables.registry import Param, Registry

SAMPLERS = Registry("sampler")

SAMPLERS.add("tpe", "tree-structured Parzen estimator (multi-objective capable)")
SAMPLERS.add("nsga2", "NSGA-II genetic multi-objective search")
SAMPLERS.add("random", "independent uniform sampling (baseline)")

SCHEDULERS = Registry("scheduler")

_ASHA_PARAMS = {
    "grace_period": Param(1, low=1, kind="int", doc="epochs every trial runs before its first rung"),
    "reduction_factor": Param(3, low=2, kind="int", doc="eta: the top 1/eta of a rung is promoted"),
    "brackets": Param(1, low=1, kind="int", doc="number of ASHA brackets"),
}

SCHEDULERS.add("fifo", "no early stopping: every trial runs its full budget")
SCHEDULERS.add("asha", "asynchronous successive halving on the scalar score", dict(_ASHA_PARAMS))
SCHEDULERS.add("moasha", "multi-objective ASHA: promotes by Pareto rank on (val/acc max, val/ece min)",
               {**_ASHA_PARAMS, "ranking": Param("nondominated", choices=("nondominated", "scalarized", "epsnet", "robust"),
                                                 doc="how trials at a rung are ranked")})
