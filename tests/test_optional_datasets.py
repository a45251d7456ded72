"""Tests that need an optional system dataset skip where it is missing, with the command that installs it, and fail
under CI: checked by running pytest itself on such a test with the dataset's directory pointed at an empty one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import FASHION_MNIST_ENV
from tests.waiting import run_to_end

REPO = Path(__file__).resolve().parents[1]
NEEDS_FASHION_MNIST = "tests/trainables/test_data.py::test_fashion_mnist_real_files"


def _pytest(env_overrides: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return run_to_end([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", NEEDS_FASHION_MNIST],
                      cwd=REPO, env=env)


def test_a_missing_dataset_is_a_skip_that_says_how_to_install_it(tmp_path):
    run = _pytest({FASHION_MNIST_ENV: str(tmp_path), "CI": None})
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "1 skipped" in out and "passed" not in out and "failed" not in out, out
    assert "apt-get install -y dataset-fashion-mnist" in out and str(tmp_path) in out, out


def test_a_missing_dataset_fails_under_ci(tmp_path):
    run = _pytest({FASHION_MNIST_ENV: str(tmp_path), "CI": "true"})
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "1 error" in out and "skipped" not in out and "passed" not in out, out  # the fixture fails the test
    assert "CI=true: a missing dataset is a failure" in out and "apt-get install -y dataset-fashion-mnist" in out
