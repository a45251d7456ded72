"""Registries and hyperparameter descriptions shared by every kind of component.

One registry per kind (losses, models, datasets, calibrators, optimisers, LR schedules; samplers and schedulers on the
driver's side): the CLI choices, YAML validation and the parametrised contract tests all read them, so a new entry is
validated and tested the moment it is registered. Every entry has one shape (`Entry`): its metadata is declared in a
torch-free catalog (trainables.catalog, spaces.catalog) and its implementation attached by the module that holds it,
so validating a file never imports torch, Optuna or Ray.

Plug-ins (docs/byo.md, "Plug-ins"): an installed distribution adds entries through an entry-point group
(`gce_search.losses`, `gce_search.models`, `gce_search.datasets`, `gce_search.calibrators`; `Registry.enable_plugins`).
Each entry point is named after the entry it adds and points at a module or object whose loading registers it
(`LOSSES.register(name, description, params)(fn)`, or `LOSSES.add(..., impl="pkg.module:fn")` from a torch-free
module, so that validation reads the metadata without importing the implementation). A registry loads its group
once, the first time it is read by name (`get`, `in`, `names()`, iteration); a plug-in that fails to load is
reported on stderr, naming its distribution, entry point and error, and the other entries stay usable.
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from gce_search.errors import ConfigError  # noqa: F401  (re-exported: registries raise it)
from gce_search.trainables.user_code import import_reference

T = TypeVar("T")


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: Any) -> int:
    """A size in bytes from a count (int >= 0) or a string such as '512MB', '1.5 GiB', '1000'; ValueError else."""
    if isinstance(value, bool):
        raise ValueError(f"got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"got {value!r}")
        return value
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _BYTE_UNITS:
            return int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()])
    raise ValueError(f"got {value!r}")


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its default and the values that are valid."""

    default: Any
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    kind: str = "float"  # float | int | bool | auto_bool (true, false or "auto") | str | list | mapping | bytes
    choices: tuple | None = None
    doc: str = ""

    def describe(self) -> str:
        """What would be valid, in words, for error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.kind == "auto_bool":
            return "true, false or 'auto'"
        if self.kind == "mapping":
            return "a mapping"
        if self.kind == "bytes":
            return "a byte count >= 0 or a size such as '512MB', '2GiB'"
        if self.low is None and self.high is None:
            return f"a {self.kind}"
        lo = "(" if not self.low_inclusive else "["
        hi = ")" if not self.high_inclusive else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"a {self.kind} in {lo}{low}, {high}{hi}"

    def problem(self, value: Any) -> str | None:
        """None if `value` is valid, else a short description of what is wrong."""
        if self.choices is not None:
            return None if value in self.choices else f"got {value!r}"
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"got {value!r}"
        if self.kind == "auto_bool":
            return None if isinstance(value, bool) or value == "auto" else f"got {value!r}"
        if self.kind == "str":
            return None if isinstance(value, str) else f"got {value!r}"
        if self.kind == "list":
            return None if isinstance(value, (list, tuple)) else f"got {value!r}"
        if self.kind == "mapping":
            return None if isinstance(value, dict) else f"got {value!r}"
        if self.kind == "bytes":
            try:
                parse_bytes(value)
            except ValueError:
                return f"got {value!r}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"got {value!r}"
        # A Python int is compared as it is: float() of a 400-digit integer raises OverflowError.
        if isinstance(value, float) and not math.isfinite(value):
            return f"got {value!r}"
        if self.kind == "int" and isinstance(value, float) and not value.is_integer():
            return f"got {value!r}"
        v = value
        if self.low is not None and (v < self.low or (v == self.low and not self.low_inclusive)):
            return f"got {value!r}"
        if self.high is not None and (v > self.high or (v == self.high and not self.high_inclusive)):
            return f"got {value!r}"
        return None

    def check(self, name: str, value: Any) -> Any:
        """Return `value` if valid, else raise ValueError naming `name` and the valid range."""
        p = self.problem(value)
        if p is not None:
            raise ValueError(f"{name}: {p}; valid: {self.describe()}")
        return value


class Entry:
    """One registered component, in the one shape every kind shares.

    name, description, params (name -> Param) and kind-specific `traits` (e.g. a loss's `batch_coupled`, a model's
    `min_image_size`) are metadata, declared in a torch-free catalog; a trait reads as an attribute
    (`LOSSES["gce"].batch_coupled`). `impl` is the implementation (a loss function, a model builder, a calibrator
    class, a sampler builder, ...), attached by the module that holds it with `Registry.implements`.
    """

    __slots__ = ("name", "description", "params", "traits", "_impl", "_kind")

    def __init__(self, kind: str, name: str, description: str = "", params: dict[str, Param] | None = None,
                 traits: dict[str, Any] | None = None):
        self._kind = kind
        self.name = name
        self.description = description
        self.params: dict[str, Param] = dict(params or {})
        self.traits: dict[str, Any] = dict(traits or {})
        self._impl: Any = None

    def __getattr__(self, key: str) -> Any:
        try:
            return object.__getattribute__(self, "traits")[key]
        except (KeyError, AttributeError):
            raise AttributeError(f"{type(self).__name__} has no attribute or trait {key!r}") from None

    @property
    def impl(self) -> Any:
        if self._impl is None:
            raise LookupError(f"{self._kind} {self.name!r} has no implementation attached; import the module that "
                              f"implements it")
        if isinstance(self._impl, str):  # "package.module:attribute", imported on first use (a plug-in's `impl=`)
            self._impl = _import_object(self._impl, f"{self._kind} {self.name!r}")
        return self._impl

    @property
    def implemented(self) -> bool:
        return self._impl is not None

    def __repr__(self) -> str:
        return f"Entry({self._kind} {self.name!r}, params={list(self.params)})"


def _import_object(reference: str, what: str) -> Any:
    """The object a "package.module:attribute" reference names; LookupError naming `what` when it cannot."""
    return import_reference(reference, f"{what}: its implementation", "'package.module:attribute'",
                            "a function or class", error=LookupError)


@dataclass(frozen=True)
class PluginFailure:
    """A plug-in entry point that did not load: where it came from and what went wrong."""

    group: str
    name: str
    value: str
    distribution: str
    error: str

    def __str__(self) -> str:
        return (f"plug-in {self.name!r} (entry point {self.name} = {self.value} in group {self.group}, distribution "
                f"{self.distribution}) failed to load: {self.error}")


class Registry:
    """Name -> Entry, the name given once: `add` declares an entry's metadata (in a catalog module that imports
    nothing heavy), `implements` attaches its implementation (a decorator, in the module that holds the code), and
    `register` does both at once. `get` raises an error that lists the valid names."""

    def __init__(self, kind: str, **trait_defaults: Any):
        """`trait_defaults`: the traits every entry of the kind has, for an entry (shipped or a plug-in's) that
        does not declare them."""
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self.plugin_group: str | None = None
        self._trait_defaults: dict[str, Any] = dict(trait_defaults)
        self._plugins_loaded = True  # until enable_plugins names a group
        self._shipped: set[str] = set()
        self.plugin_failures: list[PluginFailure] = []

    # ---------------------------------------------------------------------------------------------------- plug-ins

    def enable_plugins(self, group: str) -> None:
        """Load the entry points of `group` when the registry is first read by name."""
        self.plugin_group = group
        self._shipped = set(self._entries)
        self._plugins_loaded = False

    def reload_plugins(self) -> None:
        """Forget the plug-ins' entries and load the group again on the next read (after a distribution was
        installed or removed in the running interpreter; a plug-in module already imported is not imported again,
        so take it out of sys.modules first)."""
        for name in self.plugins_added():
            del self._entries[name]
        self.plugin_failures = []
        self._plugins_loaded = self.plugin_group is None

    def plugins_added(self) -> list[str]:
        """The names of the entries added after enable_plugins (by plug-ins), without loading anything."""
        return [n for n in self._entries if n not in self._shipped] if self.plugin_group else []

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # first: a plug-in that reads the registry while it loads must not recurse
        from importlib.metadata import entry_points

        seen: set[str] = set()
        for ep in sorted(entry_points(group=self.plugin_group), key=lambda e: (e.name, e.value)):
            if ep.name in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(ep.name)
            dist = getattr(ep, "dist", None)
            dist_name = f"{dist.name} {dist.version}" if dist is not None else "unknown"
            try:
                if ep.name in self._shipped:
                    raise ValueError(f"{self.kind} {ep.name!r} is a shipped {self.kind}; a plug-in needs a name "
                                     f"of its own")
                ep.load()
                if ep.name not in self._entries:
                    raise ValueError(f"loading it registered no {self.kind} named {ep.name!r} (an entry point is "
                                     f"named after the {self.kind} it registers); plug-in {self.kind}s registered: "
                                     f"{', '.join(self.plugins_added()) or 'none'}")
                if not self._entries[ep.name].implemented:
                    raise ValueError(f"{self.kind} {ep.name!r} was declared without an implementation; pass "
                                     f"impl='module:object' to add(), or use register()")
            except Exception as err:
                failure = PluginFailure(self.plugin_group or "", ep.name, ep.value, dist_name,
                                        f"{type(err).__name__}: {err}")
                self.plugin_failures.append(failure)
                if ep.name not in self._shipped:  # a half-registered entry is not usable
                    self._entries.pop(ep.name, None)
                print(f"gce-search: warning: {failure}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------------- entries

    def add(self, name: str, description: str = "", params: dict[str, Param] | None = None, *,
            impl: Any = None, **traits: Any) -> Entry:
        """Declare an entry; `impl` (optional) is its implementation, or a "package.module:attribute" reference
        imported on first use of `entry.impl`."""
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        traits = {**self._trait_defaults, **traits}
        entry = Entry(self.kind, name, description, params, traits)
        entry._impl = impl
        self._entries[name] = entry
        return entry

    def implements(self, name: str) -> Callable[[T], T]:
        """Decorator: attach `obj` as the implementation of the declared entry `name`."""

        def deco(obj: T) -> T:
            entry = self._entries[name] if name in self._entries else self.get(name)
            if entry._impl is not None:
                raise KeyError(f"{self.kind} {name!r} already has an implementation")
            entry._impl = obj
            return obj

        return deco

    def register(self, name: str, description: str = "", params: dict[str, Param] | None = None,
                 **traits: Any) -> Callable[[T], T]:
        """Decorator: declare the entry `name` and attach `obj` as its implementation."""
        self.add(name, description, params, **traits)
        return self.implements(name)

    def get(self, name: str) -> Entry:
        self._load_plugins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            failed = [f for f in self.plugin_failures if f.name == name]
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._entries))}"
                + "".join(f"; {f}" for f in failed)
            ) from None

    def __getitem__(self, name: str) -> Entry:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        try:
            return name in self._entries
        except TypeError:  # an unhashable value (a list from YAML) is no entry's name
            return False

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)

    def names(self) -> list[str]:
        self._load_plugins()
        return list(self._entries)

    def items(self):
        self._load_plugins()
        return self._entries.items()

    def plugins(self) -> list[str]:
        """The names of the entries that plug-ins added (loading them first)."""
        self._load_plugins()
        return self.plugins_added()
