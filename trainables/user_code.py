"""The `trainable:` key: a training loop of your own, named as `"package.module:function"` (docs/byo.md, "Your own
training loop").

The config check (trainables.config) checks the form of the name only (nothing is imported there, so reading
results never needs your code); `trainable_problems` imports the module and checks that the function takes
`(config, session)` — the space checker (`gce-search validate`, `run`) and `gce-search train` call it before anything
starts. Nothing heavier than your module is imported here (no torch); trainables.user_loop runs the function.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

TRAINABLE_FORM = ('"module:function" (e.g. "my_pkg.train:train"), a function train(config, session), the module '
                  'importable where the trials run (installed, or on PYTHONPATH)')


def form_problem(value: Any) -> str | None:
    """What is wrong with the form of a `trainable` value (not null), or None."""
    if not isinstance(value, str) or value.count(":") != 1:
        return f"got {value!r}"
    module, _, attr = value.partition(":")
    if not module or not attr or not all(p.isidentifier() for p in (*module.split("."), *attr.split("."))):
        return f"got {value!r}"
    return None


def load_trainable(value: str) -> Callable:
    """The function `trainable: value` names; ValueError (one `trainable: ...; valid: ...` line) when its module
    does not import, it has no such attribute, or the attribute is not callable with (config, session)."""
    problem = form_problem(value)
    if problem is not None:
        raise ValueError(f"trainable: {problem}; valid: {TRAINABLE_FORM}")
    module_name, _, attr = value.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"trainable: cannot import module {module_name!r} ({type(err).__name__}: {err}); valid: "
                         f"{TRAINABLE_FORM}") from None
    except Exception as err:  # the module raised while it was imported
        raise ValueError(f"trainable: importing module {module_name!r} raised {type(err).__name__}: {err}; valid: "
                         f"a module that imports without error") from None
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = ".".join([module_name, *attr.split(".")[:i]])
            names = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            raise ValueError(f"trainable: {where!r} has no attribute {part!r}; valid: one of its callables: "
                             f"{', '.join(names[:20]) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"trainable: {value!r} is a {type(obj).__name__}, not callable; valid: a function "
                         f"train(config, session)")
    try:
        inspect.signature(obj).bind(None, None)
    except TypeError:
        raise ValueError(f"trainable: {value!r} cannot be called with two arguments (its signature is "
                         f"{inspect.signature(obj)}); valid: a function train(config, session)") from None
    except ValueError:  # no signature to read (a builtin): called as it is
        pass
    return obj


def trainable_problems(cfg: dict) -> list[str]:
    """The problems of a resolved config's `trainable` (none when it is null): its function loads
    (load_trainable), and the trial runs in one process (train.workers 1)."""
    value = cfg.get("trainable")
    if value is None:
        return []
    problems = []
    try:
        load_trainable(value)
    except ValueError as err:
        problems.append(str(err))
    workers = cfg.get("train", {}).get("workers", 1)
    if workers != 1:
        problems.append(f"train.workers: got {workers!r} with trainable {value!r}; valid: 1 (your own training loop "
                        f"runs in the trial's process; start processes of your own inside it if you need them)")
    return problems
