"""Regenerate the module map and the interface listing of docs/architecture.md from the code.

    python docs/make_architecture.py          # rewrite the generated sections in place
    python docs/make_architecture.py --check  # exit 1 if they are out of date (tests/test_docs.py runs this)

Everything between the `<!-- generated: NAME -->` and `<!-- end generated: NAME -->` markers is written here:
the module list comes from the package folders, each line from the module's docstring, each signature from
`inspect.signature` of the live object, so the page cannot drift from the code.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
# (import prefix, repository folder, what the layer may import)
LAYERS = [
    ("gce_search", "gce_search", "the entry points, errors and YAML reader; `import gce_search` loads nothing heavy"),
    ("gce_search.trainables", "trainables", "torch and numpy; nothing of spaces or search"),
    ("gce_search.spaces", "spaces", "the torch-free parts of trainables; no torch, Ray, Optuna or search"),
    ("gce_search.search", "search", "everything below; Ray and Optuna are imported here only"),
]


def modules_of(prefix: str, folder: str) -> list[str]:
    names = []
    for path in sorted((REPO / folder).glob("*.py")):
        if path.stem == "__main__":  # importing it runs the CLI
            continue
        names.append(prefix if path.stem == "__init__" else f"{prefix}.{path.stem}")
    return names


def first_sentence(doc: str | None) -> str:
    if not doc:
        return ""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?\.)(\s|$)", para)
    return (match.group(1) if match else para).replace("|", "\\|")


def public_objects(module) -> list[tuple[str, object]]:
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        out.append((name, obj))
    return sorted(out, key=lambda item: inspect.getsourcelines(item[1])[1])


def signature(obj) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        sig = "(...)"
    return re.sub(r"\s+", " ", sig)


def module_map() -> str:
    lines = []
    for prefix, folder, may_import in LAYERS:
        lines += [f"**`{prefix}`** (folder `{folder}/`; {may_import})", "",
                  "| module | what it holds |", "|---|---|"]
        for name in modules_of(prefix, folder):
            lines.append(f"| `{name}` | {first_sentence(importlib.import_module(name).__doc__)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def interfaces() -> str:
    lines = []
    for prefix, folder, _ in LAYERS:
        for name in modules_of(prefix, folder):
            objects = public_objects(importlib.import_module(name))
            if not objects:
                continue
            lines += [f"# {name}"]
            for obj_name, obj in objects:
                if inspect.isclass(obj):
                    methods = [m for m, f in vars(obj).items() if not m.startswith("_") and
                               (inspect.isfunction(f) or isinstance(f, (property, classmethod, staticmethod)))]
                    lines.append(f"class {obj_name}{signature(obj)}" + (f"  # {', '.join(methods)}" if methods else ""))
                else:
                    lines.append(f"{obj_name}{signature(obj)}")
            lines.append("")
    return "```python\n" + "\n".join(lines).rstrip() + "\n```\n"


SECTIONS = {"module-map": module_map, "interfaces": interfaces}


def render(text: str) -> str:
    for key, build in SECTIONS.items():
        begin, end = f"<!-- generated: {key} -->", f"<!-- end generated: {key} -->"
        if begin not in text or end not in text:
            raise SystemExit(f"{DOC}: markers {begin} ... {end} missing")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{build()}{end}{tail}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the page is up to date")
    args = parser.parse_args(argv)
    current = DOC.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(f"{DOC} is out of date: run python docs/make_architecture.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
