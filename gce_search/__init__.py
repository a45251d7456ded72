"""gce-search: Ray-distributed hyperparameter search for calibrated classification.

The package has three layers, each importable on its own:

- `gce_search.trainables`: what runs inside a trial (data, models, losses, calibrators, metrics, the loop); torch only.
- `gce_search.spaces`: search-space files, their schema and validation; no torch, no Ray.
- `gce_search.search`: the driver (Optuna searcher, Ray Tune assembly, schedulers, results, TensorBoard, export).

The names below are the entry points for library use; each is imported on first use, so `import gce_search` is
cheap.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "run_search": "gce_search.api",
    "load_experiment": "gce_search.api",
    "train": "gce_search.api",
    "Experiment": "gce_search.api",
    "objective_front": "gce_search.search.pareto",
    "load_spec": "gce_search.spaces.loading",
    "ConfigError": "gce_search.errors",
    "UsageError": "gce_search.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # written once, in pyproject.toml
        from importlib.metadata import version

        return version("gce-search")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gce_search' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
