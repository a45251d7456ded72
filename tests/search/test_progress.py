"""The console of a search: one line per trial event with a counter and an estimate off a terminal, the live view on
one (run under a pseudo-terminal), progress inside a long epoch, and Ray's misleading messages kept off it.

The runs are real `gce-search run` / `gce-search study` processes, each with its own local Ray, so that what is
checked is exactly what a person sees on the console (Ray's log handlers write to the process's own stderr)."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from gce_search.search.progress import RAY_NOTICES_FILE, expected_epochs, format_duration
from tests.waiting import HANG_ENV, hang_s, run_to_end

SPACE = """\
name: console
description: a few seconds per trial on digits, with epochs of a few hundred steps
data: {name: digits, max_train: 600}
model: {name: mlp, width: 256, depth: 2}
train: {epochs: EPOCHS, batch_size: 4, bf16: false, channels_last: false}
calibration: {method: ts}
search: {sampler: random, num_samples: NUM_SAMPLES, seed: 0}
scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
space:
  loss.name: {choices: [cross_entropy, gce]}
  train.lr: {low: 0.005, high: 0.05, log: true}
"""

EVENTS = ("started", "completed", "stopped", "failed", "error")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>78]")
TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"
RESTORE_HINT = "Tuner.restore("
FETCH_WARNING = "Failed to fetch metrics"


def write_space(folder: Path, num_samples: int, epochs: int, width: int = 256) -> str:
    path = folder / "console.yaml"
    path.write_text(SPACE.replace("NUM_SAMPLES", str(num_samples)).replace("EPOCHS", str(epochs))
                    .replace("width: 256", f"width: {width}"))
    return str(path)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from gce_search.search.cli import main; sys.exit(main())", *args]


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def token_exists() -> bool:
    # Ray turns token authentication on (and says so) when a token is stored; the notice then goes to the log file.
    return os.environ.get("RAY_AUTH_MODE") is None and (Path.home() / ".ray" / "auth_token").is_file()


# ------------------------------------------------------------------------------------------------------ by hand


def test_expected_epochs_under_asha_by_hand():
    # grace 2, eta 3, max_t 10: Ray's rungs are at 2 and 6; 1/3 of the trials pass 2, 1/9 pass 6
    assert expected_epochs({"name": "asha", "grace_period": 2, "reduction_factor": 3}, 10) == \
        pytest.approx(2 + 4 / 3 + 4 / 9)
    assert expected_epochs({"name": "moasha", "grace_period": 1, "reduction_factor": 2}, 3) == \
        pytest.approx(1 + 1 / 2 + 1 / 4)
    assert expected_epochs({"name": "fifo"}, 10) == 10
    assert expected_epochs({"name": "asha", "grace_period": 5, "reduction_factor": 3}, 5) == 5


def test_durations_read_as_a_person_says_them():
    assert [format_duration(s) for s in (0.2, 45, 89, 150, 7200 + 5 * 60)] == \
        ["under 1 s", "45 s", "89 s", "2 min", "2 h 05 min"]


def test_time_left_is_the_work_left_over_the_slots_by_hand():
    """10 trials, 2 at a time, 2 expected epochs of 1 s each: with 4 trials started (one ended after its 2 epochs,
    three running at epochs 0, 1 and 2), the work left is 6 trials x (cost + their epochs) plus what is left of the
    running ones (the one without a result yet also pays its set-up cost)."""
    from gce_search.search.progress import _TUNE_TRIAL_S, ProgressPrinter, TrialView

    printer = ProgressPrinter(max_t=4, total=10, slots=2, expected=2.0)
    assert printer.time_left() is None  # nothing measured yet
    now = time.time()
    printer.epoch_s_sum, printer.epoch_n = 5.0, 5
    printer.trials = {
        "a": TrialView("a", "gce", started=now - 3.0, epoch=2, outcome="stopped", first_result_s=2.0,
                       first_iter_s=1.5, ended=now),
        "b": TrialView("b", "gce", started=now - 1.0, epoch=0),
        "c": TrialView("c", "gce", started=now - 1.0, epoch=1, first_result_s=1.0, first_iter_s=1.0),
        "d": TrialView("d", "gce", started=now - 1.0, epoch=2, first_result_s=1.0, first_iter_s=1.0),
    }
    printer.counts["stopped"] = 1
    cost = 3.0 - 2 * 1.0 + _TUNE_TRIAL_S  # the ended trial: its wall time less its epochs, and Tune's share
    epochs = (2.0 * 4 + 2) / 5  # the prior of 2 epochs (weight 4 trials) blended with the ended trial's 2
    work = 6 * (cost + epochs * 1.0) + (epochs - 0 + cost) + (epochs - 1) + max(0.0, epochs - 2)
    assert printer.time_left(now) == pytest.approx(work / 2)
    printer.timeout_s = 1.0  # a time budget caps it
    printer.fit_started = now - 0.25
    assert printer.time_left(now) == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------- real runs, off a TTY


def test_off_a_terminal_one_line_per_trial_event_with_a_counter_and_an_estimate(tmp_path):
    """A pipe, as `ray job logs` or a redirect: one line per trial event (not per epoch), each with the [done/total]
    counter; the estimate after the first epoch; with a tiny step-progress threshold (0.5 ms: an epoch here can take
    under 50 ms), lines from inside epochs; none of Ray's notices on the console, and the token notice in the experiment's log file."""
    storage = tmp_path / "results"
    # width 2048: epochs of about a second on an idle machine. A report from inside an epoch reaches the console
    # one poll of Tune's loop after it was put on the board, and is dropped once the epoch's own result is in: with
    # epochs of a tenth of a second every report could be overtaken.
    proc = run_to_end(cli("run", write_space(tmp_path, num_samples=4, epochs=3, width=2048), "--storage",
                          str(storage), "--name", "pipe"), env=environment(GCE_SEARCH_STEP_PROGRESS_S="0.0005"),
                      watch=[storage])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    lines = out.splitlines()

    assert lines[0] == "gce-search: starting Ray..."  # the first thing said, before Ray's seconds of start-up
    assert any("first trials starting" in ln for ln in lines)
    events = [ln for ln in lines if re.search(r"\[\d+/4 done\]  trial \w+  (" + "|".join(EVENTS) + ")", ln)]
    assert sum(" started " in ln for ln in events) == 4
    ends = [ln for ln in events if " started " not in ln]
    assert len(ends) == 4, "\n".join(events)
    # the counter counts the trials that have ended, one more on each end line
    assert [int(re.search(r"\[(\d+)/4 done\]", ln).group(1)) for ln in ends] == [1, 2, 3, 4]
    assert not any(" result " in ln for ln in lines), "a line per epoch"
    assert any(ln.endswith(" left") for ln in ends[:-1]), "no time left on the end lines"

    estimate = [ln for ln in lines if "for this search on this cluster" in ln]
    assert len(estimate) == 1 and re.match(r"gce-search: about \d+ min for this search on this cluster", estimate[0])
    assert lines.index(estimate[0]) < lines.index(ends[0])  # after the first epoch, before the first trial ends

    steps = [ln for ln in lines if " training " in ln]
    assert steps, "no progress from inside an epoch"
    step_line = r"epoch \d/3: step \d+/150 \(\d+%\), \d+ img/s, epoch ends in (about|under)"
    assert all(re.search(step_line, ln) for ln in steps)

    # one line per trial event, a few lines around them: not one per epoch per trial
    assert len(lines) <= len(events) + len(steps) + 15, out
    for noise in (TOKEN_NOTICE, RESTORE_HINT, FETCH_WARNING, "WARNING"):
        assert noise not in out
    exp = storage / "pipe"
    if token_exists():
        assert TOKEN_NOTICE in (exp / RAY_NOTICES_FILE).read_text()


# --------------------------------------------------------------------------------------------- real run, on a TTY


def run_in_terminal(argv: list[str], env: dict[str, str], hang: float | None = None,
                    interrupt_when=None) -> tuple[int, str]:
    """Run `argv` with a pseudo-terminal as stdin/stdout/stderr (160 columns); SIGINT once `interrupt_when(text)`
    holds. Returns the exit code and everything written, ANSI sequences removed. `hang` (default hang_s()) is a
    hang guard only: seconds without a byte on the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    interrupted = False
    hang = hang_s() if hang is None else hang
    quiet_since = time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
                quiet_since = time.monotonic()
            text = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
            if interrupt_when is not None and not interrupted and interrupt_when(text):
                proc.send_signal(signal.SIGINT)
                interrupted = True
            if proc.poll() is not None and not ready:
                break
            if time.monotonic() - quiet_since > hang:
                raise AssertionError(f"nothing on the terminal for {hang:g} s, taken for a hang ({HANG_ENV} sets "
                                     f"this guard); it showed:\n{text[-4000:]}")
        code = proc.wait(timeout=hang)  # the terminal closed: it is exiting
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r", "")


def test_on_a_terminal_a_live_view_and_an_interrupt_names_gce_search_resume_only(tmp_path):
    """Under a pseudo-terminal the live view shows done / running / time left / the best front so far; Ctrl+C
    after the first trial ended prints `gce-search resume`, not Ray's Tuner.restore(...) hint (which goes to the
    experiment's log file)."""
    storage = tmp_path / "results"
    exp = storage / "tty"
    space = write_space(tmp_path, num_samples=30, epochs=3)

    def first_trial_ended(text: str) -> bool:
        return re.search(r"\[1/30 done\]  trial \w+  (completed|stopped|failed)", text) is not None and \
            "best front so far" in text

    code, text = run_in_terminal(cli("run", space, "--storage", str(storage), "--name", "tty"),
                                 environment(TERM="xterm-256color", COLUMNS="160", LINES="50"),
                                 interrupt_when=first_trial_ended)
    assert code == 130, text[-4000:]
    view = re.findall(r"trials (\d+)/30 done \(\d+ complete, \d+ stopped, \d+ diverged, \d+ errored\), "
                      r"(\d+) running\s+elapsed [^\n]*?time left ([^\n]+)", text)
    assert view, text[-4000:]
    assert any(int(done) >= 1 for done, _, _ in view)
    assert any(int(running) >= 1 for _, running, _ in view)
    assert any(left.strip().startswith("about ") for _, _, left in view)
    front = text[text.index("best front so far"):]
    assert re.search(r"trial\s+loss\s+epoch\s+val/acc\s+val/ece", front)
    assert re.search(r"\w{8}\s+(cross_entropy|gce\S*)[^\n]*\d/3\s+0\.\d{4}\s+0\.\d{4}", front)
    assert f"gce-search resume {exp}" in text
    assert RESTORE_HINT not in text and TOKEN_NOTICE not in text
    assert RESTORE_HINT in (exp / RAY_NOTICES_FILE).read_text()


# ---------------------------------------------------------------------------------------------------- a study


def test_a_study_that_went_well_prints_no_ray_warnings(tmp_path):
    spec = {"name": "quiet", "seeds": 2,
            "base": {"data": {"name": "digits", "max_train": 300}, "model": {"name": "mlp", "width": 32, "depth": 1},
                     "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "device": "cpu"}},
            "methods": {"ce": {"name": "cross_entropy"}}, "posthoc": {"none": {"method": "none"}}}
    path = tmp_path / "quiet.yaml"
    path.write_text(yaml.safe_dump(spec))
    out_dir = tmp_path / "out"
    proc = run_to_end(cli("study", str(path), "--out", str(out_dir)), env=environment(), watch=[out_dir])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "(runs: ok 2)" in out
    assert re.search(r"\[2/2\] ce seed \d: \d+ s, test none acc", out)
    for noise in (FETCH_WARNING, TOKEN_NOTICE, "WARNING", "Traceback"):
        assert noise not in out, out[-4000:]
