"""Waiting on events in tests: a line in a process's output, a file appearing or growing, a process exiting, a
server answering. A wait ends as soon as its event happens, and fails at once, quoting the end of the process's
output, when the process it waits on exits first. Its only ceiling is a hang guard that counts time without
progress: it starts again whenever the watched process writes output or a watched file changes, so a slow machine
that is still working never fails a test; only one where nothing has moved for GCE_SEARCH_TEST_HANG_S seconds
(default 900) does."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import psutil

HANG_ENV = "GCE_SEARCH_TEST_HANG_S"
DEFAULT_HANG_S = 900.0
FIRST_POLL_S = 0.01
MAX_POLL_S = 0.5
TAIL_CHARS = 4000

T = TypeVar("T")


def hang_s() -> float:
    """Seconds without progress after which a wait is taken for a hang (GCE_SEARCH_TEST_HANG_S, default 900)."""
    raw = os.environ.get(HANG_ENV, "").strip()
    if not raw:
        return DEFAULT_HANG_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{HANG_ENV}={raw!r}: expected a positive number of seconds")
    return value


class PipeReader:
    """Everything a process writes to one of its pipes, read by a thread as it comes (so the process never blocks on
    a full pipe, and a wait can quote it or follow it line by line)."""

    def __init__(self, stream):
        self._stream = stream
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self.closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while line := self._stream.readline():
                if isinstance(line, bytes):
                    line = line.decode("utf-8", "replace")
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        except (OSError, ValueError):  # the pipe was closed under us
            pass
        finally:
            with self._changed:
                self.closed = True
                self._changed.notify_all()

    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    def text(self) -> str:
        return "".join(self.lines())

    def progress(self) -> int:
        with self._changed:
            return len(self._lines)

    def wait_for_change(self, seen: int, timeout: float) -> None:
        """Return when a line beyond the first `seen` arrives, or `timeout` passes."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._lines) > seen, timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


def _text_of(output) -> str:
    if isinstance(output, PipeReader):
        return output.text()
    try:
        return Path(output).read_text(errors="replace")
    except OSError:
        return ""


def output_tail(outputs: Sequence, chars: int = TAIL_CHARS) -> str:
    return "\n".join(_text_of(o)[-chars:] for o in outputs)


def _fingerprint(item) -> object:
    """Something that changes when `item` makes progress: a reader's line count, a file's size and mtime, a
    directory tree's sizes and mtimes, or a callable's own value."""
    if isinstance(item, PipeReader):
        return item.progress()
    if callable(item):
        return item()
    path = Path(item)
    try:
        if not path.is_dir():
            st = path.stat()
            return st.st_size, st.st_mtime_ns
        total = count = newest = 0
        for root, _dirs, files in os.walk(path):
            for name in files:
                try:
                    st = os.stat(os.path.join(root, name))
                except OSError:  # replaced while we walk
                    continue
                total, count, newest = total + st.st_size, count + 1, max(newest, st.st_mtime_ns)
        return total, count, newest
    except OSError:
        return None


def _as_tuple(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def wait_until(condition: Callable[[], T], *, what: str, proc: subprocess.Popen | None = None,
               output=None, watch: Iterable = (), hang: float | None = None, max_poll_s: float = MAX_POLL_S) -> T:
    """The first truthy value of `condition()`, checked at once and then with a backoff from 10 ms to `max_poll_s`
    (at once on a new line where `output` is a PipeReader).

    proc: the process the event depends on; its exit before the event fails the wait at once.
    output: where that process's output goes (PipeReader(s) or log file path(s)): quoted on failure, and its growth
        counts as progress.
    watch: more signs of progress: files or directories (their sizes and mtimes) or callables (their values).
    hang: the hang guard, seconds without any progress (default: hang_s()).
    """
    outputs = _as_tuple(output)
    signs = outputs + tuple(watch)
    hang = hang_s() if hang is None else hang
    readers = [o for o in outputs if isinstance(o, PipeReader)]
    # the first open reader, if any, wakes the wait on its next line; otherwise the wait sleeps its backoff
    waker = next((i for i, o in enumerate(outputs) if isinstance(o, PipeReader)), None)
    last = [_fingerprint(s) for s in signs]
    moved_at = time.monotonic()
    delay = FIRST_POLL_S
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            for reader in readers:  # the rest of what it wrote before exiting
                reader.join(timeout=5)
            value = condition()
            if value:
                return value
            raise AssertionError(f"{what}: the process exited with code {proc.returncode} before it happened; "
                                 f"its output ends:\n{output_tail(outputs)}")
        now = [_fingerprint(s) for s in signs]
        if now != last:
            last, moved_at, delay = now, time.monotonic(), FIRST_POLL_S
        elif time.monotonic() - moved_at > hang:
            raise AssertionError(f"{what}: nothing moved for {hang:g} s (no new output, no watched file changed); "
                                 f"taken for a hang ({HANG_ENV} sets this guard). Output ends:\n"
                                 f"{output_tail(outputs)}")
        if waker is not None and not outputs[waker].closed:
            outputs[waker].wait_for_change(last[waker], delay)
        else:
            time.sleep(delay)
        delay = min(delay * 2, max_poll_s)


def wait_for_line(reader: PipeReader, marker: str, *, what: str, proc: subprocess.Popen | None = None,
                  watch: Iterable = (), hang: float | None = None) -> str:
    """The first line `reader` has read that contains `marker`."""
    return wait_until(lambda: next((ln for ln in reader.lines() if marker in ln), None), what=what, proc=proc,
                      output=reader, watch=watch, hang=hang)


def wait_for_exit(proc: subprocess.Popen, *, what: str, output=None, watch: Iterable = (),
                  hang: float | None = None) -> int:
    """Its exit code once `proc` exits (kept waiting while it makes progress)."""
    wait_until(lambda: proc.poll() is not None, what=what, output=output, watch=watch, hang=hang)
    return proc.returncode


def stop_server(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Stop a server a test started (SIGTERM, then SIGKILL after `grace_s`) and close its output pipe."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and everything it started, and reap them."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.kill()
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(children, timeout=30)


def run_to_end(argv: Sequence[str], *, watch: Iterable = (), hang: float | None = None,
               **popen_kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(argv, capture_output=True, text=True) without a fixed timeout: it waits for the process to
    exit as long as it makes progress (writes output, or a `watch`ed path changes); after hang_s() without any, the
    process and its children are killed and the wait fails, quoting their output."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kwargs)
    out, err = PipeReader(proc.stdout), PipeReader(proc.stderr)
    try:
        wait_for_exit(proc, what=f"{' '.join(map(str, argv))[:200]} to exit", output=(out, err), watch=watch,
                      hang=hang)
    except BaseException:
        kill_tree(proc)
        raise
    finally:
        if proc.poll() is None:
            kill_tree(proc)
        out.join(timeout=30)
        err.join(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    return subprocess.CompletedProcess(list(argv), proc.returncode, out.text(), err.text())
