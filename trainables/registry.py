"""Registries and hyperparameter descriptions shared by every kind of component.

One registry per kind (losses, calibrators, datasets, models, schedulers): the CLI choices, YAML validation and the
parametrised contract tests all read them, so a new entry is validated and tested the moment it is registered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

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


class Registry(Generic[T]):
    """Name -> entry mapping with a decorator to register and an error that lists the valid names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        if entry is not None:
            self._add(name, entry)
            return entry

        def deco(obj: T) -> T:
            self._add(name, obj)
            return obj

        return deco

    def _add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._entries))}"
            ) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self):
        return self._entries.items()

