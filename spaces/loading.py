"""Finding and reading space files: `locate` (a path or a shipped space's name), `load_spec` (read, override,
validate), `shipped_spaces`. Files are read with gce_search.yamlio.read_yaml, the one YAML reader."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from gce_search.errors import ConfigError
from gce_search.spaces.records import SearchSpec
from gce_search.spaces.validation import spec_from_dict, suggest
from gce_search.yamlio import read_yaml

SPACES_DIR = Path(__file__).resolve().parent


def shipped_spaces() -> list[str]:
    """Names of the spaces shipped with the package (spaces/*.yaml)."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def locate(path_or_name: str) -> Path:
    """A path to a YAML file, or the name of a shipped space (`quickstart` -> spaces/quickstart.yaml)."""
    candidate = Path(path_or_name).expanduser()
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        raise ConfigError([f"{path_or_name}: is a directory; valid: a path to a space YAML file or the name of a "
                           f"shipped space ({', '.join(shipped_spaces())})"])
    if "/" not in path_or_name and "\\" not in path_or_name:
        shipped = SPACES_DIR / (path_or_name if path_or_name.endswith(".yaml") else f"{path_or_name}.yaml")
        if shipped.is_file():
            return shipped
    names = shipped_spaces()
    raise ConfigError([f"{path_or_name}: no such file, and not a shipped space{suggest(path_or_name, names)}; "
                       f"valid: a path to a YAML file or one of {', '.join(names)}"])


def load_spec(path_or_name: str | Path, overrides: Iterable[str] = ()) -> SearchSpec:
    """Read, override (`--set key=value`) and validate a space file; ConfigError lists every problem."""
    path = locate(str(path_or_name))
    raw = read_yaml(path)
    return spec_from_dict(raw, overrides, source=str(path), default_name=path.stem)
