"""`--set key=value`: the one way an override is parsed and applied, for a space file (`run`, `validate`), a study
file (`study`) and a trial config (`train`)."""
from __future__ import annotations

import copy
from typing import Any, Iterable

import yaml

from gce_search.yamlio import parse_yaml_value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.epochs=5' -> ('train.epochs', 5). The value is read as YAML like a file's values (numbers, bools,
    lists, null; `1e-3` a float)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"--set {text!r}: the key before '=' is empty")
    try:
        value = parse_yaml_value(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ValueError(f"--set {text!r}: the value is not valid YAML ({getattr(err, 'problem', None) or err})"
                         ) from None
    return key, value


def apply_overrides(doc: dict, overrides: Iterable[str], refused: dict[str, str] | None = None
                    ) -> tuple[dict, list[str]]:
    """A copy of `doc` with every `--set` override applied at its dotted path, and the problems, one line each.

    A missing (or null) mapping on the way is created; a step that holds a value is a problem. `refused` maps a
    top-level key to why it cannot be overridden (e.g. a space file's `space`), which becomes its problem line.
    """
    out = copy.deepcopy(doc)
    problems: list[str] = []
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ValueError as err:
            problems.append(str(err))
            continue
        head = key.split(".", 1)[0]
        if refused and head in refused:
            problems.append(f"--set {text!r}: {refused[head]}")
            continue
        parts = key.split(".")
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                problems.append(f"--set {text!r}: {'.'.join(parts[:i + 1])} is {nxt!r}, not a mapping; "
                                f"valid: a dotted path to a setting")
                break
            node = nxt
        else:
            node[parts[-1]] = value
    return out, problems
