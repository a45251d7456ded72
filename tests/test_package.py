"""The installed package: one top-level import name, layers that import only downwards, no import cycles.

Each layer is imported in a fresh interpreter started outside the repository (so the checkout's folders
`search/`, `spaces/`, `trainables/` cannot stand in for the installed package), and what it pulled into
`sys.modules` is checked.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import gce_search

REPO = Path(__file__).resolve().parents[1]
# package folder in the repository -> import name
FOLDERS = {"gce_search": "gce_search", "search": "gce_search.search", "spaces": "gce_search.spaces",
           "trainables": "gce_search.trainables"}


def package_modules() -> dict[str, Path]:
    """Every module of the package: import name -> file."""
    modules = {}
    for folder, name in FOLDERS.items():
        for path in sorted((REPO / folder).glob("*.py")):
            modules[name if path.stem == "__init__" else f"{name}.{path.stem}"] = path
    return modules


def imported_in_fresh_interpreter(tmp_path: Path, code: str) -> set[str]:
    """Run `code` in a new interpreter (cwd outside the repository) and return the names in its sys.modules."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_installed_distribution_has_one_top_level_name():
    from importlib.metadata import distribution

    dist = distribution("gce-search")
    top_level = (dist.read_text("top_level.txt") or "").split()
    assert top_level == ["gce_search"]
    assert Path(gce_search.__file__).resolve() == REPO / "gce_search" / "__init__.py"


def test_a_built_wheel_holds_only_gce_search(tmp_path):
    """What `pip install .` would put into site-packages: gce_search/ and its metadata, nothing else."""
    # Built from a copy of the tracked files: a build writes build/ and *.egg-info/ beside the sources.
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "source"
    for name in files:
        if name.split("/")[0] in (*FOLDERS, "pyproject.toml", "README.md"):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0 and "No module named" in out.stderr:
        pytest.skip(f"cannot build a wheel here: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "wheel").glob("gce_search-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"gce_search"}
    for module in package_modules():
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, module
    assert "gce_search/spaces/quickstart.yaml" in names  # the shipped spaces travel with the package
    assert any(n.startswith("gce_search/spaces/studies/") and n.endswith(".yaml") for n in names)


def test_the_repository_folders_are_not_importable_by_their_own_names(tmp_path):
    modules = imported_in_fresh_interpreter(tmp_path, "import gce_search.search.cli, gce_search.trainables.losses, "
                                                      "gce_search.spaces")
    assert not {m for m in modules if m.split(".")[0] in ("search", "spaces", "trainables")}
    for name in ("search", "spaces", "trainables"):
        out = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode != 0, f"`import {name}` works outside the repository: the package leaks that name"


def test_import_gce_search_is_light(tmp_path):
    modules = imported_in_fresh_interpreter(tmp_path, "import gce_search")
    assert not {"torch", "ray", "optuna", "numpy"} & {m.split(".")[0] for m in modules}


# Each layer imported whole (every module of it) must not import what is listed.
LAYER_RULES = {
    "gce_search.trainables": ({"gce_search.search", "gce_search.spaces"}, {"ray", "optuna"}),
    "gce_search.spaces": ({"gce_search.search"}, {"torch", "ray", "optuna", "torchvision"}),
}


@pytest.mark.parametrize("layer", sorted(LAYER_RULES))
def test_a_layer_imports_only_the_layers_below_it(tmp_path, layer):
    forbidden_layers, forbidden_packages = LAYER_RULES[layer]
    members = [m for m in package_modules() if m == layer or m.startswith(layer + ".")]
    modules = imported_in_fresh_interpreter(tmp_path, "\n".join(f"import {m}" for m in members))
    leaked = sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden_layers))
    assert not leaked, f"{layer} imports {leaked}"
    heavy = sorted({m.split(".")[0] for m in modules} & forbidden_packages)
    assert not heavy, f"{layer} imports {heavy}"


@pytest.mark.parametrize("layer", sorted(LAYER_RULES))
def test_no_module_of_a_layer_imports_a_layer_above_it_anywhere(layer):
    """Statically, imports inside functions included (they run later, in a trial or a command)."""
    forbidden_layers, _ = LAYER_RULES[layer]
    graph = import_graph()
    leaks = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.startswith(layer + ".")
                   for t in targets if any(t == f or t.startswith(f + ".") for f in forbidden_layers))
    assert not leaks, leaks


def test_trainables_imports_neither_ray_nor_optuna_anywhere():
    """Statically: a trial's code runs in a plain process too (`gce-search train`, DDP ranks); Ray's side of a trial
    is search.trainable and search.step_board."""
    offenders = []
    for module, path in package_modules().items():
        if not module.startswith("gce_search.trainables"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{module}: {n}" for n in names if n.split(".")[0] in ("ray", "optuna")]
    assert not offenders, offenders


def _imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that `module` imports anywhere in its file (module level or inside functions)."""
    found = set()
    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {module: _imports_of(module, path, set(modules)) for module, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    """Counting imports inside functions too: a local import that only dodges a cycle is still a cycle."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_public_names_resolve_and_the_version_is_the_distributions():
    from importlib.metadata import version

    for name in gce_search.__all__:
        assert getattr(gce_search, name) is not None, name
    assert gce_search.__version__ == version("gce-search")
    front = gce_search.objective_front([{"val/acc": 0.9, "val/ece": 0.1}, {"val/acc": 0.8, "val/ece": 0.2}])
    assert front == [0]  # the raw (acc up, ECE down) objectives, not minimisation-space points
