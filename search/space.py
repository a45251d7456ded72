"""The Optuna side of a search space: a define-by-run function for the searcher (search.searcher.CalibratedSearcher)
and the samplers.

Optuna parameter names are the space keys (`loss.name`, `gce.lam`, `train.lr`). A searched ATS breakpoint vector at
`calibration.breakpoints` becomes:

- `calibration.breakpoints.pieces` — the piece count m (an int; only when `pieces` is a range), and
- `calibration.breakpoints.u1` … `u{m-1}` — one unit-interval variable per breakpoint.

`breakpoints_from_unit` maps the u's to breakpoints by stick-breaking: the free length of (low, high) after the
`min_gap` margins is split into m gaps, gap k taking the fraction 1 - (1 - u_k)^(1/(m-k)) of what is left. That
fraction is the inverse CDF of Beta(1, m-k), so independent uniform u's give gaps uniform on the simplex, i.e.
breakpoints distributed as sorted uniform points — the uninformed prior over ordered vectors. Each u_k is a
coordinate TPE can model on its own (it is "where breakpoint k sits in the room left for it"), all u = 0.5 gives
roughly even spacing for any m, and every u vector gives a strictly increasing vector with gaps >= min_gap, so no
sample is ever rejected (a sort or rejection scheme would make the coordinates' meaning depend on each other).

The samplers' names and descriptions are data in spaces.catalog.SAMPLERS (the space checker reads them without
Optuna); the builders here are attached to them, and Optuna is imported where a sampler is built.
"""
from __future__ import annotations

import json
import warnings
from typing import Any, Callable, Mapping, Sequence

from gce_search.spaces.catalog import SAMPLERS
from gce_search.spaces.records import BREAKPOINT_DEFAULTS, SEARCH_SCHEMA


@SAMPLERS.implements("tpe")
def _tpe(settings: Mapping[str, Any]):
    import optuna

    # group=True: TPE models each set of parameters that occur together (e.g. gce.lam with loss.name=gce) jointly,
    # instead of falling back to independent sampling for parameters outside the intersection of all trials'
    # spaces, which is most of a conditional space. constant_liar (Optuna's default) keeps concurrent Ray trials
    # from all being proposed the same point.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=settings.get("seed"), multivariate=True, group=True,
                                          constant_liar=True)


@SAMPLERS.implements("nsga2")
def _nsga2(settings: Mapping[str, Any]):
    import optuna

    # Optuna's population of 50 would leave a typical search of 16-64 trials in its random first generation;
    # a population of about a quarter of the budget (4..50) gives a few generations of selection.
    num_samples = int(settings.get("num_samples") or SEARCH_SCHEMA["num_samples"].default)
    population = max(4, min(50, num_samples // 4))
    return optuna.samplers.NSGAIISampler(seed=settings.get("seed"), population_size=population)


@SAMPLERS.implements("random")
def _random(settings: Mapping[str, Any]):
    import optuna

    return optuna.samplers.RandomSampler(seed=settings.get("seed"))


def make_sampler(search_settings: Mapping[str, Any]):
    """A seeded Optuna sampler from a spec's `search` settings (`sampler`, `seed`, `num_samples`)."""
    return SAMPLERS.get(search_settings.get("sampler", SEARCH_SCHEMA["sampler"].default)).impl(search_settings)


def breakpoints_from_unit(units: Sequence[float], low: float = BREAKPOINT_DEFAULTS["low"],
                          high: float = BREAKPOINT_DEFAULTS["high"],
                          min_gap: float = BREAKPOINT_DEFAULTS["min_gap"]) -> list[float]:
    """Map len(units) = m - 1 values in [0, 1] to a strictly increasing breakpoint vector inside (low, high).

    Consecutive breakpoints, and the outer ones from low and high, are at least `min_gap` apart; see the module
    docstring for why the fractions are Beta(1, m-k) quantiles.
    """
    pieces = len(units) + 1
    free = (high - low) - pieces * min_gap
    if free < 0:
        raise ValueError(f"min_gap: {pieces} pieces of at least {min_gap:g} do not fit in ({low:g}, {high:g}); "
                         f"valid: pieces * min_gap <= high - low")
    remaining = free
    position = low
    out = []
    for k, u in enumerate(units, start=1):
        if not 0.0 <= u <= 1.0:
            raise ValueError(f"units[{k - 1}]: got {u!r}; valid: a number in [0, 1]")
        gaps_after = pieces - k  # gaps still to place after gap k
        fraction = 1.0 - (1.0 - u) ** (1.0 / gaps_after)
        take = fraction * remaining
        remaining -= take
        position += min_gap + take
        out.append(position)
    return out


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def suggest_param(trial, param) -> Any:
    """Suggest one SpaceParam's value on an Optuna trial (or Ray's trial captor)."""
    if param.kind == "float":
        return trial.suggest_float(param.key, param.low, param.high, log=param.log, step=param.step)
    if param.kind == "int":
        return trial.suggest_int(param.key, param.low, param.high, log=param.log, step=param.step or 1)
    if param.kind == "categorical":
        if all(_is_plain(c) for c in param.choices):
            return trial.suggest_categorical(param.key, list(param.choices))
        # Optuna stores only None/bool/int/float/str choices; a list choice (e.g. milestones) goes by its JSON text.
        labels = [json.dumps(c, sort_keys=True) for c in param.choices]
        return param.choices[labels.index(trial.suggest_categorical(param.key, labels))]
    if param.kind == "breakpoints":
        bp = param.breakpoints
        pieces = bp.pieces_min
        if bp.pieces_max != bp.pieces_min:
            pieces = trial.suggest_int(f"{param.key}.pieces", bp.pieces_min, bp.pieces_max)
        units = [trial.suggest_float(f"{param.key}.u{k}", 0.0, 1.0) for k in range(1, pieces)]
        return breakpoints_from_unit(units, bp.low, bp.high, bp.min_gap)
    raise AssertionError(param.kind)  # pragma: no cover


def sample_params(trial, spec) -> dict[str, Any]:
    """Suggest every active parameter of `spec` in dependency order; returns {space key: value}."""
    chosen: dict[str, Any] = {}
    for param in spec.params:
        if spec.is_active(param, chosen):
            chosen[param.key] = suggest_param(trial, param)
    return chosen


def define_by_run(spec) -> Callable[[Any], dict]:
    """The define-by-run space for `CalibratedSearcher(space=...)`: suggests the active parameters and returns
    `{"trial_config": <resolved trial config>}` as constants (Ray merges them into the trial's config)."""

    def space(trial) -> dict:
        return {"trial_config": spec.apply(sample_params(trial, spec))}

    space.__name__ = f"space_{spec.name}"
    return space
