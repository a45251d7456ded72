"""The test suite's waits (tests/waiting.py) on real processes: they end on the event, fail at once when the process
exits first, and take only a stall, never slow progress, for a hang."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.waiting import HANG_ENV, PipeReader, hang_s, run_to_end, wait_for_line, wait_until

# prints a numbered line every `gap` seconds, `n` times, then `end`
TICKER = "import sys, time\nn, gap = int(sys.argv[1]), float(sys.argv[2])\n" \
         "for i in range(n):\n    print('tick', i, flush=True); time.sleep(gap)\nprint(sys.argv[3], flush=True)\n"


def ticker(n: int, gap: float, end: str = "done") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TICKER, str(n), str(gap), end], stdout=subprocess.PIPE,
                            text=True)


def test_a_marker_line_ends_the_wait_as_soon_as_it_is_written():
    proc = ticker(3, 0.05, end="READY")
    try:
        reader = PipeReader(proc.stdout)
        assert wait_for_line(reader, "READY", what="the ready line", proc=proc, hang=60).strip() == "READY"
    finally:
        proc.wait()
        proc.stdout.close()


def test_a_process_that_exits_before_the_event_fails_the_wait_at_once_with_its_output():
    proc = ticker(2, 0.01, end="giving up")
    started = time.monotonic()
    try:
        reader = PipeReader(proc.stdout)
        with pytest.raises(AssertionError) as failed:
            wait_for_line(reader, "READY", what="the ready line", proc=proc, hang=600)
    finally:
        proc.wait()
        proc.stdout.close()
    assert time.monotonic() - started < 60  # the exit, not the 600 s guard, ended it
    message = str(failed.value)
    assert "the ready line: the process exited with code 0" in message and "giving up" in message


def test_the_hang_guard_fires_on_a_stall_and_waits_through_steady_progress(tmp_path):
    growing = tmp_path / "log"
    growing.write_text("")
    with pytest.raises(AssertionError, match=r"nothing moved for 0.3 s .* taken for a hang"):
        wait_until(lambda: False, what="a stalled wait", watch=[growing], hang=0.3)
    # a process that writes a line every 0.2 s for ~2 s outlives a 0.6 s guard many times over: still a pass
    result = run_to_end([sys.executable, "-c", TICKER, "10", "0.2", "finished"], hang=0.6)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "finished"


def test_a_silent_hung_process_is_killed_and_quoted(tmp_path):
    code = "import time; print('started', flush=True); time.sleep(600)"
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)taken for a hang.*started"):
        run_to_end([sys.executable, "-c", code], hang=0.5)
    assert time.monotonic() - started < 60


def test_the_hang_guard_reads_its_environment_variable(monkeypatch):
    monkeypatch.delenv(HANG_ENV, raising=False)
    assert hang_s() == 900
    monkeypatch.setenv(HANG_ENV, "1800")
    assert hang_s() == 1800
    monkeypatch.setenv(HANG_ENV, "soon")
    with pytest.raises(ValueError, match=f"{HANG_ENV}='soon': expected a positive number of seconds"):
        hang_s()
