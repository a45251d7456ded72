"""The search-spec records: `SearchSpec`, `SpaceParam`, the driver's settings, and the rule for whether a searched
parameter is active.

A space file is a partial trial config (the sections of `trainables.config.DEFAULTS`) plus the driver's sections
(`search`, `scheduler`, `resources`) and a `space:` of searched parameters; spaces.validation checks one into a
`SearchSpec` (spaces.loading reads the file). The schema reference with an example is docs/spaces.md.

Nothing here imports torch, numpy, Ray or Optuna.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from gce_search.trainables.catalog import BREAKPOINT_CALIBRATORS, LOSSES, MODELS
from gce_search.trainables.config import DEFAULTS, MAX_SEED, get_path, resolve, set_path
from gce_search.trainables.registry import Param

TRIAL_SECTIONS = tuple(DEFAULTS)  # seed, data, model, loss, train, calibration, objective, trainable
TOP_LEVEL_KEYS = ("name", "description", *TRIAL_SECTIONS, "search", "scheduler", "resources", "space")

# Sections of the trial config that are `{name: <registry key>, **parameters of that entry}`. Their parameters are
# searched under the key `<entry>.<param>` (e.g. `gce.lam`), active only when that entry is the one chosen.
ENTRY_SECTIONS = ("loss", "model")

SEARCH_SCHEMA: dict[str, Param] = {
    "sampler": Param("tpe", kind="str", doc="spaces.catalog.SAMPLERS key"),
    "num_samples": Param(16, low=1, kind="int", doc="trials in the search"),
    # Optuna's samplers seed numpy's RandomState, which takes 0 .. 2^32 - 1
    "seed": Param(0, low=0, high=MAX_SEED, kind="int", doc="seeds the sampler"),
    "max_concurrent": Param(None, low=1, kind="int", doc="trials running at once; null: as resources allow"),
    "timeout_s": Param(None, low=0.0, low_inclusive=False, doc="wall-clock budget of the search, seconds"),
}

# Ray keeps resource amounts in units of 1e-4 (ray_constants.RESOURCE_UNIT_SCALING): a smaller request is 0.
RESOURCE_UNIT = 1e-4

RESOURCES_SCHEMA: dict[str, Param] = {
    "cpus_per_trial": Param(1, low=0.0, low_inclusive=False, doc="CPUs reserved per trial (fractions allowed)"),
    "gpus_per_trial": Param(0, low=0.0, doc="GPUs per trial: a fraction <= 1 packs trials onto one GPU"),
    # docs/design.md, Ray facts: reuse_actors cut the per-trial overhead from ~4.3 to ~1.0 slot-seconds.
    "reuse_actors": Param(True, kind="bool", doc="reuse trial actors between trials"),
}

ENTRY_KEYS = ("low", "high", "log", "step", "type", "choices", "breakpoints", "when")
BREAKPOINT_KEYS = ("pieces", "low", "high", "min_gap")
BREAKPOINT_DEFAULTS = {"low": 0.0, "high": 1.0, "min_gap": 0.01}
MIN_GAP_FLOOR = 1e-6  # smaller gaps can round two breakpoints (or the last and 1.0) to the same float
BREAKPOINTS_PATH = "calibration.breakpoints"
# Only ATS reads breakpoints (trainables.catalog.BREAKPOINT_CALIBRATORS); a breakpoint search is conditional on it.
BREAKPOINTS_CONDITION = ("calibration.method", BREAKPOINT_CALIBRATORS)

# The registry behind each entry section (its `name` picks an entry whose params the section holds).
ENTRY_REGISTRIES = {"loss": LOSSES, "model": MODELS}


def entry_params(section: str, name: Any) -> dict[str, Param] | None:
    """The parameters of entry `name` of an entry section (loss, model); None for an unknown name."""
    reg = ENTRY_REGISTRIES[section]
    if not isinstance(name, str) or name not in reg:
        return None
    return dict(reg[name].params)


def _value_at(config: Mapping, path: str) -> Any:
    try:
        return get_path(config, path)
    except (KeyError, TypeError):
        return None


class _SettingsMapping(Mapping):
    """Settings records read both as attributes (`spec.search.sampler`) and as a mapping (`spec.search["sampler"]`),
    so code written against plain settings dicts (e.g. `search.schedulers.build_scheduler`) takes them as they are."""

    def to_dict(self) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(eq=True)
class SearchSettings(_SettingsMapping):
    sampler: str = SEARCH_SCHEMA["sampler"].default
    num_samples: int = SEARCH_SCHEMA["num_samples"].default
    seed: int = SEARCH_SCHEMA["seed"].default
    max_concurrent: int | None = SEARCH_SCHEMA["max_concurrent"].default
    timeout_s: float | None = SEARCH_SCHEMA["timeout_s"].default

    def to_dict(self) -> dict:
        return {"sampler": self.sampler, "num_samples": self.num_samples, "seed": self.seed,
                "max_concurrent": self.max_concurrent, "timeout_s": self.timeout_s}


@dataclass(eq=True)
class SchedulerSettings(_SettingsMapping):
    name: str = "asha"
    params: dict = field(default_factory=dict)  # every parameter of SCHEDULERS[name], defaults filled in

    def to_dict(self) -> dict:
        return {"name": self.name, **self.params}


@dataclass(eq=True)
class Resources(_SettingsMapping):
    cpus_per_trial: float = RESOURCES_SCHEMA["cpus_per_trial"].default
    gpus_per_trial: float = RESOURCES_SCHEMA["gpus_per_trial"].default
    reuse_actors: bool = RESOURCES_SCHEMA["reuse_actors"].default

    def to_dict(self) -> dict:
        return {"cpus_per_trial": self.cpus_per_trial, "gpus_per_trial": self.gpus_per_trial,
                "reuse_actors": self.reuse_actors}


@dataclass(eq=True)
class BreakpointRange:
    """A searched ATS breakpoint vector: `pieces` confidence pieces (m - 1 breakpoints), strictly increasing inside
    (low, high), consecutive breakpoints (and the bounds) at least `min_gap` apart."""

    pieces_min: int
    pieces_max: int
    low: float = BREAKPOINT_DEFAULTS["low"]
    high: float = BREAKPOINT_DEFAULTS["high"]
    min_gap: float = BREAKPOINT_DEFAULTS["min_gap"]

    def to_dict(self) -> dict:
        pieces: Any = self.pieces_min if self.pieces_min == self.pieces_max else [self.pieces_min, self.pieces_max]
        return {"pieces": pieces, "low": self.low, "high": self.high, "min_gap": self.min_gap}


@dataclass(eq=True)
class SpaceParam:
    """One searched parameter.

    key: the space key as written (`train.lr`, `gce.lam`, `calibration.breakpoints`); also its Optuna name.
    path: the dotted trial-config path its value lands at (`gce.lam` -> `loss.lam`).
    kind: float | int | categorical | breakpoints.
    entry: (section, name) for `<entry>.<param>` keys, e.g. ("loss", "gce"): active only when loss.name == gce.
    when: user conditions {config path: [allowed values]}; all must hold for the parameter to be active.
    """

    key: str
    path: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list | None = None
    breakpoints: BreakpointRange | None = None
    entry: tuple[str, str] | None = None
    when: dict[str, list] = field(default_factory=dict)

    def conditions(self) -> dict[str, tuple]:
        """Every condition for this parameter to be active: `when` plus the implicit ones (its loss/model is the
        chosen one; breakpoints only under ATS), intersected per path."""
        conds: dict[str, tuple] = {p: tuple(v) for p, v in self.when.items()}
        implicit = []
        if self.entry is not None:
            implicit.append((f"{self.entry[0]}.name", (self.entry[1],)))
        if self.path == BREAKPOINTS_PATH:
            implicit.append(BREAKPOINTS_CONDITION)
        for path, values in implicit:
            conds[path] = tuple(v for v in conds[path] if v in values) if path in conds else values
        return conds

    def is_active(self, config: Mapping | Callable[[str], Any]) -> bool:
        """Whether this parameter applies: every one of its `conditions()` holds. `config` is a trial config (a
        fixed setting such as calibration.method: ts deactivates a parameter as surely as a searched one; a path
        the config lacks meets no condition), or a function from a config path to its value.

        The one rule for activity: sampling (SearchSpec.is_active), results and TensorBoard all ask it."""
        value_at = config if callable(config) else (lambda path: _value_at(config, path))
        return all(value_at(path) in allowed for path, allowed in self.conditions().items())

    @classmethod
    def from_raw(cls, key: str, entry: Any = None) -> "SpaceParam":
        """The SpaceParam of searched parameter `key` as far as its raw space entry tells (for a spec.yaml that
        does not validate, or a view that sees only the raw space): its config path, its entry (`<loss>.<param>`
        and `<model>.<param>` keys are active only when loss.name / model.name is that entry) and its `when:`
        conditions. Meant for `conditions()` and `is_active`; its kind and range are not read."""
        entry = entry if isinstance(entry, dict) else {}
        head, _, rest = key.partition(".")
        owner, path = None, key
        if head not in TRIAL_SECTIONS:
            # `<model>.<param>` for a model's parameter, else `<loss>.<param>` (as the checker resolves them)
            section = "model" if head in MODELS and head not in LOSSES else "loss"
            owner, path = (section, head), f"{section}.{rest}" if rest else section
        when = entry.get("when") if isinstance(entry.get("when"), dict) else {}
        when = {p: list(v) if isinstance(v, (list, tuple)) else [v] for p, v in when.items()}
        return cls(key=key, path=path, kind="categorical", entry=owner, when=when)

    def optuna_names(self) -> list[str]:
        """The Optuna parameter names this parameter may suggest (breakpoints: piece count + one per breakpoint)."""
        if self.kind != "breakpoints":
            return [self.key]
        bp = self.breakpoints
        names = [f"{self.key}.pieces"] if bp.pieces_min != bp.pieces_max else []
        return names + [f"{self.key}.u{k}" for k in range(1, bp.pieces_max)]

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        if self.kind in ("float", "int"):
            out = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
            if self.step is not None:
                out["step"] = self.step
        elif self.kind == "categorical":
            out = {"choices": copy.deepcopy(self.choices)}
        else:
            out = {"breakpoints": self.breakpoints.to_dict()}
        if self.when:
            out["when"] = {p: list(v) for p, v in self.when.items()}
        return out


@dataclass(eq=True)
class SearchSpec:
    """A validated search space.

    base_config: the resolved trial config of the fixed settings; at searched paths it holds the fixed or default
    value, which `apply` replaces (an inactive parameter leaves it in place). Where `loss.name` (or `model.name`) is
    searched, it holds the first choice.
    params: searched parameters, ordered so that a parameter comes after every parameter its conditions read.
    entry_fixed: for a loss/model section whose name is searched, its fixed parameters (kept for the chosen entry
    only if that entry takes them).
    """

    name: str
    description: str
    base_config: dict
    params: list[SpaceParam]
    search: SearchSettings
    scheduler: SchedulerSettings
    resources: Resources
    entry_fixed: dict[str, dict] = field(default_factory=dict)
    source: str = field(default="", compare=False)

    # -- sampling side

    def param(self, key: str) -> SpaceParam:
        for p in self.params:
            if p.key == key:
                return p
        raise KeyError(key)

    def is_active(self, param: SpaceParam, chosen: Mapping[str, Any]) -> bool:
        """Whether `param` is active given the values `chosen` so far for the parameters before it (by key), the
        base config elsewhere (SpaceParam.is_active)."""
        return param.is_active(lambda path: self._value_at(path, chosen))

    def _value_at(self, path: str, chosen: Mapping[str, Any]) -> Any:
        for p in self.params:
            if p.path == path and p.key in chosen:
                return chosen[p.key]
        return _value_at(self.base_config, path)

    def active_values(self, flat_params: Mapping[str, Any]) -> dict[str, Any]:
        """The values of the parameters that are active under `flat_params` (inactive ones are dropped)."""
        unknown = [k for k in flat_params if k not in {p.key for p in self.params}]
        if unknown:
            raise ValueError(f"not searched parameters of space {self.name!r}: {', '.join(map(repr, unknown))}; "
                             f"valid: {', '.join(p.key for p in self.params) or 'none'}")
        chosen: dict[str, Any] = {}
        for p in self.params:
            if not self.is_active(p, chosen):
                continue
            if p.key not in flat_params:
                raise ValueError(f"{p.key}: active in this configuration but no value given")
            chosen[p.key] = flat_params[p.key]
        return chosen

    def apply(self, flat_params: Mapping[str, Any]) -> dict:
        """The resolved trial config with each active parameter's value at its dotted path.

        `flat_params` maps space keys to values (a breakpoint vector as a list); values of inactive parameters
        are ignored. Raises ValueError for unknown keys or missing active values, ConfigError for invalid values.
        """
        chosen = self.active_values(flat_params)
        cfg = copy.deepcopy(self.base_config)
        for section in ENTRY_SECTIONS:
            key = f"{section}.name"
            if key in chosen:
                entry = chosen[key]
                takes = entry_params(section, entry) or {}
                fixed_params = self.entry_fixed.get(section, {})
                cfg[section] = {"name": entry, **{k: copy.deepcopy(v) for k, v in fixed_params.items() if k in takes}}
        for p in self.params:
            if p.key in chosen and p.path not in ("loss.name", "model.name"):
                value = chosen[p.key]
                if p.kind == "breakpoints":
                    value = [float(b) for b in value]
                set_path(cfg, p.path, copy.deepcopy(value))
        return resolve(cfg, source=f"space {self.name!r}")

    # -- serialisation

    def to_dict(self) -> dict:
        """The spec as a space file (YAML-serialisable); `load_spec` of it gives an equal SearchSpec."""
        cfg = copy.deepcopy(self.base_config)
        searched_paths = {p.path for p in self.params if p.entry is None}
        for section in ENTRY_SECTIONS:
            if f"{section}.name" in searched_paths:
                cfg[section] = copy.deepcopy(self.entry_fixed.get(section, {}))
        for path in sorted(searched_paths):
            if path in ("loss.name", "model.name"):
                continue
            parent_path, _, leaf = path.rpartition(".")
            parent = get_path(cfg, parent_path) if parent_path else cfg
            parent.pop(leaf, None)
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        out.update(cfg)
        out["search"] = self.search.to_dict()
        out["scheduler"] = self.scheduler.to_dict()
        out["resources"] = self.resources.to_dict()
        out["space"] = {p.key: p.to_dict() for p in self.params}
        return out

    def summary(self) -> str:
        res = self.resources
        return (f"{self.name} ({len(self.params)} searched parameters, sampler {self.search.sampler}, "
                f"{self.search.num_samples} trials, scheduler {self.scheduler.name}, "
                f"{res.cpus_per_trial:g} CPU / {res.gpus_per_trial:g} GPU per trial, "
                f"{self.base_config['train']['epochs']} epochs on {self.base_config['data']['name']})")
