"""Checkpoint folders of a trial on the storage: which one is complete and newest, and what the driver logged.

Ray persists a trial's checkpoint by copying its folder to `<trial>/checkpoint_<index>`; a copy cut short (the
node died) leaves a folder that looks like any other. Each folder therefore carries `manifest.json`, written
before the copy: the epoch the checkpoint ends and the size of every file, so a complete copy can be told from an
interrupted one. Used by search.trainable (where a restarted trial goes on from) and search.uncertainty (the
checkpoint a finished trial's predictions are rebuilt from). No torch or Ray import here.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path

RESULT_FILE = "result.json"  # a trial folder's results: one JSON line per reported epoch (Ray's JSON logger)
CHECKPOINT_FILE = "checkpoint.pt"
MANIFEST_FILE = "manifest.json"
_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


def write_manifest(checkpoint_dir: str, epoch: int) -> None:
    """Record what a complete copy of `checkpoint_dir` holds (written before Ray copies the folder to storage)."""
    sizes = {CHECKPOINT_FILE: os.path.getsize(os.path.join(checkpoint_dir, CHECKPOINT_FILE))}
    with open(os.path.join(checkpoint_dir, MANIFEST_FILE), "w") as f:
        json.dump({"epoch": int(epoch), "sizes": sizes}, f)


def newest_checkpoint(fs, trial_path: str) -> tuple[str, int, int] | None:
    """(path, epoch, index) of the complete checkpoint with the latest epoch in a trial folder on the pyarrow
    filesystem `fs` (the highest index among equal epochs), or None. Incomplete ones (no or unreadable manifest,
    a file missing or of another size than the manifest says) are skipped."""
    import pyarrow.fs

    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True))
    except OSError:
        return None
    best = None
    for entry in entries:
        match = _CHECKPOINT_DIR.match(entry.base_name)
        if entry.type != pyarrow.fs.FileType.Directory or not match:
            continue
        try:
            with fs.open_input_stream(posixpath.join(entry.path, MANIFEST_FILE)) as f:
                manifest = json.loads(f.read().decode())
            epoch, sizes = int(manifest["epoch"]), dict(manifest["sizes"])
            infos = fs.get_file_info([posixpath.join(entry.path, name) for name in sizes])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if any(info.type != pyarrow.fs.FileType.File or info.size != sizes[info.base_name] for info in infos):
            continue
        key = (epoch, int(match.group(1)))
        if best is None or key > best[1:]:
            best = (entry.path, *key)
    return best


def parse_result_lines(text: str) -> tuple[list[dict], str | None]:
    """The JSON lines of a trial's result.json text, and the text of its last line when that one is cut (a process
    killed mid-write, a full disk, NFS, a copy in progress); a cut line is never taken for the trial's last
    result. The one reader of result.json: `read_result_lines` (a local file), `last_logged_epoch` (on the storage),
    search.records (an experiment's trial records)."""
    lines: list[dict] = []
    torn = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            torn = line
            continue
        torn = None  # an unreadable line followed by readable ones was not the last one written
        if isinstance(row, dict):
            lines.append(row)
    return lines, torn


def read_result_lines(path: str | os.PathLike) -> tuple[list[dict], str | None]:
    """parse_result_lines of the file at `path` (a trial folder's RESULT_FILE); ([], None) when it is missing."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], None
    return parse_result_lines(text)


def last_logged_epoch(fs, trial_path: str) -> int:
    """The epoch of the last complete line of the trial's result.json on the storage (0 if there is none)."""
    try:
        with fs.open_input_stream(posixpath.join(trial_path, RESULT_FILE)) as f:
            rows, _ = parse_result_lines(f.read().decode(errors="replace"))  # a line cut short by the copy is skipped
    except OSError:
        return 0
    for row in reversed(rows):
        try:
            return int(row["epoch"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0
