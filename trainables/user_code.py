"""Code of yours named as `"package.module:function"`: the one way a name of that form is imported
(`import_reference`, for `trainable`, `model.factory`, `data.factory` and plug-in implementations), and the
`trainable:` key, a training loop of your own (docs/byo.md, "Your own training loop").

The config check (trainables.config) checks the form of the name only (nothing is imported there, so reading
results never needs your code); `trainable_problems` imports the module and checks that the function takes
`(config, session)` — the space checker (`gce-search validate`, `run`) and `gce-search train` call it before anything
starts. Nothing heavier than your module is imported here (no torch); trainables.user_loop runs the function.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable

TRAINABLE_FORM = ('"module:function" (e.g. "my_pkg.train:train"), a function train(config, session), the module '
                  'importable where the trials run (installed, or on PYTHONPATH)')


def form_problem(value: Any) -> str | None:
    """What is wrong with the form of a `trainable` value (not null), or None."""
    return None if is_reference(value) else f"got {value!r}"


def is_reference(value: Any) -> bool:
    """Whether `value` has the form "package.module:attribute" (identifiers, one colon)."""
    if not isinstance(value, str) or value.count(":") != 1:
        return False
    module, _, attr = value.partition(":")
    return bool(module and attr) and all(p.isidentifier() for p in (*module.split("."), *attr.split(".")))


def import_reference(value: Any, key: str, form: str, callable_as: str, error: type[Exception] = ValueError) -> Any:
    """The callable a "package.module:attribute" string names, for the config key `key` (`trainable`,
    `model.factory`, `data.factory`, a plug-in's implementation). Whatever fails raises `error` with one line
    '<key>: <what>; valid: <what would be>': a malformed name (valid: `form`), a module that does not import or
    raises while it is imported, a missing attribute (with close matches), an attribute that is not callable
    (valid: `callable_as`)."""
    if not is_reference(value):
        raise error(f"{key}: got {value!r}; valid: {form}")
    module_name, _, attr = value.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise error(f"{key}: cannot import module {module_name!r} ({type(err).__name__}: {err}); valid: "
                    f"{form}") from None
    except Exception as err:  # the module raised while it was imported
        raise error(f"{key}: importing module {module_name!r} raised {type(err).__name__}: {err}; valid: "
                    f"a module that imports without error") from None
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = ".".join([module_name, *attr.split(".")[:i]])
            names = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise error(f"{key}: {where!r} has no attribute {part!r}{hint}; valid: one of its callables: "
                        f"{', '.join(names[:20]) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{key}: {value!r} is a {type(obj).__name__}, not callable; valid: {callable_as}")
    return obj


def load_trainable(value: str) -> Callable:
    """The function `trainable: value` names; ValueError (one `trainable: ...; valid: ...` line) when its module
    does not import, it has no such attribute, or the attribute is not callable with (config, session)."""
    obj = import_reference(value, "trainable", TRAINABLE_FORM, "a function train(config, session)")
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
