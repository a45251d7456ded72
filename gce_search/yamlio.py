"""The one YAML reader of gce-search: space files, trial configs (`gce-search train`), study files, exports, an
experiment's spec, and the values of `--set key=value` and of dataset options.

`read_yaml` refuses duplicate keys (PyYAML silently keeps the last), reads `1e-3` as a float (YAML 1.1 demands
`1.0e-3`, so plain PyYAML returns the string '1e-3' for a learning rate), and bounds a document's size, alias
expansion and depth; every problem is a ConfigError naming the file and the line. `parse_yaml_value` reads one value
the same way. `dump_yaml` writes what `read_yaml` reads back unchanged: it quotes a string such as the trial id
`12e45678`, which plain `yaml.safe_dump` leaves bare and this reader would read as a float.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from gce_search.errors import ConfigError

class _Loader(yaml.SafeLoader):
    """Safe YAML that records duplicate keys (PyYAML silently keeps the last) and reads `1e-3` as a float (YAML 1.1
    demands `1.0e-3`, so plain PyYAML returns the string '1e-3' for a learning rate)."""

    duplicates: list[str]


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        try:
            key = loader.construct_object(key_node, deep=True)
        except yaml.YAMLError:  # pragma: no cover - reported by the main constructor
            continue
        if isinstance(key, (str, int, float, bool)) or key is None:
            if key in seen:
                loader.duplicates.append(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice "
                                         f"(first on line {seen[key]}); valid: each key once per mapping")
            else:
                seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789"))


class _Dumper(yaml.SafeDumper):
    """safe_dump that knows the reader's extra float form, so it quotes the strings that have it."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789"))


def dump_yaml(data: Any, stream: Any = None, **kwargs: Any) -> Any:
    """`yaml.safe_dump` whose output `read_yaml` reads back as the same values (see the module docstring)."""
    return yaml.dump(data, stream, Dumper=_Dumper, **kwargs)


# Bounds on what a YAML file may expand to. A space file holds a few hundred values; PyYAML shares an aliased node
# between its uses, but every later walk over the document (validation, copies, the spec written to the experiment,
# TensorBoard's hparams) expands it, so ten nested aliases of ten would be 10^10 values ("billion laughs").
MAX_YAML_BYTES = 4 * 2**20
MAX_YAML_NODES = 100_000  # values after alias expansion: an alias counts its whole target each time it is used
MAX_YAML_DEPTH = 100  # nesting levels; Python's recursion limit would end a deeper document with a traceback


def _utf8_text(path: Path, data: bytes) -> str:
    """The text of a YAML file's bytes; ConfigError naming the file when it is not UTF-8 text."""
    valid = "valid: a UTF-8 text file of YAML"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError([f"{path}: UTF-16 or UTF-32 text (byte-order mark {data[:2].hex(' ')}); {valid} (convert it, "
                           f"e.g. iconv -f UTF-16 -t UTF-8)"], str(path))
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigError([f"{path}: a NUL byte at offset {nul}: a binary file, or UTF-16/32 text; {valid}"],
                          str(path))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); {valid}"],
                          str(path)) from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expansion_problem(root: yaml.Node) -> str | None:
    """What is wrong with the size or shape of a composed document once its aliases are expanded, or None.

    Iterative, with each node's expanded size and height computed once (an aliased node is one object in the
    composed graph), so a document that would expand to 10^30 values is measured in the time of its text."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    open_nodes: set[int] = set()  # the nodes on the current path: an alias back to one of them is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            heights[key] = 1 + max((heights[id(c)] for c in children), default=0)
            line = node.start_mark.line + 1
            if sizes[key] > MAX_YAML_NODES:
                return (f"line {line}: this value expands to more than {MAX_YAML_NODES} values (an alias counts its "
                        f"anchor's whole value each time it is used); valid: at most {MAX_YAML_NODES} values")
            if heights[key] > MAX_YAML_DEPTH:
                return f"line {line}: nested more than {MAX_YAML_DEPTH} levels deep; valid: at most {MAX_YAML_DEPTH}"
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            return (f"line {node.start_mark.line + 1}: an alias refers to a value that contains it (a recursive "
                    f"value); valid: aliases to values defined before and outside them")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return None


def _syntax_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    what = f"{what} ({context})" if context else what
    return f"{where}YAML syntax error: {what}; valid: YAML (check indentation, colons, brackets and quotes)"


def read_yaml(path: Path | str) -> Any:
    """Parse a YAML file; ConfigError with the line number on a syntax error or a duplicate key, and for a file
    that is not UTF-8 text, a directory, or a document beyond MAX_YAML_BYTES / MAX_YAML_NODES / MAX_YAML_DEPTH.

    Every YAML file gce-search reads (space files, trial configs, studies, exports, an experiment's spec) goes
    through here, so each gets the same checks and reads `1e-3` as a float."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError([f"{path}: is a directory; valid: a YAML file"], str(path))
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError([f"{path}: {size} bytes; valid: a YAML file of at most {MAX_YAML_BYTES} bytes"],
                              str(path))
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError([f"{path}: cannot read ({err.strerror}); valid: a readable YAML file"]) from None
    loader = _Loader(_utf8_text(path, data))
    loader.duplicates = []
    try:
        node = loader.get_single_node()
        problem = _expansion_problem(node) if node is not None else None
        if problem is not None:
            raise ConfigError([problem], str(path))
        doc = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise ConfigError([_syntax_error(err)], str(path)) from None
    except RecursionError:
        raise ConfigError([f"nested more than {MAX_YAML_DEPTH} levels deep; valid: at most {MAX_YAML_DEPTH}"],
                          str(path)) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(list(loader.duplicates), str(path))
    return doc


def parse_yaml_value(text: str) -> Any:
    """One YAML value from text (a `--set` value, a dataset option), read like a file's values: `1e-3` a float,
    a duplicate key in a flow mapping refused. yaml.YAMLError for text that is not YAML."""
    loader = _Loader(text)
    loader.duplicates = []
    try:
        value = loader.get_single_data()
    finally:
        loader.dispose()
    if loader.duplicates:
        raise yaml.constructor.ConstructorError(problem=loader.duplicates[0])
    return value
