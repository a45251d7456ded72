"""Registries and hyperparameter descriptions shared by every kind of component.

One registry per kind (losses, models, datasets, calibrators, optimisers, LR schedules; samplers and schedulers on the
driver's side): the CLI choices, YAML validation and the parametrised contract tests all read them, so a new entry is
validated and tested the moment it is registered. Every entry has one shape (`Entry`): its metadata is declared in a
torch-free catalog (trainables.catalog, spaces.catalog) and its implementation attached by the module that holds it,
so validating a file never imports torch, Optuna or Ray.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from gce_search.errors import ConfigError  # noqa: F401  (re-exported: registries raise it)

T = TypeVar("T")


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its default and the values that are valid."""

    default: Any
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    kind: str = "float"  # float | int | bool | auto_bool (true, false or "auto") | str | list
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
        return self._impl

    @property
    def implemented(self) -> bool:
        return self._impl is not None

    def __repr__(self) -> str:
        return f"Entry({self._kind} {self.name!r}, params={list(self.params)})"


class Registry:
    """Name -> Entry, the name given once: `add` declares an entry's metadata (in a catalog module that imports
    nothing heavy), `implements` attaches its implementation (a decorator, in the module that holds the code), and
    `register` does both at once. `get` raises an error that lists the valid names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, description: str = "", params: dict[str, Param] | None = None, **traits: Any) -> Entry:
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        entry = Entry(self.kind, name, description, params, traits)
        self._entries[name] = entry
        return entry

    def implements(self, name: str) -> Callable[[T], T]:
        """Decorator: attach `obj` as the implementation of the declared entry `name`."""

        def deco(obj: T) -> T:
            entry = self.get(name)
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
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._entries))}"
            ) from None

    def __getitem__(self, name: str) -> Entry:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:  # an unhashable value (a list from YAML) is no entry's name
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self):
        return self._entries.items()
