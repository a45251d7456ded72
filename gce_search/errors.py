"""The two errors every layer raises for bad input; the CLI prints either as lines without a traceback (exit 2)."""
from __future__ import annotations

from dataclasses import dataclass, field


class UsageError(Exception):
    """A problem with what the user asked for (a path, a name, an argument): printed as one or more lines."""


@dataclass
class ConfigError(ValueError):
    """Every problem found in a config or spec, one line each: '<dotted.path>: <what>; valid: <what would be>'."""

    problems: list[str] = field(default_factory=list)
    source: str = ""

    def __str__(self) -> str:
        head = f"{self.source}: " if self.source else ""
        return head + f"{len(self.problems)} problem(s)\n" + "\n".join(self.problems)
