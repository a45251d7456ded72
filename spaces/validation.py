"""The space checker: a parsed space file (plus `--set` overrides) into a validated `SearchSpec`.

Every problem in the file is collected and raised together as one `ConfigError`, one line each:
`<yaml.path>: <what is wrong>; valid: <what would be>`. Names and parameters come from the torch-free catalogs
(trainables.catalog for losses, models, datasets, calibrators; spaces.catalog for samplers and schedulers), so
nothing here imports torch, Ray or Optuna.
"""
from __future__ import annotations

import copy
import difflib
import math
from typing import Any, Iterable, Iterator

from gce_search.errors import ConfigError
from gce_search.spaces.catalog import SAMPLERS, SCHEDULERS
from gce_search.spaces.overrides import apply_overrides
from gce_search.spaces.records import (BREAKPOINT_DEFAULTS, BREAKPOINT_KEYS, BREAKPOINTS_CONDITION, BREAKPOINTS_PATH,
                                       ENTRY_KEYS, ENTRY_REGISTRIES, ENTRY_SECTIONS, MIN_GAP_FLOOR, RESOURCE_UNIT,
                                       RESOURCES_SCHEMA, SEARCH_SCHEMA, TOP_LEVEL_KEYS, TRIAL_SECTIONS,
                                       BreakpointRange, Resources, SchedulerSettings, SearchSettings, SearchSpec,
                                       SpaceParam, entry_params)
from gce_search.trainables import external
from gce_search.trainables.catalog import CALIBRATORS, DATASETS, LOSSES, MODELS
from gce_search.trainables.config import (NULLABLE, anchor_paths, SCHEMA, check_breakpoints, get_path, pin_threads, problems_of,
                                          resolve, set_path, trial_problems, with_defaults)
from gce_search.trainables.registry import Param
from gce_search.trainables.user_code import trainable_problems

MAX_CHOICES = 1000  # values of one categorical parameter


def suggest(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_NAME_REGISTRIES = {"loss.name": LOSSES, "model.name": MODELS, "data.name": DATASETS,
                    "calibration.method": CALIBRATORS}
_NAME_PATHS = {path: reg.kind for path, reg in _NAME_REGISTRIES.items()}



def _fmt(value: Any) -> str:
    return repr(value) if not isinstance(value, float) else f"{value:g}"


def _value_problem(path: str, value: Any) -> str | None:
    """What is wrong with `value` at the fixed config path `path` (a SCHEMA key or a registry name), or None."""
    if path == "model.name" and external.is_external_name(value):
        return external.name_problem(value)  # imports torchvision or timm: only for such a name
    if path in _NAME_REGISTRIES:
        reg = _NAME_REGISTRIES[path]
        if value in reg:
            return None
        more = ", torchvision.<builder>, timm.<model>" if path == "model.name" else ""
        return (f"unknown {reg.kind} {value!r}{suggest(str(value), reg.names())}; valid: {', '.join(reg.names())}"
                f"{more}")
    if path == BREAKPOINTS_PATH:
        bp = check_breakpoints(value)
        if bp is None or isinstance(value, dict):  # a refinement request's problem names what is valid
            return bp
        return f"{bp}; valid: a strictly increasing list inside (0, 1), or {{refine: cv, ...}}"
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
        for k in given:
            if k not in schema:
                self.add(f"{key}.{k}: unknown key{suggest(str(k), schema)}; valid: {', '.join(schema)}")
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


_REFUSED_OVERRIDES = {"space": "searched parameters cannot be overridden; valid: edit the space file, or --set a "
                               "fixed setting (e.g. train.epochs=5, search.num_samples=8)"}


def spec_from_dict(raw: Any, overrides: Iterable[str] = (), source: str = "", default_name: str = "space"
                   ) -> SearchSpec:
    """Validate a parsed space file (plus `--set` overrides) into a SearchSpec; ConfigError lists every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): expected a mapping of sections, got {type(raw).__name__}; valid: a mapping "
                           f"with keys such as {', '.join(TOP_LEVEL_KEYS)}"], source)
    raw, override_problems = apply_overrides(raw, overrides, refused=_REFUSED_OVERRIDES)
    raw = anchor_paths(raw)  # a relative data.root / data.path: from where gce-search runs, not a trial's folder
    ck = _Checker(raw, source)
    ck.problems.extend(override_problems)

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            ck.add(f"{key}: unknown top-level key{suggest(str(key), TOP_LEVEL_KEYS)}; valid: "
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
    if isinstance(search_values.get("sampler"), str) and search_values["sampler"] not in SAMPLERS:
        s = search_values["sampler"]
        ck.add(f"search.sampler: unknown sampler {s!r}{suggest(s, SAMPLERS.names())}; "
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
    full = with_defaults(validation_cfg)
    ck.problems.extend(problems_of(full))
    if "trainable" in space_raw:
        ck.add("space.trainable: the training loop cannot be searched; valid: a fixed top-level trainable: "
               "\"module:function\" (one space file per loop)")
    elif not any(p.startswith(("trainable:", "train.workers:")) for p in ck.problems):
        ck.problems.extend(trainable_problems(full))  # imports your loop's module: it exists and takes 2 arguments
    if external.is_external(full.get("model")) and "model.name" not in space_raw:
        # torchvision/timm/factory: the name and keywords need the library or the module (the config check reads
        # only their form)
        ck.problems.extend(p for p in external.section_problems(full["model"]) if p not in ck.problems)

    _check_cross(ck, params, fixed, full, resources, scheduler)
    params = _order(ck, params)

    if ck.problems:
        raise ConfigError(ck.problems, source)

    base_partial = copy.deepcopy(validation_cfg)
    for section, values in entry_fixed.items():
        name_choice = base_partial[section]["name"]
        takes = entry_params(section, name_choice) or {}
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
    given = ck.section("scheduler")
    name = given.get("name", "asha")
    if name not in SCHEDULERS:
        ck.add(f"scheduler.name: unknown scheduler {name!r}{suggest(str(name), SCHEDULERS.names())}; "
               f"valid: {', '.join(SCHEDULERS.names())}")
        return SchedulerSettings(name=str(name), params={})
    schema = SCHEDULERS[name].params
    params = {}
    for k, v in given.items():
        if k == "name":
            continue
        if k not in schema:
            valid = ", ".join(["name", *schema])
            ck.add(f"scheduler.{k}: not a parameter of scheduler {name!r}{suggest(str(k), schema)}; valid: {valid}")
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
        for entry, info in ENTRY_REGISTRIES[section].items():
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
        ck.add(f"{where}: the objective cannot be searched: every trial's score (w_acc * val/acc - w_ece * val/ece, or "
               f"the key of objective.ece_metric, on n_bins bins), the early-stopping ranks and the best-trial choice must use one definition; valid: "
               f"set it once in the file's 'objective' section, e.g. objective: {{w_ece: 2.0}}")
        return None
    if head in TRIAL_SECTIONS:
        if key in SCHEMA or key in ("loss.name", "model.name"):
            return key, None
        if head == "model" and rest and "." not in rest and _external_model(fixed) is not None:
            section = _external_model(fixed)
            takes, _ = external.target_param(section, rest)
            if not takes:
                what = external.describe(section)
                ck.add(f"{where}: not a keyword of model {what!r}; valid: "
                       f"{', '.join(f'model.{k}' for k in external.keywords(section)[0]) or 'none'}")
                return None
            return key, None  # a keyword of a torchvision/timm model or a factory, set at model.<keyword>
        if head in ENTRY_SECTIONS and rest and "." not in rest:
            sec = fixed.get(head) if isinstance(fixed.get(head), dict) else {}
            example = f"{sec['name']}.{rest}" if isinstance(sec.get("name"), str) else f"<{head}>.{rest}"
            ck.add(f"{where}: {head} parameters are searched as '<{head} name>.{rest}'; valid: e.g. {example!r} "
                   f"(active only when {head}.name is that {head})")
            return None
        ck.add(f"{where}: unknown config path{suggest(key, _space_paths() + _all_entry_keys())}; valid: a path of "
               f"trainables.config.SCHEMA (e.g. train.lr), loss.name, model.name, or <loss>.<param> (e.g. gce.lam)")
        return None
    for section in ENTRY_SECTIONS:
        reg = ENTRY_REGISTRIES[section]
        if head in reg:
            params = reg[head].params
            if not rest or "." in rest or rest not in params:
                valid = ", ".join(f"{head}.{p}" for p in params) or f"none ({section} {head!r} takes no parameters)"
                ck.add(f"{where}: not a parameter of {section} {head!r}{suggest(rest, params)}; valid: {valid}")
                return None
            return f"{section}.{rest}", (section, head)
    ck.add(f"{where}: unknown key{suggest(key, _space_paths() + _all_entry_keys())}; valid: a config path "
           f"(e.g. train.lr, loss.name) or <loss>.<param> (e.g. gce.lam, focal.gamma)")
    return None


def _external_model(fixed: dict) -> dict | None:
    """The fixed `model:` section when it names a model from outside the catalog (torchvision, timm, a factory)."""
    section = fixed.get("model")
    return section if external.is_external(section) else None


def _target_param(path: str, entry: tuple[str, str] | None, fixed: dict | None = None) -> Param | None:
    """The Param describing the values valid at `path` (None where a registry checks them instead, or where any
    value goes: a factory's keywords, whose ranges are the user's)."""
    if entry is not None:
        params = entry_params(*entry) or {}
        return params.get(path.split(".", 1)[1])
    section = _external_model(fixed or {})
    if section is not None and path.startswith("model.") and path not in ("model.name", "model.factory"):
        return external.target_param(section, path.split(".", 1)[1])[1]
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
                ck.add(f"{where}.{k}: unknown key{suggest(str(k), ENTRY_KEYS)}; valid: {', '.join(ENTRY_KEYS)}")
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
    target = _target_param(path, entry, ck.raw if isinstance(ck.raw, dict) else None)
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


def _choice_problem(path: str, entry, choice: Any, fixed: dict | None = None) -> str | None:
    if entry is not None or (path.startswith("model.") and _external_model(fixed or {}) is not None):
        target = _target_param(path, entry, fixed)
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
        p = _choice_problem(path, entry, c, ck.raw)
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
            ck.add(f"{where}.{k}: unknown key{suggest(str(k), BREAKPOINT_KEYS)}; valid: {', '.join(BREAKPOINT_KEYS)}")
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
            ck.add(f"{where}.{path}: unknown config path{suggest(path, _space_paths())}; valid: a dotted path of the "
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
        takers = [c for c in candidates if k in (entry_params(section, c) or {})]
        if not takers:
            ck.add(f"{section}.{k}: not a parameter of any searched {section} ({', '.join(map(str, candidates))}); "
                   f"valid: a parameter of one of them, or remove it")
            continue
        for c in takers:
            param = entry_params(section, c)[k]
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


def data_problems_of(spec: SearchSpec) -> list[str]:
    """What the trials would find wrong with the data files and the split sizes, for the fixed data settings and
    at the ends of each searched data setting (trainables.data.data_problems; headers and listings only)."""
    from gce_search.trainables.data import data_problems  # numpy (never torch): imported only for this check

    out: list[str] = []
    for where, cfg in extreme_configs(spec):
        if where and not where.startswith("space.data."):
            continue  # the data settings are the base ones: already checked
        found = data_problems(cfg["data"], cfg.get("model"))
        out += [f"{where}{p}" for p in found if f"{where}{p}" not in out]
    return out
