"""Search-space YAML: the schema, the loader and `gce-search validate`.

A space file is a partial trial config (the sections of `trainables.config.DEFAULTS`) plus the driver's sections
(`search`, `scheduler`, `resources`) and a `space:` of searched parameters. `load_spec` reads one into a typed
`SearchSpec`; every problem in the file is collected and raised together as one `ConfigError`, one line each:
`<yaml.path>: <what is wrong>; valid: <what would be>`. The schema reference with an example is docs/spaces.md.

Nothing here imports Ray or Optuna, so `gce-search validate` answers quickly.
"""
from __future__ import annotations

import copy
import difflib
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from gce_search.trainables.config import DEFAULTS, NULLABLE, SCHEMA, check_breakpoints, deep_merge, get_path, parse_override
from gce_search.trainables.config import MAX_SEED, pin_threads, problems_of, resolve, set_path, trial_problems
from gce_search.trainables.registry import ConfigError, Param

SPACES_DIR = Path(__file__).resolve().parent

TRIAL_SECTIONS = tuple(DEFAULTS)  # seed, data, model, loss, train, calibration, objective
TOP_LEVEL_KEYS = ("name", "description", *TRIAL_SECTIONS, "search", "scheduler", "resources", "space")

# Sections of the trial config that are `{name: <registry key>, **parameters of that entry}`. Their parameters are
# searched under the key `<entry>.<param>` (e.g. `gce.lam`), active only when that entry is the one chosen.
ENTRY_SECTIONS = ("loss", "model")

SEARCH_SCHEMA: dict[str, Param] = {
    "sampler": Param("tpe", kind="str", doc="search.space.SAMPLERS key"),
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
# ATS is the only calibrator that reads breakpoints (trainables.calibration); a breakpoint search is conditional on it.
BREAKPOINTS_CONDITION = ("calibration.method", ("ats",))


# --------------------------------------------------------------------------------------------------------- records


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
    sampler: str = "tpe"
    num_samples: int = 16
    seed: int = 0
    max_concurrent: int | None = None
    timeout_s: float | None = None

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
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    reuse_actors: bool = True

    def to_dict(self) -> dict:
        return {"cpus_per_trial": self.cpus_per_trial, "gpus_per_trial": self.gpus_per_trial,
                "reuse_actors": self.reuse_actors}


@dataclass(eq=True)
class BreakpointRange:
    """A searched ATS breakpoint vector: `pieces` confidence pieces (m - 1 breakpoints), strictly increasing inside
    (low, high), consecutive breakpoints (and the bounds) at least `min_gap` apart."""

    pieces_min: int
    pieces_max: int
    low: float = 0.0
    high: float = 1.0
    min_gap: float = 0.01

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
        """Whether `param` is active given the values `chosen` so far for the parameters before it (by key)."""
        for path, values in param.conditions().items():
            if self._value_at(path, chosen) not in values:
                return False
        return True

    def _value_at(self, path: str, chosen: Mapping[str, Any]) -> Any:
        for p in self.params:
            if p.path == path and p.key in chosen:
                return chosen[p.key]
        try:
            return get_path(self.base_config, path)
        except (KeyError, TypeError):
            return None

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
                takes = _entry_params(section, entry) or {}
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


# ------------------------------------------------------------------------------------------------------ YAML input


class _SpaceLoader(yaml.SafeLoader):
    """Safe YAML that records duplicate keys (PyYAML silently keeps the last) and reads `1e-3` as a float (YAML 1.1
    demands `1.0e-3`, so plain PyYAML returns the string '1e-3' for a learning rate)."""

    duplicates: list[str]


def _construct_mapping(loader: _SpaceLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        try:
            key = loader.construct_object(key_node, deep=True)
        except yaml.YAMLError:  # pragma: no cover - reported by the main constructor
            continue
        if isinstance(key, (str, int, float, bool)) or key is None:
            if key in seen:
                loader.duplicates.append(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice "
                                         f"(first on line {seen[key]}); valid: each key once per mapping")
            else:
                seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_SpaceLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_SpaceLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789"))


def _float_string(value: Any) -> Any:
    """'1e-3' (a --set value read as YAML 1.1) -> 0.001, also inside a list or mapping
    (`--set calibration.breakpoints=[1e-1,0.5]`), as a space file reads it; anything else unchanged."""
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_float_string(v) for v in value]
    if isinstance(value, dict):
        return {k: _float_string(v) for k, v in value.items()}
    return value


# Bounds on what a YAML file may expand to. A space file holds a few hundred values; PyYAML shares an aliased node
# between its uses, but every later walk over the document (validation, copies, the spec written to the experiment,
# TensorBoard's hparams) expands it, so ten nested aliases of ten would be 10^10 values ("billion laughs").
MAX_YAML_BYTES = 4 * 2**20
MAX_YAML_NODES = 100_000  # values after alias expansion: an alias counts its whole target each time it is used
MAX_YAML_DEPTH = 100  # nesting levels; Python's recursion limit would end a deeper document with a traceback
MAX_CHOICES = 1000  # values of one categorical parameter


def _utf8_text(path: Path, data: bytes) -> str:
    """The text of a YAML file's bytes; ConfigError naming the file when it is not UTF-8 text."""
    valid = "valid: a UTF-8 text file of YAML"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError([f"{path}: UTF-16 or UTF-32 text (byte-order mark {data[:2].hex(' ')}); {valid} (convert it, "
                           f"e.g. iconv -f UTF-16 -t UTF-8)"], str(path))
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigError([f"{path}: a NUL byte at offset {nul}: a binary file, or UTF-16/32 text; {valid}"],
                          str(path))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); {valid}"],
                          str(path)) from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expansion_problem(root: yaml.Node) -> str | None:
    """What is wrong with the size or shape of a composed document once its aliases are expanded, or None.

    Iterative, with each node's expanded size and height computed once (an aliased node is one object in the
    composed graph), so a document that would expand to 10^30 values is measured in the time of its text."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    open_nodes: set[int] = set()  # the nodes on the current path: an alias back to one of them is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            heights[key] = 1 + max((heights[id(c)] for c in children), default=0)
            line = node.start_mark.line + 1
            if sizes[key] > MAX_YAML_NODES:
                return (f"line {line}: this value expands to more than {MAX_YAML_NODES} values (an alias counts its "
                        f"anchor's whole value each time it is used); valid: at most {MAX_YAML_NODES} values")
            if heights[key] > MAX_YAML_DEPTH:
                return f"line {line}: nested more than {MAX_YAML_DEPTH} levels deep; valid: at most {MAX_YAML_DEPTH}"
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            return (f"line {node.start_mark.line + 1}: an alias refers to a value that contains it (a recursive "
                    f"value); valid: aliases to values defined before and outside them")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return None


def _syntax_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    what = f"{what} ({context})" if context else what
    return f"{where}YAML syntax error: {what}; valid: YAML (check indentation, colons, brackets and quotes)"


def read_yaml(path: Path | str) -> Any:
    """Parse a YAML file; ConfigError with the line number on a syntax error or a duplicate key, and for a file
    that is not UTF-8 text, a directory, or a document beyond MAX_YAML_BYTES / MAX_YAML_NODES / MAX_YAML_DEPTH.

    Every YAML file gce-search reads (space files, trial configs, studies, exports, an experiment's spec) goes
    through here, so each gets the same checks and reads `1e-3` as a float."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError([f"{path}: is a directory; valid: a YAML file"], str(path))
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError([f"{path}: {size} bytes; valid: a YAML file of at most {MAX_YAML_BYTES} bytes"],
                              str(path))
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError([f"{path}: cannot read ({err.strerror}); valid: a readable YAML file"]) from None
    loader = _SpaceLoader(_utf8_text(path, data))
    loader.duplicates = []
    try:
        node = loader.get_single_node()
        problem = _expansion_problem(node) if node is not None else None
        if problem is not None:
            raise ConfigError([problem], str(path))
        doc = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise ConfigError([_syntax_error(err)], str(path)) from None
    except RecursionError:
        raise ConfigError([f"nested more than {MAX_YAML_DEPTH} levels deep; valid: at most {MAX_YAML_DEPTH}"],
                          str(path)) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(list(loader.duplicates), str(path))
    return doc


def shipped_spaces() -> list[str]:
    """Names of the spaces shipped with the package (spaces/*.yaml)."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def locate(path_or_name: str) -> Path:
    """A path to a YAML file, or the name of a shipped space (`quickstart` -> spaces/quickstart.yaml)."""
    candidate = Path(path_or_name).expanduser()
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        raise ConfigError([f"{path_or_name}: is a directory; valid: a path to a space YAML file or the name of a "
                           f"shipped space ({', '.join(shipped_spaces())})"])
    if "/" not in path_or_name and "\\" not in path_or_name:
        shipped = SPACES_DIR / (path_or_name if path_or_name.endswith(".yaml") else f"{path_or_name}.yaml")
        if shipped.is_file():
            return shipped
    names = shipped_spaces()
    raise ConfigError([f"{path_or_name}: no such file, and not a shipped space{_suggest(path_or_name, names)}; "
                       f"valid: a path to a YAML file or one of {', '.join(names)}"])


def load_spec(path_or_name: str | Path, overrides: Iterable[str] = ()) -> SearchSpec:
    """Read, override (`--set key=value`) and validate a space file; ConfigError lists every problem."""
    path = locate(str(path_or_name))
    raw = read_yaml(path)
    return spec_from_dict(raw, overrides, source=str(path), default_name=path.stem)


# ------------------------------------------------------------------------------------------------------ validation


def _suggest(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _registry(section: str):
    """The registry behind an entry section or a name path (imported lazily: they import torch)."""
    if section == "loss":
        from gce_search.trainables.losses import LOSSES

        return LOSSES
    if section == "model":
        from gce_search.trainables.models import MODELS

        return MODELS
    if section == "data":
        from gce_search.trainables.data import DATASETS

        return DATASETS
    if section == "calibration":
        from gce_search.trainables.calibration import CALIBRATORS

        return CALIBRATORS
    raise AssertionError(section)  # pragma: no cover


_NAME_PATHS = {"loss.name": "loss", "model.name": "model", "data.name": "data", "calibration.method": "calibration"}


def _entry_params(section: str, name: Any) -> dict[str, Param] | None:
    reg = _registry(section)
    if not isinstance(name, str) or name not in reg:
        return None
    return dict(reg[name].params)


def _fmt(value: Any) -> str:
    return repr(value) if not isinstance(value, float) else f"{value:g}"


def _value_problem(path: str, value: Any) -> str | None:
    """What is wrong with `value` at the fixed config path `path` (a SCHEMA key or a registry name), or None."""
    if path in _NAME_PATHS:
        reg = _registry(_NAME_PATHS[path])
        if value in reg:
            return None
        return f"unknown {reg.kind} {value!r}{_suggest(str(value), reg.names())}; valid: {', '.join(reg.names())}"
    if path == BREAKPOINTS_PATH:
        bp = check_breakpoints(value)
        return None if bp is None else f"{bp}; valid: a strictly increasing list inside (0, 1)"
    param = SCHEMA.get(path)
    if param is None:
        return None
    if value is None and path in NULLABLE:
        return None
    p = param.problem(value)
    return None if p is None else f"{p}; valid: {param.describe()}"


class _Checker:
    """Collects every problem of one space file."""

    def __init__(self, raw: dict, source: str):
        self.raw = raw
        self.source = source
        self.problems: list[str] = []
        self.unparsed: set[str] = set()  # config paths of space entries that failed: no follow-up checks on them

    def add(self, msg: str) -> None:
        self.problems.append(msg)

    def section(self, key: str) -> dict:
        value = self.raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add(f"{key}: expected a mapping, got {type(value).__name__}; valid: a mapping of settings")
            return {}
        return value

    def settings(self, key: str, schema: dict[str, Param]) -> dict:
        given = self.section(key)
        out = {}
        for k, v in given.items():
            if k not in schema:
                self.add(f"{key}.{k}: unknown key{_suggest(str(k), schema)}; valid: {', '.join(schema)}")
        for k, param in schema.items():
            v = given.get(k, param.default)
            if v is None and param.default is None:
                out[k] = None
                continue
            p = param.problem(v)
            if p is not None:
                self.add(f"{key}.{k}: {p}; valid: {param.describe()}" + (" or null" if param.default is None else ""))
            out[k] = v
        return out


def _check_override_targets(raw: dict, overrides: Iterable[str], problems: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ValueError as err:
            problems.append(f"{err}")
            continue
        value = _float_string(value)
        if key == "space" or key.startswith("space."):
            problems.append(f"--set {text!r}: searched parameters cannot be overridden; valid: edit the space file, "
                            f"or --set a fixed setting (e.g. train.epochs=5, search.num_samples=8)")
            continue
        parts = key.split(".")
        node: Any = raw
        ok = True
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                node[part] = {}
                nxt = node[part]
            if not isinstance(nxt, dict):
                problems.append(f"--set {text!r}: {'.'.join(parts[:i + 1])} is {nxt!r}, not a mapping; "
                                f"valid: a dotted path to a setting")
                ok = False
                break
            node = nxt
        if ok:
            node[parts[-1]] = value
    return raw


def spec_from_dict(raw: Any, overrides: Iterable[str] = (), source: str = "", default_name: str = "space"
                   ) -> SearchSpec:
    """Validate a parsed space file (plus `--set` overrides) into a SearchSpec; ConfigError lists every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): expected a mapping of sections, got {type(raw).__name__}; valid: a mapping "
                           f"with keys such as {', '.join(TOP_LEVEL_KEYS)}"], source)
    override_problems: list[str] = []
    raw = _check_override_targets(raw, overrides, override_problems)
    ck = _Checker(raw, source)
    ck.problems.extend(override_problems)

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            ck.add(f"{key}: unknown top-level key{_suggest(str(key), TOP_LEVEL_KEYS)}; valid: "
                   f"{', '.join(TOP_LEVEL_KEYS)}")

    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        ck.add(f"name: got {name!r}; valid: a non-empty string")
        name = default_name
    description = raw.get("description", "") or ""
    if not isinstance(description, str):
        ck.add(f"description: got {description!r}; valid: a string")
        description = str(description)

    # -- driver sections
    search_values = ck.settings("search", SEARCH_SCHEMA)
    from gce_search.search.space import SAMPLERS  # no Optuna import at module level

    if isinstance(search_values.get("sampler"), str) and search_values["sampler"] not in SAMPLERS:
        s = search_values["sampler"]
        ck.add(f"search.sampler: unknown sampler {s!r}{_suggest(s, SAMPLERS.names())}; "
               f"valid: {', '.join(SAMPLERS.names())}")
    search = SearchSettings(**search_values)

    scheduler = _parse_scheduler(ck)
    resources = Resources(**ck.settings("resources", RESOURCES_SCHEMA))
    gpus = resources.gpus_per_trial
    if isinstance(gpus, (int, float)) and not isinstance(gpus, bool) and gpus > 1 and not float(gpus).is_integer():
        # Ray packs fractional GPUs only below one device; above one it reserves whole devices.
        ck.add(f"resources.gpus_per_trial: got {gpus!r}; valid: a fraction <= 1 or a whole number of GPUs")
    if _is_number(gpus) and 0 < gpus < RESOURCE_UNIT:
        ck.add(f"resources.gpus_per_trial: got {gpus!r}, which Ray rounds to 0; valid: 0 or at least {RESOURCE_UNIT:g}")
    cpus = resources.cpus_per_trial
    if _is_number(cpus) and 0 < cpus < RESOURCE_UNIT:
        ck.add(f"resources.cpus_per_trial: got {cpus!r}, which Ray rounds to 0; valid: at least {RESOURCE_UNIT:g}")

    # -- the fixed trial config
    fixed = {k: copy.deepcopy(raw[k]) for k in TRIAL_SECTIONS if k in raw and raw[k] is not None}

    # -- the searched parameters
    space_raw = raw.get("space")
    if space_raw is None:
        space_raw = {}
    if not isinstance(space_raw, dict):
        ck.add(f"space: expected a mapping of searched parameters, got {type(space_raw).__name__}; "
               f"valid: e.g. {{train.lr: {{low: 1.0e-3, high: 0.3, log: true}}}}")
        space_raw = {}
    if not space_raw and isinstance(raw.get("space", {}), (dict, type(None))):
        ck.add("space: no searched parameters, so every trial would train the same config; valid: a space: mapping "
               "of at least one parameter, e.g. space: {train.lr: {low: 1.0e-3, high: 0.3, log: true}} (see "
               "docs/spaces.md; to train one fixed config, use gce-search train)")
    params = _parse_space(ck, space_raw, fixed)

    # -- fixed settings, checked like a trial config. A loss/model section whose name is searched is checked with
    # its first choice as a placeholder; its fixed parameters are checked against every choice that takes them.
    validation_cfg = copy.deepcopy(fixed)
    entry_fixed: dict[str, dict] = {}
    for section in ENTRY_SECTIONS:
        if f"{section}.name" not in space_raw:
            continue
        sec = fixed.get(section) if isinstance(fixed.get(section), dict) else {}
        validation_cfg.pop(section, None)
        name_param = next((p for p in params if p.path == f"{section}.name"), None)
        if name_param is None:
            continue  # its choices were reported; checking against a guess would only add noise
        entry_fixed[section] = {k: v for k, v in sec.items() if k != "name"}
        validation_cfg[section] = {"name": name_param.choices[0]}
        _check_entry_fixed(ck, section, entry_fixed[section], name_param.choices)
    full = deep_merge(DEFAULTS, validation_cfg)
    ck.problems.extend(problems_of(full))

    _check_cross(ck, params, fixed, full, resources, scheduler)
    params = _order(ck, params)

    if ck.problems:
        raise ConfigError(ck.problems, source)

    base_partial = copy.deepcopy(validation_cfg)
    for section, values in entry_fixed.items():
        name_choice = base_partial[section]["name"]
        takes = _entry_params(section, name_choice) or {}
        base_partial[section].update({k: v for k, v in values.items() if k in takes})
    base_config = pin_threads(resolve(base_partial, source), resources.cpus_per_trial)  # recorded: a retrain matches
    spec = SearchSpec(name=name, description=description, base_config=base_config, params=params, search=search,
                      scheduler=scheduler, resources=resources, entry_fixed=entry_fixed, source=source)
    # Settings that are valid alone but not together fail in every trial: checked on the fixed settings and at
    # each end of every searched range (one parameter at a time, the others at their fixed or default values).
    problems = []
    for where, cfg in extreme_configs(spec):
        problems += [f"{where}{p}" for p in trial_problems(cfg) if f"{where}{p}" not in problems]
    if problems:
        raise ConfigError(problems, source)
    return spec


def extreme_configs(spec: SearchSpec) -> Iterator[tuple[str, dict]]:
    """(where, resolved config): the base config (where ''), then, for each searched setting outside the loss and
    model sections, the base config with that setting at each end of its range or at each of its choices (where
    'space.<key> at <value>: '). Values the config check refuses are left out: their own check reports them."""
    yield "", spec.base_config
    for p in spec.params:
        if p.entry is not None or p.path in ("loss.name", "model.name") or p.kind == "breakpoints":
            continue
        values = [p.low, p.high] if p.kind in ("float", "int") else list(p.choices or [])
        for value in values:
            cfg = copy.deepcopy(spec.base_config)
            set_path(cfg, p.path, copy.deepcopy(value))
            try:
                cfg = resolve(cfg)
            except ConfigError:
                continue
            yield f"space.{p.key} at {_fmt(value)}: ", cfg


def _parse_scheduler(ck: _Checker) -> SchedulerSettings:
    from gce_search.search.schedulers import SCHEDULERS

    given = ck.section("scheduler")
    name = given.get("name", "asha")
    if name not in SCHEDULERS:
        ck.add(f"scheduler.name: unknown scheduler {name!r}{_suggest(str(name), SCHEDULERS.names())}; "
               f"valid: {', '.join(SCHEDULERS.names())}")
        return SchedulerSettings(name=str(name), params={})
    schema = SCHEDULERS[name].params
    params = {}
    for k, v in given.items():
        if k == "name":
            continue
        if k not in schema:
            valid = ", ".join(["name", *schema])
            ck.add(f"scheduler.{k}: not a parameter of scheduler {name!r}{_suggest(str(k), schema)}; valid: {valid}")
            continue
        p = schema[k].problem(v)
        if p is not None:
            ck.add(f"scheduler.{k}: {p}; valid: {schema[k].describe()}")
        params[k] = v
    for k, param in schema.items():
        params.setdefault(k, param.default)
    return SchedulerSettings(name=name, params=params)


def _space_paths() -> list[str]:
    return [*SCHEMA, "loss.name", "model.name"]


def _all_entry_keys() -> list[str]:
    out = []
    for section in ENTRY_SECTIONS:
        try:
            reg = _registry(section)
        except ImportError:  # pragma: no cover - registry module missing
            continue
        for entry, info in reg.items():
            out.extend(f"{entry}.{p}" for p in info.params)
    return out


def _resolve_key(ck: _Checker, key: Any, fixed: dict) -> tuple[str, tuple[str, str] | None] | None:
    """space key -> (config path, entry) or None after reporting the problem."""
    where = f"space.{key}"
    if not isinstance(key, str) or not key:
        ck.add(f"{where}: a space key must be a dotted config path; valid: e.g. train.lr, gce.lam")
        return None
    head, _, rest = key.partition(".")
    if head == "objective":
        ck.add(f"{where}: the objective cannot be searched: every trial's score (w_acc * val/acc - w_ece * val/ece "
               f"on n_bins bins), the early-stopping ranks and the best-trial choice must use one definition; valid: "
               f"set it once in the file's 'objective' section, e.g. objective: {{w_ece: 2.0}}")
        return None
    if head in TRIAL_SECTIONS:
        if key in SCHEMA or key in ("loss.name", "model.name"):
            return key, None
        if head in ENTRY_SECTIONS and rest and "." not in rest:
            sec = fixed.get(head) if isinstance(fixed.get(head), dict) else {}
            example = f"{sec['name']}.{rest}" if isinstance(sec.get("name"), str) else f"<{head}>.{rest}"
            ck.add(f"{where}: {head} parameters are searched as '<{head} name>.{rest}'; valid: e.g. {example!r} "
                   f"(active only when {head}.name is that {head})")
            return None
        ck.add(f"{where}: unknown config path{_suggest(key, _space_paths() + _all_entry_keys())}; valid: a path of "
               f"trainables.config.SCHEMA (e.g. train.lr), loss.name, model.name, or <loss>.<param> (e.g. gce.lam)")
        return None
    for section in ENTRY_SECTIONS:
        reg = _registry(section)
        if head in reg:
            params = reg[head].params
            if not rest or "." in rest or rest not in params:
                valid = ", ".join(f"{head}.{p}" for p in params) or f"none ({section} {head!r} takes no parameters)"
                ck.add(f"{where}: not a parameter of {section} {head!r}{_suggest(rest, params)}; valid: {valid}")
                return None
            return f"{section}.{rest}", (section, head)
    ck.add(f"{where}: unknown key{_suggest(key, _space_paths() + _all_entry_keys())}; valid: a config path "
           f"(e.g. train.lr, loss.name) or <loss>.<param> (e.g. gce.lam, focal.gamma)")
    return None


def _target_param(path: str, entry: tuple[str, str] | None) -> Param | None:
    """The Param describing the values valid at `path` (None where a registry checks them instead)."""
    if entry is not None:
        params = _entry_params(*entry) or {}
        return params.get(path.split(".", 1)[1])
    return SCHEMA.get(path)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    """A number that is finite as a float (a 400-digit integer is not: float() of it overflows)."""
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _parse_space(ck: _Checker, space_raw: dict, fixed: dict) -> list[SpaceParam]:
    params: list[SpaceParam] = []
    for key, spec in space_raw.items():
        resolved = _resolve_key(ck, key, fixed)
        where = f"space.{key}"
        if isinstance(spec, list):
            spec = {"choices": spec}  # shorthand: `loss.name: [cross_entropy, gce]`
        if not isinstance(spec, dict):
            ck.add(f"{where}: got {spec!r}; valid: a mapping with low/high, choices or breakpoints, e.g. "
                   f"{{low: 0.0, high: 2.0}}")
            continue
        for k in spec:
            if k not in ENTRY_KEYS:
                ck.add(f"{where}.{k}: unknown key{_suggest(str(k), ENTRY_KEYS)}; valid: {', '.join(ENTRY_KEYS)}")
        if resolved is None:
            continue
        path, entry = resolved
        forms = [f for f, present in (("range", "low" in spec or "high" in spec), ("choices", "choices" in spec),
                                      ("breakpoints", "breakpoints" in spec)) if present]
        if len(forms) != 1:
            got = "none of them" if not forms else " and ".join(forms)
            ck.add(f"{where}: got {got}; valid: exactly one of low/high (float/int), choices (categorical), "
                   f"breakpoints (ATS breakpoint vector)")
            continue
        form = forms[0]
        if form == "range":
            param = _parse_range(ck, key, path, entry, spec)
        elif form == "choices":
            param = _parse_choices(ck, key, path, entry, spec)
        else:
            param = _parse_breakpoints(ck, key, path, spec)
        if param is None:
            ck.unparsed.add(path)
            continue
        for k in ("log", "step", "type"):
            if form != "range" and k in spec:
                ck.add(f"{where}.{k}: only for a low/high range; valid: remove it")
        param.when = _parse_when(ck, key, spec.get("when"))
        params.append(param)
    return params


def _parse_range(ck: _Checker, key: str, path: str, entry, spec: dict) -> SpaceParam | None:
    where = f"space.{key}"
    target = _target_param(path, entry)
    ok = True
    if target is not None and (target.choices is not None or target.kind in ("bool", "auto_bool", "str", "list")):
        ck.add(f"{where}: {path} is not numeric; valid: choices: [...] ({target.describe()})")
        return None
    low, high = spec.get("low"), spec.get("high")
    for name, v in (("low", low), ("high", high)):
        if v is None:
            ck.add(f"{where}.{name}: missing; valid: a number")
            ok = False
        elif not _is_number(v):
            ck.add(f"{where}.{name}: got {v!r}; valid: a number")
            ok = False
        elif not _is_finite(v):
            ck.add(f"{where}.{name}: got {v!r}; valid: a finite number")
            ok = False
    kind = spec.get("type")
    if kind is not None and kind not in ("float", "int"):
        ck.add(f"{where}.type: got {kind!r}; valid: float or int")
        return None
    if kind is None:
        if target is not None:
            kind = "int" if target.kind == "int" else "float"
        else:
            kind = "int" if isinstance(low, int) and isinstance(high, int) and not isinstance(spec.get("step"), float) \
                else "float"
    elif kind == "float" and target is not None and target.kind == "int":
        ck.add(f"{where}.type: {path} takes integers; valid: int")
        ok = False
    log = spec.get("log", False)
    if not isinstance(log, bool):
        ck.add(f"{where}.log: got {log!r}; valid: true or false")
        ok, log = False, False
    step = spec.get("step")
    if step is not None and (not _is_number(step) or not _is_finite(step) or step <= 0):
        ck.add(f"{where}.step: got {step!r}; valid: a number > 0")
        ok, step = False, None
    if not ok:
        return None
    if kind == "int":
        for name, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and not float(v).is_integer():
                ck.add(f"{where}.{name}: got {v!r}; valid: an integer ({path} is searched as int)")
                ok = False
        if not ok:
            return None
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
    else:
        low, high = float(low), float(high)
        step = float(step) if step is not None else None
    if low >= high:
        ck.add(f"{where}: low {_fmt(low)} >= high {_fmt(high)}; valid: low < high")
        ok = False
    if log and low <= 0:
        ck.add(f"{where}.low: got {_fmt(low)} with log: true; valid: low > 0 for a log scale")
        ok = False
    if log and step is not None and not (kind == "int" and step == 1):
        # optuna.distributions: step and log cannot be combined (int: only step 1)
        ck.add(f"{where}.step: cannot be combined with log: true; valid: remove step or set log: false")
        ok = False
    if step is not None and ok and step > high - low:
        ck.add(f"{where}.step: {_fmt(step)} is wider than the range [{_fmt(low)}, {_fmt(high)}]; "
               f"valid: a step <= high - low")
        ok = False
    if target is not None:
        for name, v in (("low", low), ("high", high)):
            p = target.problem(v)
            if p is not None:
                ck.add(f"{where}.{name}: {p} outside what {path} accepts; valid: {target.describe()}")
                ok = False
    if not ok:
        return None
    return SpaceParam(key=key, path=path, kind=kind, low=low, high=high, log=log, step=step, entry=entry)


def _choice_problem(path: str, entry, choice: Any) -> str | None:
    if entry is not None:
        target = _target_param(path, entry)
        if target is None:
            return None
        p = target.problem(choice)
        return None if p is None else f"{p}; valid: {target.describe()}"
    return _value_problem(path, choice)


def _parse_choices(ck: _Checker, key: str, path: str, entry, spec: dict) -> SpaceParam | None:
    where = f"space.{key}.choices"
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices:
        ck.add(f"{where}: got {choices!r}; valid: a non-empty list of values")
        return None
    if len(choices) > MAX_CHOICES:
        ck.add(f"{where}: {len(choices)} choices; valid: at most {MAX_CHOICES} (for a numeric setting, a low/high "
               f"range)")
        return None
    ok = True
    for i, c in enumerate(choices):
        if c in choices[:i]:
            ck.add(f"{where}[{i}]: {c!r} is listed twice; valid: distinct values")
            ok = False
            continue
        p = _choice_problem(path, entry, c)
        if p is not None:
            ck.add(f"{where}[{i}]: {p}")
            ok = False
    if not ok:
        return None
    return SpaceParam(key=key, path=path, kind="categorical", choices=copy.deepcopy(choices), entry=entry)


def _parse_breakpoints(ck: _Checker, key: str, path: str, spec: dict) -> SpaceParam | None:
    where = f"space.{key}.breakpoints"
    if path != BREAKPOINTS_PATH:
        ck.add(f"space.{key}: a breakpoint vector is searched only at {BREAKPOINTS_PATH}; valid: low/high or choices")
        return None
    bp = spec["breakpoints"]
    if not isinstance(bp, dict):
        ck.add(f"{where}: got {bp!r}; valid: a mapping {{pieces: m or [m_min, m_max], low, high, min_gap}}")
        return None
    ok = True
    for k in bp:
        if k not in BREAKPOINT_KEYS:
            ck.add(f"{where}.{k}: unknown key{_suggest(str(k), BREAKPOINT_KEYS)}; valid: {', '.join(BREAKPOINT_KEYS)}")
            ok = False
    pieces = bp.get("pieces")
    pieces_range: tuple[int, int] | None = None
    valid_pieces = "an integer >= 2 (pieces = breakpoints + 1) or [m_min, m_max] with 2 <= m_min <= m_max"
    if isinstance(pieces, int) and not isinstance(pieces, bool):
        pieces_range = (pieces, pieces)
    elif (isinstance(pieces, list) and len(pieces) == 2
          and all(isinstance(m, int) and not isinstance(m, bool) for m in pieces)):
        pieces_range = (pieces[0], pieces[1])
    if pieces_range is None or pieces_range[0] < 2 or pieces_range[0] > pieces_range[1]:
        ck.add(f"{where}.pieces: got {pieces!r}; valid: {valid_pieces}")
        ok = False
    values = {}
    for k, default in BREAKPOINT_DEFAULTS.items():
        v = bp.get(k, default)
        if not _is_number(v):
            ck.add(f"{where}.{k}: got {v!r}; valid: a number")
            ok = False
        values[k] = v
    if not ok:
        return None
    for k, v in values.items():
        if not math.isfinite(v):
            ck.add(f"{where}.{k}: got {v!r}; valid: a finite number")
            ok = False
    if not ok:
        return None
    low, high, gap = float(values["low"]), float(values["high"]), float(values["min_gap"])
    if not 0.0 <= low < 1.0:
        ck.add(f"{where}.low: got {_fmt(low)}; valid: a number in [0, 1)")
        ok = False
    if not 0.0 < high <= 1.0:
        ck.add(f"{where}.high: got {_fmt(high)}; valid: a number in (0, 1]")
        ok = False
    if ok and low >= high:
        ck.add(f"{where}: low {_fmt(low)} >= high {_fmt(high)}; valid: low < high")
        ok = False
    if gap < MIN_GAP_FLOOR:
        # a gap well above float rounding keeps the vector strictly increasing and strictly inside (0, 1)
        ck.add(f"{where}.min_gap: got {_fmt(gap)}; valid: a number >= {MIN_GAP_FLOOR:g}")
        ok = False
    if ok and pieces_range[1] * gap >= high - low:
        ck.add(f"{where}: {pieces_range[1]} pieces at least {_fmt(gap)} wide do not fit in ({_fmt(low)}, "
               f"{_fmt(high)}); valid: pieces * min_gap < high - low")
        ok = False
    if not ok:
        return None
    return SpaceParam(key=key, path=path, kind="breakpoints",
                      breakpoints=BreakpointRange(pieces_range[0], pieces_range[1], low, high, gap))


def _parse_when(ck: _Checker, key: str, when: Any) -> dict[str, list]:
    where = f"space.{key}.when"
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        ck.add(f"{where}: got {when!r}; valid: a mapping {{config.path: value or [values]}}, e.g. "
               f"{{train.optimizer: sgd}}")
        return {}
    out: dict[str, list] = {}
    for path, values in when.items():
        if not isinstance(path, str):
            ck.add(f"{where}: key {path!r}; valid: a dotted config path")
            continue
        values = values if isinstance(values, list) else [values]
        if not values:
            ck.add(f"{where}.{path}: empty list; valid: a value or a non-empty list of values")
            continue
        head, _, rest = path.partition(".")
        known = path in SCHEMA or path in _NAME_PATHS or (head in ENTRY_SECTIONS and rest and "." not in rest)
        if not known:
            ck.add(f"{where}.{path}: unknown config path{_suggest(path, _space_paths())}; valid: a dotted path of the "
                   f"trial config, e.g. loss.name, train.optimizer")
            continue
        bad = False
        for v in values:
            p = _value_problem(path, v)
            if p is not None:
                ck.add(f"{where}.{path}: {p}")
                bad = True
        if not bad:
            out[path] = values
    return out


def _check_entry_fixed(ck: _Checker, section: str, values: dict, candidates: list) -> None:
    """Fixed parameters of a loss/model section whose name is searched: each must belong to some candidate."""
    for k, v in values.items():
        takers = [c for c in candidates if k in (_entry_params(section, c) or {})]
        if not takers:
            ck.add(f"{section}.{k}: not a parameter of any searched {section} ({', '.join(map(str, candidates))}); "
                   f"valid: a parameter of one of them, or remove it")
            continue
        for c in takers:
            param = _entry_params(section, c)[k]
            p = param.problem(v)
            if p is not None:
                ck.add(f"{section}.{k}: {p} for {section} {c!r}; valid: {param.describe()}")


def _fixed_has(fixed: dict, path: str) -> bool:
    node: Any = fixed
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _check_cross(ck: _Checker, params: list[SpaceParam], fixed: dict, full: dict, resources: Resources,
                 scheduler: SchedulerSettings) -> None:
    by_path: dict[str, list[SpaceParam]] = {}
    for p in params:
        by_path.setdefault(p.path, []).append(p)

    for p in params:
        where = f"space.{p.key}"
        # a searched path must not also be fixed: which value wins would be a silent guess
        if p.entry is None and _fixed_has(fixed, p.path) and p.path not in ("loss.name", "model.name"):
            ck.add(f"{where}: {p.path} is also set as a fixed setting; valid: search it or fix it, not both "
                   f"(remove {p.path} from the fixed settings or from space)")
        if p.path in ("loss.name", "model.name") and isinstance(fixed.get(p.path.split(".")[0]), dict) \
                and "name" in fixed[p.path.split(".")[0]]:
            ck.add(f"{where}: {p.path} is also set as a fixed setting; valid: search it or fix it, not both")
        if p.entry is not None:
            section = p.entry[0]
            leaf = p.path.split(".", 1)[1]
            if isinstance(fixed.get(section), dict) and leaf in fixed[section]:
                ck.add(f"{where}: {section}.{leaf} is also set as a fixed setting; valid: search it or fix it, "
                       f"not both (fix a single {section}'s value with {{choices: [value]}})")
        if p.path in ("loss.name",) and p.when:
            ck.add(f"{where}.when: the loss choice cannot be conditional; valid: remove when")
        # never-active parameters: a condition that no value of its path can meet
        for path, allowed in p.conditions().items():
            if not allowed:
                ck.add(f"{where}: never active (its conditions on {path} contradict each other); "
                       f"valid: conditions some configuration can meet")
                continue
            if path in ck.unparsed:
                continue
            searched = [q for q in by_path.get(path, []) if q is not p]
            if searched:
                q = searched[0]
                if q.kind != "categorical":
                    if not any(_range_can_draw(q, v) for v in allowed):
                        drawn = (f"a continuous range [{_fmt(q.low)}, {_fmt(q.high)}]" if q.kind == "float" else
                                 f"the integers {_fmt(q.low)} .. {_fmt(q.high)}" + (f" step {_fmt(q.step)}" if q.step
                                                                                   else "")
                                 if q.kind == "int" else "a continuous breakpoint vector")
                        ck.add(f"{where}.when: never active: it needs {path} in {list(allowed)} but {path} is "
                               f"searched over {drawn}, which never gives exactly those values; valid: a condition on "
                               f"a categorical parameter or a fixed setting (e.g. search {path} with choices)")
                    continue
                if any(v in q.choices for v in allowed):
                    continue
                if p.entry is not None and path == f"{p.entry[0]}.name":
                    ck.add(f"{where}: {p.entry[0]} {p.entry[1]!r} is not among the searched {path} choices "
                           f"{q.choices}; valid: add {p.entry[1]!r} to the choices, or remove {p.key}")
                else:
                    ck.add(f"{where}: never active: it needs {path} in {list(allowed)} but {path} is searched over "
                           f"{q.choices}; valid: a condition one of those values meets")
                continue
            try:
                value = get_path(full, path)
            except (KeyError, TypeError):
                value = None
            if value not in allowed:
                if p.entry is not None and path == f"{p.entry[0]}.name":
                    ck.add(f"{where}: {p.entry[0]} {p.entry[1]!r} is not the fixed {p.entry[0]} ({value!r}); valid: "
                           f"a parameter of {value!r}, or search {path} with {p.entry[1]!r} among its choices")
                elif path == BREAKPOINTS_CONDITION[0] and p.path == BREAKPOINTS_PATH:
                    ck.add(f"{where}: never active: calibration.method is {value!r} and only ats uses breakpoints; "
                           f"valid: calibration.method: ats, or search calibration.method with ats among its choices")
                else:
                    ck.add(f"{where}: never active: it needs {path} in {list(allowed)} but {path} is fixed to "
                           f"{value!r}; valid: a condition the fixed value meets, or search {path}")

    train = full.get("train", {}) if isinstance(full.get("train"), dict) else {}
    gpus = resources.gpus_per_trial
    if train.get("device") == "cuda" and "train.device" not in by_path and _is_number(gpus) and gpus == 0:
        ck.add("resources.gpus_per_trial: 0 but train.device is 'cuda': the trial would see no GPU; valid: "
               "gpus_per_trial > 0, or train.device: auto")
    workers = train.get("workers")
    if (_is_number(gpus) and gpus > 0 and _is_number(workers) and workers > 1 and "train.workers" not in by_path
            and gpus < workers):
        ck.add(f"resources.gpus_per_trial: {_fmt(gpus)} for train.workers {workers} DDP processes; valid: one whole "
               f"GPU per process (gpus_per_trial >= {workers}), or train.workers: 1")
    epochs = train.get("epochs")
    grace = scheduler.params.get("grace_period")
    searched_epochs = by_path.get("train.epochs", [])
    if searched_epochs:
        # the longest budget a trial may get (search.driver.max_epochs): ASHA's rungs start at grace_period
        p = searched_epochs[0]
        values = [p.high] if p.high is not None else [c for c in (p.choices or []) if _is_number(c)]
        longest = max(values) if values else None
        if longest is not None and p.conditions() and _is_number(epochs):
            longest = max(longest, epochs)
        if _is_number(grace) and longest is not None and grace > longest:
            ck.add(f"scheduler.grace_period: {grace} is more than the largest searched train.epochs ({longest}); "
                   f"valid: 1 .. {longest}")
    elif _is_number(grace) and _is_number(epochs) and "train.epochs" not in ck.unparsed and grace > epochs:
        ck.add(f"scheduler.grace_period: {grace} is more than train.epochs ({epochs}); valid: 1 .. {epochs}, e.g. "
               f"--set scheduler.grace_period={max(1, int(epochs) // 3)} (ASHA's first rung, at most the budget)")


def _range_can_draw(q: SpaceParam, value: Any) -> bool:
    """Whether the searched range `q` can give exactly `value` (a float range: never, in practice)."""
    if q.kind != "int" or not _is_number(value) or not float(value).is_integer():
        return False
    step = int(q.step or 1)
    return q.low <= value <= q.high and (int(value) - int(q.low)) % step == 0


def _order(ck: _Checker, params: list[SpaceParam]) -> list[SpaceParam]:
    """Stable topological order: a parameter after every parameter at a path its conditions read."""
    deps = {p.key: [q.key for q in params if q is not p and q.path in p.conditions()] for p in params}
    ordered: list[SpaceParam] = []
    placed: set[str] = set()
    remaining = list(params)
    while remaining:
        ready = [p for p in remaining if all(d in placed for d in deps[p.key])]
        if not ready:
            cycle = " -> ".join(p.key for p in remaining)
            ck.add(f"space: the conditions of {cycle} depend on each other in a cycle; valid: conditions that "
                   f"read parameters which do not read them back")
            return ordered + remaining
        first = ready[0]
        ordered.append(first)
        placed.add(first.key)
        remaining.remove(first)
    return ordered


# ------------------------------------------------------------------------------------------------------------- CLI


def data_problems_of(spec: SearchSpec) -> list[str]:
    """What the trials would find wrong with the data files and the split sizes, for the fixed data settings and
    at the ends of each searched data setting (trainables.data.data_problems; headers and listings only)."""
    from gce_search.trainables.data import data_problems

    out: list[str] = []
    for where, cfg in extreme_configs(spec):
        if where and not where.startswith("space.data."):
            continue  # the data settings are the base ones: already checked
        out += [f"{where}{p}" for p in data_problems(cfg["data"]) if f"{where}{p}" not in out]
    return out


def cmd_validate(args) -> int:
    """`gce-search validate SPACE [--set k=v]`: 'OK: ...' and exit 0, or every problem, one per line, exit 2."""
    try:
        spec = load_spec(args.space, getattr(args, "overrides", None) or ())
        if not getattr(args, "skip_data", False):
            problems = data_problems_of(spec)
            if problems:
                raise ConfigError(problems, spec.source)
    except ConfigError as err:
        head = f"{err.source}: " if err.source else ""
        print(f"INVALID: {head}{len(err.problems)} problem(s)", file=sys.stderr)
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
    print(f"OK: {spec.summary()}")
    return 0
