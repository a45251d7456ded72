"""Shared test set-up."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.waiting import hang_s

# Test-only: where the tests that need the real Fashion-MNIST look for its four idx files (default: Debian's place).
FASHION_MNIST_ENV = "GCE_SEARCH_TEST_FASHION_MNIST_ROOT"
FASHION_MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")


def running_under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture
def fashion_mnist_root() -> str:
    """The directory holding the real Fashion-MNIST, for the tests that need it. Fashion-MNIST is an optional system
    dataset: where it is missing these tests are skipped with the command that installs it, except under CI
    (CI=true), where a missing dataset fails them, so CI always runs them for real."""
    from gce_search.trainables.data import FASHION_MNIST_ROOT, _find_idx

    root = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_ROOT
    missing = []
    for stem in FASHION_MNIST_STEMS:
        try:
            _find_idx(Path(root), stem)  # the loader's own file-name rules (.gz or not)
        except FileNotFoundError:
            missing.append(stem)
    if missing:
        reason = (f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}); install it with "
                  f"`apt-get install -y dataset-fashion-mnist`, or put the four idx files in a directory named by "
                  f"{FASHION_MNIST_ENV}")
        if running_under_ci():
            pytest.fail(f"{reason} (CI=true: a missing dataset is a failure)", pytrace=False)
        pytest.skip(reason)
    return root


@pytest.fixture
def one_intra_op_thread():
    """torch on one intra-op thread for the test. Deep nets run hundreds of tiny kernels in the model tests; with
    more OpenMP threads than free cores (a shared CI runner) every kernel waits on its spinning team, measured ~100×
    slower for DenseNet-121 at batch 2."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_under_pytest(tmp_path_factory):
    """Checkpoint folders that in-process trials hand to their reporters (tempfile.mkdtemp) go under pytest's own
    temporary directory, which pytest prunes, instead of accumulating in the system's /tmp. In-process only: Ray's
    session directory and socket paths are left alone."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("tmp"))
    yield
    tempfile.tempdir = previous


@pytest.fixture(autouse=True, scope="session")
def _precision_cache_under_pytest(tmp_path_factory):
    """The bf16 / channels_last probe cache (trainables.precision) of the test session: a fresh directory, so the
    tests neither read decisions a user's runs left in ~/.cache nor write there. Set in the environment, so trial
    processes that Ray and the CLI tests start use it too."""
    previous = os.environ.get("GCE_SEARCH_CACHE_DIR")
    os.environ["GCE_SEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("gce-search-cache"))
    yield
    if previous is None:
        os.environ.pop("GCE_SEARCH_CACHE_DIR", None)
    else:
        os.environ["GCE_SEARCH_CACHE_DIR"] = previous


# pytest-timeout is the last-resort guard for a test that hangs where no wait of tests/waiting.py watches (a call
# that never returns). Per test, twice the progress-aware hang guard: never what decides a slow machine's run.
WHOLE_TEST_HANGS = 2


def pytest_collection_modifyitems(config, items):
    """Every test without its own timeout marker gets WHOLE_TEST_HANGS x the hang guard (GCE_SEARCH_TEST_HANG_S
    scales both); --timeout or PYTEST_TIMEOUT still win."""
    if config.getvalue("timeout") is not None or os.environ.get("PYTEST_TIMEOUT"):
        return
    guard = WHOLE_TEST_HANGS * hang_s()
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(guard))
