"""The docs against the code: docs/architecture.md's generated sections are current, and every module or object
the docs name in backticks exists."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
# `gce_search.search.driver.cmd_run`, `search.results`, `trainables.trial.run_trial(...)`, `spaces/...` is a path
DOTTED = re.compile(r"`((?:gce_search\.)?(?:search|spaces|trainables)\.[A-Za-z_][\w.]*)")


def test_the_generated_sections_of_architecture_md_are_current():
    out = subprocess.run([sys.executable, str(REPO / "docs" / "make_architecture.py"), "--check"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def resolve(dotted: str):
    """The module or object a dotted name in the docs refers to, or None."""
    name = dotted if dotted.startswith("gce_search.") else "gce_search." + dotted
    parts = name.split(".")
    for cut in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return None
            obj = getattr(obj, attr)
        return obj
    return None


def _settings_keys() -> set[str]:
    """Dotted keys of a space file's `search:` section (search.seed, search.num_samples...), not module paths."""
    import gce_search

    return {f"search.{k}" for k in gce_search.load_spec("quickstart").to_dict().get("search", {})}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_module_path_the_docs_name_exists(doc):
    keys = _settings_keys()
    missing = sorted({m.group(1).rstrip(".") for m in DOTTED.finditer(doc.read_text())
                      if m.group(1).rstrip(".") not in keys and resolve(m.group(1).rstrip(".")) is None})
    assert not missing, f"{doc.name} names what the code does not have: {missing}"
