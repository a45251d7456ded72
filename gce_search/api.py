"""The Python API: the library entry points behind the CLI commands (docs/byo.md, "Python API").

`run_search` is `gce-search run`, `load_experiment` reads what it wrote (the records of `gce-search pareto` and
`gce-search export`), `train` is `gce-search train`; the CLI parses its arguments and calls the same functions
(search.driver.run, search.records.load_experiment, search.export.write_exports, search.train_command.train).
Bad input raises ConfigError or UsageError (gce_search.errors) before anything starts.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable

from gce_search.search import records

__all__ = ["Experiment", "run_search", "load_experiment", "train"]


@dataclasses.dataclass
class Experiment(records.Experiment):
    """An experiment directory as the API returns it: search.records.Experiment (`.trials`, `.front()`,
    `.best()`, `.hypervolume()`, `.complete()`, `.counts()`) plus `.export()`."""

    def export(self, select: str = "pareto", out: str | os.PathLike | None = None) -> list[Path]:
        """Write one retraining YAML per chosen trial, as `gce-search export --select SELECT --out OUT` does
        (`pareto`, `best` or `top:K`; default out: <experiment>/export); returns the files written."""
        from gce_search.search.export import write_exports

        return write_exports(self.path, select, out)


def load_experiment(path: str | os.PathLike) -> Experiment:
    """Read an experiment directory written by `gce-search run` or `run_search`; UsageError if it is not one."""
    exp = records.load_experiment(path)
    return Experiment(**{f.name: getattr(exp, f.name) for f in dataclasses.fields(records.Experiment)})


def _spec_of(space_or_spec: Any, overrides: list[str]):
    """(SearchSpec, what it was read from): from a path or a shipped space's name, a dict or a SearchSpec."""
    from gce_search.errors import UsageError
    from gce_search.search.driver import DEFAULT_SPACE, check_overrides, load_and_validate
    from gce_search.spaces.records import SearchSpec
    from gce_search.spaces.validation import spec_from_dict

    if space_or_spec is None or isinstance(space_or_spec, (str, os.PathLike)):
        space = DEFAULT_SPACE if space_or_spec is None else os.fspath(space_or_spec)
        return load_and_validate(space, overrides), space
    check_overrides(overrides)
    if isinstance(space_or_spec, SearchSpec):
        if not overrides:
            return space_or_spec, space_or_spec.source or space_or_spec.name
        return spec_from_dict(space_or_spec.to_dict(), overrides, source=space_or_spec.source,
                              default_name=space_or_spec.name), space_or_spec.source or space_or_spec.name
    if isinstance(space_or_spec, dict):
        return spec_from_dict(space_or_spec, overrides, source="space dict"), "space dict"
    raise UsageError(f"space: got {type(space_or_spec).__name__}; valid: a space YAML path, a shipped space's name, "
                     f"a dict of a space file's sections, or a SearchSpec")


def run_search(space_or_spec: Any = None, *, storage: str | os.PathLike | None = None, name: str | None = None,
               address: str | None = None, overrides: Iterable[str] = ()) -> Experiment:
    """Run a search as `gce-search run` does and return its Experiment.

    `space_or_spec`: a space YAML path or a shipped space's name (None: quickstart), a dict with a space file's
    sections, or a SearchSpec (gce_search.load_spec). `storage`, `name`, `address` are `--storage`, `--name`,
    `--address`; `overrides` are `KEY=VALUE` strings as given to `--set` (e.g. "train.epochs=2"). Bad input raises
    ConfigError/UsageError before Ray starts. A search that ended without a usable trial (the CLI's exit 1) is
    returned too: its `complete()` is empty and `counts()` says how its trials ended.
    """
    import time

    from gce_search.search.driver import run

    started = time.time()
    overrides = [str(o) for o in overrides]
    spec, space = _spec_of(space_or_spec, overrides)
    _, exp_dir = run(spec, None if storage is None else os.fspath(storage), name, address, space=space,
                     started=started)
    return load_experiment(exp_dir)


def train(config: str | os.PathLike | dict, out: str | os.PathLike | None = None,
          overrides: Iterable[str] = ()) -> dict:
    """A full retrain of one trial config as `gce-search train` does; returns its final metrics (metrics.json:
    the last epoch's metrics with `history`, `wall_s` and `config_source`).

    `config` is a YAML path (a trial config or a file written by export) or a dict (a partial or resolved trial
    config); `out` the output directory (default ./train-<config name>); `overrides` `KEY=VALUE` strings as for
    `--set`. A run that diverged returns `status: "diverged"` (the CLI's exit 1).
    """
    from gce_search.search.train_command import train as train_config

    return train_config(config, out, [str(o) for o in overrides])
