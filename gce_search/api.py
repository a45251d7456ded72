"""Library entry points that mirror the CLI commands."""
from __future__ import annotations

import argparse
import os
from typing import Sequence


def run_search(space: str | None = None, overrides: Sequence[str] = (), *, name: str | None = None,
               storage: str | os.PathLike | None = None, address: str | None = None):
    """Run a search as `gce-search run` does and return its `Experiment` (see `gce_search.load_experiment`).

    `space` is a space YAML path or a shipped space's name (default: quickstart); `overrides` are `KEY=VALUE`
    strings as given to `--set`. Raises `ConfigError`/`UsageError` for bad input and `RuntimeError` when the
    search ends without a usable trial (the CLI's exit 1).
    """
    from gce_search.search.driver import cmd_run, resolve_storage
    from gce_search.search.records import load_experiment

    storage = resolve_storage(None if storage is None else os.fspath(storage))
    args = argparse.Namespace(space=space, overrides=list(overrides), name=name, storage=storage, address=address)
    before = set(os.listdir(storage)) if os.path.isdir(storage) else set()
    code = cmd_run(args)
    created = sorted(set(os.listdir(storage)) - before) if name is None else [name]
    if not created:
        raise RuntimeError(f"the search wrote no experiment directory under {storage}")
    exp_dir = os.path.join(storage, created[-1])
    if code != 0:
        raise RuntimeError(f"the search in {exp_dir} ended without a usable trial (exit {code})")
    return load_experiment(exp_dir)
